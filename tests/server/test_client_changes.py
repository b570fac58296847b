"""shoal.client's change feed (``Client.changes``, ``AsyncClient.changes``) against the App in
process: every change once and in order across pages, filters, values decoded, the end of a
``follow=False`` read, resuming from a cursor, CursorExpired after a restore, retries of a
connection that fails and nothing else."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from itertools import islice
from typing import Any

import httpx
import pytest

from shoal.client import (
    AsyncClient,
    Change,
    Client,
    ConnectionFailed,
    CursorExpired,
    InvalidRequest,
    NotFound,
)
from shoal.client.calls import POLL_EVERY
from tests.support.inprocess import InProcessNode
from tests.support.server import ServerProcess

SCHEMA = ["CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, data BLOB, big INTEGER, "
          "x REAL)",
          "CREATE TABLE other(k TEXT PRIMARY KEY, v)"]


@pytest.fixture
def node(server: ServerProcess) -> InProcessNode:
    assert isinstance(server, InProcessNode)
    return server


@pytest.fixture
def fed(node: InProcessNode, new_db: Callable[[], str]) -> Iterator[tuple[Client, str]]:
    """A client on a fresh database with the tables, and the cursor after their creation
    (the schema's bookmark: a bookmark is a cursor)."""
    with Client(node.url, node.admin_token, database=new_db(),
                transport=node.transport()) as c:
        made = c.batch(SCHEMA)
        assert made[-1].bookmark is not None
        yield c, made[-1].bookmark


def brief(changes: list[Change]) -> list[tuple[Any, ...]]:
    return [(c.table, c.op, c.key) for c in changes]


def by_commit(changes: list[Change]) -> list[list[tuple[Any, ...]]]:
    """Each commit's changes, sorted: within a commit SQLite's session orders a table's
    rows as it likes."""
    out: dict[int, list[tuple[Any, ...]]] = {}
    for c in changes:
        out.setdefault(c.txid, []).append((c.table, c.op, c.key))
    return [sorted(v) for _, v in sorted(out.items())]


MIXED = [[("items", "insert", (i * 2 - 1,)), ("items", "insert", (i * 2,))]
         for i in range(1, 6)] + [[("items", "update", (3,))],
                                  [("items", "delete", (9,)), ("items", "delete", (10,))],
                                  [("other", "insert", ("a",))]]
MIXED_COUNT = sum(map(len, MIXED))


def write_mixed(c: Client) -> None:
    """The eight commits of MIXED: inserts, updates and deletes."""
    for i in range(1, 6):
        c.batch([("INSERT INTO items(id, name) VALUES (?, ?)", [i * 2 - 1, f"n{i}"]),
                 ("INSERT INTO items(id, name) VALUES (?, ?)", [i * 2, f"m{i}"])])
    c.execute("UPDATE items SET name = 'changed' WHERE id = 3")
    c.execute("DELETE FROM items WHERE id > 8")
    c.execute("INSERT INTO other VALUES ('a', 1)")


def test_pages_give_every_change_once_in_order(fed: tuple[Client, str]) -> None:
    c, start = fed
    write_mixed(c)
    feed = c.changes(start, limit=3, wait=5)
    got = list(islice(feed, MIXED_COUNT))  # follow: page after page, as they become durable
    feed.close()
    assert next(feed, None) is None  # closed: nothing more, nothing asked
    assert by_commit(got) == MIXED
    assert [g.txid for g in got] == sorted(g.txid for g in got)
    assert len({g.cursor for g in got}) == len(got)
    # Everything is durable now: follow=False reads it all again and ends there.
    again = c.changes(start, limit=3, wait=0, follow=False)
    assert list(again) == got
    assert again.done and again.cursor is not None
    assert list(c.changes(again.cursor, wait=0, follow=False)) == []


def test_follow_false_waits_for_a_commit_then_ends(fed: tuple[Client, str]) -> None:
    """One commit is durable whole: the first page waits for it, the next finds nothing."""
    c, start = fed
    c.batch([("INSERT INTO items(id) VALUES (?)", [i]) for i in range(1, 251)])
    got = list(c.changes(start, follow=False, wait=10))  # three pages of 100
    assert sorted(g.key or () for g in got) == [(i,) for i in range(1, 251)]
    assert len({g.txid for g in got}) == 1


def test_follow_false_from_a_change_waits_for_the_next_commit(
        fed: tuple[Client, str]) -> None:
    """From the cursor of a commit's last change the server first answers an empty page
    that only moves the cursor: the read goes on waiting for the next commit."""
    c, start = fed
    c.execute("INSERT INTO items(id) VALUES (1)")
    last = list(c.changes(start, follow=False, wait=10))[-1]
    c.batch(["INSERT INTO items(id) VALUES (2)", "DELETE FROM items WHERE id = 1"])
    got = list(c.changes(last.cursor, follow=False, wait=10))
    assert sorted(brief(got)) == [("items", "delete", (1,)), ("items", "insert", (2,))]
    began = time.monotonic()
    assert list(c.changes(got[-1].cursor, follow=False, wait=0.5)) == []
    assert time.monotonic() - began < 5


def test_values_come_back_as_python(fed: tuple[Client, str], node: InProcessNode) -> None:
    c, start = fed
    c.execute("INSERT INTO items VALUES (1, 'ünï', ?, ?, ?)",
              [b"\x00\xff", 2**63 - 1, math.inf])
    c.execute("UPDATE items SET x = -1e308, big = -(9007199254740993) WHERE id = 1")
    c.execute("DELETE FROM items")
    got = list(islice(c.changes(start, wait=5), 3))
    insert, update, delete = got
    assert insert.new == {"id": 1, "name": "ünï", "data": b"\x00\xff", "big": 2**63 - 1,
                          "x": math.inf}
    assert insert.old is None and insert.key == (1,) and insert.from_txid is None
    assert update.old == insert.new
    assert update.new is not None and update.new["big"] == -(2**53 + 1)
    assert update.new["x"] == -1e308
    assert delete.new is None and delete.old == update.new
    for change in got:
        assert change.at.tzinfo is UTC
        assert abs((datetime.now(UTC) - change.at).total_seconds()) < 60
    # to_json is the API's JSON again, value for value
    with node.client() as http:
        page = http.get(f"/v1/databases/{c.default_database}/changes",
                        params={"since": start, "limit": 3}).json()
    assert [g.to_json() for g in got] == page["changes"]
    assert got[0].to_json()["new"]["data"] == {"base64": "AP8="}


def test_commits_made_without_capture_are_one_uncaptured_change(
        start_server: Callable[..., ServerProcess]) -> None:
    node = start_server(capture_changes=False)
    assert isinstance(node, InProcessNode)
    with Client(node.url, node.admin_token, transport=node.transport()) as c:
        c.create_database("quiet")
        start = c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)", database="quiet").bookmark
        c.execute("INSERT INTO t VALUES (1)", database="quiet")
        c.execute("INSERT INTO t VALUES (2)", database="quiet")
    node.settings["capture_changes"] = True
    node.restart()
    with Client(node.url, node.admin_token, database="quiet",
                transport=node.transport()) as c:
        c.execute("INSERT INTO t VALUES (3)")
        gap, insert = islice(c.changes(start, wait=5), 2)
        assert gap.op == "uncaptured" and gap.from_txid is not None
        assert gap.from_txid < gap.txid < insert.txid
        assert (gap.table, gap.key, gap.new, gap.old) == (None, None, None, None)
        assert insert.key == (3,)
        with node.client() as http:
            page = http.get("/v1/databases/quiet/changes", params={"since": start}).json()
        assert [gap.to_json(), insert.to_json()] == page["changes"]


