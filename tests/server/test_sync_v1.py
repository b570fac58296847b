"""libSQL's V1 sync protocol in process (server/sync_v1.py, server/grpc_web.py,
engine/sync_v1.py): the framing and codecs alone, then a model replica that does what the
client does (tests/support/sync_v1.py) across generations (batches cut inside
commits), restores, compaction, retention and a database made again; the proxy's programs,
transactions and limits; addressing, access and bad input. The published clients are driven
in tests/conformance/test_embedded_v1.py."""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from shoal.engine import sync_v1 as engine_v1
from shoal.errors import Code, ShoalError
from shoal.server import grpc_web
from shoal.server import hrana_proto as p
from shoal.server import sync_v1 as server_v1
from shoal.server.http import Request
from shoal.server.libsql_pb import proxy_pb2 as px
from shoal.server.libsql_pb import replication_log_pb2 as rl
from shoal.storage import open_store
from tests.integration.api_support import make_token, ok, query, wait_until
from tests.support.replicas import ROWS, admin_rows, insert
from tests.support.server import ServerProcess
from tests.support.sync_v1 import LOG, PROXY, V1Replica, call, execute, frame, split

K_MAX = (1 << 22) - 1


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 2 frames: a generation's commit is cut in pieces."""
    monkeypatch.setattr(engine_v1, "MAX_FRAMES", 2)


# -- the codecs alone --------------------------------------------------------------------------
def _request(body: bytes, kind: bytes = b"application/grpc-web") -> Request:
    request = Request({"method": "POST", "path": "/", "headers": [(b"content-type", kind)]},
                      None)  # type: ignore[arg-type]
    request.body = body
    return request


def test_grpc_web_framing() -> None:
    assert grpc_web.request_message(_request(frame(b"abc"))) == b"abc"
    assert grpc_web.request_message(_request(frame(b""), b"application/grpc-web+proto")) == b""
    for body, kind, words in [
            (frame(b"abc"), b"application/grpc", "content-type"),
            (frame(b"abc"), b"application/grpc-web-text", "content-type"),
            (b"\0\0\0", b"application/grpc-web", "5-byte prefix"),
            (frame(b"abc", flag=1), b"application/grpc-web", "compressed"),
            (frame(b"abc") + b"x", b"application/grpc-web", "exactly one message"),
            (frame(b"abc")[:-1], b"application/grpc-web", "exactly one message")]:
        with pytest.raises(ShoalError) as err:
            grpc_web.request_message(_request(body, kind))
        assert err.value.code is Code.INVALID_REQUEST and words in err.value.message
    assert grpc_web.trailers() == b"\x80\0\0\0\x0fgrpc-status:0\r\n"
    text = grpc_web.trailers(grpc_web.Status.INTERNAL, "50% é\n")
    assert text.endswith(b"grpc-status:13\r\ngrpc-message:50%25 %C3%A9%0A\r\n")
    failed = grpc_web.failure(ShoalError(Code.FORBIDDEN, "no"))
    assert failed.status == 403 and dict(failed.headers)[b"grpc-status"] == b"7"
    assert dict(failed.headers)[b"grpc-message"] == b"FORBIDDEN: no"
    assert grpc_web.status_of(418) is grpc_web.Status.INTERNAL


def bincode(tag: int, data: bytes = b"") -> bytes:
    return struct.pack("<I", tag) + data


