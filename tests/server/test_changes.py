"""The change feed as JSON pages (``GET /v1/databases/{db}/changes``), in process: every
committed row change once, in order, full rows, none of rolled-back work; cursors that
resume exactly and read the database as bookmarks; filters; access; bad input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.integration.api_support import error_of, make_token, ok, query
from tests.support.server import ServerProcess


def page(client: httpx.Client, db: str, since: str | None = None, *, wait: float = 5,
         branch: str | None = None, **params: Any) -> dict[str, Any]:
    path = f"/v1/databases/{db}" + (f"/branches/{branch}" if branch else "") + "/changes"
    args = {"wait": wait, **params} | ({"since": since} if since is not None else {})
    return ok(client.get(path, params=args, timeout=30))  # type: ignore[no-any-return]


def follow(client: httpx.Client, db: str, since: str, count: int,
           **params: Any) -> tuple[list[dict[str, Any]], str]:
    """At least ``count`` changes from ``since`` on, page by page: (changes, last cursor)."""
    out: list[dict[str, Any]] = []
    empty = 0
    while len(out) < count and empty < 3:
        got = page(client, db, since, **params)
        out += got["changes"]
        empty = 0 if got["changes"] else empty + 1
        since = got["cursor"]
    return out, since


def brief(changes: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(c["table"], c["op"], c["key"]) for c in changes]


def by_commit(changes: list[dict[str, Any]]) -> list[list[tuple[Any, ...]]]:
    """Each commit's changes, sorted (SQLite's session groups a commit's by table)."""
    out: dict[int, list[tuple[Any, ...]]] = {}
    for c in changes:
        out.setdefault(c["txid"], []).append((c["table"], c["op"], c["key"]))
    return [sorted(v) for _, v in sorted(out.items())]


@pytest.fixture
def fed(admin: httpx.Client, new_db: Callable[[], str]) -> tuple[str, str]:
    """A database with tables (a trigger, a cascading foreign key), and the feed's cursor
    right after their creation."""
    db = new_db()
    ok(query(admin, db,
             "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, data BLOB, big INTEGER)",
             "CREATE TABLE posts(id INTEGER PRIMARY KEY, user_id INTEGER "
             "REFERENCES users(id) ON DELETE CASCADE, title TEXT)",
             "CREATE TABLE audit(n INTEGER PRIMARY KEY, what TEXT)",
             "CREATE TRIGGER users_audit AFTER INSERT ON users BEGIN "
             "INSERT INTO audit(what) VALUES ('user ' || new.id); END"))
    return db, page(admin, db, wait=0)["cursor"]


def test_every_committed_change_in_order_with_full_rows(
        admin: httpx.Client, fed: tuple[str, str]) -> None:
    db, start = fed
    ok(query(admin, db, {"sql": "INSERT INTO users VALUES (1, 'ann', ?, ?)",
                         "args": [{"base64": "AAEC"}, {"integer": "9007199254740993"}]}))
    ok(query(admin, db, "INSERT INTO posts VALUES (10, 1, 'hello')",
             "UPDATE users SET name = 'anne' WHERE id = 1"))
    ok(query(admin, db, "PRAGMA foreign_keys = ON", "DELETE FROM users WHERE id = 1"))
    changes, _ = follow(admin, db, start, 6)
    # commit order; within a commit the changes come grouped by table (SQLite's session)
    assert by_commit(changes) == [
        [("audit", "insert", [1]), ("users", "insert", [1])],  # the trigger's row too
        [("posts", "insert", [10]), ("users", "update", [1])],
        [("posts", "delete", [10]), ("users", "delete", [1])],  # the cascade's delete too
    ]
    first = changes[0] if changes[0]["table"] == "users" else changes[1]
    assert first["new"] == {"id": 1, "name": "ann", "data": {"base64": "AAEC"},
                            "big": {"integer": "9007199254740993"}}
    assert first["old"] is None
    update = next(c for c in changes if c["op"] == "update")
    assert update["old"]["name"] == "ann" and update["new"]["name"] == "anne"
    assert update["new"]["data"] == {"base64": "AAEC"}  # unchanged columns are whole too
    delete = next(c for c in changes if c["op"] == "delete" and c["table"] == "users")
    assert delete["new"] is None and delete["old"]["name"] == "anne"
    txids = [c["txid"] for c in changes]
    assert txids == sorted(txids)
    assert all(c["at"].endswith("Z") for c in changes)


