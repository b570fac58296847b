"""shoal.client's session against the App in process: the bookmark a response carries (the
``shoal-bookmark`` header, else the body's) goes out as ``Shoal-Bookmark`` on the next query
of the same database and branch, and on no other. Requests are recorded on the way out."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator

import httpx
import pytest

from shoal.client import Client
from tests.support.inprocess import InProcessNode
from tests.support.server import ServerProcess


class Recording(httpx.BaseTransport):
    """Passes requests on, keeping each with the bookmark its answer carried."""

    def __init__(self, inner: httpx.BaseTransport):
        self.inner = inner
        self.sent: list[tuple[httpx.Request, str | None]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        response.read()
        found = response.headers.get("shoal-bookmark")
        if found is None and response.status_code == 200:
            body = response.json()
            found = (body.get("meta") or {}).get("bookmark") or body.get("bookmark")
        self.sent.append((request, found))
        return response

    def last(self, path_end: str) -> tuple[str | None, str | None]:
        """(sent, answered) bookmarks of the last request whose path ends so."""
        request, answered = [s for s in self.sent if s[0].url.path.endswith(path_end)][-1]
        return request.headers.get("shoal-bookmark"), answered


def _names(bookmark: str) -> list[str]:
    return base64.urlsafe_b64decode(bookmark + "=" * (-len(bookmark) % 4)).decode().split("/")


@pytest.fixture
def session(server: ServerProcess,
            new_db: Callable[[], str]) -> Iterator[tuple[Client, Recording]]:
    assert isinstance(server, InProcessNode)
    recording = Recording(server.transport())
    with Client(server.url, server.admin_token, database=new_db(), transport=recording) as c:
        yield c, recording


def test_the_next_query_sends_the_bookmark_the_last_one_answered(
        session: tuple[Client, Recording]) -> None:
    c, recording = session
    c.execute("CREATE TABLE t (v)")
    _, made = recording.last("/query")
    assert made is not None and _names(made)[:2] == [c.default_database, "main"]
    assert c.bookmark() == made
    c.execute("INSERT INTO t VALUES (1)")
    sent, wrote = recording.last("/query")
    assert sent == made and wrote is not None and wrote != made
    assert c.execute("SELECT count(*) FROM t").rows == [(1,)]
    assert recording.last("/query")[0] == wrote


def test_a_branch_and_another_database_get_their_own(
        session: tuple[Client, Recording], new_db: Callable[[], str]) -> None:
    c, recording = session
    c.execute("CREATE TABLE t (v)")
    main = c.bookmark()
    c.create_branch("p")
    c.execute("INSERT INTO t VALUES ('p')", branch="p")
    on_p = recording.last("/branches/p/query")[1]
    assert on_p is not None and _names(on_p)[:2] == [c.default_database, "p"]
    other = new_db()
    c.execute("SELECT 1", database=other)
    assert recording.last(f"/{other}/query")[0] is None  # nothing of ours goes there
    c.execute("SELECT count(*) FROM t", branch="p")
    assert recording.last("/branches/p/query")[0] == on_p
    assert c.execute("SELECT count(*) FROM t").rows == [(0,)]
    assert recording.last(f"/{c.default_database}/query")[0] == main


def test_a_commit_bookmark_goes_with_the_next_begin_and_query(
        session: tuple[Client, Recording]) -> None:
    c, recording = session
    c.execute("CREATE TABLE t (v)")
    with c.transaction() as tx:
        tx.execute("INSERT INTO t VALUES (1)")
    assert tx.bookmark is not None and c.bookmark() == tx.bookmark
    with c.transaction(mode="read", consistency="strong") as read:
        assert read.execute("SELECT count(*) FROM t").rows == [(1,)]
    begin = [r for r, _ in recording.sent if r.url.path.endswith("/transactions")][-1]
    assert begin.headers.get("shoal-bookmark") == tx.bookmark
    assert begin.headers.get("shoal-consistency") == "strong"
