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
from tests.integration.api_support import ok, query, wait_until
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


def test_a_databases_own_issuer_and_its_revocation_reach_every_node(tmp_path: Path) -> None:
    """PUT .../issuers through one node: a token of that issuer is accepted through the
    other at once (the node that took the change tells the others); an issuer revoked
    through one node is refused through the other too (told at once, listed within a
    minute)."""
    with IdentityProvider(audience="tenant") as own:
        cluster = Cluster(tmp_path, jwks_ca_file=IdentityProvider.ca_file())
        try:
            nodes = [cluster.add() for _ in range(2)]
            settle(cluster, 2)
            with admin(nodes[0]) as http:
                ok(http.post("/v1/databases", json={"name": "t1"}), 201)
                ok(query(http, "t1", "CREATE TABLE x(v)", "INSERT INTO x VALUES (1)"))
                ok(http.put("/v1/databases/t1/issuers", json={"issuers": [own.declaration(
                    access="read", rules=False)]}))
            token = own.mint({"sub": "u1"})

            def status(node: Any) -> int:
                with httpx.Client(base_url=node.url, timeout=30,
                                  headers={"Authorization": f"Bearer {token}"}) as c:
                    return query(c, "t1", "SELECT v FROM x").status_code

            wait_until(lambda: status(nodes[1]) == 200, 10, "node 1 to trust the issuer")
            assert status(nodes[0]) == 200
            with admin(nodes[1]) as http:
                ok(http.post("/v1/issuers/revoke", json={"issuer": own.issuer,
                                                         "database": "t1"}))
            wait_until(lambda: status(nodes[0]) == 401, 10, "node 0 to refuse the token")
            assert status(nodes[1]) == 401
        finally:
            cluster.stop()
