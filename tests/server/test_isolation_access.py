"""Access mistakes between tenants (issue 12, cases 14-17), on nodes in process.

- Revoking a token needs admin over every database it reaches: a token that is admin on
  one database cannot revoke another tenant's token, nor a "*" one.
- A token does not outlive its database: a new database under a used name is out of
  the reach of every older scoped token naming it (after a restart and on a node with
  an empty disk too); until then, the deleted one stays within reach to undelete.
- A token for no database is refused, not turned into "*".

The store folder's modes (case 16) are checked on a real node, which generates its admin
token: tests/integration/test_isolation_access.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support.server import ServerProcess
from tests.support.storage import ok, run

ADMIN = "access-admin"


def token(http: httpx.Client, databases: list[str] | str, access: str) -> tuple[str, str]:
    made = ok(http.post("/v1/tokens", json={"databases": databases, "access": access}), 201)
    return made["id"], made["token"]


def code(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"] if r.status_code >= 400 else ""


def test_revoking_needs_authority_over_every_database_the_token_reaches(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    node = start_server(tmp_path / "node", store=(tmp_path / "store").as_uri(),
                        admin_token=ADMIN)
    with node.client() as http:
        for db in ("alpha", "beta"):
            ok(http.post("/v1/databases", json={"name": db}), 201)
        _, alpha_admin = token(http, ["alpha"], "admin")
        beta_id, beta_reader = token(http, ["beta"], "read")
        both_id, _ = token(http, ["alpha", "beta"], "read")
        star_id, _ = token(http, "*", "read")
        alpha_id, _ = token(http, ["alpha"], "write")
    with node.client(alpha_admin) as scoped:
        assert code(scoped.delete(f"/v1/tokens/{beta_id}")) == (403, "FORBIDDEN")
        assert code(scoped.delete(f"/v1/tokens/{both_id}")) == (403, "FORBIDDEN")
        assert code(scoped.delete(f"/v1/tokens/{star_id}")) == (403, "FORBIDDEN")
        assert code(scoped.delete("/v1/tokens/tok_nosuchtoken00")) == (404, "TOKEN_NOT_FOUND")
        assert scoped.delete(f"/v1/tokens/{alpha_id}").status_code == 204
    with node.client(beta_reader) as reader:
        run(reader, "beta", "SELECT 1")  # still works: the scoped admin could not revoke it
    with node.client() as http:
        assert http.delete(f"/v1/tokens/{star_id}").status_code == 204  # "*" admin may


def test_a_token_does_not_outlive_its_database(start_server: Callable[..., ServerProcess],
                                               tmp_path: Path) -> None:
    settings = {"store": (tmp_path / "store").as_uri(), "admin_token": ADMIN}
    node = start_server(tmp_path / "node", **settings)
    with node.client() as http:
        ok(http.post("/v1/databases", json={"name": "tenantx"}), 201)
        ok(http.post("/v1/databases", json={"name": "other"}), 201)
        run(http, "tenantx", "CREATE TABLE t(v)", "INSERT INTO t VALUES ('old tenant')")
        _, old = token(http, ["tenantx", "other"], "admin")
    with node.client(old) as stale:
        run(stale, "tenantx", "SELECT * FROM t")
        assert stale.delete("/v1/databases/tenantx").status_code == 204
        # its own mistake stays within its reach until the name is used again
        gone = ok(stale.get("/v1/databases?deleted=true"))["databases"]
        assert [d["name"] for d in gone] == ["tenantx"]
        ok(stale.post("/v1/databases/tenantx/undelete"))
        assert stale.delete("/v1/databases/tenantx").status_code == 204
    with node.client() as http:  # a new tenant gets the name
        ok(http.post("/v1/databases", json={"name": "tenantx"}), 201)
        run(http, "tenantx", "CREATE TABLE secrets(v)", "INSERT INTO secrets VALUES ('new')")

    def locked_out(n: ServerProcess) -> None:
        with n.client(old) as stale:
            r = stale.post("/v1/databases/tenantx/query",
                           json={"statements": ["SELECT * FROM secrets"]})
            assert code(r) == (403, "FORBIDDEN"), r.text
            assert code(stale.delete("/v1/databases/tenantx")) == (403, "FORBIDDEN")
            assert ok(stale.get("/v1/databases?deleted=true"))["databases"] == []
            run(stale, "other", "SELECT 1")  # the rest of its scope is untouched

    locked_out(node)
    node.stop()
    locked_out(node.start())  # the narrowing is kept in the store
    node.stop()
    locked_out(start_server(tmp_path / "fresh", **settings))


def test_a_local_only_node_narrows_tokens_too(start_server: Callable[..., ServerProcess],
                                              tmp_path: Path) -> None:
    node = start_server(tmp_path / "node", store="none", admin_token=ADMIN)
    with node.client() as http:
        ok(http.post("/v1/databases", json={"name": "solo"}), 201)
        _, old = token(http, ["solo"], "read")
        assert http.delete("/v1/databases/solo").status_code == 204
        ok(http.post("/v1/databases", json={"name": "solo"}), 201)
    node.stop()
    node.start()
    with node.client(old) as stale:
        r = stale.post("/v1/databases/solo/query", json={"statements": ["SELECT 1"]})
        assert code(r) == (403, "FORBIDDEN"), r.text


def test_a_token_for_no_database_is_refused(start_server: Callable[..., ServerProcess],
                                            tmp_path: Path) -> None:
    node = start_server(tmp_path / "node", admin_token=ADMIN)
    with node.client() as http:
        r = http.post("/v1/tokens", json={"databases": [], "access": "read"})
        assert code(r) == (400, "INVALID_REQUEST"), r.text
        # a name not yet created is fine (its scope), and it answers as given
        assert ok(http.post("/v1/tokens", json={"databases": ["x"], "access": "read"}),
                  201)["databases"] == ["x"]