def test_filters(fed: tuple[Client, str]) -> None:
    c, start = fed
    write_mixed(c)
    assert by_commit(list(islice(c.changes(start, wait=5), MIXED_COUNT))) == MIXED  # durable
    assert brief(list(c.changes(start, tables="other", follow=False, wait=0))) == \
        [("other", "insert", ("a",))]
    assert by_commit(list(c.changes(start, tables=["other", "items"], ops=["update", "delete"],
                                    follow=False, wait=0))) == MIXED[5:7]
    none = c.changes(start, tables=["nothing"], follow=False, wait=0, limit=2)
    assert list(none) == []
    assert none.cursor != start  # it moved past what it left out
    with pytest.raises(ValueError, match="tables"):
        c.changes(start, tables=[])
    with pytest.raises(InvalidRequest, match="op"):
        next(c.changes(start, ops=["upsert"], wait=0))


def test_resume_from_a_yielded_cursor_and_read_at_it(fed: tuple[Client, str],
                                                     node: InProcessNode) -> None:
    c, start = fed
    write_mixed(c)
    held = c.bookmark()
    whole = list(islice(c.changes(start, wait=5), MIXED_COUNT))
    feed = c.changes(start, limit=5, wait=5)
    first = list(islice(feed, 3))  # stop in the middle of a page
    assert feed.cursor == first[-1].cursor
    rest = list(islice(c.changes(feed.cursor, limit=5, wait=5), MIXED_COUNT - 3))
    assert first + rest == whole
    assert c.bookmark() == held  # reading the feed leaves the session alone
    # a cursor is a bookmark: remember() files it under its own database and branch
    with Client(node.url, node.admin_token, transport=node.transport()) as other:
        other.remember(first[2].cursor)
        assert other.bookmark(c.default_database) == first[2].cursor
        assert other.execute("SELECT count(*) FROM items WHERE id <= 4",
                             database=c.default_database).rows == [(4,)]


