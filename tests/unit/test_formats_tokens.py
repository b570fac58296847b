"""Tokens, pinned: a token signed with a fixed key at a fixed time is a fixed string (its
claims, their order, the algorithm and the issuer are a format clients and other nodes
read), and every verification outcome, access level and narrowing is written out by hand
(no constant of the module is imported to check itself)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import os
import re
import stat
import time
from pathlib import Path
from types import SimpleNamespace

import jwt
import pytest

from shoal import tokens
from shoal.errors import ShoalError
from shoal.tokens import Principal, TokenAuthority

KEY = "golden-signing-key-0123456789abcdefghij"
ADMIN = "static-admin-token"
NOW = 1700000000.9  # signing time: iat is its whole seconds
FAR = 4102444800  # 2100-01-01: pyjwt (real time) never finds it expired

GOLDEN = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
          "eyJpc3MiOiJzaG9hbCIsImp0aSI6InRva18wMTIzNDU2Nzg5YWJjZGVmIiwiZGJzIjpbIm9yZGVycyIs"
          "ImJpbGxpbmciXSwiYWNjIjoid3JpdGUiLCJpYXQiOjE3MDAwMDAwMDAsImV4cCI6NDEwMjQ0NDgwMH0."
          "PjUPme0fYkt1abMvZ-nflqkO48ph68POpJXX-PT_0Io")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """The module's wall clock, set by the test (pyjwt keeps the real one)."""
    fake = SimpleNamespace(now=NOW)
    monkeypatch.setattr(tokens, "time", SimpleNamespace(time=lambda: fake.now))
    return fake


@pytest.fixture
def authority() -> TokenAuthority:
    return TokenAuthority(KEY, ADMIN, set())


def refused(code: str, fn: object, *args: object) -> str:
    assert callable(fn)
    with pytest.raises(ShoalError) as err:
        fn(*args)
    assert err.value.code == code, err.value.message
    return err.value.message


def part(token: str, i: int) -> bytes:
    piece = token.split(".")[i]
    return base64.urlsafe_b64decode(piece + "=" * (-len(piece) % 4))


def forge(claims: dict[str, object], key: str = KEY, alg: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=alg)


def claims(**over: object) -> dict[str, object]:
    base: dict[str, object] = {"iss": "shoal", "jti": "tok_x", "dbs": ["orders"],
                               "acc": "read", "iat": 1700000000, "exp": FAR}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


# -- the signed form -------------------------------------------------------------------------

def test_a_token_is_a_pinned_string(authority: TokenAuthority, clock: SimpleNamespace) -> None:
    token = authority.sign("tok_0123456789abcdef", ["orders", "billing"], "write", FAR + 0.7)
    assert json.loads(part(token, 0)) == {"alg": "HS256", "typ": "JWT"}
    assert part(token, 1) == (b'{"iss":"shoal","jti":"tok_0123456789abcdef",'
                              b'"dbs":["orders","billing"],"acc":"write","iat":1700000000,'
                              b'"exp":4102444800}')
    assert token == GOLDEN
    signed, _, signature = GOLDEN.rpartition(".")  # HS256 by hand: HMAC-SHA256, base64url
    mac = hmac.new(KEY.encode(), signed.encode(), hashlib.sha256).digest()
    assert signature == base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def test_every_database_is_a_star(authority: TokenAuthority, clock: SimpleNamespace) -> None:
    token = authority.sign("tok_all", None, "admin", FAR)
    assert json.loads(part(token, 1)) == {"iss": "shoal", "jti": "tok_all", "dbs": "*",
                                          "acc": "admin", "iat": 1700000000, "exp": FAR}
    assert authority.verify(token) == Principal("tok_all", None, "admin", float(FAR))


