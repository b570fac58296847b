"""A killed node's lease, handed on without waiting it out.

``kill -9`` leaves the store's lease held: a node on another disk then waits ``lease_ttl``
of its own clock without a renewal before it takes the lease over (a few seconds per
node in a test). Tests whose subject is what a killed node left in the store, not the
lease, call `release_killed_lease` once the process is gone: the lease then reads as a
clean stop leaves it, so the next node takes it at once, with the killed node as the
previous holder, as after a lapse (a node that finds another node's lease drops its local
copies either way). The lapse itself, a holder that is killed and one that only stops
renewing, is tested in tests/integration/test_storage_lease.py and
tests/chaos/test_fencing_nodes.py.
"""

from __future__ import annotations

import dataclasses

from shoal.engine.lease import KEY, Record
from shoal.storage.base import ObjectStore
from tests.support.server import ServerProcess


def release_killed_lease(node: ServerProcess, store: ObjectStore) -> None:
    """Mark the lease that ``node`` (killed, its process gone) held as released."""
    assert node.proc is not None and node.proc.poll() is not None, "the node is still running"
    blob = store.get(KEY)
    record = Record.decode(blob.data)
    assert record is not None and not record.released, f"not a held lease: {blob.data!r}"
    released = dataclasses.replace(record, seq=record.seq + 1, released=True)
    store.put(KEY, released.encode(), if_match=blob.etag)
