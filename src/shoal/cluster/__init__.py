"""The cluster's one door: a node's part among several sharing one object store.

Who the members are (``membership.py``: a record per node in the store), which of them
leads a database (``placement.py``), requests carried to the leader (``forward.py``) and
this node's part, claims and releases (``node.py``). Nothing here imports the engine or
the server: the engine holds a :class:`Cluster`, the server forwards through it.
"""

from shoal.cluster.forward import FORWARDED, MAX_MESSAGE, Forwarder, Unreachable
from shoal.cluster.membership import Member, Membership
from shoal.cluster.node import Cluster, Moved
from shoal.cluster.placement import leader_of

__all__ = ["FORWARDED", "MAX_MESSAGE", "Cluster", "Forwarder", "Member", "Membership", "Moved",
           "Unreachable", "leader_of"]