def test_the_pinned_token_verifies(authority: TokenAuthority, clock: SimpleNamespace) -> None:
    p = authority.verify(GOLDEN)
    assert p == Principal("tok_0123456789abcdef", frozenset({"orders", "billing"}), "write",
                          4102444800.0)
    assert type(p.expires_at) is float
    message = refused("TOKEN_INVALID",
                      TokenAuthority("another-key-of-enough-length-0123456789", ADMIN,
                                     set()).verify, GOLDEN)
    assert message == "token is malformed or not signed by this server"


# -- verification outcomes -------------------------------------------------------------------

def test_expiry_is_at_exp_exactly(authority: TokenAuthority, clock: SimpleNamespace) -> None:
    token = authority.sign("tok_e", ["orders"], "read", FAR)
    clock.now = FAR - 1
    assert authority.verify(token).subject == "tok_e"
    clock.now = FAR - 0.001
    assert authority.verify(token).subject == "tok_e"  # cached now: still checked
    clock.now = FAR
    assert refused("TOKEN_EXPIRED", authority.verify, token) == "token has expired"
    fresh = TokenAuthority(KEY, ADMIN, set())  # not cached there either
    assert refused("TOKEN_EXPIRED", fresh.verify, token) == "token has expired"


def test_a_token_expired_by_the_real_clock(authority: TokenAuthority) -> None:
    token = forge(claims(exp=int(time.time()) - 10))
    assert refused("TOKEN_EXPIRED", authority.verify, token) == "token has expired"


def test_revoked_tokens(authority: TokenAuthority, clock: SimpleNamespace) -> None:
    a = authority.sign("tok_a", ["orders"], "read", FAR)
    b = authority.sign("tok_b", ["orders"], "read", FAR)
    authority.verify(a)
    authority.revoke("tok_a")
    assert refused("TOKEN_REVOKED", authority.verify, a) == "token has been revoked"
    assert authority.verify(b).subject == "tok_b"
    assert refused("TOKEN_REVOKED", TokenAuthority(KEY, ADMIN, {"tok_b"}).verify, b) == \
        "token has been revoked"


@pytest.mark.parametrize("token", [
    "", "abc", "a.b", "a.b.c", "a.b.c.d", GOLDEN.rsplit(".", 1)[0],
    GOLDEN.rsplit(".", 1)[0] + ".", GOLDEN[:-1] + ("A" if GOLDEN[-1] != "A" else "B"),
])
def test_wrong_formats_and_signatures(authority: TokenAuthority, clock: SimpleNamespace,
                                      token: str) -> None:
    assert refused("TOKEN_INVALID", authority.verify, token) == \
        "token is malformed or not signed by this server"


@pytest.mark.parametrize("bad", [
    claims(exp=None), claims(jti=None), claims(iss=None), claims(iss="other"),
    claims(iss="Shoal"),
])
def test_required_claims(authority: TokenAuthority, bad: dict[str, object]) -> None:
    assert refused("TOKEN_INVALID", authority.verify, forge(bad)) == \
        "token is malformed or not signed by this server"


@pytest.mark.parametrize("bad", [
    claims(acc=None), claims(acc="owner"), claims(acc="READ"), claims(acc=1),
    claims(dbs=None), claims(dbs="orders"), claims(dbs="**"), claims(dbs={"orders": 1}),
])
def test_malformed_claims(authority: TokenAuthority, bad: dict[str, object]) -> None:
    assert refused("TOKEN_INVALID", authority.verify, forge(bad)) == "token claims are malformed"


@pytest.mark.filterwarnings("ignore:The HMAC key")
def test_other_signing_algorithms_are_refused(authority: TokenAuthority) -> None:
    for alg in ("HS384", "HS512"):
        refused("TOKEN_INVALID", authority.verify, forge(claims(), alg=alg))
    assert authority.verify(forge(claims())).subject == "tok_x"


def test_claims_decode_to_a_principal(authority: TokenAuthority) -> None:
    p = authority.verify(forge(claims(jti="7", dbs=["a", 1, "a"], acc="admin", exp=FAR)))
    assert p == Principal("7", frozenset({"a", "1"}), "admin", float(FAR))
    assert authority.verify(forge(claims(dbs=[]))).databases == frozenset()


