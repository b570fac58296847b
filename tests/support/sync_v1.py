"""libSQL's V1 sync protocol from the client's side, for tests: gRPC-web calls over httpx, and
a model replica that does what libsql's replicator does (libsql/src/replication/
remote_client.rs, libsql-replication/src/replicator.rs and its injector): Hello, frames
from ``committed + 1`` (or the last frame received), NEED_SNAPSHOT -> Snapshot, a new log id
-> start again, until its committed frame reaches Hello's index."""

from __future__ import annotations

import sqlite3
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from google.protobuf.message import Message

from shoal.server.libsql_pb import proxy_pb2 as px
from shoal.server.libsql_pb import replication_log_pb2 as rl

M = TypeVar("M", bound=Message)
PAGE, HEADER = 4096, struct.Struct("<QQII")
LOG = "/wal_log.ReplicationLog/"
PROXY = "/proxy.Proxy/"


@dataclass
class Answer:
    """A call's outcome: its gRPC status and message (trailers or trailers-only headers),
    the HTTP answer, and its messages' bytes."""

    status: int
    message: str
    http: httpx.Response
    messages: list[bytes] = field(default_factory=list)

    def one(self, kind: type[M]) -> M:
        assert self.status == 0, (self.status, self.message, self.http.text[:500])
        assert len(self.messages) == 1, len(self.messages)
        out = kind()
        out.ParseFromString(self.messages[0])
        return out


def frame(data: bytes, flag: int = 0) -> bytes:
    return struct.pack(">BI", flag, len(data)) + data


def call(client: httpx.Client, path: str, msg: Message | bytes,
         headers: dict[str, str] | None = None) -> Answer:
    """One gRPC-web call (its body chunked, as the clients send it)."""
    data = msg if isinstance(msg, bytes) else frame(msg.SerializeToString())

    def chunks() -> Any:
        yield data[:3]
        yield data[3:]

    r = client.post(path, content=chunks(), headers={
        "content-type": "application/grpc-web", "te": "trailers", **(headers or {})})
    if "grpc-status" in r.headers:  # trailers-only
        return Answer(int(r.headers["grpc-status"]), r.headers.get("grpc-message", ""), r)
    assert r.status_code == 200, r.text
    body, at, messages = r.content, 0, []
    while at < len(body):
        flag, n = struct.unpack(">BI", body[at:at + 5])
        payload = body[at + 5:at + 5 + n]
        at += 5 + n
        if flag == 0x80:
            fields = dict(line.split(":", 1) for line in payload.decode().split("\r\n") if line)
            assert at == len(body), "the trailers frame ends the answer"
            return Answer(int(fields["grpc-status"]), fields.get("grpc-message", ""), r,
                          messages)
        messages.append(payload)
    raise AssertionError("an answer without trailers")


def split(number: int) -> tuple[int, int]:
    """(generation, frame) of a frame number (engine/sync_v1.py)."""
    return number >> 32, number & (1 << 32) - 1


class V1Replica:
    """A replica's image and position, as the client keeps them."""

    def __init__(self, client: httpx.Client, base: str, headers: dict[str, str] | None = None):
        self.client, self.base, self.headers = client, base, headers or {}
        self.image = bytearray()
        self.log_id: str | None = None
        self.committed: int | None = None  # the client's meta: last committed frame
        self.received: int | None = None  # last frame received (a batch may end mid-commit)
        self.pending: list[bytes] = []  # frames of a commit not yet whole
        self.session = ""
        self.index = 0
        self.calls: list[str] = []
        self.snapshots = 0
        self.snapshot_at = 0  # the last snapshot's frame number

    def _call(self, method: str, msg: Message) -> Answer:
        self.calls.append(method)
        headers = {**self.headers, "x-session-token": self.session} if self.session \
            else self.headers
        return call(self.client, self.base + method, msg, headers)

    def hello(self) -> None:
        found = self._call(LOG + "Hello", rl.HelloRequest(handshake_version=1)).one(
            rl.HelloResponse)
        if self.log_id is not None and found.log_id != self.log_id:  # LogIncompatible
            self.committed = self.received = None
            self.pending = []
        self.log_id, self.session = found.log_id, found.session_token.decode()
        assert found.HasField("current_replication_index")
        self.index = found.current_replication_index

    def sync(self, rounds: int = 10_000) -> None:
        """sync_oneshot: a handshake, then batches until committed >= Hello's index."""
        self.hello()
        for _ in range(rounds):
            if self.committed is not None and self.committed >= self.index:
                return
            offset = 0 if self.received is None else self.received + 1
            got = self._call(LOG + "BatchLogEntries", rl.LogOffset(next_offset=offset))
            if got.status == 9 and got.message == "NEED_SNAPSHOT":
                self.snapshot()
                continue
            if got.status == 9 and got.message == "NO_HELLO":
                self.hello()
                continue
            frames = got.one(rl.Frames).frames
            assert frames, f"no frames after {offset:#x} while at {self.committed} < " \
                           f"{self.index}: the client would ask forever"
            for f in frames:
                self._inject(f.data)
        raise AssertionError("the replica never caught up")

    def snapshot(self) -> None:
        self.snapshots += 1
        self.received, self.pending = self.committed, []  # the client's rollback
        got = self._call(LOG + "Snapshot", rl.LogOffset(next_offset=0))
        assert got.status == 0, (got.status, got.message)
        frames = []
        for m in got.messages:
            f = rl.Frame()
            f.ParseFromString(m)
            frames.append(f.data)
        assert frames
        numbers = {HEADER.unpack_from(f)[0] for f in frames}
        assert len(numbers) == 1  # one commit, one number
        self.snapshot_at = numbers.pop()
        assert [HEADER.unpack_from(f)[3] for f in frames][:-1] == [0] * (len(frames) - 1)
        for f in frames:
            self._inject(f, snapshot=True)

    def _inject(self, data: bytes, snapshot: bool = False) -> None:
        assert len(data) == HEADER.size + PAGE
        number, checksum, _, size = HEADER.unpack_from(data)
        assert checksum == 0
        if self.received is not None and not snapshot:
            assert number > self.received  # frames go up
        self.received = number
        self.pending.append(data)
        if size:
            for f in self.pending:
                pgno = HEADER.unpack_from(f)[2]
                end = pgno * PAGE
                if len(self.image) < end:
                    self.image.extend(bytes(end - len(self.image)))
                self.image[end - PAGE:end] = f[HEADER.size:]
            del self.image[size * PAGE:]
            self.image.extend(bytes(max(0, size * PAGE - len(self.image))))
            self.committed = max(HEADER.unpack_from(f)[0] for f in self.pending)
            self.pending = []

    def rows(self, tmp: Path, sql: str) -> list[list[Any]]:
        """integrity_check on the image, then the rows of ``sql``."""
        path = tmp / "v1-replica-check.db"
        path.write_bytes(bytes(self.image))
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            return [list(row) for row in conn.execute(sql)]
        finally:
            conn.close()
            path.unlink()


def execute(client: httpx.Client, base: str, client_id: str, *steps: px.Step | str,
            headers: dict[str, str] | None = None) -> Answer:
    """proxy.Proxy/Execute of a program (a string is a step of that SQL)."""
    program = px.Program(steps=[px.Step(query=px.Query(stmt=s)) if isinstance(s, str) else s
                                for s in steps])
    return call(client, base + PROXY + "Execute", px.ProgramReq(client_id=client_id,
                                                                pgm=program), headers)
