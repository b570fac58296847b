"""The change feed against a real ``shoal serve``: Server-Sent Events, the Python client
through a restart, a stream's token checks and bounds, WebSocket subscriptions. Exactly
once across kill -9 of the node and of a consumer process, and a lost disk, is
tests/integration/test_changes_exactness.py.
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
