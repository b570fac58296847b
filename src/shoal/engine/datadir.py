"""A data directory belongs to one kind of node: local-only (store none) or store-backed.

The two keep different truths: a local-only node's data directory *is* the
database (catalog, signing key, files), while a store-backed node's is only a
cache of the object store (its catalog, keys and history live in the store).
Starting one kind on the other's directory would not lose data, but it would
hide it: a local-only node's databases do not exist in any store, and a
store-backed node's local files are not in a local-only node's catalog. So the
first start records the kind in ``DATA/node-kind`` and later starts of the other
kind are refused with a message that says what to do.
"""

from __future__ import annotations

from pathlib import Path

from shoal.errors import ShoalError

KIND_FILE = "node-kind"
LOCAL_ONLY = "local-only"
STORE = "object-store"


def _inferred(root: Path) -> str | None:
    """The kind of a data directory written before KIND_FILE existed, from its files."""
    if (root / "signing-key").exists():
        return LOCAL_ONLY  # a store-backed node keeps its signing key in the store
    if any((root / "dbs").glob("*/*.timeline")):
        return STORE  # branch markers of the commit log
    return None


def claim(root: Path, local_only: bool) -> None:
    """Record this node's kind in ``root``, or refuse (DATA_DIR_CONFLICT) the other kind."""
    kind = LOCAL_ONLY if local_only else STORE
    path = root / KIND_FILE
    try:
        recorded: str | None = path.read_text().strip()
    except FileNotFoundError:
        recorded = _inferred(root)
    if recorded is not None and recorded != kind:
        if recorded == LOCAL_ONLY:
            advice = ("its databases exist only in this directory, not in any object store: "
                      "start it with store = \"none\" again, or give the store-backed node an "
                      "empty data directory")
        else:
            advice = ("it is a cache of an object store, which holds its databases, tokens "
                      "and history: start it with that --store again, or give the local-only "
                      "node an empty data directory")
        raise ShoalError("DATA_DIR_CONFLICT", f"the data directory {root} belongs to a "
                                              f"{recorded} node, not a {kind} one: {advice}")
    if not path.exists():
        path.write_text(kind + "\n")
