"""The change feed against a real ``shoal serve``: exactly once across kill -9, and
Server-Sent Events.

Exactness: writers make mixed inserts, updates and deletes (a trigger's rows and a
foreign key's cascades among them) while a consumer follows the feed page by page,
keeping its cursor. The node is killed with ``kill -9`` at random moments and started
again; the consumer resumes from its last cursor. Every event is replayed onto a shadow
copy of the tables: an update's or a delete's old row must be the shadow's row (so a
change seen twice, missed, or out of order fails at once), and at the end the shadow must
be the database. The node ships rarely (``sync_interval`` 30 s), so the kills find
acknowledged commits that are only in the WAL: their changes come back from the file.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shoal.client import Change, Client
from tests.support.server import ServerProcess

ADMIN = "feed-admin-token"
DB = "feedy"
ROUNDS = 3


def decode(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


class Shadow:
    """The tables as the events say they are."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
        self.cursors: list[str] = []
        self.txids: list[int] = []

    def apply(self, event: dict[str, Any]) -> None:
        assert event["op"] != "uncaptured", event
        table = self.tables.setdefault(event["table"], {})
        key = tuple(event["key"])
        if event["op"] == "insert":
            assert key not in table, f"insert of an existing row: {event}"
            table[key] = event["new"]
        else:
            assert table.get(key) == event["old"], f"old row differs: {event} vs {table.get(key)}"
            if event["op"] == "update":
                table[key] = event["new"]
            else:
                del table[key]
        assert not self.txids or event["txid"] >= self.txids[-1], "out of commit order"
        self.txids.append(event["txid"])
        self.cursors.append(event["cursor"])


