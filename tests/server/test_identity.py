"""Tokens of identity providers, in process: a node trusting two providers (issuers_file) and
databases trusting their own (PUT /v1/databases/{db}/issuers), each provider a
tests/support/idp.py serving its JWKS over HTTPS. RS256, ES256 and EdDSA; claim templates
and access from a claim; every way a token must fail (expired, not yet valid, another
issuer or audience, a forged signature, alg none, HS256 keyed with the public key, a kid of
another issuer, an unknown kid: one read of the keys, then none for a while, jku never
fetched); rotation and removal of keys; revocation by jti, by id and by issuer; Shoal's
own tokens as before."""

from __future__ import annotations

import base64
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shoal.tokens import Principal
from tests.integration.api_support import error_of, make_token, ok, query, wait_until
from tests.support.idp import IdentityProvider, compact, hs256_with
from tests.support.inprocess import InProcessNode

_names = itertools.count()
ACCESS = {"claim": "role", "map": {"owner": "write", "boss": "admin"}, "default": "read"}


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    with IdentityProvider() as provider:
        yield provider


@pytest.fixture(scope="module")
def other() -> Iterator[IdentityProvider]:
    with IdentityProvider(audience="other-app") as provider:
        yield provider


def start_node(root: Path, *providers: dict[str, Any], **settings: Any) -> InProcessNode:
    issuers = root / "issuers.json"
    # not bound by row rules unless a test says (SQL below; test_data_api.py and
    # test_browser.py use bound tokens)
    issuers.write_text(json.dumps({"issuers": [{"rules": False} | p for p in providers]}))
    return InProcessNode(root / "data", {"issuers_file": str(issuers),
                                         "jwks_ca_file": IdentityProvider.ca_file(),
                                         **settings}).start()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, idp: IdentityProvider,
         other: IdentityProvider) -> Iterator[InProcessNode]:
    n = start_node(tmp_path_factory.mktemp("identity"),
                   # (SQL below: these tokens are not bound by row rules; test_browser.py
                   # and test_data_api.py use bound ones)
                   idp.declaration(databases=["tenant-{org_id}", "shared"], access=ACCESS,
                                   rules=False),
                   other.declaration(databases=["other-{org_id}"], access="read",
                                     rules=False, branch="main"))
    yield n
    n.stop()


@pytest.fixture(scope="module")
def admin(node: InProcessNode) -> Iterator[httpx.Client]:
    with node.client() as c:
        yield c


def make_db(admin: httpx.Client, name: str | None = None) -> str:
    name = name or f"idb{next(_names)}"
    ok(admin.post("/v1/databases", json={"name": name}), 201)
    ok(query(admin, name, "CREATE TABLE t(x)"))
    return name


def as_token(node: InProcessNode, token: str) -> httpx.Client:
    return node.client(token)


def select(node: InProcessNode, token: str, db: str) -> httpx.Response:
    with as_token(node, token) as c:
        return query(c, db, "SELECT count(*) FROM t")


def principal(node: InProcessNode, token: str) -> Principal:
    """What the engine makes of a token (on the node's loop, as a request would)."""
    assert node.app is not None
    engine: Any = node.app.engine

    async def ask() -> Principal:
        return engine.verify(token)  # type: ignore[no-any-return]
    return node._run(ask())  # type: ignore[no-any-return]


# -- the happy paths ---------------------------------------------------------------------------
@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_a_token_of_each_kind_of_key_reaches_its_database(
        node: InProcessNode, admin: httpx.Client, idp: IdentityProvider, alg: str) -> None:
    db = make_db(admin, f"tenant-{alg.lower()}")
    token = idp.mint({"org_id": alg.lower()}, alg=alg)
    assert ok(select(node, token, db))["results"][0]["rows"] == [[0]]
    with as_token(node, token) as c:  # read by default: no writes
        error_of(query(c, db, "INSERT INTO t VALUES (1)"), 403, "READ_ONLY")


