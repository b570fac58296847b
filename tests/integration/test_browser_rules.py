"""A browser app on row rules: Debian's Chromium (driven by Playwright, no browser download)
loads a page from another origin on 127.0.0.1 that signs in at a local test identity
provider (tests/support/idp.py: its sign-in and its JWKS over HTTPS), then, with the
user's token, writes and reads its own rows through the data API with fetch and follows
the change feed with EventSource (the token in the URL: EventSource sends no headers). A
second user, in another browser context, sees none of the first one's rows or changes,
and cannot write rows in the first one's name. The node is a real `shoal serve`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.api_support import ok, query
from tests.support.browser import MARKS, chromium, static_site
from tests.support.idp import IdentityProvider
from tests.support.server import ServerProcess

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
pytestmark = MARKS

PAGE = "<!doctype html><title>notes</title><p>a notes app on another origin</p>"

# what the page runs, as a user of the app: sign in, write, read, follow the feed
SCRIPT = """async ([idp, shoal, db, user, password, others]) => {
  const out = {events: []};
  const login = await fetch(`${idp}/login`, {method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({username: user, password})});
  out.login = login.status;
  if (login.status !== 200) return out;
  const token = (await login.json()).token;
  const auth = {"Authorization": `Bearer ${token}`, "Content-Type": "application/json"};
  const notes = `${shoal}/v1/databases/${db}/tables/notes`;
  // the feed from now on, over EventSource
  const head = await (await fetch(`${shoal}/v1/databases/${db}/changes`, {headers: auth})).json();
  const feed = new EventSource(`${shoal}/v1/databases/${db}/changes?since=` +
    encodeURIComponent(head.cursor) + `&access_token=` + encodeURIComponent(token));
  feed.addEventListener("change", (e) => out.events.push(JSON.parse(e.data)));
  out.feed = await new Promise((resolve) => {
    feed.onopen = () => resolve("open");
    feed.onerror = () => resolve("error");
    setTimeout(() => resolve("timeout"), 5000);
  });
  // write two notes of its own; a note in another's name is refused
  const made = await fetch(notes, {method: "POST", headers: auth,
    body: JSON.stringify([{owner: user, title: `${user} 1`}, {owner: user, title: `${user} 2`}])});
  out.insert = made.status;
  const forged = await fetch(notes, {method: "POST", headers: auth,
    body: JSON.stringify({owner: others, title: "forged"})});
  out.forged = [forged.status, (await forged.json()).error.code];
  // read: its rows only, whatever the filter asks
  const mine = await (await fetch(`${notes}?order=id&select=owner,title`, {headers: auth})).json();
  out.titles = mine.rows.map((r) => r.title);
  const theirs = await (await fetch(`${notes}?owner=eq.${others}`, {headers: auth})).json();
  out.theirs = theirs.rows.length;
  // SQL is closed to a token bound by rules
  const sql = await fetch(`${shoal}/v1/databases/${db}/query`, {method: "POST", headers: auth,
    body: JSON.stringify({statements: ["SELECT * FROM notes"]})});
  out.sql = [sql.status, (await sql.json()).error.code];
  // the feed: wait for this user's two inserts (and a moment for anything else)
  for (let i = 0; i < 100 && out.events.length < 2; i++) {
    await new Promise((r) => setTimeout(r, 100));
  }
  await new Promise((r) => setTimeout(r, 1500));
  feed.close();
  out.events = out.events.map((e) => [e.op, e.new && e.new.owner]);
  return out;
}"""


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A static site on a port of its own: the app's page, on another origin than the node."""
    with static_site(tmp_path_factory.mktemp("site"), PAGE) as port:
        yield port


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    with IdentityProvider(audience="notes-app") as provider:
        provider.accounts = {
            "alice": ("alice-pw", {"sub": "alice", "role": "member"}),
            "bob": ("bob-pw", {"sub": "bob", "role": "member"}),
        }
        yield provider


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, pages: int,
         idp: IdentityProvider) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("browser-rules")
    issuers = root / "issuers.json"
    issuers.write_text(json.dumps({"issuers": [idp.declaration(
        databases=["notes"], access={"claim": "role", "map": {"member": "write"}},
        rules=True)]}))
    n = ServerProcess(root / "data", {"cors_origins": f"http://127.0.0.1:{pages}",
                                      "issuers_file": str(issuers),
                                      "jwks_ca_file": IdentityProvider.ca_file()})
    n.start()
    with n.client() as admin:
        ok(admin.post("/v1/databases", json={"name": "notes"}), 201)
        ok(query(admin, "notes", "CREATE TABLE notes(id INTEGER PRIMARY KEY, "
                                 "owner TEXT NOT NULL, title TEXT)",
                 "INSERT INTO notes(owner, title) VALUES ('carol', 'not yours')"))
        rule = "owner = auth.sub"
        ok(admin.put("/v1/databases/notes/rules/notes",
                     json={"select": rule, "insert": rule, "update": rule, "delete": rule}))
    yield n
    n.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


def visit(browser: Any, node: ServerProcess, idp: IdentityProvider, pages: int, user: str,
          password: str, others: str) -> dict[str, Any]:
    """What SCRIPT finds for ``user``, in a browser context of its own (the test CA signs
    the provider's certificate: the context takes it as a user's trusted provider)."""
    context = browser.new_context(ignore_https_errors=True)
    try:
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{pages}/")
        result: dict[str, Any] = page.evaluate(
            SCRIPT, [idp.url, node.url, "notes", user, password, others])
        return result
    finally:
        context.close()


def test_each_user_reads_writes_and_follows_only_their_rows(
        browser: Any, node: ServerProcess, idp: IdentityProvider, pages: int) -> None:
    alice = visit(browser, node, idp, pages, "alice", "alice-pw", "bob")
    assert alice["login"] == 200 and alice["insert"] == 201, alice
    assert alice["forged"] == [403, "RULE_DENIED"], alice
    assert alice["titles"] == ["alice 1", "alice 2"], alice
    assert alice["theirs"] == 0 and alice["sql"] == [403, "RULES_BOUND"], alice
    assert alice["feed"] == "open", alice
    assert alice["events"] == [["insert", "alice"], ["insert", "alice"]], alice

    bob = visit(browser, node, idp, pages, "bob", "bob-pw", "alice")
    assert bob["titles"] == ["bob 1", "bob 2"], bob  # none of alice's, nor carol's
    assert bob["theirs"] == 0 and bob["forged"] == [403, "RULE_DENIED"], bob
    assert bob["events"] == [["insert", "bob"], ["insert", "bob"]], bob

    wrong = visit(browser, node, idp, pages, "alice", "guess", "bob")
    assert wrong["login"] == 401 and wrong["events"] == [], wrong
