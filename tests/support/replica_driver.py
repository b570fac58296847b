"""Drive an embedded replica of a published Python libSQL client through a plan of steps.

Run as ``python driver.py MODULE PLAN_JSON`` (``libsql`` or ``libsql_experimental``) in a
process of its own: each client bundles its own SQLite, kept apart from the test's. The
plan: ``{"file", "url", "token", "steps": [...]}`` (``"offline": true``: writes stay local
until a sync pushes them); a step is ``{"sync": true}``,
``{"query": sql}`` (its rows), ``{"exec": sql}`` (a write through the replica, then
commit), or ``{"tx": [sql, ...]}`` (BEGIN, each statement, COMMIT as separate calls). The
answers, one per step, are printed as JSON; a step that fails answers ``{"error": message}``
and ends the plan.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any


def run(module: str, plan: dict[str, Any]) -> list[Any]:
    libsql = importlib.import_module(module)
    out: list[Any] = []
    try:
        extra = {"offline": True} if plan.get("offline") else {}
        conn = libsql.connect(plan["file"], sync_url=plan["url"], auth_token=plan["token"],
                              **extra)
        for step in plan["steps"]:
            if "sync" in step:
                conn.sync()
                out.append("synced")
            elif "query" in step:
                out.append([list(row) for row in conn.execute(step["query"]).fetchall()])
            elif "exec" in step:
                conn.execute(step["exec"])
                conn.commit()
                out.append("done")
            elif "tx" in step:
                conn.execute("BEGIN")
                for sql in step["tx"]:
                    conn.execute(sql)
                conn.execute("COMMIT")
                out.append("done")
        conn.close()
    except Exception as exc:  # the client's own error, as its user would see it
        out.append({"error": f"{type(exc).__name__}: {exc}"})
    return out


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], json.loads(sys.argv[2]))))