def test_the_principal_carries_the_subject_claims_and_binding(
        node: InProcessNode, idp: IdentityProvider, other: IdentityProvider) -> None:
    token = idp.mint({"org_id": "acme", "sub": "alice", "jti": "j-1", "plan": "pro"})
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    p = principal(node, token)
    assert p.subject.startswith("ext_") and "j-1" not in p.subject
    assert p.issuer == idp.issuer and p.user == "alice"
    assert p.databases == frozenset({"tenant-acme", "shared"})
    assert p.access == "read" and p.bound is False and p.branch is None
    assert p.expires_at == claims["exp"]
    assert p.claims is not None and p.claims["plan"] == "pro"
    q = principal(node, other.mint({"org_id": "x"}))
    assert q.bound is False and q.branch == "main" and q.databases == frozenset({"other-x"})
    assert principal(node, other.mint({"org_id": "x", "jti": "j-1"})).subject != p.subject


@pytest.mark.parametrize(("org", "reached"), [
    (["a", "b"], {"tenant-a", "tenant-b", "shared"}),
    (7, {"tenant-7", "shared"}),
    ("Bad Name", {"shared"}),  # not a valid name: grants nothing
    ("x/../y", {"shared"}),
    (True, {"shared"}),  # not text
    (None, {"shared"}),  # absent
])
def test_claim_templates(node: InProcessNode, idp: IdentityProvider, org: Any,
                         reached: set[str]) -> None:
    assert principal(node, idp.mint({"org_id": org})).databases == frozenset(reached)


@pytest.mark.parametrize(("role", "access"), [
    ("owner", "write"), ("boss", "admin"), ("stranger", "read"), (None, "read"),
    (["stranger", "owner"], "write"),
])
def test_access_from_a_claim(node: InProcessNode, idp: IdentityProvider, role: Any,
                             access: str) -> None:
    assert principal(node, idp.mint({"org_id": "a", "role": role})).access == access


def test_write_access_writes_and_admin_manages(node: InProcessNode, admin: httpx.Client,
                                               idp: IdentityProvider) -> None:
    db = make_db(admin, "tenant-writer")
    with as_token(node, idp.mint({"org_id": "writer", "role": "owner"})) as c:
        ok(query(c, db, "INSERT INTO t VALUES (1)"))
        error_of(c.get(f"/v1/databases/{db}/issuers"), 403, "FORBIDDEN")
        error_of(query(c, "tenant-else", "SELECT 1"), 403, "FORBIDDEN")
    with as_token(node, idp.mint({"org_id": "writer", "role": "boss"})) as c:
        assert ok(c.get(f"/v1/databases/{db}/issuers")) == {"database": db, "issuers": []}


# -- what must fail ----------------------------------------------------------------------------
def test_expired_and_not_yet_valid(node: InProcessNode, admin: httpx.Client,
                                   idp: IdentityProvider) -> None:
    db = make_db(admin, "tenant-time")
    now = int(time.time())
    error_of(select(node, idp.mint({"org_id": "time", "exp": now - 60}), db), 401,
             "TOKEN_EXPIRED")
    ok(select(node, idp.mint({"org_id": "time", "exp": now - 5}), db))  # within the leeway
    error_of(select(node, idp.mint({"org_id": "time", "nbf": now + 120}), db), 401,
             "TOKEN_INVALID")
    error_of(select(node, idp.mint({"org_id": "time", "exp": None}), db), 401,
             "TOKEN_INVALID")


