"""Bearer tokens: signed JWTs (HS256, pyjwt) naming databases and an access level.

A token carries ``jti`` (its id, for revocation), ``dbs`` (a list of database
names or ``"*"``; an entry ending in ``*`` reaches every name it starts, ``tenant-*``),
``acc`` (``read`` < ``write`` < ``admin``; or ``provision``: creating and deleting the
databases it reaches and minting their tokens, no data), ``iat``, ``exp`` and, for a token
bound to one branch, ``br``. The signing key is generated on first start into the data directory.
The static admin token (setting ``admin_token``) is compared in constant time
and grants admin on every database.
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jwt

from shoal.errors import Code, ShoalError

ACCESS_LEVELS = {"read": 1, "write": 2, "admin": 3}
PROVISION = "provision"  # an access outside the levels: databases and tokens, never data
ISSUER = "shoal"


@dataclass(frozen=True)
class Principal:
    """Who is asking: the token's id, the databases it reaches and its access level.

    A fleet's token may reach databases by name prefix (``prefixes``: ``tenant-`` from
    ``tenant-*``), be bound to one branch, or provision (create and delete) the databases
    under its prefixes. A token of an external identity provider carries its issuer, its
    subject and its claims; when ``bound`` it is held to the database's row rules (the data
    API only: a table without a rule does not exist for it).
    """

    subject: str
    databases: frozenset[str] | None  # None means every database
    access: str
    expires_at: float | None = None
    prefixes: frozenset[str] = frozenset()
    branch: str | None = None
    provision: bool = False
    issuer: str = ISSUER
    user: str | None = None  # an external token's subject (``sub``)
    claims: Mapping[str, Any] | None = field(default=None, compare=False)
    bound: bool = False

    def reaches(self, database: str) -> bool:
        """Whether the token names ``database``, exactly or by one of its prefixes."""
        if self.databases is None or database in self.databases:
            return True
        return any(database.startswith(p) for p in self.prefixes)

    def can(self, access: str, database: str | None = None) -> bool:
        if self.provision or ACCESS_LEVELS.get(self.access, 0) < ACCESS_LEVELS[access]:
            return False
        return database is None or self.reaches(database)

    def require(self, access: str, database: str | None = None) -> None:
        if self.bound and access == "admin":
            raise ShoalError(Code.RULES_BOUND, "a token bound by row rules manages nothing")
        if self.provision:  # what it may do is checked apart (shoal/scopes.py: manage)
            raise ShoalError(Code.PROVISION_ONLY, "a provisioning token creates and deletes "
                                                  "databases and mints tokens; it cannot do this")
        if database is not None and not self.reaches(database):
            raise ShoalError(Code.FORBIDDEN, f"token does not grant database {database!r}")
        if not self.can(access):
            if access == "write":
                raise ShoalError(Code.READ_ONLY, "token has read access only")
            raise ShoalError(Code.FORBIDDEN, f"token lacks {access} access")

    def on(self, branch: str | None) -> str:
        """The branch a request is served on: the one it names (main if none), or the
        token's own when it is bound to one (BRANCH_NOT_GRANTED for another)."""
        if self.branch is None:
            return "main" if branch is None else branch
        if branch is not None and branch != self.branch:
            raise ShoalError(Code.BRANCH_NOT_GRANTED,
                             f"token is bound to branch {self.branch!r}, not {branch!r}")
        return self.branch

    @property
    def sole(self) -> str | None:
        """The database the token names when it names exactly one (and no prefix)."""
        if self.databases is None or self.prefixes or len(self.databases) != 1:
            return None
        return next(iter(self.databases))

    @property
    def can_write(self) -> bool:
        return ACCESS_LEVELS.get(self.access, 0) >= ACCESS_LEVELS["write"]