def test_rolled_back_work_never_appears(admin: httpx.Client, fed: tuple[str, str]) -> None:
    db, start = fed
    error_of(query(admin, db, "INSERT INTO users(id) VALUES (2)",
                   "INSERT INTO users(id) VALUES (2)"), 400, "SQLITE_CONSTRAINT")
    tx = ok(admin.post(f"/v1/databases/{db}/transactions", json={}), 201)["id"]
    ok(admin.post(f"/v1/databases/{db}/transactions/{tx}/query",
                  json={"statements": ["INSERT INTO users(id) VALUES (3)"]}))
    ok(admin.post(f"/v1/databases/{db}/transactions/{tx}/rollback"))
    ok(query(admin, db, "INSERT INTO users(id, name) VALUES (4, 'kept')"))
    changes, _ = follow(admin, db, start, 2)
    assert by_commit(changes) == [[("audit", "insert", [1]), ("users", "insert", [4])]]


def test_an_interactive_transaction_is_one_commit(admin: httpx.Client,
                                                  fed: tuple[str, str]) -> None:
    db, start = fed
    tx = ok(admin.post(f"/v1/databases/{db}/transactions", json={}), 201)["id"]
    for i in (5, 6):
        ok(admin.post(f"/v1/databases/{db}/transactions/{tx}/query",
                      json={"statements": [f"INSERT INTO posts(id, title) VALUES ({i}, 't')"]}))
    ok(admin.post(f"/v1/databases/{db}/transactions/{tx}/commit"))
    changes, _ = follow(admin, db, start, 2, table="posts")
    assert brief(changes) == [("posts", "insert", [5]), ("posts", "insert", [6])]
    assert changes[0]["txid"] == changes[1]["txid"]


def test_pages_resume_exactly_and_the_cursor_reads_the_database(
        admin: httpx.Client, fed: tuple[str, str]) -> None:
    db, start = fed
    ok(query(admin, db, *(f"INSERT INTO posts(id, title) VALUES ({i}, 'p{i}')"
                          for i in range(1, 8))))
    ok(query(admin, db, "DELETE FROM posts WHERE id > 4"))
    seen: list[tuple[Any, ...]] = []
    since = start
    for _ in range(20):
        got = page(admin, db, since, limit=3, table="posts")
        assert len(got["changes"]) <= 3
        if not got["changes"]:
            break
        seen += brief(got["changes"])
        since = got["cursor"]
    assert seen == [("posts", "insert", [i]) for i in range(1, 8)] + \
        [("posts", "delete", [i]) for i in range(5, 8)]
    assert page(admin, db, since, wait=0)["changes"] == []
    # a cursor is a bookmark: the read sees at least that commit
    got = ok(admin.post(f"/v1/databases/{db}/query",
                        json={"statements": ["SELECT count(*) FROM posts"], "bookmark": since}))
    assert got["results"][0]["rows"] == [[4]]


def test_filters_by_table_and_op(admin: httpx.Client, fed: tuple[str, str]) -> None:
    db, start = fed
    ok(query(admin, db, "INSERT INTO posts(id) VALUES (1)", "INSERT INTO users(id) VALUES (1)"))
    ok(query(admin, db, "DELETE FROM posts WHERE id = 1"))  # (in the same commit: no change)
    changes, _ = follow(admin, db, start, 1, op="delete")
    assert brief(changes) == [("posts", "delete", [1])]
    changes, _ = follow(admin, db, start, 2, table="users,audit")
    assert sorted(brief(changes)) == [("audit", "insert", [1]), ("users", "insert", [1])]
    filtered = page(admin, db, start, op="update", wait=0)
    assert filtered["changes"] == []
    assert filtered["cursor"] != start  # it moved past what it dropped


def test_a_wait_returns_at_the_first_change(admin: httpx.Client, fed: tuple[str, str],
                                            server: ServerProcess) -> None:
    import threading
    db, start = fed
    got: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: got.append(page(admin, db, start, wait=20)))
    reader.start()
    ok(query(admin, db, "INSERT INTO posts(id) VALUES (77)"))
    reader.join(25)
    assert got and brief(got[0]["changes"]) == [("posts", "insert", [77])]