def test_issuer_audience_and_signature(node: InProcessNode, admin: httpx.Client,
                                       idp: IdentityProvider) -> None:
    db = make_db(admin, "tenant-sig")
    error_of(select(node, idp.mint({"org_id": "sig", "iss": "https://stranger.example/"}),
                    db), 401, "ISSUER_NOT_TRUSTED")
    error_of(select(node, idp.mint({"org_id": "sig", "aud": "someone-else"}), db), 401,
             "TOKEN_INVALID")
    ok(select(node, idp.mint({"org_id": "sig", "aud": ["someone-else", idp.audience]}), db))
    forger = IdentityProvider()  # its keys are not the issuer's: the kid lies
    kid = idp.key("RS256").kid
    forged = idp.mint({"org_id": "sig"}, kid=kid, key=forger.key("RS256"))
    error_of(select(node, forged, db), 401, "TOKEN_INVALID")
    good = idp.mint({"org_id": "sig"}, kid=kid)
    head, body, _ = good.split(".")
    error_of(select(node, f"{head}.{body}.{forged.split('.')[2]}", db), 401, "TOKEN_INVALID")


def test_alg_none_and_hs256_keyed_with_the_public_key_fail(
        node: InProcessNode, admin: httpx.Client, idp: IdentityProvider) -> None:
    db = make_db(admin, "tenant-alg")
    claims = idp.claims({"org_id": "alg"})
    for alg in ("RS256", "ES256", "EdDSA"):
        key = idp.key(alg)
        none = compact({"alg": "none", "kid": key.kid}, claims)
        error_of(select(node, none, db), 401, "TOKEN_INVALID")
        for secret in (key.public_pem(), json.dumps(key.jwk()).encode()):
            confused = compact({"alg": "HS256", "kid": key.kid, "typ": "JWT"}, claims,
                               hs256_with(secret))
            error_of(select(node, confused, db), 401, "TOKEN_INVALID")
        lying = compact({"alg": "ES256" if alg != "ES256" else "RS256", "kid": key.kid},
                        claims, lambda data: b"x" * 64)
        error_of(select(node, lying, db), 401, "TOKEN_INVALID")
    ok(select(node, idp.mint({"org_id": "alg"}), db))


def test_a_kid_of_another_issuers_key_is_unknown(
        node: InProcessNode, admin: httpx.Client, idp: IdentityProvider,
        other: IdentityProvider) -> None:
    db = make_db(admin, "tenant-cross")
    theirs = other.key("ES256")
    token = idp.mint({"org_id": "cross"}, key=theirs)  # idp's iss and aud, other's key
    error_of(select(node, token, db), 401, "TOKEN_INVALID")


def test_a_token_never_makes_the_node_fetch_what_it_names(
        node: InProcessNode, admin: httpx.Client, idp: IdentityProvider) -> None:
    db = make_db(admin, "tenant-jku")
    with IdentityProvider() as evil:
        headers = {"jku": evil.jwks_url, "x5u": evil.url + "/cert.pem",
                   "jwk": evil.key("RS256").jwk()}
        ok(select(node, idp.mint({"org_id": "jku"}, headers=headers), db))
        token = evil.mint({"org_id": "jku", "iss": idp.issuer, "aud": idp.audience},
                          headers=headers)
        error_of(select(node, token, db), 401, "TOKEN_INVALID")
        error_of(select(node, evil.mint({"org_id": "jku"}, headers=headers), db), 401,
                 "ISSUER_NOT_TRUSTED")
        assert evil.requests == []


def test_shoal_tokens_work_as_before(node: InProcessNode, admin: httpx.Client) -> None:
    db = make_db(admin)
    _, token = make_token(admin, [db], "read")
    ok(select(node, token, db))
    error_of(select(node, token[:-4] + "AAAA", db), 401, "TOKEN_INVALID")
    error_of(select(node, "not-a-token", db), 401, "TOKEN_INVALID")
    p = principal(node, token)
    assert p.issuer == "shoal" and not p.bound and p.claims is None