# -- authenticate ----------------------------------------------------------------------------

def test_the_authorization_header(authority: TokenAuthority, clock: SimpleNamespace) -> None:
    for header in (f"Bearer {GOLDEN}", f"bearer {GOLDEN}", f"BEARER  {GOLDEN} "):
        assert authority.authenticate(header).subject == "tok_0123456789abcdef"
    for missing in (None, ""):
        assert refused("UNAUTHORIZED", authority.authenticate, missing) == "missing bearer token"
    for header in ("Bearer", "Bearer ", "Bearer   ", "Basic x", GOLDEN, f"Token {GOLDEN}"):
        assert refused("UNAUTHORIZED", authority.authenticate, header) == \
            "Authorization must be 'Bearer <token>'"
    assert refused("TOKEN_INVALID", authority.authenticate, "Bearer x")


def test_the_static_admin_token(authority: TokenAuthority, clock: SimpleNamespace) -> None:
    admin = authority.authenticate(f"Bearer {ADMIN}")
    assert admin == Principal("admin", None, "admin", None)
    authority.revoke("admin")  # the static token is not a token id
    clock.now = 1e12
    assert authority.verify(ADMIN) is admin
    for near in (ADMIN + " ", ADMIN[:-1], ADMIN.upper()):
        refused("TOKEN_INVALID", authority.verify, near)


# -- access levels and scope -----------------------------------------------------------------

LEVELS = ["read", "write", "admin"]


@pytest.mark.parametrize("have", LEVELS)
@pytest.mark.parametrize("want", LEVELS)
def test_levels_are_ordered_read_write_admin(have: str, want: str) -> None:
    allowed = LEVELS.index(have) >= LEVELS.index(want)
    for dbs in (frozenset({"orders"}), None):
        p = Principal("t", dbs, have)
        assert p.can(want) is allowed
        assert p.can(want, "orders") is allowed
        if allowed:
            p.require(want, "orders")
            p.require(want)
        else:
            with pytest.raises(ShoalError) as err:
                p.require(want, "orders")
            assert (err.value.code, err.value.message) == (
                ("READ_ONLY", "token has read access only") if want == "write" else
                ("FORBIDDEN", f"token lacks {want} access"))
            assert err.value.status == 403
    assert Principal("t", None, have).can_write is (have != "read")


def test_a_principal_is_a_frozen_value() -> None:
    p = Principal("t", None, "read")
    assert p.expires_at is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(p, "access", "admin")  # noqa: B010 (the assignment a frozen dataclass refuses)


def test_scope_by_database() -> None:
    scoped = Principal("t", frozenset({"orders"}), "admin")
    assert scoped.can("read", "orders") and not scoped.can("read", "billing")
    with pytest.raises(ShoalError) as err:
        scoped.require("read", "billing")
    assert (err.value.code, err.value.message, err.value.status) == (
        "FORBIDDEN", "token does not grant database 'billing'", 403)
    every = Principal("t", None, "read")
    assert every.can("read", "anything")
    every.require("read", "anything")
    nothing = Principal("t", frozenset(), "admin")
    assert nothing.can("admin") and not nothing.can("read", "orders")
    with pytest.raises(ShoalError) as err:
        Principal("t", frozenset({"orders"}), "read").require("write", "billing")
    assert err.value.message == "token does not grant database 'billing'"  # scope first


# -- narrowing -------------------------------------------------------------------------------

