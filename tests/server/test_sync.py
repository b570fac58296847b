"""libSQL's HTTP sync protocol in process (server/sync.py, engine/sync.py): a model replica
that does what the clients do (libsql/src/sync.rs: export, pull, apply each commit's frames,
move to the next generation at its end) checks the frames across generations, what a sync
downloads (each changed page once), restores, compaction and retention; then addressing,
access and bad input. The published clients are driven in
tests/conformance/test_embedded_replicas.py."""

from __future__ import annotations

import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shoal.log.retention import apply_retention
from shoal.storage import open_store
from shoal.tokens import Principal
from tests.integration.api_support import error_of, make_token, ok, query
from tests.support.replicas import ROWS, admin_rows, insert
from tests.support.server import ServerProcess

PAGE, HEADER = 4096, 24
FRAME = PAGE + HEADER


class Replica:
    """What a libSQL client keeps: the file at a generation's start plus the frames of its
    commits (applied here straight into the image, as a checkpoint would)."""

    def __init__(self, client: httpx.Client, base: str, batch: int = 128):
        self.client, self.base, self.batch = client, base, batch
        self.image = bytearray()
        self.generation = 0
        self.frame = 0  # the last frame of a whole commit applied
        self.pulls = 0
        self.received = 0  # frames

    def bootstrap(self) -> None:
        self.generation = ok(self.client.get(f"{self.base}/info"))["current_generation"]
        r = self.client.get(f"{self.base}/export/{self.generation}")
        assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
        self.image = bytearray(r.content)
        assert len(self.image) % PAGE == 0

    def sync(self) -> None:
        if not self.image:
            self.bootstrap()
        pending: list[bytes] = []
        while True:
            start = self.frame + len(pending) + 1
            r = self.client.get(f"{self.base}/sync/{self.generation}/{start}/"
                                f"{start + self.batch}")
            self.pulls += 1
            if r.status_code == 400:  # the generation's end
                assert not pending, "a generation ended inside a commit"
                following = r.json()["generation"]
                if self.generation >= following:
                    return
                self.generation, self.frame = self.generation + 1, 0
                continue
            assert r.status_code == 200, r.text
            body = r.content
            assert body and len(body) % FRAME == 0 and len(body) <= self.batch * FRAME
            self.received += len(body) // FRAME
            for at in range(0, len(body), FRAME):
                frame = body[at:at + FRAME]
                pending.append(frame)
                _, size = struct.unpack(">II", frame[:8])
                assert frame[8:HEADER] == bytes(16)
                if size:
                    self._commit(pending, size)
                    self.frame += len(pending)
                    pending = []

    def _commit(self, frames: list[bytes], size: int) -> None:
        for frame in frames:
            pgno, _ = struct.unpack(">II", frame[:8])
            end = pgno * PAGE
            if len(self.image) < end:
                self.image.extend(bytes(end - len(self.image)))
            self.image[end - PAGE:end] = frame[HEADER:]
        del self.image[size * PAGE:]
        if len(self.image) < size * PAGE:
            self.image.extend(bytes(size * PAGE - len(self.image)))

    def rows(self, tmp: Path) -> list[list[Any]]:
        """integrity_check on the image, then its rows."""
        path = tmp / "replica-check.db"
        path.write_bytes(bytes(self.image))
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            return [list(row) for row in conn.execute(ROWS)]
        finally:
            conn.close()
            path.unlink()




def test_frames_across_generations_in_small_pulls(admin: httpx.Client, table: str,
                                                  tmp_path: Path) -> None:
    """Pulls of 2 frames (a generation's commit cut in pieces), a generation per sync,
    with large commits among them: the replica equals the server after every sync."""
    replica = Replica(admin, f"/db/{table}", batch=2)
    replica.sync()
    assert replica.rows(tmp_path) == []
    first = replica.generation
    for round_ in range(4):
        insert(admin, table, *(f"r{round_}-{i}" for i in range(round_ + 2)))
        ok(query(admin, table, {"sql": "INSERT INTO t(v) SELECT hex(randomblob(3000)) FROM "
                                       "(SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3)"}))
        replica.sync()
        assert replica.rows(tmp_path) == admin_rows(admin, table)
    assert replica.generation - first == 4  # a generation cut at each sync
    # a new replica starts at the current generation's start and ends equal too
    fresh = Replica(admin, f"/db/{table}")
    fresh.sync()
    assert fresh.rows(tmp_path) == admin_rows(admin, table)
    assert fresh.generation == replica.generation