# -- a database's own issuers ------------------------------------------------------------------
def test_a_database_trusts_its_own_issuer_for_itself_only(
        node: InProcessNode, admin: httpx.Client) -> None:
    db, elsewhere = make_db(admin), make_db(admin)
    with IdentityProvider(audience="tenant-app") as own:
        _, scoped = make_token(admin, [db], "admin")
        with as_token(node, scoped) as c:
            body = ok(c.put(f"/v1/databases/{db}/issuers", json={"issuers": [
                own.declaration(access={"claim": "role", "map": {"editor": "write"}},
                                rules=False)]}))
            assert body["issuers"][0]["issuer"] == own.issuer
            error_of(c.put(f"/v1/databases/{elsewhere}/issuers", json={"issuers": []}), 403,
                     "FORBIDDEN")
        token = own.mint({"role": "editor"})
        with as_token(node, token) as c:
            ok(query(c, db, "INSERT INTO t VALUES (1)"))
            error_of(query(c, elsewhere, "SELECT 1"), 403, "FORBIDDEN")
        assert principal(node, token).databases == frozenset({db})
        error_of(select(node, own.mint({"role": "viewer"}), db), 403, "FORBIDDEN")
        assert ok(admin.get(f"/v1/databases/{db}/issuers"))["issuers"][0]["audience"] == \
            "tenant-app"
        ok(admin.put(f"/v1/databases/{db}/issuers", json={"issuers": []}))
        error_of(select(node, token, db), 401, "ISSUER_NOT_TRUSTED")


@pytest.mark.parametrize("declared", [
    {"jwks_file": "/etc/passwd"},
    {"jwks_url": "http://127.0.0.1/jwks.json"},
    {"databases": ["someone-else"]},
    {"access": "root"},
    {"leeway": 3600},
    {"surprise": 1},
    {"issuer": "shoal"},
])
def test_a_database_issuer_is_checked(node: InProcessNode, admin: httpx.Client,
                                      declared: dict[str, Any]) -> None:
    db = make_db(admin)
    base = {"issuer": "https://idp.example/", "audience": "a",
            "jwks_url": "https://idp.example/jwks.json", "access": "read"}
    if "jwks_file" in declared:
        base.pop("jwks_url")
    r = admin.put(f"/v1/databases/{db}/issuers", json={"issuers": [base | declared]})
    error_of(r, 400, "INVALID_REQUEST")


# -- keys: unknown kids, rotation, removal ----------------------------------------------------
def trusting(node: InProcessNode, admin: httpx.Client, provider: IdentityProvider,
             **fields: Any) -> str:
    db = make_db(admin)
    ok(admin.put(f"/v1/databases/{db}/issuers", json={"issuers": [
        provider.declaration(access="write", **({"rules": False} | fields))]}))
    return db


def test_an_unknown_kid_reads_the_keys_once_then_not_for_a_while(
        node: InProcessNode, admin: httpx.Client) -> None:
    with IdentityProvider() as own:
        db = trusting(node, admin, own)
        ok(select(node, own.mint(), db))  # the first token waits for the first read
        assert own.fetches == 1
        error_of(select(node, own.mint(kid="nobody"), db), 401, "TOKEN_INVALID")
        assert own.fetches == 2
        error_of(select(node, own.mint(kid="nobody-else"), db), 401, "TOKEN_INVALID")
        error_of(select(node, own.mint(kid="nobody"), db), 401, "TOKEN_INVALID")
        assert own.fetches == 2  # at most once per 30 s per issuer


def test_a_rotated_key_is_read_when_first_seen(node: InProcessNode,
                                               admin: httpx.Client) -> None:
    with IdentityProvider() as own:
        db = trusting(node, admin, own)
        old = own.mint()
        ok(select(node, old, db))
        new_kid = own.rotate("EdDSA")
        ok(select(node, own.mint(kid=new_kid), db))  # one read, in the request
        assert own.fetches == 2


