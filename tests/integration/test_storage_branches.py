"""Branches against a model: create (latest or at a bookmark), write, reset, delete.

A Hypothesis state machine drives the API of a real node. The model is a list
of rows per branch: a new branch starts as a copy of its source's rows (at the
bookmark, if one is given), a reset copies its parent's current rows, and a
write appends to one branch only. After every step every branch must hold
exactly its model rows: parent and child never see each other's later writes.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import httpx
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from tests.support.server import ServerProcess
from tests.support.storage import iso, ok, path, rows, run

_databases = itertools.count()


class Branches(RuleBasedStateMachine):
    http: httpx.Client  # set by the test before the machine runs

    def __init__(self) -> None:
        super().__init__()
        self.db = f"branchy{next(_databases)}"
        ok(self.http.post("/v1/databases", json={"name": self.db}), 201)
        run(self.http, self.db, "CREATE TABLE t(v TEXT)")
        self.rows: dict[str, list[str]] = {"main": []}
        self.parent: dict[str, str | None] = {"main": None}
        self.marks: list[tuple[str, str, list[str]]] = []  # (branch, bookmark, rows then)
        self.names = itertools.count()

    def _pick(self, data: st.DataObject, *, children: bool = False) -> str | None:
        choices = sorted(b for b in self.rows if not children or self.parent[b] is not None)
        return data.draw(st.sampled_from(choices)) if choices else None

    @rule(data=st.data())
    def write(self, data: st.DataObject) -> None:
        branch = self._pick(data)
        assert branch is not None
        value = f"{branch}-{len(self.rows[branch])}-{next(self.names)}"
        meta = run(self.http, self.db, {"sql": "INSERT INTO t VALUES (?)", "args": [value]},
                   branch=branch)["meta"]
        self.rows[branch].append(value)
        self.marks.append((branch, meta["bookmark"], list(self.rows[branch])))

    @rule(data=st.data())
    def create(self, data: st.DataObject) -> None:
        source = self._pick(data)
        assert source is not None
        name = f"b{next(self.names)}"
        made = ok(self.http.post(f"/v1/databases/{self.db}/branches",
                                 json={"name": name, "from": source}), 201)
        assert (made["name"], made["parent"]) == (name, source)
        self.rows[name] = list(self.rows[source])
        self.parent[name] = source

    @rule(data=st.data())
    def create_at_bookmark(self, data: st.DataObject) -> None:
        if not self.marks:
            return
        source, bookmark, then = data.draw(st.sampled_from(self.marks))
        name = f"b{next(self.names)}"
        ok(self.http.post(f"/v1/databases/{self.db}/branches",
                          json={"name": name, "at": {"bookmark": bookmark}}), 201)
        self.rows[name] = list(then)
        self.parent[name] = source

    @rule(data=st.data())
    def create_existing(self, data: st.DataObject) -> None:
        name = self._pick(data)
        r = self.http.post(f"/v1/databases/{self.db}/branches", json={"name": name})
        assert r.status_code == 409 and r.json()["error"]["code"] == "BRANCH_EXISTS", r.text

    @rule(data=st.data())
    def reset(self, data: st.DataObject) -> None:
        branch = self._pick(data, children=True)
        if branch is None:
            return
        parent = self.parent[branch]
        assert parent is not None
        r = self.http.post(f"/v1/databases/{self.db}/branches/{branch}/reset")
        if parent not in self.rows:  # its parent was deleted: nothing to reset to
            assert r.status_code == 404 and r.json()["error"]["code"] == "BRANCH_NOT_FOUND"
            return
        ok(r)
        self.rows[branch] = list(self.rows[parent])

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        branch = self._pick(data, children=True)
        if branch is None:
            return
        assert self.http.delete(f"/v1/databases/{self.db}/branches/{branch}").status_code == 204
        del self.rows[branch]
        r = self.http.post(path(self.db, branch), json={"statements": ["SELECT 1"]})
        assert r.status_code == 404 and r.json()["error"]["code"] == "BRANCH_NOT_FOUND"

    @invariant()
    def every_branch_holds_its_own_rows(self) -> None:
        listed = ok(self.http.get(f"/v1/databases/{self.db}/branches"))["branches"]
        assert sorted(b["name"] for b in listed) == sorted(self.rows)
        for branch, expected in self.rows.items():
            found = [r[0] for r in rows(self.http, self.db, "SELECT v FROM t ORDER BY rowid",
                                        branch)]
            assert found == expected, branch

    def teardown(self) -> None:
        self.http.delete(f"/v1/databases/{self.db}")


def test_branches_are_isolated(admin: httpx.Client, new_db: Callable[[], str]) -> None:
    Branches.http = admin
    run_state_machine_as_test(Branches, settings=settings(
        max_examples=12, stateful_step_count=12, deadline=None, derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))


def test_materialise_hydrates_the_branch_before_answering(
        server: ServerProcess, admin: httpx.Client, new_db: Callable[[], str]) -> None:
    """By default a branch is two records and its first query hydrates it; with
    "materialise" the 201 comes once its file is on the node, so that query does not."""
    db = new_db()
    run(admin, db, "CREATE TABLE t(v TEXT)", "INSERT INTO t VALUES ('a')")
    local = server.data_dir / "dbs" / db
    ok(admin.post(f"/v1/databases/{db}/branches", json={"name": "lazy"}), 201)
    assert not (local / "lazy.db").exists()
    made = ok(admin.post(f"/v1/databases/{db}/branches",
                         json={"name": "ready", "materialise": True}), 201)
    assert made["fork_txid"] == 1
    assert (local / "ready.db").exists()
    assert rows(admin, db, "SELECT v FROM t", "ready") == [["a"]]
    r = admin.post(f"/v1/databases/{db}/branches", json={"name": "x", "materialise": "yes"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_REQUEST"


def test_branch_endpoints(admin: httpx.Client, new_db: Callable[[], str]) -> None:
    """Data endpoints under /branches/{name}/: query, transactions, usage, history."""
    db = new_db()
    run(admin, db, "CREATE TABLE t(v TEXT)", "INSERT INTO t VALUES ('before')")
    made = ok(admin.post(f"/v1/databases/{db}/branches", json={"name": "preview"}), 201)
    assert made["fork_txid"] == 1 and made["txid"] == 1 and made["size_bytes"] == 0
    tx = ok(admin.post(path(db, "preview", "transactions"), json={}), 201)["id"]
    ok(admin.post(path(db, "preview", f"transactions/{tx}/query"),
                  json={"statements": ["INSERT INTO t VALUES ('in tx')"]}))
    # a transaction belongs to its branch
    r = admin.post(path(db, "main", f"transactions/{tx}/query"),
                   json={"statements": ["SELECT 1"]})
    assert r.status_code == 404
    done = ok(admin.post(path(db, "preview", f"transactions/{tx}/commit")))
    assert done["txid"] == 2
    assert rows(admin, db, "SELECT v FROM t", "preview") == [["before"], ["in tx"]]
    assert rows(admin, db, "SELECT v FROM t") == [["before"]]
    usage = ok(admin.get(path(db, "preview", "usage")))
    assert usage["branch"] == "preview" and usage["rows_written"] >= 1
    assert usage["storage_bytes"] > 0
    window = ok(admin.get(path(db, "preview", "history")))
    assert window["branch"] == "preview" and window["latest"]["txid"] == 2
    assert window["earliest"]["txid"] == 0  # the parent's snapshot is in its history
    one = ok(admin.get(f"/v1/databases/{db}/branches/preview"))
    assert (one["parent"], one["txid"]) == ("main", 2)
    # names are checked; main cannot be deleted; unknown branches are 404
    r = admin.post(f"/v1/databases/{db}/branches", json={"name": "Bad Name"})
    assert r.json()["error"]["code"] == "INVALID_NAME"
    assert r.json()["error"]["message"] == "invalid branch name 'Bad Name'"
    # a point in the future is refused (a local time read as UTC, most likely); one a few
    # seconds ahead, within clock skew between hosts, is the latest state
    for ahead, code in ((3 * 3600, "OUTSIDE_HISTORY"), (5, None)):
        at = {"timestamp": iso(time.time() + ahead)}
        r = admin.post(f"/v1/databases/{db}/branches", json={"name": f"ahead{ahead}", "at": at})
        if code:
            assert r.json()["error"]["code"] == code, r.text
        else:
            assert ok(r, 201)["fork_txid"] == 1  # main's latest
    r = admin.delete(f"/v1/databases/{db}/branches/main")
    assert r.json()["error"]["code"] == "INVALID_REQUEST"
    r = admin.post(f"/v1/databases/{db}/branches/main/reset")
    assert r.json()["error"]["code"] == "INVALID_REQUEST"
    for method, url in (("GET", "branches/ghost"), ("DELETE", "branches/ghost"),
                        ("POST", "branches/ghost/reset"), ("GET", "branches/ghost/usage"),
                        ("POST", "branches/ghost/query")):
        r = admin.request(method, f"/v1/databases/{db}/{url}",
                          json={"statements": ["SELECT 1"]} if url.endswith("query") else None)
        assert r.json()["error"]["code"] == "BRANCH_NOT_FOUND", (method, url, r.text)
    info = ok(admin.get(f"/v1/databases/{db}"))
    assert sorted(b["name"] for b in info["branches"]) == ["ahead5", "main", "preview"]
    # deleting the database removes its branches too; the name starts afresh
    assert admin.delete(f"/v1/databases/{db}").status_code == 204
    ok(admin.post("/v1/databases", json={"name": db}), 201)
    names = [b["name"] for b in ok(admin.get(f"/v1/databases/{db}/branches"))["branches"]]
    assert names == ["main"]


def test_openapi_describes_branches_and_restore(admin: httpx.Client) -> None:
    doc = ok(admin.get("/openapi.json"))
    for route, method, body in (
        ("/v1/databases/{db}/branches", "post", "CreateBranchRequest"),
        ("/v1/databases/{db}/restore", "post", "RestoreRequest"),
        ("/v1/databases/{db}/branches/{branch}/query", "post", "QueryRequest"),
        ("/v1/databases/{db}/branches", "get", None),
        ("/v1/databases/{db}/history", "get", None),
        ("/v1/databases/{db}/branches/{branch}/reset", "post", None),
        ("/v1/databases/{db}/branches/{branch}", "delete", None),
    ):
        op = doc["paths"][route][method]
        if body:
            assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"] \
                == f"#/components/schemas/{body}"
    create = doc["components"]["schemas"]["CreateBranchRequest"]
    assert {"name", "from", "at"} <= set(create["properties"])
