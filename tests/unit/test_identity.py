"""shoal.identity without a node: declarations, templates, access maps, JWKS parsing (the
algorithm comes from the key), Cache-Control, and the verifier with a fake fetch: the key
read a kid needs (KeysNeeded), its rate limit, the background refresh and its clamp, the
cache (a known token costs no signature check), revocations."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import jwt
import pytest

from shoal.errors import Code, ShoalError
from shoal.identity import (
    AccessMap,
    Identity,
    IssuerError,
    KeysNeeded,
    expand,
    issuer_revocation,
    max_age,
    parse_issuer,
    parse_issuers,
    parse_jwks,
    token_id,
)
from shoal.identity import verifier as verifier_module
from tests.support.idp import IdentityProvider, new_key

ISS, AUD, URL = "https://idp.example/", "app", "https://idp.example/jwks.json"
NOT_OURS = ShoalError(Code.TOKEN_INVALID, "not a Shoal token")


def declared(**fields: Any) -> dict[str, Any]:
    return {"issuer": ISS, "audience": AUD, "jwks_url": URL, "databases": ["t-{org}"],
            "access": "read"} | fields


# -- declarations ------------------------------------------------------------------------------
def test_an_issuer_is_read_with_its_defaults() -> None:
    issuer = parse_issuer(declared())
    assert (issuer.rules, issuer.leeway, issuer.branch, issuer.database) == (True, 30.0,
                                                                            None, None)
    assert issuer.source == URL and issuer.scope == "*"
    own = parse_issuer(declared(databases=None) | {"databases": ["orders"]}, "orders")
    assert own.grants({})[0] == frozenset({"orders"}) and own.scope == "orders"
    assert parse_issuers({"issuers": [declared()]}) == (issuer,)


@pytest.mark.parametrize(("fields", "why"), [
    ({"jwks_url": "http://idp.example/jwks"}, "https"),
    ({"jwks_url": None}, "exactly one"),
    ({"jwks_file": "/k.json"}, "exactly one"),
    ({"databases": []}, "databases"),
    ({"databases": ["Tenant-{org}"]}, "template"),
    ({"databases": ["t-{org"]}, "template"),
    ({"access": {"claim": "role", "map": {"x": "root"}}}, "access"),
    ({"access": {"claim": "role"}}, "access.map"),
    ({"rules": "yes"}, "rules"),
    ({"leeway": -1}, "leeway"),
    ({"branch": "No Such"}, "branch"),
    ({"issuer": "shoal"}, "own"),
    ({"audience": ""}, "audience"),
    ({"extra": 1}, "unknown"),
])
def test_a_wrong_declaration_says_why(fields: dict[str, Any], why: str) -> None:
    raw = {k: v for k, v in (declared() | fields).items() if v is not None}
    with pytest.raises(IssuerError, match=why):
        parse_issuer(raw)


def test_a_database_issuer_names_no_file_and_no_other_database() -> None:
    with pytest.raises(IssuerError, match="file"):
        parse_issuer({"issuer": ISS, "audience": AUD, "jwks_file": "/k", "access": "read"},
                     "db")
    with pytest.raises(IssuerError, match="that database only"):
        parse_issuer(declared(), "db")
    with pytest.raises(IssuerError, match="at most"):
        parse_issuers([declared(audience=f"a{i}", databases=None) for i in range(5)], "db")
    with pytest.raises(IssuerError, match="once per audience"):
        parse_issuers([declared(), declared()])


def test_templates() -> None:
    assert expand("t-{org}", {"org": "acme"}) == ["t-acme"]
    assert expand("t-{org}-{env}", {"org": ["a", "b"], "env": "dev"}) == ["t-a-dev", "t-b-dev"]
    assert expand("t-{org}", {"org": "A B"}) == []
    assert expand("t-{org}", {"org": {"x": 1}}) == []
    assert expand("t-{app.org}", {"app": {"org": 5}}) == ["t-5"]
    assert expand("t-{https://x.example/org}", {"https://x.example/org": "z"}) == ["t-z"]
    assert expand("fixed", {}) == ["fixed"]
    assert len(expand("t-{n}", {"n": list(range(1000))})) == 100


def test_access_maps() -> None:
    roles = AccessMap("role", {"owner": "write", "boss": "admin"}, None)
    assert roles.of({"role": "owner"}) == "write"
    assert roles.of({"role": ["owner", "boss"]}) == "admin"
    assert roles.of({"role": "x"}) is None
    assert AccessMap("r", {"a": "write"}, "read").of({}) == "read"


# -- keys --------------------------------------------------------------------------------------
def test_a_keys_algorithm_comes_from_its_kind() -> None:
    keys = {k.kid: k.alg for k in parse_jwks(json.dumps({"keys": [
        new_key("RS256", "r").jwk(), new_key("ES256", "e").jwk(), new_key("EdDSA", "o").jwk(),
        new_key("RS256", "r512").jwk() | {"alg": "RS512"},  # says another: left out
        new_key("RS256", "enc").jwk() | {"use": "enc"},
        {"kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA"},
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        {"kty": "RSA", "kid": "junk", "n": "AQAB", "e": "AQAB"},
    ]}).encode())}
    assert keys == {"r": "RS256", "e": "ES256", "o": "EdDSA"}
    with pytest.raises(Exception, match="keys"):
        parse_jwks(b'{"nokeys": []}')


def test_cache_control() -> None:
    assert max_age("public, max-age=600") == 600
    assert max_age("no-store") == 0 and max_age("no-cache, max-age=5") == 0
    assert max_age(None) is None and max_age("max-age=soon") is None


# -- the verifier --------------------------------------------------------------------------------
class FakeFetch:
    """A JWKS by URL, counting reads."""

    def __init__(self, idp: IdentityProvider, age: float | None = 300):
        self.idp, self.age, self.reads = idp, age, 0
        self.body: bytes | None = None  # set: what the URL answers instead of the JWKS

    async def __call__(self, url: str) -> tuple[bytes, float | None]:
        assert url == URL
        self.reads += 1
        return self.body or json.dumps(self.idp.jwks()).encode(), self.age

    async def close(self) -> None:
        pass


def provider() -> IdentityProvider:
    return IdentityProvider(issuer=ISS, audience=AUD)  # (not started: minting only)


async def checked(identity: Identity, token: str) -> Any:
    try:
        return identity.verify(token, NOT_OURS)
    except KeysNeeded as needed:
        await needed.wait()
        return identity.verify(token, NOT_OURS)


def test_the_first_token_reads_the_keys_and_then_the_cache_answers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    idp = provider()
    fetch = FakeFetch(idp)
    identity = Identity([parse_issuer(declared())], fetch=fetch)

    async def run() -> None:
        token = idp.mint({"org": "acme"})
        p = await checked(identity, token)
        assert p.databases == frozenset({"t-acme"}) and fetch.reads == 1

        def no_decoding(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("a known token is not decoded again")
        monkeypatch.setattr(jwt, "decode", no_decoding)
        for _ in range(3):
            assert identity.verify(token, NOT_OURS) is p
        assert fetch.reads == 1
        monkeypatch.undo()
        start = time.perf_counter()
        for _ in range(10_000):
            identity.cached(token)
        per_call = (time.perf_counter() - start) / 10_000
        assert per_call < 50e-6, per_call  # a dict look-up and comparisons (about 1 µs)
    asyncio.run(run())


def test_tokens_that_are_not_an_issuers_are_left_to_shoal() -> None:
    identity = Identity([parse_issuer(declared())], fetch=FakeFetch(provider()))
    for token in ("garbage", jwt.encode({"iss": "shoal", "exp": 9e9}, "k" * 32, algorithm="HS256"),
                  jwt.encode({"exp": 9e9}, "k" * 32, algorithm="HS256")):
        with pytest.raises(ShoalError) as caught:
            identity.verify(token, NOT_OURS)
        assert caught.value is NOT_OURS


def test_unknown_kids_read_the_keys_at_most_once_per_interval() -> None:
    idp = provider()
    fetch = FakeFetch(idp)
    identity = Identity([parse_issuer(declared())], fetch=fetch, unknown_kid_interval=0.2)

    async def run() -> None:
        await checked(identity, idp.mint({"org": "a"}))
        for kid in ("x", "y", "z"):
            with pytest.raises(ShoalError) as caught:
                await checked(identity, idp.mint({"org": "a"}, kid=kid))
            assert caught.value.code is Code.TOKEN_INVALID
        assert fetch.reads == 2
        await asyncio.sleep(0.25)
        new = idp.add_key("ES256")
        assert (await checked(identity, idp.mint({"org": "a"}, kid=new))).access == "read"
        assert fetch.reads == 3
    asyncio.run(run())


def test_the_background_refresh_follows_max_age_clamped_to_refresh() -> None:
    idp = provider()
    fetch = FakeFetch(idp, age=0.0)  # no-store: kept MIN_AGE (or refresh when less)
    identity = Identity([parse_issuer(declared())], fetch=fetch, refresh=0.1)

    async def run() -> None:
        await identity.start()
        await asyncio.sleep(0.75)
        await identity.stop()
    asyncio.run(run())
    assert 4 <= fetch.reads <= 9, fetch.reads


def test_a_failed_read_keeps_the_keys_it_had() -> None:
    idp = provider()
    fetch = FakeFetch(idp)
    identity = Identity([parse_issuer(declared())], fetch=fetch)

    async def run() -> None:
        token = idp.mint({"org": "a"})
        await checked(identity, token)
        fetch.body = b"<html>"
        await identity._read(identity._sources[URL])
        assert fetch.reads == 2 and identity.status()[0]["error"] == "the JWKS is not JSON"
        assert identity.verify(token, NOT_OURS).databases == frozenset({"t-a"})
    asyncio.run(run())


def test_revocations_by_id_and_by_issuer() -> None:
    idp = provider()
    identity = Identity([parse_issuer(declared())], fetch=FakeFetch(idp))

    async def run() -> None:
        a, b = idp.mint({"org": "a", "jti": "one"}), idp.mint({"org": "a", "iat": 1000})
        await checked(identity, a)
        await checked(identity, b)
        identity.revoked([token_id(ISS, "one"), "tok_shoal_s_own", "iss_bad@x"])
        with pytest.raises(ShoalError, match="revoked"):
            identity.verify(a, NOT_OURS)
        identity.verify(b, NOT_OURS)
        identity.revoked([issuer_revocation("db", ISS, 2000)])  # another scope's issuer
        identity.verify(b, NOT_OURS)
        identity.revoked([issuer_revocation("*", ISS, 2000)])
        with pytest.raises(ShoalError, match="revoked"):
            identity.verify(b, NOT_OURS)
        fresh = idp.mint({"org": "a"})
        assert (await checked(identity, fresh)).access == "read"
    asyncio.run(run())


def test_a_token_with_no_access_is_forbidden() -> None:
    idp = provider()
    identity = Identity([parse_issuer(declared(access={"claim": "role",
                                                      "map": {"x": "read"}}))],
                        fetch=FakeFetch(idp))

    async def run() -> None:
        with pytest.raises(ShoalError) as caught:
            await checked(identity, idp.mint({"org": "a"}))
        assert caught.value.code is Code.FORBIDDEN
    asyncio.run(run())


def test_several_databases_trusting_one_issuer() -> None:
    idp = provider()
    own = {"issuer": ISS, "audience": AUD, "jwks_url": URL, "access": "write"}
    identity = Identity(fetch=FakeFetch(idp))
    identity.set_database("a", parse_issuers([own], "a"))
    identity.set_database("b", parse_issuers([own], "b"))
    identity.set_database("c", parse_issuers([own | {"access": "read"}], "c"))

    async def run() -> None:
        p = await checked(identity, idp.mint())
        assert p.databases == frozenset({"a", "b"}) and p.access == "write"
        identity.revoked([issuer_revocation("a", ISS, time.time() + 5)])
        assert identity.verify(idp.mint(), NOT_OURS).databases == frozenset({"b"})
    asyncio.run(run())
    assert verifier_module.CACHE_SIZE > 0
