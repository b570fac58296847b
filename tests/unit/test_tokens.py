"""Bearer tokens: signing, verification failures, revocation and Principal scope checks."""

from __future__ import annotations

import base64
import json
import stat
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jwt
import pytest

from shoal import tokens
from shoal.errors import ShoalError
from shoal.tokens import Principal, TokenAuthority

KEY = "k" * 43
ADMIN = "admin-secret-token"


@pytest.fixture
def authority() -> TokenAuthority:
    return TokenAuthority(KEY, ADMIN, set())


def expect(code: str, fn: Any, *args: Any) -> ShoalError:
    with pytest.raises(ShoalError) as info:
        fn(*args)
    assert info.value.code == code, info.value.message
    assert info.value.status == 401
    return info.value


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"iss": "shoal", "jti": "tok_1", "dbs": ["orders"], "acc": "write",
                            "iat": now, "exp": now + 60}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


# -- sign / verify ---------------------------------------------------------------------------


def test_sign_and_verify(authority: TokenAuthority) -> None:
    exp = time.time() + 60
    token = authority.sign("tok_a", ["orders", "billing"], "read", exp)
    p = authority.verify(token)
    assert p == Principal("tok_a", frozenset({"orders", "billing"}), "read", float(int(exp)))
    assert authority.authenticate(f"Bearer {token}") == p
    assert authority.authenticate(f"bearer  {token} ") == p


def test_star_means_every_database(authority: TokenAuthority) -> None:
    p = authority.verify(authority.sign("tok_b", None, "admin", time.time() + 60))
    assert p.databases is None
    assert p.can("admin", "anything")


def test_static_admin_token(authority: TokenAuthority) -> None:
    p = authority.authenticate("Bearer " + ADMIN)
    assert p is authority.admin
    assert p.access == "admin" and p.databases is None
    expect("TOKEN_INVALID", authority.verify, ADMIN + "x")
    expect("TOKEN_INVALID", authority.verify, ADMIN[:-1])


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Bearer    ", "Basic abc",
                                    "Token abc", ADMIN])
def test_missing_or_malformed_header(authority: TokenAuthority, header: str | None) -> None:
    expect("UNAUTHORIZED", authority.authenticate, header)


@pytest.mark.parametrize("token", ["abc", "a.b.c", "...", "eyJ.eyJ.sig", "x" * 500])
def test_garbage_is_invalid(authority: TokenAuthority, token: str) -> None:
    expect("TOKEN_INVALID", authority.verify, token)


def test_expired(authority: TokenAuthority) -> None:
    token = authority.sign("tok_old", ["orders"], "write", time.time() - 5)
    expect("TOKEN_EXPIRED", authority.verify, token)
    expect("TOKEN_EXPIRED", authority.authenticate, "Bearer " + token)


def test_expiry_applies_to_a_cached_token(authority: TokenAuthority,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    token = authority.sign("tok_c", ["orders"], "write", time.time() + 30)
    assert authority.verify(token).subject == "tok_c"  # now cached
    later = time.time() + 31
    monkeypatch.setattr(tokens, "time", SimpleNamespace(time=lambda: later))
    expect("TOKEN_EXPIRED", authority.verify, token)


def test_forged_with_another_key(authority: TokenAuthority) -> None:
    other = TokenAuthority("another-key-" + "z" * 32, ADMIN, set())
    forged = other.sign("tok_f", None, "admin", time.time() + 60)
    expect("TOKEN_INVALID", authority.verify, forged)
    guessed = "a-guessed-key-" + "g" * 40
    forged2 = jwt.encode(claims(acc="admin", dbs="*"), guessed, algorithm="HS256")
    expect("TOKEN_INVALID", authority.verify, forged2)


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def test_tampered_payload(authority: TokenAuthority) -> None:
    token = authority.sign("tok_t", ["orders"], "read", time.time() + 60)
    header, payload, sig = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["acc"] = "admin"
    data["dbs"] = "*"
    expect("TOKEN_INVALID", authority.verify, f"{header}.{_b64(data)}.{sig}")
    # flipping one signature character breaks it too
    bad_sig = ("A" if sig[0] != "A" else "B") + sig[1:]
    expect("TOKEN_INVALID", authority.verify, f"{header}.{payload}.{bad_sig}")


def test_alg_none_is_refused(authority: TokenAuthority) -> None:
    body = claims(acc="admin", dbs="*")
    unsigned = jwt.encode(body, "", algorithm="none")
    expect("TOKEN_INVALID", authority.verify, unsigned)
    handmade = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(body)}."
    expect("TOKEN_INVALID", authority.verify, handmade)


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_other_algorithms_with_the_right_key_are_refused(authority: TokenAuthority) -> None:
    token = jwt.encode(claims(), KEY, algorithm="HS512")
    expect("TOKEN_INVALID", authority.verify, token)