def test_branches_have_their_own_feed(admin: httpx.Client, fed: tuple[str, str]) -> None:
    db, _ = fed
    ok(admin.post(f"/v1/databases/{db}/branches", json={"name": "dev"}), 201)
    start = page(admin, db, branch="dev", wait=0)["cursor"]
    ok(admin.post(f"/v1/databases/{db}/branches/dev/query",
                  json={"statements": ["INSERT INTO posts(id) VALUES (9)"]}))
    changes, _ = follow(admin, db, start, 1, branch="dev")
    assert brief(changes) == [("posts", "insert", [9])]
    error_of(admin.get(f"/v1/databases/{db}/changes", params={"since": start}), 400,
             "INVALID_REQUEST")  # dev's cursor on main


def test_a_restore_ends_the_old_cursors(admin: httpx.Client, fed: tuple[str, str]) -> None:
    db, start = fed
    kept = ok(query(admin, db, "INSERT INTO posts(id) VALUES (1)"))["meta"]["bookmark"]
    ok(query(admin, db, "INSERT INTO posts(id) VALUES (3)"))
    cursor = follow(admin, db, start, 2)[1]
    ok(admin.post(f"/v1/databases/{db}/restore", json={"bookmark": kept}))
    err = error_of(admin.get(f"/v1/databases/{db}/changes", params={"since": cursor}), 410,
                   "CURSOR_EXPIRED")
    fresh = err["earliest"]
    ok(query(admin, db, "INSERT INTO posts(id) VALUES (2)"))
    assert brief(follow(admin, db, fresh, 1)[0]) == [("posts", "insert", [2])]