def test_hrana_and_a_key_not_read_yet(node: InProcessNode, admin: httpx.Client) -> None:
    with IdentityProvider() as own:
        db = trusting(node, admin, own)
        with as_token(node, own.mint()) as c:
            r = c.post(f"/db/{db}/v3/pipeline", json={"requests": [
                {"type": "execute", "stmt": {"sql": "SELECT 1"}}, {"type": "close"}]})
            assert r.status_code == 200, r.text
            assert r.json()["results"][0]["type"] == "ok"


# -- revocation --------------------------------------------------------------------------------
def test_revoke_one_token_by_jti_and_by_id(node: InProcessNode, admin: httpx.Client,
                                           idp: IdentityProvider) -> None:
    db = make_db(admin, "tenant-rev")
    leaked, kept = idp.mint({"org_id": "rev", "jti": "leaked-1"}), idp.mint({"org_id": "rev"})
    ok(select(node, leaked, db))
    leaked_id = principal(node, leaked).subject
    body = ok(admin.post("/v1/issuers/revoke", json={"issuer": idp.issuer, "jti": "leaked-1"}))
    assert body["id"] == leaked_id
    error_of(select(node, leaked, db), 401, "TOKEN_REVOKED")
    ok(select(node, kept, db))
    no_jti = idp.mint({"org_id": "rev", "jti": None})
    token_id = principal(node, no_jti).subject
    assert token_id.startswith("ext_")
    _, scoped_admin = make_token(admin, [db], "admin")
    with as_token(node, scoped_admin) as c:
        error_of(c.delete(f"/v1/tokens/{token_id}"), 403, "FORBIDDEN")
        error_of(c.post("/v1/issuers/revoke", json={"issuer": idp.issuer}), 403, "FORBIDDEN")
    assert admin.delete(f"/v1/tokens/{token_id}").status_code == 204
    error_of(select(node, no_jti, db), 401, "TOKEN_REVOKED")
    error_of(admin.post("/v1/issuers/revoke", json={"issuer": "https://nobody/"}), 404,
             "NOT_FOUND")


def test_revoke_a_database_issuer(node: InProcessNode, admin: httpx.Client) -> None:
    with IdentityProvider() as own:
        db = trusting(node, admin, own)
        before = own.mint({"iat": int(time.time()) - 10})
        ok(select(node, before, db))
        _, scoped_admin = make_token(admin, [db], "admin")
        with as_token(node, scoped_admin) as c:
            body = ok(c.post("/v1/issuers/revoke", json={"issuer": own.issuer,
                                                          "database": db}))
        assert "issued_before" in body
        error_of(select(node, before, db), 401, "TOKEN_REVOKED")
        ok(select(node, own.mint({"iat": int(time.time()) + 2}), db))  # issued after


# -- a node whose keys are read again every fraction of a second --------------------------------
def test_a_removed_key_stops_verifying_within_the_refresh_bound(
        tmp_path: Path) -> None:
    with IdentityProvider() as own:
        n = start_node(tmp_path, own.declaration(databases=["app"], access="write"),
                       jwks_refresh=0.3)
        try:
            with n.client() as a:
                make_db(a, "app")
            kid = own.key("ES256").kid
            token = own.mint(kid=kid)
            ok(select(n, token, "app"))
            own.remove_key(kid)
            wait_until(lambda: select(n, token, "app").status_code != 200, 5,
                       "the removed key to stop verifying")
            error_of(select(n, token, "app"), 401, "TOKEN_INVALID")
            ok(select(n, own.mint(alg="RS256"), "app"))

            # an issuer's revocation outlives a restart (the store keeps it)
            ok(n.client().post("/v1/issuers/revoke", json={"issuer": own.issuer}))
            older = own.mint({"iat": int(time.time()) - 5}, alg="RS256")
            error_of(select(n, older, "app"), 401, "TOKEN_REVOKED")
            n.restart()
            error_of(select(n, older, "app"), 401, "TOKEN_REVOKED")
            ok(select(n, own.mint({"iat": int(time.time()) + 2}, alg="RS256"), "app"))
        finally:
            n.stop()