def test_a_sync_downloads_each_changed_page_once(admin: httpx.Client, table: str,
                                                tmp_path: Path) -> None:
    """300 commits since the last sync, most of them on the same few pages: one
    generation, the newest version of each page that changed."""
    replica = Replica(admin, f"/db/{table}")
    insert(admin, table, "a")
    replica.sync()
    before, replica.received = bytes(replica.image), 0
    insert(admin, table, *(f"row {i}" for i in range(300)))
    replica.sync()
    assert replica.rows(tmp_path) == admin_rows(admin, table)
    after = bytes(replica.image)
    changed = sum(before[at:at + PAGE] != after[at:at + PAGE]
                  for at in range(0, len(after), PAGE))
    assert changed <= replica.received <= changed + 1  # (a page may be written as it was)
    assert replica.received < 30  # against 600 and more: each commit's pages


def test_restores_move_replicas_across_the_bridge(admin: httpx.Client, table: str,
                                                  tmp_path: Path) -> None:
    """A replica in the line a restore left (at its last generation or an older one)
    reaches the restored state and follows on; one two restores behind is told to start
    again."""
    mark = insert(admin, table, "a", "b")
    old = Replica(admin, f"/db/{table}")
    old.sync()  # in an older generation of the line the restore leaves
    insert(admin, table, "c", "d", "e", "f")
    last = Replica(admin, f"/db/{table}", batch=3)
    last.sync()  # at that line's last generation
    ok(admin.post(f"/v1/databases/{table}/restore", json={"branch": "main", "bookmark": mark}))
    insert(admin, table, "after")
    for replica in (old, last):
        replica.sync()
        assert replica.rows(tmp_path) == admin_rows(admin, table)
        assert [row[1] for row in replica.rows(tmp_path)] == ["a", "b", "after"]
    mark = insert(admin, table, "x")
    ok(admin.post(f"/v1/databases/{table}/restore", json={"branch": "main", "bookmark": mark}))
    insert(admin, table, "y")
    last.sync()  # one restore behind: over the bridge again
    assert last.rows(tmp_path) == admin_rows(admin, table)
    ok(admin.post(f"/v1/databases/{table}/restore", json={"branch": "main", "bookmark": mark}))
    ok(admin.post(f"/v1/databases/{table}/restore", json={"branch": "main", "bookmark": mark}))
    r = admin.get(f"/db/{table}/sync/{last.generation}/{last.frame + 1}/{last.frame + 9}")
    assert "no longer keeps" in error_of(r, 410, "REPLICA_EXPIRED")["message"]


def test_compaction_is_one_commit_of_every_page(admin: httpx.Client, table: str,
                                                tmp_path: Path) -> None:
    """VACUUM's txid is kept only as a snapshot: a replica before it gets every page."""
    insert(admin, table, *(f"v{i}" for i in range(5)))
    replica = Replica(admin, f"/db/{table}")
    replica.sync()
    ok(query(admin, table, "DELETE FROM t WHERE id % 2 = 0"))
    ok(admin.post(f"/v1/databases/{table}/compact"))
    insert(admin, table, "after")
    replica.sync()
    assert replica.rows(tmp_path) == admin_rows(admin, table)