def test_access_and_bad_input(admin: httpx.Client, fed: tuple[str, str],
                              new_db: Callable[[], str], server: ServerProcess) -> None:
    db, start = fed
    other = new_db()
    _, reader = make_token(admin, [db], "read")
    with server.client(reader) as c:
        assert page(c, db, start, wait=0)["cursor"]
        error_of(c.get(f"/v1/databases/{other}/changes"), 403, "FORBIDDEN")
    for params, why in (({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"),
                        ({"wait": "-1"}, "wait"), ({"wait": "x"}, "wait"),
                        ({"op": "upsert"}, "op"), ({"since": "%%%"}, "bookmark")):
        err = error_of(admin.get(f"/v1/databases/{db}/changes", params=params), 400,
                       "INVALID_REQUEST")
        assert why in err["message"]
    error_of(admin.get(f"/v1/databases/{other}/changes", params={"since": start}), 400,
             "INVALID_REQUEST")
    error_of(admin.get("/v1/databases/nosuch/changes"), 404, "DATABASE_NOT_FOUND")
    error_of(admin.get(f"/v1/databases/{db}/branches/nosuch/changes"), 404,
             "BRANCH_NOT_FOUND")


def test_a_page_from_a_commits_last_change_waits_for_the_next_commit(
        admin: httpx.Client, fed: tuple[str, str]) -> None:
    import time
    db, start = fed
    ok(query(admin, db, "INSERT INTO posts(id) VALUES (1)", "INSERT INTO posts(id) VALUES (2)"))
    changes, _ = follow(admin, db, start, 2)
    last = changes[-1]["cursor"]  # inside the commit: its last change
    began = time.monotonic()
    got = page(admin, db, last, wait=1.5)
    assert got["changes"] == [] and time.monotonic() - began >= 1.4  # a real long poll
    assert got["cursor"] != last  # now past the whole commit


def test_a_filtered_long_poll_waits_past_what_it_drops(admin: httpx.Client,
                                                       fed: tuple[str, str]) -> None:
    import threading
    import time
    db, start = fed
    caught = page(admin, db, start, wait=0)["cursor"]
    got: list[dict[str, Any]] = []
    began = time.monotonic()
    reader = threading.Thread(target=lambda: got.append(
        page(admin, db, caught, wait=3, op="delete")))
    reader.start()
    ok(query(admin, db, "INSERT INTO posts(id) VALUES (5)"))  # not a delete: no answer yet
    time.sleep(1.0)
    ok(query(admin, db, "DELETE FROM posts WHERE id = 5"))
    reader.join(10)
    assert got and brief(got[0]["changes"]) == [("posts", "delete", [5])]
    assert time.monotonic() - began >= 1.0


def test_a_feed_from_a_time(admin: httpx.Client, fed: tuple[str, str]) -> None:
    import time
    from datetime import UTC, datetime
    db, start = fed
    ok(query(admin, db, "INSERT INTO posts(id) VALUES (1)"))
    time.sleep(0.3)
    between = datetime.now(UTC).isoformat()
    time.sleep(0.3)
    ok(query(admin, db, "INSERT INTO posts(id) VALUES (2)"))
    follow(admin, db, start, 2)  # both durable
    assert brief(follow(admin, db, between, 1)[0]) == [("posts", "insert", [2])]
    early = follow(admin, db, "2001-01-01T00:00:00Z", 2, table="posts")[0]
    assert brief(early) == [("posts", "insert", [1]), ("posts", "insert", [2])]
    error_of(admin.get(f"/v1/databases/{db}/changes", params={"since": "2026-13-45"}), 400,
             "INVALID_REQUEST")


@pytest.mark.parametrize("feed_sync, synced", [("os", False), ("commit", True)])
def test_the_spool_is_synced_with_each_commit_only_when_asked(
        start_server: Callable[..., ServerProcess], monkeypatch: pytest.MonkeyPatch,
        feed_sync: str, synced: bool) -> None:
    """feed_sync = "commit": every commit with changes also syncs the spool; "os" (the
    default) leaves that to the OS (written before the COMMIT all the same)."""
    from shoal.feed.spool import Spool
    calls: list[int] = []
    real = Spool.sync
    monkeypatch.setattr(Spool, "sync", lambda self: calls.append(1) or real(self))
    node = start_server(feed_sync=feed_sync)
    with node.client() as client:
        ok(client.post("/v1/databases", json={"name": "s"}), 201)
        ok(query(client, "s", "CREATE TABLE t(id INTEGER PRIMARY KEY)"))
        before = len(calls)
        for n in range(3):
            ok(query(client, "s", f"INSERT INTO t VALUES ({n})"))
        assert (len(calls) - before >= 3) is synced, calls


def test_a_table_may_keep_no_old_rows(start_server: Callable[..., ServerProcess]) -> None:
    """PUT .../feed {"tables_without_old"}: from the next commit on, that table's updates
    and deletes come without ``old``; the setting is the database's (it outlives a
    restart); reading it takes read access, changing it admin."""
    node = start_server()
    with node.client() as client:
        ok(client.post("/v1/databases", json={"name": "o"}), 201)
        start = ok(query(client, "o", "CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT)",
                         "CREATE TABLE posts(id INTEGER PRIMARY KEY, title TEXT)",
                         "INSERT INTO users VALUES (1, 'a@x')",
                         "INSERT INTO posts VALUES (1, 'p')"))["meta"]["bookmark"]
        assert ok(client.put("/v1/databases/o/feed", json={"tables_without_old": ["users"]})
                  ) == {"database": "o", "tables_without_old": ["users"]}
        ok(query(client, "o", "UPDATE users SET email = 'b@x'", "UPDATE posts SET title = 'q'"))
        ok(query(client, "o", "DELETE FROM users", "DELETE FROM posts"))
        changes, at = follow(client, "o", start, 4)
        old = {(c["table"], c["op"]): c["old"] for c in changes}
        assert old == {("users", "update"): None, ("users", "delete"): None,
                       ("posts", "update"): {"id": 1, "title": "p"},
                       ("posts", "delete"): {"id": 1, "title": "q"}}
        assert [c["new"] for c in changes if c["op"] == "update" and c["table"] == "users"
                ] == [{"id": 1, "email": "b@x"}]
        _, reader = make_token(client, ["o"], "read")
        with node.client(reader) as r:
            assert ok(r.get("/v1/databases/o/feed"))["tables_without_old"] == ["users"]
            error_of(r.put("/v1/databases/o/feed", json={"tables_without_old": []}), 403,
                     "FORBIDDEN")
        error_of(client.put("/v1/databases/o/feed", json={"tables": []}), 400,
                 "INVALID_REQUEST")
    node.restart()  # type: ignore[attr-defined]
    with node.client() as client:
        assert ok(client.get("/v1/databases/o/feed"))["tables_without_old"] == ["users"]
        ok(query(client, "o", "INSERT INTO users VALUES (2, 'c@x')",
                 "UPDATE users SET email = 'd@x' WHERE id = 2"))
        ok(query(client, "o", "UPDATE users SET email = 'e@x' WHERE id = 2"))
        changes, _ = follow(client, "o", at, 2)
        assert [(c["op"], c["old"]) for c in changes] == [("insert", None), ("update", None)]