def test_values_and_programs() -> None:
    """Parameters (bincode) in as Hrana values; row values (the wire form) out as bincode;
    a program's steps and conditions as a Hrana batch."""
    text = "é🙂".encode()
    cases = [(bincode(0), p.NullValue()), (bincode(1, struct.pack("<q", -2**63)),
                                           p.IntegerValue(-2**63)),
             (bincode(2, struct.pack("<d", 1.5)), p.FloatValue(1.5)),
             (bincode(3, struct.pack("<Q", len(text)) + text), p.TextValue("é🙂")),
             (bincode(4, struct.pack("<Q", 2) + b"\0\xff"), p.BlobValue("AP8="))]
    for data, value in cases:
        assert server_v1._value(data, 0) == value
    for bad in (b"", bincode(0, b"x"), bincode(1, b"1234567"), bincode(5),
                bincode(3, struct.pack("<Q", 9) + b"short"), bincode(3, struct.pack("<Q", 1) +
                                                                      b"\xff")):
        with pytest.raises(ShoalError, match="not a libSQL value"):
            server_v1._value(bad, 0)
    assert server_v1._bincode(None) == bincode(0)
    assert server_v1._bincode(2**62) == bincode(1, struct.pack("<q", 2**62))
    assert server_v1._bincode({"integer": str(2**63 - 1)}) == bincode(1, struct.pack(
        "<q", 2**63 - 1))
    assert server_v1._bincode(-0.5) == bincode(2, struct.pack("<d", -0.5))
    assert server_v1._bincode({"float": "-Infinity"}) == bincode(2, struct.pack(
        "<d", float("-inf")))
    assert server_v1._bincode("é") == bincode(3, struct.pack("<Q", 2) + "é".encode())
    assert server_v1._bincode({"base64": "AP8="}) == bincode(4, struct.pack("<Q", 2) +
                                                             b"\0\xff")
    program = px.Program(steps=[
        px.Step(query=px.Query(stmt="BEGIN")),
        px.Step(query=px.Query(stmt="SELECT :a", skip_rows=True, named=px.Named(
            names=[":a"], values=[px.Value(data=bincode(0))])),
            cond=px.Cond(ok=px.OkCond(step=0))),
        px.Step(query=px.Query(stmt="SELECT ?", positional=px.Positional(
            values=[px.Value(data=bincode(1, struct.pack("<q", 7)))])),
            cond=px.Cond(**{"not": px.NotCond(cond=px.Cond(**{"or": px.OrCond(conds=[
                px.Cond(err=px.ErrCond(step=1)),
                px.Cond(is_autocommit=px.IsAutocommitCond())])}))}))])
    batch = server_v1._program(program)
    assert batch.steps[0] == p.BatchStep(p.Stmt(sql="BEGIN", want_rows=True))
    assert batch.steps[1] == p.BatchStep(p.Stmt(sql="SELECT :a", named_args=[
        p.NamedArg(":a", p.NullValue())], want_rows=False), p.OkCond(0))
    assert batch.steps[2].condition == p.NotCond(p.OrCond([p.ErrorCond(1),
                                                           p.IsAutocommitCond()]))
    for bad in (px.Program(steps=[px.Step()]),
                px.Program(steps=[px.Step(query=px.Query(stmt="x"), cond=px.Cond())]),
                px.Program(steps=[px.Step(query=px.Query(stmt="x"), cond=px.Cond(
                    **{"not": px.NotCond()}))]),
                px.Program(steps=[px.Step(query=px.Query(stmt="x", named=px.Named(
                    names=["a", "b"], values=[px.Value(data=bincode(0))])))])):
        with pytest.raises(ShoalError) as err:
            server_v1._program(bad)
        assert err.value.code is Code.INVALID_REQUEST


def test_numbering() -> None:
    """Frame i of generation g is g << 32 | i, but its last (the one with the size) is
    (g + 1) << 32: the offset after it is the next generation's frame 1, and the number the
    client then holds is the next generation's start, which is also its Snapshot's."""
    page = bytes(4096)
    v2 = b"".join(struct.pack(">II16x", pgno, size) + page
                  for pgno, size in ((3, 0), (1, 0), (2, 7)))
    frames = engine_v1.renumber(5, 4, v2)
    assert [struct.unpack_from("<QQII", f) for f in frames] == [
        (5 << 32 | 4, 0, 3, 0), (5 << 32 | 5, 0, 1, 0), (6 << 32, 0, 2, 7)]
    assert all(f[24:] == page for f in frames)