def test_narrowing(authority: TokenAuthority, clock: SimpleNamespace) -> None:
    t = authority.sign("tok_n", ["a", "b", "c"], "write", FAR)
    other = authority.sign("tok_o", ["a", "b"], "write", FAR)
    star = authority.sign("tok_s", None, "write", FAR)
    assert authority.verify(t).databases == frozenset({"a", "b", "c"})  # cached now
    authority.narrow("tok_n", "a")
    assert authority.verify(t).databases == frozenset({"b", "c"})
    authority.narrow("tok_n", "b")
    assert authority.verify(t).databases == frozenset({"c"})
    assert authority.verify(other).databases == frozenset({"a", "b"})
    authority.narrow("tok_s", "a")
    assert authority.verify(star).databases is None
    again = TokenAuthority(KEY, ADMIN, set(), {"tok_n": {"c"}, "tok_o": set()})
    assert again.verify(t).databases == frozenset({"a", "b"})
    assert again.verify(other).databases == frozenset({"a", "b"})
    assert TokenAuthority(KEY, ADMIN, set(), None).verify(t).databases == \
        frozenset({"a", "b", "c"})


# -- the cache -------------------------------------------------------------------------------

def test_the_cache_holds_4096_tokens_and_drops_the_oldest(
        authority: TokenAuthority, clock: SimpleNamespace) -> None:
    first, last = (authority.sign(f"tok_{i}", ["orders"], "read", FAR) for i in range(2))
    authority.verify(first)
    filler = Principal("tok_f", None, "read", float(FAR))
    for i in range(4094):  # 4095 cached tokens: the filler stands for 4094 verified ones
        authority._cache[f"filler{i}"] = filler
    authority.verify(first)  # a hit does not make it younger
    authority.verify(last)
    assert len(authority._cache) == 4096 and list(authority._cache)[-1] == last
    authority.verify(authority.sign("tok_more", ["orders"], "read", FAR))
    assert len(authority._cache) == 4096
    assert first not in authority._cache and "filler0" in authority._cache
    assert last in authority._cache


# -- secrets and ids -------------------------------------------------------------------------

def unused() -> str:
    raise AssertionError("a secret was made though the file exists")


def test_a_secret_file_is_written_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "key"
    assert tokens.read_or_create_secret(path, lambda: "s3cret") == ("s3cret", True)
    assert path.read_bytes() == b"s3cret\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert tokens.read_or_create_secret(path, unused) == ("s3cret", False)
    path.write_text("  padded \n\n")
    assert tokens.read_or_create_secret(path, unused) == ("padded", False)


def test_a_secret_is_on_disk_before_it_is_used(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "key"
    synced: list[bytes] = []
    fsync = os.fsync

    def record(fd: int) -> None:  # what the file holds when it is synced
        synced.append(path.read_bytes())
        fsync(fd)

    monkeypatch.setattr(os, "fsync", record)
    assert tokens.read_or_create_secret(path, lambda: "s3cret") == ("s3cret", True)
    assert synced == [b"s3cret\n"]


def test_a_secret_created_meanwhile_is_read(tmp_path: Path) -> None:
    path = tmp_path / "key"

    def racer() -> str:  # another process writes it between the read and the create
        path.write_text("theirs\n")
        return "mine"

    assert tokens.read_or_create_secret(path, racer) == ("theirs", False)
    assert path.read_text() == "theirs\n"


def test_ids_and_secrets_have_pinned_shapes() -> None:
    assert re.fullmatch(r"tok_[0-9a-f]{16}", tokens.new_token_id())
    secret = tokens.new_secret()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", secret)


# -- fleets: prefixes, branch-bound and provisioning tokens (same claims; ``br`` added) ------

FLEET = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
         "eyJpc3MiOiJzaG9hbCIsImp0aSI6InRva19mbGVldDAwMDAwMDAwMDEiLCJkYnMiOlsidGVuYW50LSoiLCJv"
         "cmRlcnMiXSwiYWNjIjoid3JpdGUiLCJpYXQiOjE3MDAwMDAwMDAsImV4cCI6NDEwMjQ0NDgwMCwiYnIiOiJw"
         "cmV2aWV3LTQyIn0.CrbMvgT3ImcPT9GAm_UqD9f-j9BY1msxNQ4oOn75tG0")
