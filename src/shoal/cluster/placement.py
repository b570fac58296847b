"""Which node leads a database: rendezvous hashing over the live members.

Rendezvous (highest random weight) hashing, not a ring and not a table in the store:

- every node computes the same leader from the same member set, with no store request
  and nothing to agree on beyond the membership itself;
- a joining node takes about 1/N of the databases (those it now scores highest on), and
  no database moves between the nodes that were already there;
- a leaving node's databases spread over the others (each goes to its next-highest
  score), not all onto one neighbour as on a ring.

The score is part of the cluster's format: nodes of different versions must agree on it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def score(database: str, node: str) -> int:
    """The node's weight for the database: the 8 bytes of a BLAKE2b digest, as an int."""
    digest = hashlib.blake2b(f"{database}\0{node}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def leader_of(database: str, nodes: Iterable[str]) -> str | None:
    """The node with the highest score (on a tie, the greater id); None if there is none."""
    return max(nodes, key=lambda node: (score(database, node), node), default=None)