# -- a model replica -------------------------------------------------------------------------


BIG = {"sql": "INSERT INTO t(v) SELECT hex(randomblob(3000)) FROM (SELECT 1 UNION ALL "
              "SELECT 2 UNION ALL SELECT 3)"}


def test_frames_across_generations_in_small_batches(admin: httpx.Client, table: str,
                                                    tmp_path: Path) -> None:
    replica = V1Replica(admin, f"/grpc/db/{table}")
    replica.sync()
    assert replica.snapshots == 1 and replica.rows(tmp_path, ROWS) == []
    first = split(replica.index)[0]
    for round_ in range(4):
        insert(admin, table, *(f"r{round_}-{i}" for i in range(round_ + 2)))
        ok(query(admin, table, BIG))
        replica.sync()
        assert replica.committed == replica.index  # exactly the number Hello gave
        assert replica.rows(tmp_path, ROWS) == admin_rows(admin, table)
    assert split(replica.index)[0] - first >= 4  # it crossed generations as it went
    assert replica.snapshots == 1
    replica.sync()  # up to date: a Hello, nothing more
    assert replica.calls[-1] == LOG + "Hello"
    fresh = V1Replica(admin, f"/db/{table}")  # the HTTP protocol's prefix serves V1 too
    fresh.sync()
    assert fresh.rows(tmp_path, ROWS) == admin_rows(admin, table)
    assert fresh.log_id == replica.log_id


def test_restores_carry_replicas_over_the_bridge(admin: httpx.Client, table: str,
                                                 tmp_path: Path) -> None:
    """A replica in the line a restore left (at its last generation or an older one) lands
    on the restored state and follows on, with the same log id; one two restores behind
    starts again from a snapshot."""
    mark = insert(admin, table, "a", "b")
    old = V1Replica(admin, f"/grpc/db/{table}")
    old.sync()
    insert(admin, table, "c", "d", "e", "f")
    last = V1Replica(admin, f"/grpc/db/{table}")
    last.sync()
    ok(admin.post(f"/v1/databases/{table}/restore", json={"branch": "main", "bookmark": mark}))
    idle = V1Replica(admin, f"/grpc/db/{table}")
    idle.sync()  # no commit since the restore: Hello's index is the bridge's
    insert(admin, table, "after")
    for replica in (old, last, idle):
        log = replica.log_id
        replica.sync()
        assert replica.log_id == log and replica.snapshots == 1
        assert [row[1] for row in replica.rows(tmp_path, ROWS)] == ["a", "b", "after"]
        assert replica.rows(tmp_path, ROWS) == admin_rows(admin, table)
    mark = insert(admin, table, "x")
    for _ in range(2):
        ok(admin.post(f"/v1/databases/{table}/restore",
                      json={"branch": "main", "bookmark": mark}))
    insert(admin, table, "y")
    last.sync()  # two restores behind: NEED_SNAPSHOT
    assert last.snapshots == 2
    assert last.rows(tmp_path, ROWS) == admin_rows(admin, table)


def test_compaction_and_retention(admin: httpx.Client, table: str, server: ServerProcess,
                                  tmp_path: Path) -> None:
    """VACUUM's txid is kept only as a snapshot: a replica before it gets every page as one
    commit. With the log gone from the store, a stale replica starts again, from the state
    the store still holds (the head's, the generation's start being gone)."""
    insert(admin, table, *(f"v{i}" for i in range(5)))
    replica = V1Replica(admin, f"/grpc/db/{table}")
    replica.sync()
    ok(query(admin, table, "DELETE FROM t WHERE id % 2 = 0"))
    ok(admin.post(f"/v1/databases/{table}/compact"))
    insert(admin, table, "after")
    replica.sync()
    assert replica.snapshots == 1
    assert replica.rows(tmp_path, ROWS) == admin_rows(admin, table)
    stale = V1Replica(admin, f"/grpc/db/{table}")
    stale.sync()
    insert(admin, table, *(f"w{i}" for i in range(4)))
    ok(admin.post(f"/v1/databases/{table}/compact"))  # the head is a snapshot
    store = open_store(server.store_url)  # type: ignore[attr-defined]
    for info in store.list(f"dbs/{table}/log/"):
        store.delete(info.key)
    stale.sync()
    assert stale.snapshots == 2 and stale.snapshot_at == stale.index  # the head's state
    assert stale.rows(tmp_path, ROWS) == admin_rows(admin, table)