PROVISIONING = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
                "eyJpc3MiOiJzaG9hbCIsImp0aSI6InRva19mbGVldDAwMDAwMDAwMDIiLCJkYnMiOlsidGVuYW50"
                "LSoiXSwiYWNjIjoicHJvdmlzaW9uIiwiaWF0IjoxNzAwMDAwMDAwLCJleHAiOjQxMDI0NDQ4MDB9."
                "y55i6SSXzwAXfrTast5JwC7R4rPGZTASdXO5zhSfWGg")


def test_a_prefix_and_branch_token_is_pinned(authority: TokenAuthority,
                                             clock: SimpleNamespace) -> None:
    token = authority.sign("tok_fleet0000000001", ["tenant-*", "orders"], "write", FAR,
                           "preview-42")
    assert part(token, 1) == (b'{"iss":"shoal","jti":"tok_fleet0000000001",'
                              b'"dbs":["tenant-*","orders"],"acc":"write","iat":1700000000,'
                              b'"exp":4102444800,"br":"preview-42"}')
    assert token == FLEET
    p = authority.verify(FLEET)
    assert p == Principal("tok_fleet0000000001", frozenset({"orders"}), "write", float(FAR),
                          prefixes=frozenset({"tenant-"}), branch="preview-42")
    assert p.reaches("tenant-a") and p.reaches("tenant-") and p.reaches("orders")
    assert not p.reaches("tenant") and not p.reaches("tenantx") and not p.reaches("order")
    assert p.on(None) == "preview-42" and p.on("preview-42") == "preview-42"
    assert refused("BRANCH_NOT_GRANTED", p.on, "main") == \
        "token is bound to branch 'preview-42', not 'main'"
    assert p.sole is None  # a prefix: no one database to default to


def test_a_provisioning_token_is_pinned(authority: TokenAuthority,
                                        clock: SimpleNamespace) -> None:
    token = authority.sign("tok_fleet0000000002", ["tenant-*"], "provision", FAR)
    assert part(token, 1) == (b'{"iss":"shoal","jti":"tok_fleet0000000002",'
                              b'"dbs":["tenant-*"],"acc":"provision","iat":1700000000,'
                              b'"exp":4102444800}')
    assert token == PROVISIONING
    p = authority.verify(PROVISIONING)
    assert p == Principal("tok_fleet0000000002", frozenset(), "provision", float(FAR),
                          prefixes=frozenset({"tenant-"}), provision=True)
    for level in LEVELS:  # below every level: it holds none of them
        assert not p.can(level) and not p.can(level, "tenant-a")
        assert refused("PROVISION_ONLY", p.require, level, "tenant-a").startswith(
            "a provisioning token")
    assert not p.can_write
    assert p.on(None) == "main"


def test_tokens_of_before_are_unbound_and_unprefixed(authority: TokenAuthority,
                                                     clock: SimpleNamespace) -> None:
    p = authority.verify(GOLDEN)
    assert (p.prefixes, p.branch, p.provision) == (frozenset(), None, False)
    assert p.on(None) == "main" and p.on("any") == "any"
    assert Principal("t", frozenset({"orders"}), "read").sole == "orders"
    assert Principal("t", None, "read").sole is None
    assert Principal("t", frozenset({"a", "b"}), "read").sole is None


@pytest.mark.parametrize("bad", [
    claims(dbs=["*"]), claims(dbs=["tenant-*", "*"]), claims(br=7), claims(br=["main"]),
    claims(br="main", acc="admin"), claims(br="main", acc="provision"),
])
def test_malformed_fleet_claims(authority: TokenAuthority, bad: dict[str, object]) -> None:
    assert refused("TOKEN_INVALID", authority.verify, forge(bad)) == "token claims are malformed"


def test_narrowing_leaves_prefixes(authority: TokenAuthority, clock: SimpleNamespace) -> None:
    authority.narrow("tok_fleet0000000001", "orders")
    authority.narrow("tok_fleet0000000001", "tenant-a")
    p = authority.verify(FLEET)
    assert p.databases == frozenset() and p.prefixes == frozenset({"tenant-"})
    assert p.reaches("tenant-a")  # a prefix names no database: a new one is in its reach
