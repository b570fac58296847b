"""Token scopes for fleets: database patterns, and who may manage what.

A token's scope is ``"*"`` (every database) or a list of entries, each a database name
(``orders``) or a prefix pattern: the start of a name followed by ``*`` (``tenant-*``). A
pattern reaches every database whose name starts with its prefix, those created later
included: ``tenant-*`` reaches ``tenant-a`` and ``tenant-`` itself, never ``tenantx``. It is
signed into the token as it is written (``dbs``; tokens.py splits it into
``Principal.databases`` and ``Principal.prefixes``).

A token may give away (mint, revoke, list tokens of) only what it covers: every database an
entry reaches must be in its own reach, so a ``tenant-*`` token covers ``tenant-a``,
``tenant-a*`` and ``tenant-*``, a ``tenant-a`` token covers ``tenant-a`` but not ``tenant-a*``.

A provisioning token (access ``provision``) creates, deletes, undeletes and lists the
databases it reaches and mints, revokes and lists their tokens, and nothing else: every
``Principal.require`` refuses it (``PROVISION_ONLY``); the operations it may do check
:func:`manage` instead.
"""

from __future__ import annotations

from shoal import names
from shoal.errors import Code, ShoalError
from shoal.tokens import Principal

PATTERN_HINT = ("A database name matches [a-z0-9][a-z0-9_-]{0,62}; a pattern is the start of "
                "one followed by '*' (tenant-*), with '*' only at the end; \"databases\": \"*\" "
                "(not in a list) is every database.")


def is_pattern(entry: str) -> bool:
    return entry.endswith("*")


def check(entries: list[str]) -> list[str]:
    """The entries, each a valid name or pattern, without repeats (INVALID_NAME if not)."""
    out: list[str] = []
    for entry in entries:
        base = entry[:-1] if isinstance(entry, str) and is_pattern(entry) else entry
        if not names.is_valid(base):
            shown = entry if isinstance(entry, str) and len(entry) <= 80 else "<invalid>"
            raise ShoalError(Code.INVALID_NAME, f"invalid database name or pattern {shown!r}",
                             hint=PATTERN_HINT)
        if entry not in out:
            out.append(entry)
    return out


def matches(entry: str, name: str) -> bool:
    """Whether a scope entry reaches the database ``name``."""
    return name.startswith(entry[:-1]) if is_pattern(entry) else name == entry


def covers(principal: Principal, entry: str) -> bool:
    """Whether ``principal`` reaches every database ``entry`` reaches (so may give it)."""
    if principal.databases is None:
        return True
    if is_pattern(entry):
        prefix = entry[:-1]
        return any(prefix.startswith(own) for own in principal.prefixes)
    return principal.reaches(entry)


def manage(principal: Principal, access: str, name: str | None = None) -> None:
    """The check of the operations a provisioning token may do (databases and their
    tokens): ``access`` (and ``name``) for any other token, as ``Principal.require``; for a
    provisioning token, ``name`` in its reach."""
    if not principal.provision:
        principal.require(access, name)
    elif name is not None and not principal.reaches(name):
        raise ShoalError(Code.FORBIDDEN, f"token does not grant database {name!r}")


def server_admin(principal: Principal) -> bool:
    """An admin token of every database (the node's admin token, or a ``"*"`` admin)."""
    return principal.databases is None and principal.can("admin")
