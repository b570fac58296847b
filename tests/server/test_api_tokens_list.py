"""Native API: ``GET /v1/tokens`` — who may list, what a listing shows (never a secret),
the filters (database, include=expired,revoked), pagination, and narrowed scopes; on a
node with a store (its token records are the truth) and on one without (catalog.db)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.integration.api_support import error_of, make_token, ok, wait_until
from tests.support.server import ServerProcess

FIELDS = {"id", "databases", "narrowed", "access", "created_by", "created_at", "expires_at",
          "expired", "revoked", "revoked_at", "branch"}


@pytest.fixture(params=["store", "none"])
def node(request: pytest.FixtureRequest,
         start_server: Callable[..., ServerProcess]) -> Iterator[ServerProcess]:
    """A fresh node (its token list is this test's alone): file store, or none."""
    yield start_server(store="none") if request.param == "none" else start_server()


@pytest.fixture
def admin(node: ServerProcess) -> Iterator[httpx.Client]:
    with node.client() as c:
        yield c


def listing(http: httpx.Client, **params: Any) -> dict[str, Any]:
    page: dict[str, Any] = ok(http.get("/v1/tokens", params=params))
    assert set(page) == {"tokens", "next_cursor"}
    for tok in page["tokens"]:
        assert set(tok) == FIELDS, tok
    return page


def ids(http: httpx.Client, **params: Any) -> list[str]:
    return [t["id"] for t in listing(http, **params)["tokens"]]


def create_dbs(admin: httpx.Client, *names: str) -> None:
    for name in names:
        ok(admin.post("/v1/databases", json={"name": name}), 201)


def test_list_shows_fields_and_never_a_secret(node: ServerProcess,
                                              admin: httpx.Client) -> None:
    create_dbs(admin, "a", "b")
    made = ok(admin.post("/v1/tokens", json={"databases": ["a", "b"], "access": "write",
                                              "expires_in": 600}), 201)
    star_id, star = make_token(admin, "*", "read")
    r = admin.get("/v1/tokens")
    assert made["token"] not in r.text and star not in r.text
    assert node.admin_token not in r.text
    page = listing(admin)
    assert page["next_cursor"] is None
    by_id = {t["id"]: t for t in page["tokens"]}
    assert set(by_id) == {made["id"], star_id}
    assert [t["id"] for t in page["tokens"]] == sorted(by_id)  # id order
    tok = by_id[made["id"]]
    assert tok["databases"] == ["a", "b"] and tok["narrowed"] == []
    assert tok["access"] == "write" and tok["created_by"] == "admin"
    assert tok["expires_at"] == made["expires_at"]
    assert tok["created_at"].endswith("Z") and tok["created_at"] < tok["expires_at"]
    assert tok["expired"] is False and tok["revoked"] is False and tok["revoked_at"] is None
    assert by_id[star_id]["databases"] == "*"


def test_non_admin_tokens_are_refused(node: ServerProcess, admin: httpx.Client) -> None:
    create_dbs(admin, "a")
    for access in ("read", "write"):
        for scope in ("*", ["a"]):
            _, token = make_token(admin, scope, access)
            with node.client(token) as c:
                error_of(c.get("/v1/tokens"), 403, "FORBIDDEN")
    with node.client("") as c:
        error_of(c.get("/v1/tokens"), 401, "UNAUTHORIZED")


def test_scoped_admin_sees_the_tokens_it_could_revoke(node: ServerProcess,
                                                      admin: httpx.Client) -> None:
    create_dbs(admin, "a", "b", "c")
    tenant_id, tenant = make_token(admin, ["a", "b"], "admin")
    root_a, _ = make_token(admin, ["a"], "read")  # made by the root, within the tenant's
    make_token(admin, ["a", "c"], "read")  # reaches beyond the tenant's: hidden
    make_token(admin, "*", "read")  # every database: hidden
    with node.client(tenant) as c:
        own = ok(c.post("/v1/tokens", json={"databases": ["b"], "access": "write"}), 201)
        seen = listing(c)["tokens"]
        assert {t["id"] for t in seen} == {tenant_id, root_a, own["id"]}
        assert {t["id"]: t["created_by"] for t in seen}[own["id"]] == tenant_id
        error_of(c.get("/v1/tokens", params={"database": "c"}), 403, "FORBIDDEN")
        assert set(ids(c, database="b")) == {tenant_id, own["id"]}
    assert len(ids(admin)) == 5  # the root sees every one (and the tenant's)


def test_filters_database_expired_revoked(node: ServerProcess, admin: httpx.Client) -> None:
    create_dbs(admin, "a", "b")
    live_a, _ = make_token(admin, ["a"], "read")
    live_b, _ = make_token(admin, ["b"], "read")
    star, _ = make_token(admin, "*", "write")
    short = ok(admin.post("/v1/tokens", json={"databases": ["a"], "access": "read",
                                               "expires_in": 1}), 201)["id"]
    gone, _ = make_token(admin, ["a"], "read")
    before = time.time()
    assert admin.delete(f"/v1/tokens/{gone}").status_code == 204
    wait_until(lambda: short not in ids(admin), 5, "the 1 s token to expire")

    assert set(ids(admin)) == {live_a, live_b, star}
    assert set(ids(admin, database="a")) == {live_a, star}
    assert set(ids(admin, include="expired")) == {live_a, live_b, star, short}
    assert set(ids(admin, include="revoked")) == {live_a, live_b, star, gone}
    every = {live_a, live_b, star, short, gone}
    assert set(ids(admin, include="expired,revoked")) == every
    assert set(ids(admin, include="all")) == every
    assert set(ids(admin, include=["expired", "revoked"])) == every  # repeated works too
    assert set(ids(admin, include="all", database="a")) == {live_a, star, short, gone}
    by_id = {t["id"]: t for t in listing(admin, include="all")["tokens"]}
    assert by_id[short]["expired"] is True and by_id[short]["revoked"] is False
    assert by_id[gone]["revoked"] is True and by_id[gone]["expired"] is False
    assert by_id[gone]["revoked_at"] is not None
    revoked_at = datetime.fromisoformat(by_id[gone]["revoked_at"].replace("Z", "+00:00"))
    assert before - 1 <= revoked_at.timestamp() <= time.time()

    error_of(admin.get("/v1/tokens", params={"include": "secrets"}), 400, "INVALID_REQUEST")
    error_of(admin.get("/v1/tokens", params={"database": "Not A Name"}), 400, "INVALID_NAME")


def test_pagination(node: ServerProcess, admin: httpx.Client) -> None:
    create_dbs(admin, "a")
    made = sorted(make_token(admin, ["a"], "read")[0] for _ in range(7))
    gone = made[3]
    assert admin.delete(f"/v1/tokens/{gone}").status_code == 204
    live = [t for t in made if t != gone]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = listing(admin, **params)
        assert len(page["tokens"]) <= 2
        seen += [t["id"] for t in page["tokens"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == live and pages == 3
    assert ids(admin, limit=1000) == live
    assert ids(admin, include="revoked", cursor=made[2], limit=2) == made[3:5]
    for bad in ("0", "1001", "x", "-1"):
        error_of(admin.get("/v1/tokens", params={"limit": bad}), 400, "INVALID_REQUEST")
    error_of(admin.get("/v1/tokens", params={"cursor": "../x"}), 400, "INVALID_REQUEST")


def test_narrowed_scope_is_shown(node: ServerProcess, admin: httpx.Client) -> None:
    """A token given a database that was deleted (and, with a store, made anew under the
    same name) no longer reaches it: the listing says so."""
    create_dbs(admin, "a", "b")
    both, _ = make_token(admin, ["a", "b"], "read")
    assert admin.delete("/v1/databases/a").status_code == 204
    create_dbs(admin, "a")  # a new database: not the one `both` was given
    tok = {t["id"]: t for t in listing(admin)["tokens"]}[both]
    assert tok["databases"] == ["b"] and tok["narrowed"] == ["a"]
    assert both not in ids(admin, database="a")
    assert both in ids(admin, database="b")