def consume(url: str, shadow: Shadow, cursor: str, stop: threading.Event,
            errors: list[str]) -> None:
    """Follow the feed until stopped, through the node's deaths (connection errors)."""
    with httpx.Client(base_url=url, timeout=30,
                      headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        while not stop.is_set():
            try:
                r = http.get(f"/v1/databases/{DB}/changes",
                             params={"since": cursor, "wait": 1, "limit": 50})
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            if r.status_code != 200:
                if r.status_code not in (502, 503):
                    errors.append(f"{r.status_code} {r.text[:300]}")
                    return
                time.sleep(0.1)
                continue
            page = r.json()
            for event in page["changes"]:
                try:
                    shadow.apply(event)
                except AssertionError as exc:
                    errors.append(str(exc))
                    return
            cursor = page["cursor"]


def write(url: str, seed: int, stop: threading.Event) -> None:
    """Mixed work until the node dies or the test stops it."""
    rnd = random.Random(seed)
    with httpx.Client(base_url=url, timeout=10,
                      headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        while not stop.is_set():
            k = rnd.randrange(200)
            body = {"statements": rnd.choice([
                [f"INSERT OR IGNORE INTO users(id, name) VALUES ({k}, 'u{k}')"],
                [f"UPDATE users SET name = name || '+' WHERE id = {k}"],
                [f"INSERT OR IGNORE INTO posts(id, user_id, title) VALUES ({k}, {k % 50}, 't')"],
                ["PRAGMA foreign_keys = ON", f"DELETE FROM users WHERE id = {k}"],
                [f"UPDATE posts SET title = title || '!' WHERE user_id = {k % 50}",
                 f"DELETE FROM posts WHERE id = {k + 1}"],
            ])}
            try:
                http.post(f"/v1/databases/{DB}/query", json=body)
            except httpx.TransportError:
                return


def table_rows(http: httpx.Client, table: str, columns: list[str]) -> dict[tuple[Any, ...],
                                                                               dict[str, Any]]:
    r = http.post(f"/v1/databases/{DB}/query",
                  json={"statements": [f"SELECT * FROM {table}"]})
    assert r.status_code == 200, r.text
    return {(row[0],): dict(zip(columns, row, strict=True))
            for row in r.json()["results"][0]["rows"]}


@pytest.mark.slow
def test_every_change_exactly_once_across_kill_9(tmp_path: Any) -> None:
    node = ServerProcess(tmp_path / "data", {"admin_token": ADMIN, "sync_interval": 30})
    node.start()
    try:
        with node.client() as http:
            assert http.post("/v1/databases", json={"name": DB}).status_code == 201
            r = http.post(f"/v1/databases/{DB}/query", json={"statements": [
                "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT)",
                "CREATE TABLE posts(id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES "
                "users(id) ON DELETE CASCADE, title TEXT)",
                "CREATE TABLE audit(n INTEGER PRIMARY KEY, what TEXT)",
                "CREATE TRIGGER users_audit AFTER INSERT ON users BEGIN "
                "INSERT INTO audit(what) VALUES ('user ' || new.id); END"]})
            assert r.status_code == 200, r.text
            cursor = http.get(f"/v1/databases/{DB}/changes").json()["cursor"]
        shadow, errors, done = Shadow(), list[str](), threading.Event()
        consumer = threading.Thread(target=consume, args=(node.url, shadow, cursor, done,
                                                          errors))
        consumer.start()
        for round_ in range(ROUNDS):
            stop = threading.Event()
            writers = [threading.Thread(target=write, args=(node.url, round_ * 10 + i, stop))
                       for i in range(3)]
            for w in writers:
                w.start()
            time.sleep(random.uniform(0.5, 1.5))
            node.kill()
            stop.set()
            for w in writers:
                w.join(15)
            node.start()
        with node.client() as http:  # the last round's commits are durable once shipped
            r = http.post(f"/v1/databases/{DB}/query", json={"statements": [
                "INSERT INTO audit(what) VALUES ('end')"]})
            assert r.status_code == 200
            end = r.json()["meta"]["txid"]
            deadline = time.monotonic() + 60
            while (not shadow.txids or shadow.txids[-1] < end) and not errors and \
                    time.monotonic() < deadline:
                time.sleep(0.2)
            done.set()
            consumer.join(30)
            assert not errors, errors
            assert shadow.txids and shadow.txids[-1] == end
            assert len(set(shadow.cursors)) == len(shadow.cursors)
            assert shadow.tables.get("users", {}) == table_rows(http, "users", ["id", "name"])
            assert shadow.tables.get("posts", {}) == table_rows(
                http, "posts", ["id", "user_id", "title"])
            assert shadow.tables.get("audit", {}) == table_rows(http, "audit", ["n", "what"])
            assert len(shadow.txids) > 50
    finally:
        node.stop()


@contextlib.contextmanager
def table_node(tmp_path: Any, **settings: Any) -> Iterator[tuple[ServerProcess, httpx.Client,
                                                                str]]:
    """A node with database DB holding t(id, v): the node, an admin client, and the feed's
    cursor after the table's creation."""
    node = ServerProcess(tmp_path / "data", {"admin_token": ADMIN, **settings})
    node.start()
    try:
        with node.client() as http:
            assert http.post("/v1/databases", json={"name": DB}).status_code == 201
            assert http.post(f"/v1/databases/{DB}/query", json={"statements": [
                "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"]}).status_code == 200
            yield node, http, http.get(f"/v1/databases/{DB}/changes").json()["cursor"]
    finally:
        node.stop()


def test_server_sent_events_resume_with_last_event_id(tmp_path: Any) -> None:
    with table_node(tmp_path) as (node, http, start):
        for i in range(3):
            http.post(f"/v1/databases/{DB}/query", json={"statements": [
                f"INSERT INTO t VALUES ({i}, 'v{i}')"]})
        events = read_events(node, start, 2)
        assert [e["new"]["id"] for e in events] == [0, 1]
        rest = read_events(node, events[-1]["cursor"], 1, header=True)
        assert [e["new"]["id"] for e in rest] == [2]
        http.post(f"/v1/databases/{DB}/query", json={"statements": [
            "UPDATE t SET v = 'x' WHERE id = 2"]})
        assert read_events(node, rest[-1]["cursor"], 1)[0]["op"] == "update"


def test_the_python_client_follows_the_feed_through_a_restart(tmp_path: Any) -> None:
    """Client.changes retries while the node is down (kill -9) and goes on from the last
    change it yielded: every change once, in order. Its long polls outlast the client's
    timeout (the wait is added to it)."""
    node = ServerProcess(tmp_path / "data", {"admin_token": ADMIN})
    node.start()
    got: list[Change] = []
    errors: list[BaseException] = []

    def consume(start: str) -> None:
        with Client(node.url, ADMIN, database=DB, timeout=2) as reader:
            try:
                for change in reader.changes(start, wait=5, limit=2):
                    got.append(change)
                    if change.key == (10,):
                        return
            except BaseException as exc:  # the test reports it
                errors.append(exc)

    try:
        with Client(node.url, ADMIN, database=DB) as c:
            c.create_database(DB)
            start = c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)").bookmark
            assert start is not None
            consumer = threading.Thread(target=consume, args=(start,))
            consumer.start()
            for i in range(1, 6):
                c.execute("INSERT INTO t VALUES (?, ?)", [i, f"v{i}"])
            time.sleep(random.uniform(0, 0.3))
            node.kill()
            time.sleep(1)  # the consumer meets a dead node meanwhile
            node.start()
            for i in range(6, 11):
                c.execute("INSERT INTO t VALUES (?, ?)", [i, f"v{i}"])
            consumer.join(60)
        assert not consumer.is_alive() and not errors, errors
        assert [(g.op, g.key) for g in got] == [("insert", (i,)) for i in range(1, 11)]
        assert [g.new for g in got] == [{"id": i, "v": f"v{i}"} for i in range(1, 11)]
    finally:
        node.stop()


def read_events(node: ServerProcess, since: str, count: int,
                header: bool = False) -> list[dict[str, Any]]:
    """``count`` change events of an event stream started at ``since`` (as Last-Event-ID
    if ``header``), each id equal to its cursor."""
    headers = {"Authorization": f"Bearer {ADMIN}", "Accept": "text/event-stream"}
    params = {}
    if header:
        headers["Last-Event-ID"] = since
    else:
        params["since"] = since
    out: list[dict[str, Any]] = []
    with httpx.stream("GET", f"{node.url}/v1/databases/{DB}/changes", params=params,
                      headers=headers, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for kind, event, event_id in sse_events(r):
            if kind == "change":
                assert event_id == event["cursor"]
                out.append(event)
                if len(out) == count:
                    return out
    raise AssertionError(f"the stream ended after {len(out)} events")


def sse_events(response: httpx.Response) -> Any:
    """(event, data, id) of each event a stream sends, as they come."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line.startswith(":"):
            continue
        if line:
            name, _, value = line.partition(": ")
            fields[name] = value
            continue
        if "event" in fields:
            yield fields["event"], json.loads(fields["data"]), fields.get("id")
        fields = {}


def test_a_stream_ends_when_its_token_is_revoked_and_streams_are_bounded(
        tmp_path: Any) -> None:
    with table_node(tmp_path, max_feed_streams=1) as (node, http, _):
        made = http.post("/v1/tokens", json={"databases": [DB], "access": "read",
                                             "expires_in": 3600}).json()
        headers = {"Authorization": f"Bearer {made['token']}", "Accept": "text/event-stream"}
        with httpx.stream("GET", f"{node.url}/v1/databases/{DB}/changes", headers=headers,
                          timeout=30) as stream:
            assert stream.status_code == 200
            second = httpx.get(f"{node.url}/v1/databases/{DB}/changes", headers=headers)
            assert second.status_code == 429
            assert second.json()["error"]["code"] == "TOO_MANY_SUBSCRIPTIONS"
            assert http.delete(f"/v1/tokens/{made['id']}").status_code == 204
            http.post(f"/v1/databases/{DB}/query", json={"statements": [
                "INSERT INTO t(id) VALUES (1)"]})  # ends the page the stream waits on
            kinds = []
            for kind, data, _ in sse_events(stream):
                kinds.append(kind)
                if kind == "error":
                    assert data["error"]["code"] == "TOKEN_REVOKED"
                    break
            assert kinds[-1] == "error"


def test_a_websocket_subscription(tmp_path: Any) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with table_node(tmp_path) as (node, http, start):
        ws_url = node.url.replace("http://", "ws://") + f"/v1/databases/{DB}/changes"
        auth = {"Authorization": f"Bearer {ADMIN}"}
        with connect(f"{ws_url}?since={start}&op=insert", additional_headers=auth,
                     open_timeout=10) as ws:
            for i in (1, 2):
                http.post(f"/v1/databases/{DB}/query", json={"statements": [
                    f"INSERT INTO t VALUES ({i}, 'v{i}')"]})
            http.post(f"/v1/databases/{DB}/query", json={"statements": [
                "DELETE FROM t WHERE id = 1"]})  # filtered out
            got: list[dict[str, Any]] = []
            while len(got) < 2:
                message = json.loads(ws.recv(timeout=20))
                if message["type"] == "change":
                    got.append(message)
            assert [(m["op"], m["new"]["id"]) for m in got] == [("insert", 1), ("insert", 2)]
            assert all(m["cursor"] and m["txid"] for m in got)
        for headers, path in (({}, ws_url), (auth, ws_url.replace(DB, "nosuch")),
                              ({"Authorization": "Bearer nope"}, ws_url)):
            with pytest.raises(InvalidStatus) as refused:
                connect(path, additional_headers=headers, open_timeout=10)
            assert refused.value.response.status_code == 403