def test_a_restore_expires_the_cursor(fed: tuple[Client, str]) -> None:
    c, start = fed
    kept = c.execute("INSERT INTO items(id) VALUES (1)").bookmark
    c.execute("INSERT INTO items(id) VALUES (3)")
    assert kept is not None
    cursor = list(islice(c.changes(start, wait=5), 2))[-1].cursor
    c.restore(bookmark=kept)
    feed = c.changes(cursor, wait=0)
    with pytest.raises(CursorExpired) as expired:
        next(feed)
    assert expired.value.status == 410 and expired.value.code == "CURSOR_EXPIRED"
    assert expired.value.earliest is not None
    assert next(feed, None) is None  # an error ends the feed
    c.execute("INSERT INTO items(id) VALUES (2)")
    assert brief(list(islice(c.changes(expired.value.earliest, wait=5), 1))) == \
        [("items", "insert", (2,))]


def test_errors_other_than_lost_connections_are_raised_at_once(
        fed: tuple[Client, str]) -> None:
    c, start = fed
    with pytest.raises(NotFound):
        next(c.changes(branch="nope", wait=0))
    with pytest.raises(InvalidRequest, match="limit"):
        next(c.changes(start, limit=5000, wait=0))


class Flaky(httpx.BaseTransport):
    """Fails the first ``failures`` requests as a node that is down does (refused)."""

    def __init__(self, inner: httpx.BaseTransport, failures: int):
        self.inner = inner
        self.failures = failures
        self.tries = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.tries += 1
        if self.tries <= self.failures:
            raise httpx.ConnectError("connection refused", request=request)
        return self.inner.handle_request(request)


def test_lost_connections_are_retried_for_a_while(fed: tuple[Client, str],
                                                  node: InProcessNode) -> None:
    c, start = fed
    c.execute("INSERT INTO items(id) VALUES (1)")
    flaky = Flaky(node.transport(), failures=3)
    with Client(node.url, node.admin_token, database=c.default_database,
                transport=flaky) as shaky:
        assert brief(list(islice(shaky.changes(start, wait=5), 1))) == \
            [("items", "insert", (1,))]
        assert flaky.tries == 4
    down = Flaky(node.transport(), failures=10**6)
    with Client(node.url, node.admin_token, database=c.default_database,
                transport=down) as gone:
        with pytest.raises(ConnectionFailed):
            next(gone.changes(start, retry_for=0.5))
        assert 2 < down.tries < 20  # backed off, then gave up


def test_a_followed_feed_polls_calmly_when_pages_come_back_at_once(
        fed: tuple[Client, str], node: InProcessNode) -> None:
    """wait=0 is polling: an empty page at most every POLL_EVERY seconds, not a hot loop."""
    c, start = fed
    counting = Flaky(node.transport(), failures=0)
    later = threading.Timer(2.2, lambda: c.execute("INSERT INTO items(id) VALUES (1)"))
    later.start()
    with Client(node.url, node.admin_token, database=c.default_database,
                transport=counting) as polling:
        began = time.monotonic()
        assert brief([next(polling.changes(start, wait=0))]) == [("items", "insert", (1,))]
    later.join()
    assert time.monotonic() - began >= 2
    assert 3 <= counting.tries <= 2.2 / POLL_EVERY + 3


def test_async_client_changes(node: InProcessNode, new_db: Callable[[], str]) -> None:
    db = new_db()

    async def go() -> None:
        async with AsyncClient(node.url, node.admin_token, database=db,
                               transport=node.async_transport()) as c:
            start = (await c.batch(SCHEMA))[-1].bookmark
            await c.batch([("INSERT INTO items(id, data) VALUES (?, ?)", [i, b"\x01"])
                           for i in range(1, 8)])
            await c.execute("DELETE FROM items WHERE id = 7")
            got: list[Change] = []
            async for change in c.changes(start, limit=3, wait=5):
                got.append(change)
                if len(got) == 8:
                    break
            assert by_commit(got) == [[("items", "insert", (i,)) for i in range(1, 8)],
                                      [("items", "delete", (7,))]]
            assert got[0].new is not None and got[0].new["data"] == b"\x01"
            again = [ch async for ch in c.changes(start, ops="delete", follow=False, wait=0)]
            assert brief(again) == [("items", "delete", (7,))]
            feed = c.changes(got[3].cursor, follow=False, wait=0)
            assert brief([ch async for ch in feed]) == brief(got[4:])
            await feed.aclose()
            await c.restore(bookmark=start)
            with pytest.raises(CursorExpired) as expired:
                await c.changes(got[-1].cursor, wait=0).__anext__()
            assert expired.value.earliest

    asyncio.run(go())