@pytest.mark.parametrize(
    "over",  # made into claims when the test runs: "exp" is a minute from then
    [
        {"iss": "someone-else"},
        {"iss": None},
        {"jti": None},
        {"exp": None},
        {"acc": "root"},
        {"acc": None},
        {"dbs": "orders"},
        {"dbs": None},
        {"dbs": {"orders": 1}},
    ],
)
def test_claims_must_be_complete_and_well_formed(authority: TokenAuthority,
                                                  over: dict[str, Any]) -> None:
    body = claims(**over)
    expect("TOKEN_INVALID", authority.verify, jwt.encode(body, KEY, algorithm="HS256"))


def test_revoked_at_once_even_when_cached(authority: TokenAuthority) -> None:
    token = authority.sign("tok_r", ["orders"], "write", time.time() + 60)
    assert authority.verify(token).subject == "tok_r"
    authority.revoke("tok_r")
    expect("TOKEN_REVOKED", authority.verify, token)
    # a fresh authority built from the catalog's revoked ids refuses it too
    again = TokenAuthority(KEY, ADMIN, {"tok_r"})
    expect("TOKEN_REVOKED", again.verify, token)


def test_cache_is_bounded(authority: TokenAuthority, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TokenAuthority, "CACHE_SIZE", 3)
    issued = [authority.sign(f"tok_{i}", ["orders"], "read", time.time() + 60)
              for i in range(10)]
    for t in issued:
        authority.verify(t)
    assert len(authority._cache) == 3
    assert authority.verify(issued[0]).subject == "tok_0"


# -- Principal scope -------------------------------------------------------------------------

READ = Principal("r", frozenset({"orders"}), "read")
WRITE = Principal("w", frozenset({"orders"}), "write")
ADMIN_ORDERS = Principal("a", frozenset({"orders"}), "admin")
ALL_WRITE = Principal("aw", None, "write")


@pytest.mark.parametrize(
    ("principal", "access", "database", "allowed"),
    [
        (READ, "read", "orders", True),
        (READ, "write", "orders", False),
        (READ, "admin", "orders", False),
        (READ, "read", "billing", False),
        (READ, "read", None, True),
        (WRITE, "read", "orders", True),
        (WRITE, "write", "orders", True),
        (WRITE, "admin", "orders", False),
        (WRITE, "write", "billing", False),
        (ADMIN_ORDERS, "admin", "orders", True),
        (ADMIN_ORDERS, "read", "billing", False),
        (ALL_WRITE, "write", "anything", True),
        (ALL_WRITE, "admin", "anything", False),
    ],
)
def test_can(principal: Principal, access: str, database: str | None, allowed: bool) -> None:
    assert principal.can(access, database) is allowed
    if allowed:
        principal.require(access, database)
    else:
        with pytest.raises(ShoalError) as info:
            principal.require(access, database)
        assert info.value.status == 403


def test_require_codes() -> None:
    with pytest.raises(ShoalError) as info:
        READ.require("write", "orders")
    assert info.value.code == "READ_ONLY"
    with pytest.raises(ShoalError) as info:
        WRITE.require("admin", "orders")
    assert info.value.code == "FORBIDDEN"
    with pytest.raises(ShoalError) as info:
        ADMIN_ORDERS.require("read", "billing")
    assert info.value.code == "FORBIDDEN"
    # a wrong database is FORBIDDEN even when the access level is also too low
    with pytest.raises(ShoalError) as info:
        READ.require("write", "billing")
    assert info.value.code == "FORBIDDEN"


def test_can_write() -> None:
    assert not READ.can_write
    assert WRITE.can_write
    assert ADMIN_ORDERS.can_write


# -- secrets on disk -------------------------------------------------------------------------


def test_secret_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "signing-key"
    value, created = tokens.read_or_create_secret(path, tokens.new_secret)
    assert created
    assert len(value) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, created_again = tokens.read_or_create_secret(path, tokens.new_secret)
    assert (again, created_again) == (value, False)


def test_new_ids_and_secrets_are_unique() -> None:
    assert len({tokens.new_token_id() for _ in range(100)}) == 100
    assert len({tokens.new_secret() for _ in range(100)}) == 100
