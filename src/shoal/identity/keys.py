"""An issuer's signing keys (its JWKS), read from its HTTPS URL or a file, and cached.

A key's algorithm comes from the key itself, never from a token: RSA (2048 bits or more)
verifies RS256 only, EC P-256 ES256 only, OKP Ed25519 EdDSA only. A key whose JWK says
another ``alg``, or a use other than signing, is left out. Nothing a token names (``jku``,
``x5u``, ``jwk``, its ``iss``) is ever fetched: only the URL the issuer was declared with,
without following redirects, and no more than MAX_JWKS_BYTES of it.
"""

from __future__ import annotations

import asyncio
import json
import math
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import certifi
import httpx
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

MAX_JWKS_BYTES = 256 * 1024
MAX_KEYS = 100
FETCH_TIMEOUT = 5.0
MIN_RSA_BITS = 2048


class KeysUnavailable(Exception):
    """A JWKS could not be read or is not valid (the message says why; never a secret)."""


@dataclass(frozen=True, slots=True)
class Key:
    kid: str
    alg: str  # RS256, ES256 or EdDSA: what this key verifies
    key: Any  # a cryptography public key
    jwk: str  # its JWK, canonical: a key that did not change stays the same object


def _key(jwk: Mapping[str, Any]) -> Key | None:
    """The verifying key of one JWK, or None if it is not one this node uses."""
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if jwk.get("use", "sig") != "sig":
        return None
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    text = json.dumps(dict(jwk), sort_keys=True)
    public: Any
    loaded: Any
    try:
        if kty == "RSA":
            alg, loaded = "RS256", RSAAlgorithm.from_jwk(text)
            public = loaded.public_key() if isinstance(loaded, rsa.RSAPrivateKey) else loaded
            if not isinstance(public, rsa.RSAPublicKey) or public.key_size < MIN_RSA_BITS:
                return None
        elif kty == "EC" and crv == "P-256":
            alg, loaded = "ES256", ECAlgorithm.from_jwk(text)
            public = loaded.public_key() if isinstance(loaded, ec.EllipticCurvePrivateKey) \
                else loaded
            if not isinstance(public, ec.EllipticCurvePublicKey):
                return None
        elif kty == "OKP" and crv == "Ed25519":
            alg, loaded = "EdDSA", OKPAlgorithm.from_jwk(text)
            public = loaded.public_key() if isinstance(loaded, ed25519.Ed25519PrivateKey) \
                else loaded
            if not isinstance(public, ed25519.Ed25519PublicKey):
                return None
        else:
            return None
    except Exception:  # a malformed key is left out, as an unknown kind is
        return None
    if jwk.get("alg", alg) != alg:
        return None
    kid = jwk.get("kid", "")
    return Key(kid if isinstance(kid, str) else "", alg, public, text)


def parse_jwks(data: bytes) -> list[Key]:
    """The usable keys of a JWKS document; KeysUnavailable if it is not one."""
    try:
        raw = json.loads(data)
    except ValueError:
        raise KeysUnavailable("the JWKS is not JSON") from None
    items = raw.get("keys") if isinstance(raw, dict) else None
    if not isinstance(items, list):
        raise KeysUnavailable("the JWKS has no \"keys\" list")
    keys = [k for k in (_key(item) for item in items[:MAX_KEYS] if isinstance(item, dict))
            if k is not None]
    return keys


def max_age(cache_control: str | None) -> float | None:
    """Seconds a response may be reused, from its Cache-Control (no-store/no-cache: 0)."""
    if not cache_control:
        return None
    for part in cache_control.lower().split(","):
        name, _, value = part.strip().partition("=")
        if name in ("no-store", "no-cache"):
            return 0.0
        if name == "max-age":
            try:
                age = float(value.strip().strip('"'))
            except ValueError:
                return None
            return age if math.isfinite(age) and age >= 0 else None
    return None


class KeySet:
    """One JWKS source's keys as last read, and when to read them again.

    ``keys`` is replaced whole at each read (kid -> Key); a key whose JWK did not change
    keeps its object, so what was verified with it stays cached."""

    def __init__(self, source: str):
        self.source = source
        self.keys: dict[str, Key] = {}
        self.fetched = False  # read successfully at least once
        self.due = 0.0  # monotonic time of the next scheduled read
        self.last_unknown = -math.inf  # last read asked for by an unknown kid (monotonic)
        self.reads = 0
        self.error: str | None = None
        self.task: asyncio.Task[None] | None = None

    def find(self, kid: str | None) -> Key | None:
        if kid is not None:
            return self.keys.get(kid) if isinstance(kid, str) else None
        only = list(self.keys.values())
        return only[0] if len(only) == 1 else None  # no kid: the one key, if only one

    def adopt(self, keys: list[Key]) -> bool:
        """The keys just read; True if they changed."""
        new = {}
        for key in keys:
            old = self.keys.get(key.kid)
            new[key.kid] = old if old is not None and old.jwk == key.jwk else key
        changed = new.keys() != self.keys.keys() or \
            any(new[k] is not self.keys[k] for k in new)
        self.keys, self.fetched, self.error = new, True, None
        return changed


class Fetch(Protocol):
    """What the identity needs to read a JWKS over HTTPS: (body, max-age or None)."""

    async def __call__(self, url: str) -> tuple[bytes, float | None]: ...
    async def close(self) -> None: ...


class HTTPSFetch:
    """JWKS reads with httpx: HTTPS only, no redirects, a size cap, a timeout; trusting the
    usual CAs (certifi) and, if given, ``ca_file`` too (a private or test CA)."""

    def __init__(self, ca_file: str | None = None, timeout: float = FETCH_TIMEOUT):
        context = ssl.create_default_context(cafile=certifi.where())
        if ca_file:
            context.load_verify_locations(cafile=ca_file)
        self._context = context
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None

    async def __call__(self, url: str) -> tuple[bytes, float | None]:
        if not url.startswith("https://"):
            raise KeysUnavailable("a JWKS is read over HTTPS only")
        if self._client is None:
            self._client = httpx.AsyncClient(verify=self._context, timeout=self._timeout,
                                             follow_redirects=False, trust_env=False)
        try:
            async with self._client.stream("GET", url,
                                           headers={"accept": "application/json"}) as resp:
                if resp.status_code != 200:
                    raise KeysUnavailable(f"the JWKS URL answered {resp.status_code}")
                chunks, size = [], 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_JWKS_BYTES:
                        raise KeysUnavailable(f"the JWKS is larger than {MAX_JWKS_BYTES} bytes")
                    chunks.append(chunk)
                return b"".join(chunks), max_age(resp.headers.get("cache-control"))
        except httpx.HTTPError as exc:
            raise KeysUnavailable(f"reading the JWKS failed: {type(exc).__name__}") from None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def read_file(path: str) -> bytes:
    data = Path(path).read_bytes()
    if len(data) > MAX_JWKS_BYTES:
        raise KeysUnavailable(f"the JWKS file is larger than {MAX_JWKS_BYTES} bytes")
    return data
