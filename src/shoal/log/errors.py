"""Errors of the commit log. Each names the object (or WAL file) at fault.

The log never repairs silently: a gap, a bad checksum or a missing object stops
the operation with one of these, so the caller can say exactly what is wrong
instead of serving a quietly wrong database.
"""

from __future__ import annotations


class LogError(Exception):
    """Base of the log's errors; ``key`` is the object or file concerned, if any."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


class WalError(LogError):
    """The -wal file does not hold what SQLite's format promises (or what we expected)."""


class CorruptObject(LogError):
    """An object exists but fails its checksum or format checks."""


class MissingObject(LogError):
    """An object the operation needs is absent: a gap in the log or a lost snapshot."""


class LogConflict(LogError):
    """Another writer stored a different object under a key this writer owns (split brain)."""


class FencedOut(LogConflict):
    """This writer's commit was refused: another writer took the timeline (a newer epoch
    on its record) or a branch operation retired it. Nothing of this write is history."""


class Sealed(LogConflict):
    """The timeline was retired by a branch operation (restore, reset, delete): nothing
    extends it; the branch that used it now points elsewhere (or will, once the operation
    named in the seal is finished)."""


class DatabaseExists(LogError):
    """A live database of that name exists."""


class DatabaseNotFound(LogError):
    """No live database of that name (it may have deleted incarnations)."""


class BranchExists(LogError):
    """A branch of that name already exists."""


class BranchNotFound(LogError):
    """No branch of that name."""
