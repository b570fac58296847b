"""Row rules on a cluster of two real nodes on one store, both trusting one identity
provider: a user's token reads and writes rows through the node that does not lead the
database (forwarded to its leader, the rules applied there), follows the change feed there
with the token in ``access_token`` as an EventSource sends it (each page asked of the
leader with that token), and sees only its own rows either way; a rule set through either
node is in force through both at once."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

from tests.cluster.test_feed import leader_and_other
from tests.cluster.test_nodes import Cluster, admin, settle
from tests.integration.api_support import ok, query
from tests.support.idp import IdentityProvider


def test_a_user_reaches_only_their_rows_through_any_node(tmp_path: Path) -> None:
    with IdentityProvider(audience="app") as idp:
        (tmp_path / "issuers.json").write_text(json.dumps({"issuers": [idp.declaration(
            databases=["notes"], access="write", rules=True)]}))
        cluster = Cluster(tmp_path, issuers_file=str(tmp_path / "issuers.json"),
                          jwks_ca_file=IdentityProvider.ca_file())
        try:
            nodes = [cluster.add() for _ in range(2)]
            settle(cluster, 2)
            with admin(nodes[0]) as http:
                ok(http.post("/v1/databases", json={"name": "notes"}), 201)
                ok(query(http, "notes", "CREATE TABLE notes(id INTEGER PRIMARY KEY, "
                                        "owner TEXT NOT NULL, title TEXT)",
                         "INSERT INTO notes(owner, title) VALUES ('bob', 'his')"))
            leader, other = leader_and_other(nodes, "notes")
            rule = "owner = auth.sub"
            with admin(other) as http:  # set through the node that does not lead
                ok(http.put("/v1/databases/notes/rules/notes",
                            json={"select": rule, "insert": rule}))
            token = idp.mint({"sub": "alice"}, expires_in=600)
            base = "/v1/databases/notes/tables/notes"
            with httpx.Client(base_url=other.url, timeout=30,
                              headers={"Authorization": f"Bearer {token}"}) as alice:
                head = ok(alice.get("/v1/databases/notes/changes"))["cursor"]
                made = ok(alice.post(base, json={"owner": "alice", "title": "mine"}), 201)
                assert made["rows"][0]["owner"] == "alice"
                r = alice.post(base, json={"owner": "bob", "title": "forged"})
                assert r.status_code == 403 and r.json()["error"]["code"] == "RULE_DENIED"
                assert [x["title"] for x in ok(alice.get(base))["rows"]] == ["mine"]
                r = query(alice, "notes", "SELECT * FROM notes")
                assert r.status_code == 403 and r.json()["error"]["code"] == "RULES_BOUND"
            with admin(leader) as http:
                ok(query(http, "notes", "INSERT INTO notes(owner, title) "
                                        "VALUES ('bob', 'again'), ('alice', 'by admin')"))
            seen: list[dict[str, Any]] = []
            deadline = time.monotonic() + 20
            with httpx.Client(base_url=other.url, timeout=30) as browser:  # no header
                cursor = head
                while time.monotonic() < deadline and len(seen) < 2:
                    page = ok(browser.get("/v1/databases/notes/changes", params={
                        "since": cursor, "wait": "2", "access_token": token}))
                    seen += page["changes"]
                    cursor = page["cursor"]
                stream: list[str] = []
                with browser.stream("GET", "/v1/databases/notes/changes",
                                    params={"since": head, "access_token": token},
                                    headers={"accept": "text/event-stream"}) as events:
                    for line in events.iter_lines():
                        if line.startswith("data:"):
                            stream.append(json.loads(line[5:])["new"]["title"])
                        if len(stream) == 2:
                            break
            assert [(c["op"], c["new"]["title"]) for c in seen] == [
                ("insert", "mine"), ("insert", "by admin")], seen
            assert stream == ["mine", "by admin"]
        finally:
            cluster.stop()
