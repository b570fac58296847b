"""Names of databases and branches: one rule, checked before any path is built."""

from __future__ import annotations

import re

from shoal.errors import Code, ShoalError

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def is_valid(name: object) -> bool:
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None


def check(name: object, what: str = "database") -> str:
    """Return the name if valid; otherwise raise INVALID_NAME (never touches the disk)."""
    if not is_valid(name):
        shown = name if isinstance(name, str) and len(name) <= 80 else "<invalid>"
        raise ShoalError(Code.INVALID_NAME, f"invalid {what} name {shown!r}")
    assert isinstance(name, str)
    return name