def test_a_database_made_again_is_another_log(admin: httpx.Client, table: str,
                                              tmp_path: Path) -> None:
    insert(admin, table, "a")
    replica = V1Replica(admin, f"/grpc/db/{table}")
    replica.sync()
    log, session, offset = replica.log_id, replica.session, replica.committed
    assert admin.delete(f"/v1/databases/{table}").status_code == 204
    ok(admin.post("/v1/databases", json={"name": table}), 201)
    ok(query(admin, table, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"))
    insert(admin, table, "new")
    assert offset is not None
    got = call(admin, f"/grpc/db/{table}{LOG}BatchLogEntries",
               rl.LogOffset(next_offset=offset + 1), {"x-session-token": session})
    assert (got.status, got.message) in ((9, "NO_HELLO"), (9, "NEED_SNAPSHOT"))
    replica.sync()
    assert replica.log_id != log and replica.snapshots == 2
    assert replica.rows(tmp_path, ROWS) == [[1, "new"]]


# -- addressing, access, bad input -------------------------------------------------------------
def hello(client: httpx.Client, path: str, headers: dict[str, str] | None = None,
          ) -> tuple[int, str]:
    got = call(client, path + LOG + "Hello", rl.HelloRequest(handshake_version=1), headers)
    return got.status, got.message if got.status else got.one(rl.HelloResponse).log_id


def test_addressing(admin: httpx.Client, table: str, server: ServerProcess) -> None:
    ok(admin.post(f"/v1/databases/{table}/branches", json={"name": "dev"}), 201)
    want = hello(admin, f"/grpc/db/{table}")
    assert want[0] == 0
    assert hello(admin, f"/db/{table}") == want
    assert hello(admin, "/grpc", {"x-namespace": table}) == want
    named = base64.b64encode(table.encode()).decode().rstrip("=")
    assert hello(admin, "", {"x-namespace-bin": named}) == want
    assert hello(admin, "/grpc", {"host": f"{table}.db.example.com",
                                  "x-namespace-bin": named}) == want  # the host's, as made
    dev = hello(admin, f"/grpc/db/{table}/branches/dev")
    assert dev[0] == 0 and dev != want
    _, token = make_token(admin, [table], "read")
    with server.client(token) as reader:
        assert hello(reader, "/grpc") == want
        assert hello(reader, "", {"x-authorization": f"Bearer {token}"}) == want
    derived = base64.b64encode(b"shoal").decode()  # what the client makes of this host
    assert hello(admin, "/grpc", {"x-namespace-bin": derived})[0] == 3  # none: required
    got = call(admin, "/grpc" + LOG + "Hello", rl.HelloRequest())
    assert got.http.status_code == 400 and "DATABASE_REQUIRED" in got.message
    assert hello(admin, "/grpc/db/nosuchdb") == (9, "NAMESPACE_DOESNT_EXIST")
    assert hello(admin, f"/grpc/db/{table}/branches/nope") == (9, "NAMESPACE_DOESNT_EXIST")
    assert hello(admin, "/grpc", {"x-namespace-bin": "!!"})[0] == 3
    r = admin.get(f"/grpc/db/{table}/info")  # the probe: not 2xx, not 401: V1
    assert r.status_code == 404 and "V1" in r.json()["error"]["message"]
    assert admin.get(f"/grpc/db/{table}/info", headers={
        "authorization": "Bearer nope"}).status_code == 401  # "Unauthorized", at once


def test_access_and_bad_input(admin: httpx.Client, table: str, server: ServerProcess) -> None:
    insert(admin, table, "a")
    base = f"/grpc/db/{table}"
    with server.client("") as anonymous:
        got = call(anonymous, base + LOG + "Hello", rl.HelloRequest())
        assert got.status == 16 and got.http.status_code == 401
        assert got.http.json()["error"]["code"] == "UNAUTHORIZED"
    _, other = make_token(admin, ["elsewhere"], "admin")
    assert hello(admin, base, {"x-authorization": f"Bearer {other}"})[0] == 7
    _, reader = make_token(admin, [table], "read")
    with server.client(reader) as c:
        replica = V1Replica(c, base)
        replica.sync()  # a read token syncs
        result = execute(c, base, "r1", "INSERT INTO t(v) VALUES ('no')").one(
            px.ExecuteResults).results[0]
        assert result.error.message.startswith("SQLITE_READONLY: ") and "read access" in \
            result.error.message
    replica = V1Replica(admin, base)
    replica.sync()
    assert replica.committed is not None
    for session in ("", "not-the-one"):
        got = call(admin, base + LOG + "BatchLogEntries",
                   rl.LogOffset(next_offset=replica.committed + 1),
                   {"x-session-token": session} if session else {})
        assert (got.status, got.message) == (9, "NO_HELLO")
    headers = {"x-session-token": replica.session}
    g, frame_ = split(replica.committed)
    assert frame_ == 0  # the open generation's start
    for offset in (g << 32 | 2,  # the open generation has no frame yet
                   (g - 1) << 32 | 999,  # past the last generation's last frame
                   g << 32, (g + 9) << 32 | 1, 1):
        got = call(admin, base + LOG + "BatchLogEntries", rl.LogOffset(next_offset=offset),
                   headers)
        assert (got.status, got.message) == (9, "NEED_SNAPSHOT"), hex(offset)
    got = call(admin, base + LOG + "BatchLogEntries", rl.LogOffset(
        next_offset=replica.committed + 1, wal_flavor=rl.LogOffset.Libsql), headers)
    assert got.status == 3 and "wal_flavor" in got.message
    for body in (b"", frame(b"\xff\xff\xff"), frame(b"x", flag=1), b"\0\0\0\0\x09abc"):
        got = call(admin, base + LOG + "Hello", body)
        assert got.status == 3 and got.http.status_code == 400, body
        assert got.http.json()["error"]["code"] == "INVALID_REQUEST"
    r = admin.post(base + LOG + "Hello", content=frame(b""),
                   headers={"content-type": "application/json"})
    assert r.headers["grpc-status"] == "3" and "grpc-web" in r.headers["grpc-message"]
    bad_param = px.Step(query=px.Query(stmt="SELECT ?", positional=px.Positional(
        values=[px.Value(data=b"\x09")])))
    assert execute(admin, base, "c1", bad_param).status == 3
    later = px.Step(query=px.Query(stmt="SELECT 1"), cond=px.Cond(ok=px.OkCond(step=1)))
    got = execute(admin, base, "c1", later, "SELECT 2")
    assert got.status == 3 and "BATCH_COND_BAD_STEP" in got.message
    assert hello(admin, base)[0] == 0  # still serving


# -- the proxy ---------------------------------------------------------------------------------
def step(sql: str, *values: bytes, cond: px.Cond | None = None, skip: bool = False) -> px.Step:
    query_ = px.Query(stmt=sql, skip_rows=skip,
                      positional=px.Positional(values=[px.Value(data=v) for v in values]))
    return px.Step(query=query_, cond=cond) if cond is not None else px.Step(query=query_)


def decoded(value: px.Value) -> Any:
    out = server_v1._value(value.data, 0)
    return p.to_sql(out)


def test_programs_values_and_transactions(admin: httpx.Client, table: str,
                                          tmp_path: Path) -> None:
    base = f"/grpc/db/{table}"
    blob = b"\0\x01\xff" * 100
    got = execute(admin, base, "v1", step(
        "SELECT ?, ?, ?, ?, ?, 9223372036854775807", bincode(0),
        bincode(1, struct.pack("<q", -5)), bincode(2, struct.pack("<d", 2.25)),
        bincode(3, struct.pack("<Q", 3) + b"abc"), bincode(4, struct.pack("<Q", len(blob)) +
                                                             blob)),
        step("INSERT INTO t(v) VALUES ('x')", skip=True)).one(px.ExecuteResults)
    assert got.state == px.INIT
    row = got.results[0].row
    assert [decoded(v) for v in row.rows[0].values] == [None, -5, 2.25, "abc", blob, 2**63 - 1]
    assert len(row.column_descriptions) == 6
    inserted = got.results[1].row
    assert inserted.affected_row_count == 1 and inserted.last_insert_rowid == 1
    # the client's transactional batch: BEGIN, steps each on the one before, COMMIT,
    # ROLLBACK unless the COMMIT ran
    def tx_batch(*sqls: str) -> list[px.Step]:
        n = len(sqls)
        return [step("BEGIN TRANSACTION"),
                *(step(s, cond=px.Cond(ok=px.OkCond(step=i))) for i, s in enumerate(sqls)),
                step("COMMIT", cond=px.Cond(ok=px.OkCond(step=n))),
                step("ROLLBACK", cond=px.Cond(**{"not": px.NotCond(
                    cond=px.Cond(ok=px.OkCond(step=n + 1)))}))]
    got = execute(admin, base, "v1", *tx_batch("INSERT INTO t(v) VALUES ('a')",
                                                "INSERT INTO t(id, v) VALUES (1, 'dup')"))
    results = got.one(px.ExecuteResults).results
    assert results[2].error.message.startswith("SQLITE_CONSTRAINT: ")
    assert results[2].error.extended_code == 19
    assert results[3].row == px.ResultRows()  # COMMIT skipped; ROLLBACK ran
    assert admin_rows(admin, table) == [[1, "x"]]
    # BEGIN, INSERT and COMMIT as separate calls of one client_id
    answers = [execute(admin, base, "v2", sql).one(px.ExecuteResults) for sql in (
        "BEGIN", "INSERT INTO t(v) VALUES ('in tx')", "SELECT count(*) FROM t")]
    assert [a.state for a in answers] == [px.TXN] * 3
    assert decoded(answers[2].results[0].row.rows[0].values[0]) == 2  # its own write
    assert admin_rows(admin, table) == [[1, "x"]]  # not yet committed
    assert execute(admin, base, "v2", "COMMIT").one(px.ExecuteResults).state == px.INIT
    assert admin_rows(admin, table) == [[1, "x"], [2, "in tx"]]
    # Disconnect rolls back what the client held
    assert execute(admin, base, "v3", "BEGIN", "INSERT INTO t(v) VALUES ('gone')").one(
        px.ExecuteResults).state == px.TXN
    bye = call(admin, base + PROXY + "Disconnect", px.DisconnectMessage(client_id="v3"))
    assert bye.one(px.Ack) == px.Ack()
    assert admin_rows(admin, table) == [[1, "x"], [2, "in tx"]]
    described = call(admin, base + PROXY + "Describe", px.DescribeRequest(
        client_id="v4", stmt="SELECT v FROM t WHERE id = :id AND v > ?")).one(
        px.DescribeResult).description
    assert list(described.param_names) == [":id"] and described.param_count == 2
    assert [(c.name, c.decltype) for c in described.column_descriptions] == [("v", "TEXT")]
    wrong = call(admin, base + PROXY + "Describe", px.DescribeRequest(
        client_id="v4", stmt="SELEC 1")).one(px.DescribeResult)
    assert wrong.error.message.startswith("SQLITE_ERROR: ")


def test_an_idle_transaction_expires_and_says_so(admin: httpx.Client, table: str) -> None:
    """transaction_timeout (1 s here): rolled back; the client's next call gets
    TRANSACTION_TIMEOUT for each step, never an autocommit."""
    base = f"/grpc/db/{table}"
    execute(admin, base, "idle", "BEGIN", "INSERT INTO t(v) VALUES ('lost')").one(
        px.ExecuteResults)
    wait_until(lambda: query(admin, table, "INSERT INTO t(v) VALUES ('other')"
                             ).status_code == 200, what="the write lock given back")
    got = execute(admin, base, "idle", "INSERT INTO t(v) VALUES ('after')").one(
        px.ExecuteResults)
    assert got.state == px.INIT and len(got.results) == 1
    assert got.results[0].error.message.startswith("TRANSACTION_TIMEOUT: ")
    assert admin_rows(admin, table) == [[1, "other"]]
    assert execute(admin, base, "idle", "SELECT 1").one(px.ExecuteResults).results[0].HasField(
        "row")  # said once; the client_id is usable again


def test_caps_and_response_size(start_server: Callable[..., ServerProcess]) -> None:
    node = start_server(max_streams_per_token=1, max_response_bytes=4096)
    with node.client() as admin:
        ok(admin.post("/v1/databases", json={"name": "capped"}), 201)
        base = "/grpc/db/capped"
        assert execute(admin, base, "a", "BEGIN").one(px.ExecuteResults).state == px.TXN
        got = execute(admin, base, "b", "SELECT 1")
        assert got.status == 8 and "TOO_MANY_STREAMS" in got.message
        assert execute(admin, base, "a", "ROLLBACK").one(px.ExecuteResults).state == px.INIT
        got = execute(admin, base, "b", "SELECT zeroblob(10000)", "SELECT 1")
        results = got.one(px.ExecuteResults).results
        assert [r.error.message.split(":")[0] for r in results] == ["RESPONSE_TOO_LARGE"] * 2
        assert execute(admin, base, "c", "SELECT 1").status == 0  # the stream given back


def test_calls_of_one_client_id_at_once(admin: httpx.Client, table: str,
                                        server: ServerProcess) -> None:
    """Calls of one client_id run one at a time, on its stream while it lives: whatever the
    order, the transaction is the client's to end, and ending it frees the write lock."""
    base = f"/grpc/db/{table}"
    transports = [server.client() for _ in range(8)]  # type: ignore[attr-defined]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(
            lambda i: execute(transports[i], base, "same", "BEGIN IMMEDIATE" if i == 0 else
                              "SELECT 1").one(px.ExecuteResults), range(8)))
    assert answers[0].state == px.TXN
    assert execute(admin, base, "same", "ROLLBACK").one(px.ExecuteResults).state == px.INIT
    ok(query(admin, table, "INSERT INTO t(v) VALUES ('free')"))  # no lock left behind
    for c in transports:
        c.close()


def test_log_entries_streams_the_frames_there_are(admin: httpx.Client, table: str) -> None:
    replica = V1Replica(admin, f"/grpc/db/{table}")
    replica.sync()
    insert(admin, table, "a")
    assert replica.committed is not None
    got = call(admin, f"/grpc/db/{table}{LOG}LogEntries",
               rl.LogOffset(next_offset=replica.committed + 1),
               {"x-session-token": replica.session})
    assert got.status == 0 and 1 <= len(got.messages) <= 2  # a message a frame (batches of 2)
    for m in got.messages:
        f = rl.Frame()
        f.ParseFromString(m)
        assert len(f.data) == 24 + 4096