def _write_secret(path: Path, value: str) -> None:
    """Create a 0600 file holding value; never overwrite an existing one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_or_create_secret(path: Path, make: Any) -> tuple[str, bool]:
    """(secret, created): read path, or create it with make() on first start."""
    try:
        return path.read_text().strip(), False
    except FileNotFoundError:
        pass
    value = make()
    try:
        _write_secret(path, value)
        return value, True
    except FileExistsError:  # another process won the race
        return path.read_text().strip(), False


class TokenAuthority:
    """Signs and verifies tokens; remembers revocations; caches verified tokens."""

    CACHE_SIZE = 4096

    def __init__(self, signing_key: str, admin_token: str, revoked: set[str],
                 narrowed: dict[str, set[str]] | None = None):
        self._key = signing_key
        self._admin = admin_token.encode()
        self._revoked = revoked
        # token id -> databases it no longer reaches (they were deleted after it was made)
        self._narrowed = {k: frozenset(v) for k, v in (narrowed or {}).items()}
        self._cache: OrderedDict[str, Principal] = OrderedDict()
        self.admin = Principal("admin", None, "admin")

    def sign(self, token_id: str, databases: list[str] | None, access: str,
             expires_at: float, branch: str | None = None) -> str:
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "jti": token_id,
            "dbs": "*" if databases is None else databases,
            "acc": access,
            "iat": int(time.time()),
            "exp": int(expires_at),
        }
        if branch is not None:  # absent otherwise: a token of before has the same claims
            claims["br"] = branch
        return jwt.encode(claims, self._key, algorithm="HS256")

    def revoke(self, token_id: str) -> None:
        self._revoked.add(token_id)

    def narrow(self, token_id: str, database: str) -> None:
        """The token stops reaching ``database`` (deleted: a new database of the name later
        is not the one it was given)."""
        self._narrowed[token_id] = self._narrowed.get(token_id, frozenset()) | {database}

    def authenticate(self, header: str | None) -> Principal:
        """Principal for an Authorization header value, or a 401 ShoalError."""
        if not header:
            raise ShoalError(Code.UNAUTHORIZED, "missing bearer token")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ShoalError(Code.UNAUTHORIZED, "Authorization must be 'Bearer <token>'")
        return self.verify(token.strip())

    def verify(self, token: str) -> Principal:
        if hmac.compare_digest(token.encode(), self._admin):
            return self.admin
        principal = self._cache.get(token)
        if principal is None:
            principal = self._decode(token)
            self._cache[token] = principal
            if len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
        if principal.subject in self._revoked:
            raise ShoalError(Code.TOKEN_REVOKED, "token has been revoked")
        if principal.expires_at is not None and principal.expires_at <= time.time():
            raise ShoalError(Code.TOKEN_EXPIRED, "token has expired")
        cut = self._narrowed.get(principal.subject)
        if cut and principal.databases is not None:
            return replace(principal, databases=principal.databases - cut)
        return principal

    def _decode(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token, self._key, algorithms=["HS256"], issuer=ISSUER,
                options={"require": ["exp", "jti", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise ShoalError(Code.TOKEN_EXPIRED, "token has expired") from None
        except jwt.PyJWTError:
            raise ShoalError(Code.TOKEN_INVALID,
                             "token is malformed or not signed by this server") from None
        dbs, acc, br = claims.get("dbs"), claims.get("acc"), claims.get("br")
        entries = [str(d) for d in dbs] if isinstance(dbs, list) else []
        bound_ok = br is None or (isinstance(br, str) and acc in ("read", "write"))
        if (acc not in ACCESS_LEVELS and acc != PROVISION) or not bound_ok \
                or not (dbs == "*" or isinstance(dbs, list)) or "*" in entries:
            raise ShoalError(Code.TOKEN_INVALID, "token claims are malformed")
        return Principal(
            subject=str(claims["jti"]),
            databases=None if dbs == "*" else frozenset(d for d in entries if d[-1:] != "*"),
            access=acc,
            expires_at=float(claims["exp"]),
            prefixes=frozenset(d[:-1] for d in entries if d[-1:] == "*"),
            branch=br,
            provision=acc == PROVISION,
        )


def new_token_id() -> str:
    return "tok_" + secrets.token_hex(8)


def new_secret() -> str:
    return secrets.token_urlsafe(32)