def test_a_replica_past_retention_or_of_another_history_is_told(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    """Segments gone from the store (retention): 410 REPLICA_EXPIRED, never wrong frames;
    a replica of a database deleted and made again under its name: the same."""
    node = start_server()
    with node.client() as admin:
        ok(admin.post("/v1/databases", json={"name": "gone"}), 201)
        ok(query(admin, "gone", "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"))
        replica = Replica(admin, "/db/gone")
        replica.sync()
        insert(admin, "gone", *(f"v{i}" for i in range(8)))
        Replica(admin, "/db/gone").sync()  # cuts the generation the first one is in
    node.restart()  # nothing of it left in memory or in the node's files
    store = open_store(node.store_url)  # type: ignore[attr-defined]
    for info in store.list("dbs/gone/log/"):
        store.delete(info.key)
    with node.client() as admin:
        r = admin.get(f"/db/gone/sync/{replica.generation}/1/10")
        assert "no longer keeps" in error_of(r, 410, "REPLICA_EXPIRED")["message"]
        assert admin.delete("/v1/databases/gone").status_code == 204
        ok(admin.post("/v1/databases", json={"name": "gone"}), 201)
        r = admin.get(f"/db/gone/sync/{replica.generation}/1/10")
        assert error_of(r, 410, "REPLICA_EXPIRED")["message"]


def test_addressing(admin: httpx.Client, table: str, server: ServerProcess,
                    new_db: Callable[[], str]) -> None:
    """The database from the path, a branch's path, x-namespace, the host's first label,
    or a token for exactly one database; none of those at the root: DATABASE_REQUIRED."""
    insert(admin, table, "a")
    ok(admin.post(f"/v1/databases/{table}/branches", json={"name": "dev"}), 201)
    want = ok(admin.get(f"/db/{table}/info"))
    assert want["current_generation"] >= 1
    assert ok(admin.get("/info", headers={"x-namespace": table})) == want
    assert ok(admin.get("/info", headers={"host": f"{table}.db.example.com"})) == want
    assert ok(admin.get(f"/db/{table}/branches/dev/info")) != want  # its own numbering
    _, token = make_token(admin, [table], "read")
    with server.client(token) as reader:
        assert ok(reader.get("/info")) == want
        # the token's database comes before the host's: a database named like the node's
        # host changes nothing for requests that name theirs
        other = new_db()
        assert ok(reader.get("/info", headers={"host": f"{other}.example.com"})) == want
    # writes through a replica go over Hrana at the same URL: the host names it there too
    pipeline = {"requests": [{"type": "execute", "stmt": {"sql": "SELECT count(*) FROM t"}},
                             {"type": "close"}]}
    r = ok(admin.post("/v2/pipeline", json=pipeline, headers={"host": f"{table}.example.com"}))
    assert r["results"][0]["response"]["result"]["rows"] == [[{"type": "integer",
                                                               "value": "1"}]]
    error_of(admin.get("/info"), 400, "DATABASE_REQUIRED")
    error_of(admin.get("/info", headers={"host": "nosuchdb.example.com"}), 400,
             "DATABASE_REQUIRED")
    error_of(admin.get("/info", headers={"host": "127.0.0.1:8080"}), 400, "DATABASE_REQUIRED")
    error_of(admin.get("/db/nosuchdb/info"), 404, "DATABASE_NOT_FOUND")
    error_of(admin.get(f"/db/{table}/branches/nope/info"), 404, "BRANCH_NOT_FOUND")


def test_access_and_bad_input(admin: httpx.Client, table: str, server: ServerProcess) -> None:
    g = ok(admin.get(f"/db/{table}/info"))["current_generation"]
    insert(admin, table, "a")  # the next pull of g finds it
    with server.client("") as anonymous:
        error_of(anonymous.get(f"/db/{table}/info"), 401, "UNAUTHORIZED")
    _, other = make_token(admin, ["elsewhere"], "admin")
    with server.client(other) as c:
        error_of(c.get(f"/db/{table}/sync/{g}/1/2"), 403, "FORBIDDEN")
    _, reader = make_token(admin, [table], "read")
    with server.client(reader) as c:
        assert c.get(f"/db/{table}/sync/{g}/1/2").status_code == 200
        error_of(c.post(f"/db/{table}/sync/{g}/1/2", content=b"x" * FRAME), 403, "READ_ONLY")
    r = admin.post(f"/db/{table}/sync/{g}/1/2", content=b"x" * FRAME)
    assert "offline" in error_of(r, 409, "SYNC_PUSH_UNSUPPORTED")["message"]
    error_of(admin.post(f"/db/{table}/sync/{g}/1/2/baton", content=b""), 409,
             "SYNC_PUSH_UNSUPPORTED")
    for path in (f"sync/{g}/0/5", f"sync/{g}/5/5", "sync/x/1/2", f"sync/{g}/1/-2",
                 f"sync/{2**32}/1/2", "sync/0/1/2", "export/0", "export/abc",
                 f"sync/{g}/{2**40}/{2**41}", "sync/\u00b2/1/2", f"sync/{'9' * 5000}/1/2",
                 f"export/{g:+d}", f"export/{g}.0"):
        error_of(admin.get(f"/db/{table}/{path}"), 400, "INVALID_REQUEST")
    error_of(admin.get(f"/db/{table}/export/{g + 5}"), 410, "REPLICA_EXPIRED")
    assert admin.get(f"/db/{table}/info").status_code == 200  # still serving


def test_a_node_without_a_store_keeps_no_log(start_server: Callable[..., ServerProcess],
                                             tmp_path: Path) -> None:
    node = start_server(tmp_path / "local", store="none")
    with node.client() as c:
        ok(c.post("/v1/databases", json={"name": "solo"}), 201)
        error_of(c.get("/db/solo/info"), 409, "HISTORY_DISABLED")


@pytest.fixture
def frames_of(admin: httpx.Client) -> Iterator[Callable[[str, int], bytes]]:
    def get(db: str, generation: int) -> bytes:
        r = admin.get(f"/db/{db}/sync/{generation}/1/1000")
        assert r.status_code == 200, r.text
        return r.content
    yield get


def test_frame_headers(admin: httpx.Client, table: str,
                       frames_of: Callable[[str, int], bytes]) -> None:
    """Big-endian page number, the database's size on a commit's last frame only, 16 zero
    bytes (the client's own WAL gets its salts and checksums)."""
    insert(admin, table, "a", "b", "c")
    g = ok(admin.get(f"/db/{table}/info"))["current_generation"]
    ok(query(admin, table, {"sql": "INSERT INTO t(v) SELECT hex(randomblob(3000)) FROM "
                                   "(SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3)"}))
    body = frames_of(table, g)
    heads = [struct.unpack(">II", body[at:at + 8]) for at in range(0, len(body), FRAME)]
    assert all(body[at + 8:at + HEADER] == bytes(16) for at in range(0, len(body), FRAME))
    sizes = [size for _, size in heads]
    ends = [i for i, size in enumerate(sizes) if size]
    assert ends[-1] == len(sizes) - 1  # whole commits
    big = sizes[ends[-2] + 1:] if len(ends) > 1 else sizes  # the last commit's frames
    assert len(big) >= 3 and big[:-1] == [0] * (len(big) - 1)  # its size on its last frame
    assert all(1 <= pgno <= sizes[-1] for pgno, _ in heads)
    after = len(sizes) + 1  # just past the end: the generation's end; further: a wrong place
    assert admin.get(f"/db/{table}/sync/{g}/{after}/{after + 9}").status_code == 400
    error_of(admin.get(f"/db/{table}/sync/{g}/{after + 1}/{after + 9}"), 410,
             "REPLICA_EXPIRED")


def test_replicas_syncing_at_once_while_writes_go_on(admin: httpx.Client, table: str,
                                                    server: ServerProcess,
                                                    tmp_path: Path) -> None:
    """Eight replicas syncing from threads while a writer commits: cuts are made once each
    (no replica sees a generation change under it), and every replica ends equal."""
    replicas = [Replica(admin, f"/db/{table}", batch=3) for _ in range(8)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def follow(replica: Replica) -> None:
        try:
            while not stop.is_set():
                replica.sync()
        except BaseException as exc:  # the test fails with it below
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=follow, args=(r,)) for r in replicas]
    for thread in threads:
        thread.start()
    try:
        for i in range(40):
            insert(admin, table, f"w{i}")
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert not errors, errors
    want = admin_rows(admin, table)
    for replica in replicas:
        replica.sync()
        assert replica.rows(tmp_path) == want
    assert len({r.generation for r in replicas}) == 1


