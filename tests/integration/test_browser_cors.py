"""CORS in a real browser: Debian's Chromium (driven by Playwright, no browser download) loads
a page from another origin that calls a real `shoal serve` with a bearer token, over fetch
(native API and Hrana over HTTP, the bookmark read from the answer) and a Hrana WebSocket;
a page of an origin the node does not allow is blocked by the browser, and its WebSocket
refused by the node."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.api_support import ok, query
from tests.support.browser import MARKS, chromium, static_site
from tests.support.server import ServerProcess

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
pytestmark = MARKS

PAGE = "<!doctype html><title>app</title><p>an app on another origin</p>"

# what the page runs: the native API, Hrana over HTTP, then a Hrana WebSocket
SCRIPT = """async ([shoal, ws, db, token]) => {
  const out = {};
  try {
    const r = await fetch(`${shoal}/v1/databases/${db}/query`, {
      method: "POST",
      headers: {"Authorization": `Bearer ${token}`, "Content-Type": "application/json",
                "Idempotency-Key": crypto.randomUUID()},
      body: JSON.stringify({statements: ["SELECT v FROM t"]}),
    });
    out.status = r.status;
    out.rows = (await r.json()).results[0].rows;
    out.bookmark = r.headers.get("Shoal-Bookmark");
  } catch (e) { out.fetch_error = String(e); }
  try {
    const r = await fetch(`${shoal}/db/${db}/v3/pipeline`, {
      method: "POST",
      headers: {"Authorization": `Bearer ${token}`, "Content-Type": "application/json"},
      body: JSON.stringify({requests: [{type: "execute", stmt: {sql: "SELECT 40 + 2"}},
                                       {type: "close"}]}),
    });
    const body = await r.json();
    out.hrana = body.results[0].response.result.rows[0][0].value;
  } catch (e) { out.hrana_error = String(e); }
  out.ws = await new Promise((resolve) => {
    const socket = new WebSocket(`${ws}/db/${db}`, ["hrana3"]);
    socket.onopen = () => socket.send(JSON.stringify({type: "hello", jwt: token}));
    socket.onmessage = (m) => { socket.close(); resolve(JSON.parse(m.data).type); };
    socket.onerror = () => resolve("error");
    setTimeout(() => resolve("timeout"), 5000);
  });
  return out;
}"""


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A static site on a port of its own: the app's page, on another origin than the node."""
    with static_site(tmp_path_factory.mktemp("site"), PAGE) as port:
        yield port


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, pages: int) -> Iterator[ServerProcess]:
    n = ServerProcess(tmp_path_factory.mktemp("browser") / "data",
                      {"cors_origins": f"http://127.0.0.1:{pages}"})
    n.start()
    with n.client() as admin:
        ok(admin.post("/v1/databases", json={"name": "app"}), 201)
        ok(query(admin, "app", "CREATE TABLE t(v)", "INSERT INTO t VALUES ('from shoal')"))
    yield n
    n.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


def visit(browser: Any, node: ServerProcess, page_url: str, token: str) -> dict[str, Any]:
    """What SCRIPT finds from a page of ``page_url`` (a context of its own: no preflight
    cached by an earlier visit)."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(page_url)
        ws = node.url.replace("http://", "ws://")
        result: dict[str, Any] = page.evaluate(SCRIPT, [node.url, ws, "app", token])
        return result
    finally:
        context.close()


def test_a_page_of_an_allowed_origin_reads_and_one_of_another_is_blocked(
        browser: Any, node: ServerProcess, pages: int) -> None:
    token = node.admin_token
    allowed = visit(browser, node, f"http://127.0.0.1:{pages}/", token)
    assert allowed.get("status") == 200, allowed
    assert allowed["rows"] == [["from shoal"]]
    assert allowed["bookmark"]  # exposed: the page can carry it to its next read
    assert allowed["hrana"] == "42", allowed
    assert allowed["ws"] == "hello_ok", allowed

    blocked = visit(browser, node, f"http://localhost:{pages}/", token)  # another origin, same site
    assert "fetch_error" in blocked and "status" not in blocked, blocked  # the preflight: 403
    assert "hrana_error" in blocked, blocked
    assert blocked["ws"] == "error", blocked  # the node refused the upgrade

    # the database may allow that origin itself
    with httpx.Client(base_url=node.url, headers={"Authorization": f"Bearer {token}"}) as c:
        ok(c.put("/v1/databases/app/cors", json={"origins": [f"http://localhost:{pages}"]}))
    now = visit(browser, node, f"http://localhost:{pages}/", token)
    assert now.get("rows") == [["from shoal"]] and now["hrana"] == "42", now
    assert now["ws"] == "hello_ok", now
