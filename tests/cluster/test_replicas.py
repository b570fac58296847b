"""Replicas: a node reads a database another node leads from its own copy, which follows
the leader's durable commits; a read carrying a bookmark never sees less than it.

Two real nodes on one file store (engine/replica.py, log/feed.py, docs/api.md
'Consistency').
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.cluster.test_nodes import Cluster, admin, settle
from tests.support.server import ServerProcess
from tests.support.storage import ok, run


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    cluster = Cluster(tmp_path_factory.mktemp("replicas"), durability="remote")
    nodes = [cluster.add() for _ in range(2)]
    settle(cluster, 2)
    yield nodes
    cluster.stop()


def counter(node: ServerProcess, name: str) -> float:
    text = httpx.get(f"{node.url}/metrics").text
    found = re.search(rf"^{name}_total (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def served(node: ServerProcess) -> float:
    return counter(node, "shoal_cluster_served_by_replica")


def roles(nodes: list[ServerProcess], name: str) -> tuple[ServerProcess, ServerProcess]:
    """(leader, follower) of database ``name``: the leader has it open after a write."""
    for node in nodes:
        with admin(node) as http:
            if name in ok(http.get("/v1/cluster"))["open_databases_led"]:
                return node, next(n for n in nodes if n is not node)
    raise AssertionError(f"nobody leads {name}")


def query(http: httpx.Client, name: str, *statements: object,
          headers: dict[str, str] | None = None) -> httpx.Response:
    return http.post(f"/v1/databases/{name}/query", json={"statements": list(statements)},
                     headers=headers or {})


def replica_ready(follower: ServerProcess, name: str, timeout: float = 20.0) -> None:
    """Read through the follower until its replica answers (the first reads are
    forwarded while it hydrates)."""
    deadline = time.monotonic() + timeout
    before = served(follower)
    with admin(follower) as http:
        while served(follower) == before:
            assert time.monotonic() < deadline, "the replica never answered"
            ok(query(http, name, "SELECT count(*) FROM t"))
            time.sleep(0.05)


def make(nodes: list[ServerProcess], name: str) -> tuple[ServerProcess, ServerProcess]:
    with admin(nodes[0]) as http:
        ok(http.post("/v1/databases", json={"name": name}), 201)
        run(http, name, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    leader, follower = roles(nodes, name)
    replica_ready(follower, name)
    return leader, follower


def test_reads_with_a_bookmark_see_the_write_before_it(pair: list[ServerProcess]) -> None:
    leader, follower = make(pair, "ryw")
    before = served(follower)
    with admin(leader) as w, admin(follower) as r:
        for i in range(150):
            out = query(w, "ryw", {"sql": "INSERT INTO t(v) VALUES (?)", "args": [str(i)]})
            bookmark = out.headers["shoal-bookmark"]
            assert bookmark == ok(out)["meta"]["bookmark"]
            got = query(r, "ryw", "SELECT count(*) FROM t",
                        headers={"Shoal-Bookmark": bookmark})
            assert ok(got)["results"][0]["rows"] == [[i + 1]], i  # never less than it wrote
            assert "shoal-bookmark" in got.headers
            # the body may carry it too
            got = r.post("/v1/databases/ryw/query",
                         json={"statements": ["SELECT max(id) FROM t"], "bookmark": bookmark})
            assert ok(got)["results"][0]["rows"] == [[i + 1]]
    assert served(follower) - before >= 150  # most from the replica, the rest forwarded


def test_without_a_bookmark_the_replica_catches_up_quickly(pair: list[ServerProcess]) -> None:
    leader, follower = make(pair, "lag")
    with admin(leader) as w, admin(follower) as r:
        ok(query(w, "lag", "INSERT INTO t(v) VALUES ('x')"))
        deadline = time.monotonic() + 5
        while ok(query(r, "lag", "SELECT count(*) FROM t"))["results"][0]["rows"] != [[1]]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with admin(follower) as http:
            status = ok(http.get("/v1/cluster"))
        assert {"database": "lag", "branch": "main"}.items() <= \
            next(x for x in status["replicas"] if x["database"] == "lag").items()


def test_writes_and_schema_changes_through_the_follower(pair: list[ServerProcess]) -> None:
    _, follower = make(pair, "ddl")
    with admin(follower) as r:
        # a write sent to the follower is moved to the leader; its bookmark reads it here
        out = query(r, "ddl", "ALTER TABLE t ADD COLUMN w INTEGER DEFAULT 7",
                    "INSERT INTO t(v) VALUES ('a')")
        bookmark = ok(out)["meta"]["bookmark"]
        got = query(r, "ddl", "SELECT v, w FROM t", headers={"Shoal-Bookmark": bookmark})
        assert ok(got)["results"][0]["rows"] == [["a", 7]]
        # a request that reads and writes goes to the leader as a whole
        got = query(r, "ddl", "SELECT count(*) FROM t", "INSERT INTO t(v) VALUES ('b')")
        assert ok(got)["meta"]["rows_written"] == 1
        # an Idempotency-Key is the leader's business
        for _ in range(2):
            got = r.post("/v1/databases/ddl/query", headers={"Idempotency-Key": "k1"},
                         json={"statements": ["INSERT INTO t(v) VALUES ('c')"]})
            ok(got)
        got = query(r, "ddl", "SELECT count(*) FROM t",
                    headers={"Shoal-Bookmark": got.headers["shoal-bookmark"]})
        assert ok(got)["results"][0]["rows"] == [[3]]


def test_strong_reads_and_bad_bookmarks(pair: list[ServerProcess]) -> None:
    leader, follower = make(pair, "strong")
    with admin(follower) as r:
        before = served(follower)
        got = query(r, "strong", "SELECT 1", headers={"Shoal-Consistency": "strong"})
        assert ok(got)["results"][0]["rows"] == [[1]]
        assert served(follower) == before  # the leader answered it
        got = query(r, "strong", "SELECT 1", headers={"Shoal-Consistency": "eventual"})
        assert got.status_code == 400 and got.json()["error"]["code"] == "INVALID_REQUEST"
        with admin(leader) as w:
            ok(w.post("/v1/databases", json={"name": "strong2"}), 201)
            foreign = ok(query(w, "strong2", "SELECT 1"))["meta"]["bookmark"]
        for bad in (foreign, "not-a-bookmark"):
            got = query(r, "strong", "SELECT 1", headers={"Shoal-Bookmark": bad})
            assert got.status_code == 400, got.text
            assert got.json()["error"]["code"] == "INVALID_REQUEST"


def test_a_restore_moves_the_replica_to_the_new_timeline(pair: list[ServerProcess]) -> None:
    leader, follower = make(pair, "back")
    with admin(leader) as w, admin(follower) as r:
        first = ok(query(w, "back", "INSERT INTO t(v) VALUES ('keep')"))["meta"]["bookmark"]
        ok(query(w, "back", "INSERT INTO t(v) VALUES ('gone')"))
        ok(w.post("/v1/databases/back/restore", json={"bookmark": first}))
        after = ok(query(w, "back", "INSERT INTO t(v) VALUES ('new')"))["meta"]["bookmark"]
        got = query(r, "back", "SELECT v FROM t ORDER BY id",
                    headers={"Shoal-Bookmark": after})
        assert ok(got)["results"][0]["rows"] == [["keep"], ["new"]]
        deadline = time.monotonic() + 10
        while True:  # the replica itself moves over (not only the leader's answer)
            before = served(follower)
            got = ok(query(r, "back", "SELECT v FROM t ORDER BY id",
                           headers={"Shoal-Bookmark": after}))
            if served(follower) > before:
                break
            assert time.monotonic() < deadline, "the replica never reached the new timeline"
            time.sleep(0.1)
        assert got["results"][0]["rows"] == [["keep"], ["new"]]


def pipeline(http: httpx.Client, name: str, *requests: dict[str, object],
             baton: str | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
    return http.post(f"/db/{name}/v2/pipeline", json={"baton": baton, "requests": list(requests)},
                     headers=headers or {})


def execute(sql: str) -> dict[str, object]:
    return {"type": "execute", "stmt": {"sql": sql}}


CLOSE = {"type": "close"}


def test_hrana_reads_from_the_replica_and_streams_at_the_leader(
        pair: list[ServerProcess]) -> None:
    leader, follower = make(pair, "hrana")
    with admin(leader) as w, admin(follower) as r:
        bookmark = query(w, "hrana", "INSERT INTO t(v) VALUES ('a')").headers["shoal-bookmark"]
        before = served(follower)
        got = pipeline(r, "hrana", execute("SELECT v FROM t"), CLOSE,
                       headers={"Shoal-Bookmark": bookmark})
        body = ok(got)
        assert body["results"][0]["response"]["result"]["rows"] == [[
            {"type": "text", "value": "a"}]]
        assert served(follower) == before + 1  # the replica answered it
        assert got.headers["shoal-bookmark"]
        # a write, a BEGIN, a stream with a baton: the leader's, whole
        got = ok(pipeline(r, "hrana", execute("INSERT INTO t(v) VALUES ('b')"), CLOSE))
        assert got["results"][0]["type"] == "ok", got
        assert ok(pipeline(r, "hrana", execute("BEGIN"), CLOSE))["results"][0]["type"] == "ok"
        first = ok(pipeline(r, "hrana", execute("BEGIN"),
                            execute("INSERT INTO t(v) VALUES ('c')")))
        assert [x["type"] for x in first["results"]] == ["ok", "ok"], first
        done = pipeline(r, "hrana", execute("COMMIT"), CLOSE, baton=first["baton"])
        assert ok(done)["results"][0]["type"] == "ok"
        got = pipeline(r, "hrana", execute("SELECT count(*) FROM t"), CLOSE,
                       headers={"Shoal-Bookmark": done.headers["shoal-bookmark"]})
        assert ok(got)["results"][0]["response"]["result"]["rows"] == [[
            {"type": "integer", "value": "3"}]]


def test_a_table_created_a_moment_ago_is_found_through_the_follower(
        pair: list[ServerProcess]) -> None:
    """A replica that has not applied a CREATE TABLE yet does not answer "no such table":
    the leader answers (writes and reads alike), without a bookmark too."""
    leader, follower = make(pair, "fresh")
    with admin(leader) as w, admin(follower) as r:
        for i in range(20):
            ok(query(w, "fresh", f"CREATE TABLE n{i}(x)"))
            ok(query(r, "fresh", f"INSERT INTO n{i} VALUES ({i})"))
            got = ok(query(r, "fresh", f"SELECT count(*) FROM n{i}"))
            assert got["results"][0]["rows"] in ([[0]], [[1]])  # behind, never an error
        got = query(r, "fresh", "SELECT * FROM no_such_table")  # a real error stays one
        assert got.status_code == 400 and got.json()["error"]["code"] == "SQLITE_ERROR"


def test_one_connection_reads_its_writes_without_bookmarks(pair: list[ServerProcess]) -> None:
    """A client that carries no bookmark (a libSQL client, curl with keep-alive) reads its
    own writes on the same connection: the node remembers the connection's last one."""
    _, follower = make(pair, "conn")
    with admin(follower) as r:
        for i in range(60):
            ok(query(r, "conn", "INSERT INTO t(v) VALUES ('x')"))  # moved to the leader
            got = ok(query(r, "conn", "SELECT count(*) FROM t"))
            assert got["results"][0]["rows"] == [[i + 1]], i
            got = ok(pipeline(r, "conn", execute("SELECT count(*) FROM t"), CLOSE))
            assert got["results"][0]["response"]["result"]["rows"] == [[
                {"type": "integer", "value": str(i + 1)}]], i
