"""Tokens of trusted identity providers: verified once, then served from a cache.

The hot path (a token seen before, its key unchanged) is a dict look-up and a few
comparisons: no I/O, no signature check. A token seen for the first time costs one
signature check with the key its ``kid`` names among its issuer's keys. A ``kid`` the
cached keys do not hold makes the issuer's JWKS be read again, at most once per
``unknown_kid_interval`` per source; that read needs an await, which the synchronous
check cannot do, so it raises :class:`KeysNeeded`: the caller awaits ``wait()`` once and
checks again (a caller that does not still gets a 401 and the read goes on; the client's
retry finds the key). Every source is also read again in the background at its max-age,
clamped to ``refresh`` seconds, so a key the provider removes stops verifying within about
``refresh`` seconds (then a token of it is checked again and fails).

Revocations: a token by its id (``ext_`` + a hash of its issuer and ``jti``, or of the
token without one), and an issuer's every token issued (``iat``) before a time, for the
node's issuer or one database's. They are kept as ids among Shoal's own revoked token
ids (engine: the store's ``catalog/revoked/``), so they are stored and told to a
cluster's nodes as those are; :meth:`Identity.revoked` takes them in.

Nothing here logs or returns a token or a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import jwt

from shoal.errors import Code, ShoalError
from shoal.identity.issuers import Issuer
from shoal.identity.keys import Fetch, HTTPSFetch, Key, KeySet, KeysUnavailable, parse_jwks
from shoal.identity.keys import read_file as read_jwks_file
from shoal.tokens import Principal

log = logging.getLogger("shoal.identity")

EXTERNAL = "ext_"  # the prefix of an external token's id
ISSUER_REVOKED = "iss_"  # the prefix of an issuer-wide revocation's id
CACHE_SIZE = 4096
UNKNOWN_KID_INTERVAL = 30.0  # seconds between reads of a source asked for by unknown kids
MIN_AGE = 5.0  # the least seconds a JWKS is kept (max-age 0, no-store) unless refresh is less
RETRY = 5.0  # seconds before a failed background read is tried again (at most refresh)
TICK = 1.0  # the background reader looks at least this often (new sources, due ones)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def token_id(issuer: str, jti: str) -> str:
    """The id of an external token (``Principal.subject``) by its issuer and ``jti``."""
    return EXTERNAL + _digest("jti", issuer, jti)


def issuer_revocation(scope: str, issuer: str, when: float) -> str:
    """The id that revokes every token of ``issuer`` (``scope``: '*' for the node's issuer,
    else the database's) issued before ``when``."""
    return f"{ISSUER_REVOKED}{_digest('iss', scope, issuer)}@{int(when * 1000)}"


class KeysNeeded(ShoalError):
    """The token's key may be among its issuer's keys once read again: await ``wait()``,
    then check the token again. Unawaited, it is a 401 TOKEN_INVALID that says to retry."""

    def __init__(self, reading: Awaitable[None]):
        super().__init__(Code.TOKEN_INVALID, "the token's signing key is not known to this "
                                             "node yet (its issuer's keys are being read): "
                                             "retry")
        self._reading = reading

    async def wait(self) -> None:
        """Until the read ends (success or not; bounded by the fetch's timeout)."""
        with contextlib.suppress(Exception):
            await asyncio.shield(self._reading)


@dataclass(slots=True)
class _Verified:
    principal: Principal
    iat: float | None
    keys: KeySet
    key: Key
    leeway: float
    revocable: tuple[tuple[str, str | None], ...]  # (issuer revocation digest, its database)


class Identity:
    """The trusted issuers of a node and of its databases, their keys, and the verified
    tokens. Every method runs on the event loop's thread (no lock)."""

    def __init__(self, issuers: Sequence[Issuer] = (), *, refresh: float = 30.0,
                 unknown_kid_interval: float = UNKNOWN_KID_INTERVAL,
                 fetch: Fetch | None = None, ca_file: str | None = None,
                 clock: Callable[[], float] = time.time):
        self._server = tuple(issuers)
        self._databases: dict[str, tuple[Issuer, ...]] = {}
        self._by_issuer: dict[str, list[Issuer]] = {}
        self._sources: dict[str, KeySet] = {}
        self._refresh = refresh
        self._unknown_interval = unknown_kid_interval
        self._fetch: Fetch = fetch or HTTPSFetch(ca_file)
        self._clock = clock
        self._cache: OrderedDict[str, _Verified] = OrderedDict()
        self._revoked: set[str] = set()
        self._revoked_before: dict[str, float] = {}  # issuer digest -> revoked before
        self._task: asyncio.Task[None] | None = None
        self.active = False  # any issuer trusted at all (else the engine never asks)
        self._index()

    # -- what is trusted ---------------------------------------------------------------------
    def _index(self) -> None:
        by: dict[str, list[Issuer]] = {}
        for entry in self._server:
            by.setdefault(entry.issuer, []).append(entry)
        for name in sorted(self._databases):
            for entry in self._databases[name]:
                by.setdefault(entry.issuer, []).append(entry)
        self._by_issuer = by
        wanted = {e.source for entries in by.values() for e in entries}
        for source in wanted - self._sources.keys():
            self._sources[source] = KeySet(source)
        for source in self._sources.keys() - wanted:
            gone = self._sources.pop(source)
            if gone.task is not None:
                gone.task.cancel()
        self._cache.clear()  # a changed trust is checked anew
        self.active = bool(by)

    @property
    def server_issuers(self) -> tuple[Issuer, ...]:
        return self._server

    def database_issuers(self, name: str) -> tuple[Issuer, ...]:
        return self._databases.get(name, ())

    def set_database(self, name: str, issuers: Sequence[Issuer]) -> None:
        """Database ``name``'s own issuers now (none: it trusts only the node's)."""
        if tuple(issuers) == self._databases.get(name, ()):
            return
        if issuers:
            self._databases[name] = tuple(issuers)
        else:
            self._databases.pop(name, None)
        self._index()

    def revoked(self, ids: Iterable[str]) -> None:
        """Revocations (stored ids): of external tokens and of issuers; others ignored."""
        for rid in ids:
            if rid.startswith(EXTERNAL):
                self._revoked.add(rid)
            elif rid.startswith(ISSUER_REVOKED):
                digest, _, when = rid[len(ISSUER_REVOKED):].partition("@")
                try:
                    at = int(when) / 1000
                except ValueError:
                    continue
                if at > self._revoked_before.get(digest, -math.inf):
                    self._revoked_before[digest] = at

    def status(self) -> list[dict[str, Any]]:
        """Each key source: its key ids, whether it was read, its last error."""
        return [{"source": ks.source if not ks.source.startswith("file:") else "file",
                 "kids": sorted(ks.keys), "fetched": ks.fetched, "error": ks.error}
                for ks in self._sources.values()]

    # -- checking a token ---------------------------------------------------------------------
    def cached(self, token: str) -> Principal | None:
        """The token's principal if it was verified before and still holds (its key still
        among its issuer's); None to verify it. TOKEN_EXPIRED, TOKEN_REVOKED."""
        found = self._cache.get(token)
        if found is None:
            return None
        if found.keys.keys.get(found.key.kid) is not found.key:
            del self._cache[token]  # the key changed or went: checked again
            return None
        return self._current(found)

    def _current(self, found: _Verified) -> Principal:
        principal = found.principal
        assert principal.expires_at is not None
        if principal.expires_at + found.leeway <= self._clock():
            raise ShoalError(Code.TOKEN_EXPIRED, "token has expired")
        if principal.subject in self._revoked:
            raise ShoalError(Code.TOKEN_REVOKED, "token has been revoked")
        if self._revoked_before:
            cut = set()
            for digest, database in found.revocable:
                before = self._revoked_before.get(digest)
                if before is not None and (found.iat is None or found.iat < before):
                    if database is None:
                        raise ShoalError(Code.TOKEN_REVOKED, "the token's issuer revoked "
                                                             "its tokens of this time")
                    cut.add(database)
            if cut:
                assert principal.databases is not None
                left = principal.databases - cut
                if not left:
                    raise ShoalError(Code.TOKEN_REVOKED, "the token's issuer revoked its "
                                                         "tokens of this time")
                return replace(principal, databases=left)
        return principal

    def verify(self, token: str, otherwise: ShoalError) -> Principal:
        """Verify a token of a trusted issuer (``otherwise``: what to raise when the token
        is not one: no ``iss``, or this server's). KeysNeeded, ISSUER_NOT_TRUSTED,
        TOKEN_INVALID, TOKEN_EXPIRED, TOKEN_REVOKED, FORBIDDEN (the claims grant nothing)."""
        found = self.cached(token)
        if found is not None:
            return found
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise otherwise from None
        iss = unverified.get("iss")
        if not isinstance(iss, str) or iss == "shoal":
            raise otherwise
        entries = self._by_issuer.get(iss)
        if not entries:
            raise ShoalError(Code.ISSUER_NOT_TRUSTED, "the token's issuer (iss) is not "
                                                      "trusted by this node or any database")
        aud = unverified.get("aud")
        auds = set(aud) if isinstance(aud, list) else {aud}
        entries = [e for e in entries if e.audience in auds]
        if not entries:
            raise ShoalError(Code.TOKEN_INVALID, "the token's audience (aud) is not one its "
                                                 "issuer is trusted for")
        server = [e for e in entries if e.database is None]
        verified = self._check(token, header, server[:1] or entries)
        self._cache[token] = verified
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return self._current(verified)

    def _check(self, token: str, header: Mapping[str, Any],
               entries: list[Issuer]) -> _Verified:
        """Verify against the first entry; per-database entries after it add their database
        when they verify and grant the same access, rules and branch."""
        first: tuple[Issuer, dict[str, Any], KeySet, Key] | None = None
        databases: set[str] = set()
        access: str | None = None
        revocable: list[tuple[str, str | None]] = []
        for entry in entries:
            keys, key = self._key(entry, header)
            claims = self._decode(token, entry, key)
            dbs, granted = entry.grants(claims)
            if first is None:
                first, access = (entry, claims, keys, key), granted
            elif (granted, entry.rules, entry.branch) != (access, first[0].rules,
                                                          first[0].branch):
                continue
            databases |= dbs
            revocable.append((_digest("iss", entry.scope, entry.issuer), entry.database))
        assert first is not None
        entry, claims, keys, key = first
        if access is None:
            raise ShoalError(Code.FORBIDDEN, "the token's claims grant no access")
        jti = claims.get("jti")
        subject = token_id(entry.issuer, jti) if isinstance(jti, str) and jti else \
            token_id(entry.issuer, "token:" + hashlib.sha256(token.encode()).hexdigest())
        sub = claims.get("sub")
        iat = claims.get("iat")
        principal = Principal(
            subject=subject, databases=frozenset(databases), access=access,
            expires_at=float(claims["exp"]), branch=entry.branch, issuer=entry.issuer,
            user=sub if isinstance(sub, str) else None,
            claims=MappingProxyType(claims), bound=entry.rules)
        return _Verified(principal, float(iat) if isinstance(iat, int | float) else None,
                         keys, key, entry.leeway, tuple(revocable))

    def _key(self, entry: Issuer, header: Mapping[str, Any]) -> tuple[KeySet, Key]:
        keys = self._sources[entry.source]
        key = keys.find(header.get("kid"))
        if key is None:
            if keys.task is not None and not keys.task.done():
                raise KeysNeeded(keys.task)  # a read is under way: wait for that one
            now = time.monotonic()
            if not keys.fetched and now >= keys.due:  # never read (or failed): read now
                raise KeysNeeded(self._read(keys))
            if keys.fetched and now - keys.last_unknown >= self._unknown_interval:
                keys.last_unknown = now
                raise KeysNeeded(self._read(keys))
            raise ShoalError(Code.TOKEN_INVALID, "the token's key (kid) is not among its "
                                                 "issuer's keys")
        if header.get("alg") != key.alg:  # never the header's choice: the key's kind
            raise ShoalError(Code.TOKEN_INVALID, f"the token's key verifies {key.alg} only")
        return keys, key

    @staticmethod
    def _decode(token: str, entry: Issuer, key: Key) -> dict[str, Any]:
        try:
            return jwt.decode(token, key.key, algorithms=[key.alg], audience=entry.audience,
                              issuer=entry.issuer, leeway=entry.leeway,
                              options={"require": ["exp", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            raise ShoalError(Code.TOKEN_EXPIRED, "token has expired") from None
        except jwt.ImmatureSignatureError:
            raise ShoalError(Code.TOKEN_INVALID, "the token is not valid yet (nbf, iat)") \
                from None
        except jwt.PyJWTError as exc:
            raise ShoalError(Code.TOKEN_INVALID, "the token does not verify against its "
                                                 f"issuer ({type(exc).__name__})") from None

    # -- reading keys ----------------------------------------------------------------------------
    def _read(self, keys: KeySet) -> asyncio.Task[None]:
        """The source's read under way, or a new one."""
        if keys.task is None or keys.task.done():
            keys.task = asyncio.get_running_loop().create_task(self._load(keys))
        return keys.task

    async def _load(self, keys: KeySet) -> None:
        keys.due = math.inf  # not scheduled again while this read runs
        period = self._refresh
        try:
            if keys.source.startswith("file:"):
                data, age = await asyncio.to_thread(read_jwks_file, keys.source[5:]), None
            else:
                data, age = await self._fetch(keys.source)
            parsed = parse_jwks(data)
            keys.reads += 1
            if keys.adopt(parsed):
                log.info("the keys of %s are now: %s", keys.source,
                         ", ".join(sorted(keys.keys)) or "none")
            if age is not None:
                period = min(self._refresh, max(age, min(MIN_AGE, self._refresh)))
        except (KeysUnavailable, OSError) as exc:
            keys.error = str(exc)
            period = min(RETRY, self._refresh)
            log.warning("reading the keys of %s failed: %s", keys.source, exc)
        finally:
            keys.due = time.monotonic() + period

    async def start(self) -> None:
        """Read every source now and keep them fresh in the background."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._keep_fresh())

    async def _keep_fresh(self) -> None:
        while True:
            now = time.monotonic()
            for keys in list(self._sources.values()):
                if keys.due <= now:
                    self._read(keys)
            soonest = min((k.due for k in self._sources.values()), default=math.inf)
            await asyncio.sleep(max(0.01, min(TICK, soonest - now)))

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *(k.task for k in self._sources.values()))
                 if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._task = None
        await self._fetch.close()
