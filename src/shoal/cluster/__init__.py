"""The cluster's one door: who the members are (``membership.py``) and which of them leads
a database (``placement.py``). Both go through the shared object store only."""

from shoal.cluster.membership import Member, Membership
from shoal.cluster.placement import leader_of

__all__ = ["Member", "Membership", "leader_of"]