def test_a_reset_branch_brings_its_replica_to_the_parents_state(
        admin: httpx.Client, table: str, tmp_path: Path) -> None:
    """A preview branch reset to its parent (the same move as a restore): its replica
    crosses over on its next sync."""
    insert(admin, table, "main 1")
    ok(admin.post(f"/v1/databases/{table}/branches", json={"name": "preview"}), 201)
    path = f"/v1/databases/{table}/branches/preview/query"
    ok(admin.post(path, json={"statements": [{"sql": "INSERT INTO t(v) VALUES ('preview')"}]}))
    replica = Replica(admin, f"/db/{table}/branches/preview")
    replica.sync()
    assert [row[1] for row in replica.rows(tmp_path)] == ["main 1", "preview"]
    insert(admin, table, "main 2")
    ok(admin.post(f"/v1/databases/{table}/branches/preview/reset"))
    replica.sync()
    assert replica.rows(tmp_path) == admin_rows(admin, table)
    assert [row[1] for row in replica.rows(tmp_path)] == ["main 1", "main 2"]


def test_a_replica_behind_retention_gets_a_snapshot(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    """Retention deleted the commits of the generation a replica is in (and of the next
    ones): the replica passes through them and gets every page of the first state the store
    can restore as one commit, then follows on."""
    node = start_server()
    with node.client() as admin:
        ok(admin.post("/v1/databases", json={"name": "old"}), 201)
        ok(query(admin, "old", "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
                 "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 60)"
                 " INSERT INTO t(v) SELECT printf('%.1000c', 'a') FROM n"))  # 15 pages or so
        stale = Replica(admin, "/db/old")
        stale.sync()
        other = Replica(admin, "/db/old")
        for round_ in range(3):  # generations the stale replica will have to pass: they
            # change the first pages, which nothing after the snapshot writes again
            ok(query(admin, "old", {"sql": "UPDATE t SET v = ? WHERE id <= 8",
                                    "args": [f"round {round_}"]}))
            other.sync()
        ok(admin.post("/v1/databases/old/compact"))  # a snapshot: history restorable from it
        insert(admin, "old", "after the snapshot")
        other.sync()
        insert(admin, "old", "newest")
    node.restart()  # nothing of the generations left in the node's files
    store = open_store(node.store_url)  # type: ignore[attr-defined]
    report = apply_retention(store, "old", now=time.time() + 3600, window=60, grace=0)
    assert any("/log/" in key for key in report.deleted)  # the old generations' commits
    kept = [info.key.rsplit("/", 1)[-1] for info in store.list("dbs/old/log/")]
    assert kept and all(int(name.split("-")[0]) > 5 for name in kept)  # none before it
    with node.client() as admin:
        stale.client = admin
        stale.sync()
        assert stale.rows(tmp_path) == admin_rows(admin, "old")
        assert [row[1] for row in stale.rows(tmp_path)][-2:] == ["after the snapshot",
                                                                  "newest"]
        insert(admin, "old", "then")
        stale.sync()
        assert stale.rows(tmp_path) == admin_rows(admin, "old")


def test_a_closed_generation_is_exactly_its_commits(admin: httpx.Client, table: str) -> None:
    """A generation cut while later commits are already durable (and in the leader's
    memory): its frames, applied to its start, make exactly the start of the next one."""
    g = ok(admin.get(f"/db/{table}/info"))["current_generation"]
    start = admin.get(f"/db/{table}/export/{g}").content
    insert(admin, table, *(f"in g {i}" for i in range(5)))
    assert ok(admin.get(f"/db/{table}/info"))["current_generation"] == g + 1  # cut: g closed
    insert(admin, table, *(f"after g {i}" for i in range(5)))  # durable, not in g
    frames = admin.get(f"/db/{table}/sync/{g}/1/1000").content
    image = Replica(admin, f"/db/{table}")
    image.image = bytearray(start)
    pending = [frames[at:at + FRAME] for at in range(0, len(frames), FRAME)]
    image._commit(pending, struct.unpack(">II", pending[-1][:8])[1])
    assert bytes(image.image) == admin.get(f"/db/{table}/export/{g + 1}").content


def test_tokens_that_may_not_sync(admin: httpx.Client, table: str, server: ServerProcess,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A token bound to another branch; a token bound by row rules (a replica would hold
    every row); a write token may sync, a token for another database may not."""
    ok(admin.post(f"/v1/databases/{table}/branches", json={"name": "dev"}), 201)
    made = ok(admin.post("/v1/tokens", json={"databases": [table], "access": "read",
                                             "branch": "dev"}), 201)
    with server.client(made["token"]) as on_dev:
        assert on_dev.get(f"/db/{table}/info").status_code == 200  # its own branch
        error_of(on_dev.get(f"/db/{table}/branches/main/info"), 403, "BRANCH_NOT_GRANTED")
    engine = server.app.engine  # type: ignore[attr-defined]
    user = Principal("ext-ann", frozenset({table}), "write", issuer="https://idp.test",
                     user="ann", claims={"sub": "ann"}, bound=True)
    real = engine.authenticate
    monkeypatch.setattr(engine, "authenticate",
                        lambda header: user if header == "Bearer ann" else real(header))
    with server.client("ann") as ann:
        for path in ("info", "export/1", "sync/1/1/2"):
            error_of(ann.get(f"/db/{table}/{path}"), 403, "RULES_BOUND")
