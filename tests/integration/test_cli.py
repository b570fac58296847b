"""The `shoal` client commands, run as real subprocesses against a real server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from shoal import cli
from shoal.client import Change, Client
from tests.support.receiver import Receiver
from tests.support.server import ServerProcess

Run = Callable[..., subprocess.CompletedProcess[str]]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    env.update(extra)
    env["COLUMNS"] = "200"  # wide tables: cells stay on one line for the assertions
    return env


@pytest.fixture
def shoal(server: ServerProcess) -> Run:
    """shoal(*args, input=..., env=..., cwd=...): `python -m shoal ...` with URL and token set."""

    def run(*args: str, input: str | None = None, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shoal", *args], input=input, capture_output=True,
            text=True, timeout=60, cwd=cwd,
            env=env if env is not None else _env(SHOAL_URL=server.url,
                                                 SHOAL_TOKEN=server.admin_token))

    return run


def _rows(admin: httpx.Client, db: str, sql: str) -> Any:
    """Set up or check through the HTTP API directly: one subprocess fewer each time."""
    r = admin.post(f"/v1/databases/{db}/query", json={"statements": [sql]})
    assert r.status_code == 200, r.text
    return r.json()["results"][0]["rows"]


def _json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_db_limits(shoal: Run, server: ServerProcess) -> None:
    _json(shoal("db", "create", "cli-limits", "--json"))
    shown = _json(shoal("db", "limits", "cli-limits", "--json"))
    assert shown["limits"] == {} and shown["effective"]["size_bytes"] == 0
    set_ = _json(shoal("db", "limits", "cli-limits", "--size-bytes", "1048576",
                       "--queries-per-second", "2.5", "--json"))
    assert set_["limits"] == {"size_bytes": 1048576, "queries_per_second": 2.5}
    more = _json(shoal("db", "limits", "cli-limits", "--rows-read", "100",
                       "--size-bytes", "default", "--json"))  # merged with what it had
    assert more["limits"] == {"rows_read": 100, "queries_per_second": 2.5}
    table = shoal("db", "limits", "cli-limits")
    assert table.returncode == 0 and "rows_read" in table.stdout and "(default)" in table.stdout
    bad = shoal("db", "limits", "cli-limits", "--period", "0")
    assert bad.returncode == 1 and bad.stderr.startswith("error INVALID_REQUEST: ")
    assert _json(shoal("db", "limits", "cli-limits", "--clear", "--json"))["limits"] == {}


def test_db_commands(shoal: Run, server: ServerProcess) -> None:
    created = _json(shoal("db", "create", "cli-db", "--json"))
    assert created["name"] == "cli-db"
    listed = shoal("db", "list")
    assert listed.returncode == 0 and "│ cli-db " in listed.stdout
    info = _json(shoal("db", "info", "cli-db", "--json"))
    assert info["name"] == "cli-db" and info["usage"]["database"] == "cli-db"
    table = shoal("db", "info", "cli-db")
    assert "size_bytes" in table.stdout and "main" in table.stdout
    again = shoal("db", "create", "cli-db")
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr.startswith("error DATABASE_EXISTS: ")
    unasked = shoal("db", "delete", "cli-db")  # no terminal to confirm on, no --yes
    assert unasked.returncode == 2 and "without --yes" in unasked.stderr
    assert _json(shoal("db", "info", "cli-db", "--json"))["name"] == "cli-db"
    deleted = shoal("db", "delete", "cli-db", "--yes")
    assert deleted.returncode == 0 and "deleted database cli-db" in deleted.stdout
    assert "undelete" in deleted.stdout
    missing = shoal("db", "info", "cli-db")
    assert missing.returncode == 1 and missing.stderr.startswith("error DATABASE_NOT_FOUND: ")
    gone = _json(shoal("db", "list", "--deleted", "--json"))["databases"]
    assert [d["branches"] for d in gone if d["name"] == "cli-db"] == [["main"]]
    back = _json(shoal("db", "undelete", "cli-db", "--json"))
    assert back["name"] == "cli-db"
    purged = shoal("db", "delete", "cli-db", "--yes", "--purge")
    assert purged.returncode == 0 and "and its history" in purged.stdout
    gone = _json(shoal("db", "list", "--deleted", "--json"))["databases"]
    assert "cli-db" not in {d["name"] for d in gone}
    nothing = shoal("db", "undelete", "cli-db")
    assert nothing.returncode == 1 and "DATABASE_NOT_FOUND" in nothing.stderr


def test_sql_command(shoal: Run, new_db: Callable[[], str]) -> None:
    db = new_db()
    made = shoal("sql", db, "CREATE TABLE t (id INTEGER PRIMARY KEY, v, b BLOB); "
                 "INSERT INTO t (v) VALUES ('one')")
    assert made.returncode == 0, made.stderr
    assert made.stdout.split("\n")[:2] == ["ok", "1 row affected"]
    out = _json(shoal("sql", db, "INSERT INTO t (v, b) VALUES (?, ?)",
                      "--arg", "9007199254740993", "--arg", '{"base64": "AAE="}', "--json"))
    assert out["results"][0]["rows_affected"] == 1 and out["meta"]["txid"] >= 2
    rows = _json(shoal("sql", db, "SELECT v, b, ? AS s, ? AS n, ? AS q FROM t ORDER BY id",
                       "--arg", "plain text", "--arg", "null", "--arg", '"007"', "--json"))
    assert rows["results"][0]["columns"] == ["v", "b", "s", "n", "q"]
    assert rows["results"][0]["rows"] == [
        ["one", None, "plain text", None, "007"],
        [{"integer": "9007199254740993"}, {"base64": "AAE="}, "plain text", None, "007"]]
    table = shoal("sql", db, "SELECT id, b FROM t ORDER BY id")
    assert table.returncode == 0
    assert "x'0001'" in table.stdout and "NULL" in table.stdout and "2 rows" in table.stdout


def test_show_bookmark_passes_a_session_from_one_command_to_the_next(
        shoal: Run, new_db: Callable[[], str]) -> None:
    db = new_db()
    made = shoal("sql", db, "CREATE TABLE t (v); INSERT INTO t VALUES (1)", "--show-bookmark")
    assert made.returncode == 0 and made.stdout.split("\n")[:2] == ["ok", "1 row affected"]
    bookmark = made.stderr.strip()
    assert bookmark and "\n" not in bookmark
    read = shoal("sql", db, "SELECT count(*) FROM t", "--bookmark", bookmark, "--strong",
                 "--show-bookmark", "--json")
    assert _json(read)["results"][0]["rows"] == [[1]]
    assert read.stderr.strip()  # the point this read saw: at or after the write's
    elsewhere = shoal("sql", new_db(), "SELECT 1", "--bookmark", bookmark)
    assert elsewhere.returncode == 1 and "error USAGE: --bookmark: the bookmark is of" \
        in elsewhere.stderr


def test_sql_errors_exit_1_with_the_code(shoal: Run, admin: httpx.Client,
                                         new_db: Callable[[], str]) -> None:
    db = new_db()
    syntax = shoal("sql", db, "SELEC 1")
    assert syntax.returncode == 1 and syntax.stdout == ""
    assert syntax.stderr.startswith('error SQLITE_ERROR: near "SELEC": syntax error')
    _rows(admin, db, "CREATE TABLE t (id INTEGER PRIMARY KEY)")
    atomic = shoal("sql", db, "INSERT INTO t VALUES (1); INSERT INTO t VALUES (1)")
    assert atomic.returncode == 1 and atomic.stderr.startswith("error SQLITE_CONSTRAINT: ")
    assert "statement 1" in atomic.stderr
    assert _rows(admin, db, "SELECT count(*) FROM t") == [[0]]
    usage = shoal("sql", db, "SELECT 1; SELECT 2", "--arg", "1")
    assert usage.returncode == 1 and usage.stderr.startswith("error USAGE: ")
    no_auth = shoal("sql", db, "SELECT 1", "--token", "forged")
    assert no_auth.returncode == 1 and no_auth.stderr.startswith("error TOKEN_INVALID: ")


def test_shell_reads_stdin(shoal: Run, admin: httpx.Client, new_db: Callable[[], str]) -> None:
    db = new_db()
    script = "\n".join([
        "CREATE TABLE pets (id INTEGER PRIMARY KEY,",
        "                   name TEXT);",
        "INSERT INTO pets (name) VALUES ('rex'); INSERT INTO pets (name) VALUES ('tom');",
        ".tables",
        ".schema pets",
        "BEGIN;",
        "DELETE FROM pets;",
        "ROLLBACK;",
        "BEGIN;",
        "INSERT INTO pets (name) VALUES ('new');",
        "COMMIT;",
        "SELECT name FROM pets ORDER BY id;",
        ".quit",
        "SELECT 'never reached';",
    ]) + "\n"
    proc = shoal("shell", db, input=script)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "pets" in out and "_shoal" not in out
    assert "CREATE TABLE pets (id INTEGER PRIMARY KEY,\n                   name TEXT);" in out
    assert "rolled back" in out and "committed" in out
    assert "rex" in out and "tom" in out and "new" in out and "3 rows" in out
    assert "never reached" not in out
    assert _rows(admin, db, "SELECT name FROM pets ORDER BY id") == [["rex"], ["tom"], ["new"]]


def test_shell_errors_and_open_transaction(shoal: Run, admin: httpx.Client,
                                           new_db: Callable[[], str]) -> None:
    db = new_db()
    script = "CREATE TABLE t (x);\nSELEC;\nBEGIN;\nINSERT INTO t VALUES (1);\n.bogus\n"
    proc = shoal("shell", db, input=script)
    assert proc.returncode == 1  # non-interactive input with errors
    assert "error SQLITE_ERROR: " in proc.stderr and "error USAGE: unknown command" in proc.stderr
    assert "rolled back the open transaction" in proc.stdout
    assert _rows(admin, db, "SELECT count(*) FROM t") == [[0]]
    unfinished = shoal("shell", db, input="SELECT 1\n")
    assert unfinished.returncode == 1 and "error INCOMPLETE" in unfinished.stderr


def _branched(admin: httpx.Client, db: str) -> str:
    """A table with one row on main, then branch preview-42 of it."""
    _rows(admin, db, "CREATE TABLE t (v TEXT)")
    _rows(admin, db, "INSERT INTO t VALUES ('main')")
    r = admin.post(f"/v1/databases/{db}/branches", json={"name": "preview-42"})
    assert r.status_code == 201, r.text
    return "preview-42"


def _branch_rows(admin: httpx.Client, db: str, branch: str) -> Any:
    r = admin.post(f"/v1/databases/{db}/branches/{branch}/query",
                   json={"statements": ["SELECT v FROM t ORDER BY rowid"]})
    assert r.status_code == 200, r.text
    return r.json()["results"][0]["rows"]


def test_sql_and_shell_reach_a_branch(shoal: Run, server: ServerProcess, admin: httpx.Client,
                                      new_db: Callable[[], str]) -> None:
    db = new_db()
    branch = _branched(admin, db)
    made = shoal("sql", db, "INSERT INTO t VALUES ('sql')", "--branch", branch)
    assert made.returncode == 0, made.stderr
    shell = shoal("shell", db, "--branch", branch, input="BEGIN;\nINSERT INTO t VALUES "
                  "('shell');\nCOMMIT;\n.tables\n")
    assert shell.returncode == 0 and "committed" in shell.stdout and "t\n" in shell.stdout
    # The URL's branch is the default for its database; --branch main and another
    # database still reach their main.
    at_branch = _env(SHOAL_URL=f"{server.url}/db/{db}/branches/{branch}",
                     SHOAL_TOKEN=server.admin_token)
    assert shoal("sql", db, "INSERT INTO t VALUES ('url')", env=at_branch).returncode == 0
    listed = _json(shoal("sql", db, "SELECT v FROM t ORDER BY rowid", "--json", env=at_branch))
    assert listed["results"][0]["rows"] == [["main"], ["sql"], ["shell"], ["url"]]
    short = _env(SHOAL_URL=f"shoal://127.0.0.1:{server.port}/{db}/branches/{branch}",
                 SHOAL_TOKEN=server.admin_token)
    piped = shoal("shell", db, input="SELECT count(*) AS n FROM t;\n", env=short)
    assert piped.returncode == 0 and "│ 4 │" in piped.stdout
    main = _json(shoal("sql", db, "SELECT v FROM t", "--branch", "main", "--json",
                       env=at_branch))
    assert main["results"][0]["rows"] == [["main"]]
    assert _rows(admin, db, "SELECT v FROM t") == [["main"]]
    other = new_db()
    _rows(admin, other, "CREATE TABLE t (v TEXT)")
    assert shoal("sql", other, "INSERT INTO t VALUES ('x')", env=at_branch).returncode == 0
    assert _rows(admin, other, "SELECT v FROM t") == [["x"]]
    # A branch that is not there: the code, exit 1, from sql and from the shell's first look.
    for command in (["sql", db, "SELECT 1"], ["shell", db]):
        missing = shoal(*command, "--branch", "nope", input="")
        assert missing.returncode == 1
        assert missing.stderr.startswith("error BRANCH_NOT_FOUND: "), missing.stderr
    typo = shoal("sql", db, "SELECT 1", env=_env(SHOAL_URL=f"{server.url}/db/{db}/branch/x"))
    assert typo.returncode == 1 and "only /branches/BRANCH may follow" in typo.stderr


def test_history_and_compact_follow_the_urls_branch(shoal: Run, server: ServerProcess,
                                                    admin: httpx.Client,
                                                    new_db: Callable[[], str]) -> None:
    db = new_db()
    branch = _branched(admin, db)
    at_branch = _env(SHOAL_URL=f"{server.url}/db/{db}/branches/{branch}",
                     SHOAL_TOKEN=server.admin_token)
    assert _json(shoal("history", db, "--json", env=at_branch))["branch"] == branch
    assert _json(shoal("history", db, "--json"))["branch"] == "main"
    assert _json(shoal("db", "compact", db, "--json", env=at_branch))["branch"] == branch


def _bookmark(admin: httpx.Client, db: str, *statements: str) -> str:
    r = admin.post(f"/v1/databases/{db}/query", json={"statements": list(statements)})
    assert r.status_code == 200, r.text
    return str(r.json()["meta"]["bookmark"])


def test_changes_prints_json_lines_and_the_cursor_to_go_on_from(
        shoal: Run, admin: httpx.Client, new_db: Callable[[], str]) -> None:
    db = new_db()
    start = _bookmark(admin, db, "CREATE TABLE t (id INTEGER PRIMARY KEY, v, b BLOB)",
                      "CREATE TABLE u (k TEXT PRIMARY KEY)")
    _bookmark(admin, db, "INSERT INTO t VALUES (1, 'a', x'00ff')",
              "INSERT INTO t VALUES (2, 9007199254740993, NULL)")
    read = shoal("changes", db, "--since", start, "--json", "--wait", "10")
    assert read.returncode == 0, read.stderr
    page = admin.get(f"/v1/databases/{db}/changes", params={"since": start}).json()
    assert len(page["changes"]) == 2  # one commit: durable whole
    assert [json.loads(line) for line in read.stdout.splitlines()] == page["changes"]
    cursor = read.stderr.strip()  # nothing else on stderr: the cursor alone
    assert cursor == page["cursor"]
    _bookmark(admin, db, "UPDATE t SET v = 'b' WHERE id = 1", "DELETE FROM t WHERE id = 2",
              "INSERT INTO u VALUES ('x')")
    text = shoal("changes", db, "--since", cursor, "--wait", "10")
    assert text.returncode == 0, text.stderr
    lines = sorted(text.stdout.splitlines(), key=lambda line: line.split("  ")[2])
    assert [line.split("  ")[2:] for line in lines] == [
        ["delete", "t", "[2]", "id=2, v=9007199254740993, b=NULL"],
        ["insert", "u", '["x"]', 'k="x"'],
        ["update", "t", "[1]", 'v: "a" -> "b"']]
    assert lines[0].startswith(page["changes"][0]["at"][:4]) and "txid " in lines[0]
    after = text.stderr.strip()
    assert after != cursor
    nothing = shoal("changes", db, "--since", after, "--wait", "0", "--json")
    assert nothing.returncode == 0 and nothing.stdout == "" and nothing.stderr.strip() == after
    only = shoal("changes", db, "--since", cursor, "--table", "t", "--op", "delete,insert",
                 "--json")
    assert [json.loads(line)["op"] for line in only.stdout.splitlines()] == ["delete"]
    assert only.stderr.strip() == after  # past what the filters left out too
    for args, code in ((["nosuch"], "DATABASE_NOT_FOUND"),
                       ([db, "--since", "garbage"], "INVALID_REQUEST"),
                       ([db, "--branch", "nope"], "BRANCH_NOT_FOUND")):
        failed = shoal("changes", *args, "--wait", "0")
        assert failed.returncode == 1 and failed.stderr.startswith(f"error {code}: ")
    bad_op = shoal("changes", db, "--op", "upsert")
    assert bad_op.returncode == 2 and "upsert" in bad_op.stderr


def test_changes_follow_ends_quietly_on_ctrl_c(server: ServerProcess, admin: httpx.Client,
                                               new_db: Callable[[], str]) -> None:
    db = new_db()
    start = _bookmark(admin, db, "CREATE TABLE t (id INTEGER PRIMARY KEY)")
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal", "changes", db, "--since", start, "--follow", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_env(SHOAL_URL=server.url, SHOAL_TOKEN=server.admin_token))
    try:
        assert proc.stdout is not None
        _bookmark(admin, db, "INSERT INTO t VALUES (1)")
        first = json.loads(proc.stdout.readline())  # it waits, then prints as changes come
        _bookmark(admin, db, "INSERT INTO t VALUES (2)")
        second = json.loads(proc.stdout.readline())
        assert (first["key"], second["key"]) == ([1], [2])
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0 and out == ""
    cursor = err.strip()  # no traceback: the cursor alone, past the second change
    assert cursor and "\n" not in cursor
    rest = subprocess.run(
        [sys.executable, "-m", "shoal", "changes", db, "--since", cursor, "--wait", "0"],
        capture_output=True, text=True, timeout=60,
        env=_env(SHOAL_URL=server.url, SHOAL_TOKEN=server.admin_token))
    assert rest.returncode == 0 and rest.stdout == "" and rest.stderr.strip() == cursor


def test_changes_follow_ends_quietly_when_its_reader_leaves(
        server: ServerProcess, admin: httpx.Client, new_db: Callable[[], str]) -> None:
    """`shoal changes --follow | head -1`: the change it could not print is not passed."""
    db = new_db()
    start = _bookmark(admin, db, "CREATE TABLE t (id INTEGER PRIMARY KEY)")
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal", "changes", db, "--since", start, "--follow", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_env(SHOAL_URL=server.url, SHOAL_TOKEN=server.admin_token))
    try:
        assert proc.stdout is not None and proc.stderr is not None
        _bookmark(admin, db, "INSERT INTO t VALUES (1)")
        assert json.loads(proc.stdout.readline())["key"] == [1]
        proc.stdout.close()
        _bookmark(admin, db, "INSERT INTO t VALUES (2)")
        assert proc.wait(timeout=30) == 0
        cursor = proc.stderr.read().strip()
    finally:
        proc.kill()
    after = subprocess.run(
        [sys.executable, "-m", "shoal", "changes", db, "--since", cursor, "--json"],
        capture_output=True, text=True, timeout=60,
        env=_env(SHOAL_URL=server.url, SHOAL_TOKEN=server.admin_token))
    assert [json.loads(line)["key"] for line in after.stdout.splitlines()] == [[2]]


def test_changes_after_a_restore_says_where_to_go_on(shoal: Run, admin: httpx.Client,
                                                     new_db: Callable[[], str]) -> None:
    db = new_db()
    kept = _bookmark(admin, db, "CREATE TABLE t (id INTEGER PRIMARY KEY)")
    _bookmark(admin, db, "INSERT INTO t VALUES (1)")
    read = shoal("changes", db, "--since", kept, "--json", "--wait", "10")
    assert read.returncode == 0 and len(read.stdout.splitlines()) == 1
    r = admin.post(f"/v1/databases/{db}/restore", json={"bookmark": kept})
    assert r.status_code == 200, r.text
    expired = shoal("changes", db, "--since", read.stderr.strip(), "--wait", "0")
    assert expired.returncode == 1 and expired.stdout == ""
    assert expired.stderr.startswith("error CURSOR_EXPIRED: ")
    hint = expired.stderr.split("--since ")[1].split()[0]
    assert shoal("changes", db, "--since", hint, "--wait", "0").returncode == 0


def _until(probe: Callable[[], Any], ok: Callable[[Any], bool], what: str) -> Any:
    """Poll the HTTP API (not a subprocess each time) until ``ok``."""
    deadline = time.monotonic() + 30
    while not ok(found := probe()):
        assert time.monotonic() < deadline, f"{what}: {found}"
        time.sleep(0.1)
    return found


def test_webhook_commands_and_a_delivery(shoal: Run, admin: httpx.Client,
                                         new_db: Callable[[], str]) -> None:
    db = new_db()
    _rows(admin, db, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    _rows(admin, db, "CREATE TABLE u (k TEXT PRIMARY KEY)")
    _rows(admin, db, "INSERT INTO t VALUES (0, 'before')")
    with Receiver() as receiver:
        made = _json(shoal("webhook", "create", db, receiver.url, "--table", "t",
                           "--op", "insert,update", "--batch-size", "5", "--max-attempts", "3",
                           "--max-age", "60", "--since", "2000-01-01T00:00:00Z", "--json"))
        receiver.secret = made["secret"]
        hook = made["id"]
        assert made["secret"].startswith("whsec_") and hook.startswith("wh_")
        assert (made["branch"], made["url"], made["tables"], made["ops"]) == (
            "main", receiver.url, ["t"], ["insert", "update"])
        assert (made["batch_size"], made["max_attempts"], made["max_age"]) == (5, 3, 60)
        _rows(admin, db, "INSERT INTO t VALUES (1, 'a')")
        _rows(admin, db, "INSERT INTO u VALUES ('x')")  # not its table
        _rows(admin, db, "UPDATE t SET v = 'b' WHERE id = 1")
        events = receiver.wait_for(3)
        assert [(e["op"], e["key"]) for e in events] == [
            ("insert", [0]), ("insert", [1]), ("update", [1])]  # since a time: row 0 too
        assert receiver.bad_signatures == 0
        _until(lambda: admin.get(f"/v1/databases/{db}/webhooks/{hook}").json(),
               lambda h: h["delivery"]["delivered"] == 3, "delivered")  # saved each second
        shown = _json(shoal("webhook", "show", db, hook, "--json"))
        assert "secret" not in shown and shown["delivery"]["delivered"] == 3
        assert shown["delivery"]["cursor"] and shown["delivery"]["retrying"] is False
        table = shoal("webhook", "show", db, hook)
        assert table.returncode == 0, table.stderr
        for name in ("cursor", "retrying", "attempts", "last_error", "delivered",
                     "dead_letters", receiver.url, "insert, update"):
            assert name in table.stdout, name
        listed = _json(shoal("webhook", "list", db, "--json"))["webhooks"]
        assert [h["id"] for h in listed] == [hook] and "secret" not in listed[0]
        text = shoal("webhook", "list", db)
        assert text.returncode == 0 and hook in text.stdout and "1 webhook" in text.stdout
    deleted = shoal("webhook", "delete", db, hook)
    assert deleted.returncode == 0 and f"deleted webhook {hook}" in deleted.stdout
    assert _json(shoal("webhook", "list", db, "--json")) == {"webhooks": []}
    missing = shoal("webhook", "show", db, hook)
    assert missing.returncode == 1 and missing.stderr.startswith("error WEBHOOK_NOT_FOUND: ")


def test_webhook_dead_letters_replay_and_discard(shoal: Run, admin: httpx.Client,
                                                 new_db: Callable[[], str]) -> None:
    db = new_db()
    _rows(admin, db, "CREATE TABLE t (id INTEGER PRIMARY KEY)")
    with Receiver() as receiver:
        receiver.down = True  # 503 to everything
        made = shoal("webhook", "create", db, receiver.url, "--batch-size", "1",
                     "--max-attempts", "1")
        assert made.returncode == 0, made.stderr
        secret = [ln for ln in made.stdout.splitlines() if ln.startswith("secret: ")]
        assert len(secret) == 1 and secret[0].startswith("secret: whsec_")
        assert "shown this once" in " ".join(made.stdout.split())
        receiver.secret = secret[0].removeprefix("secret: ")
        hook = admin.get(f"/v1/databases/{db}/webhooks").json()["webhooks"][0]["id"]
        assert hook in made.stdout
        _rows(admin, db, "INSERT INTO t VALUES (1)")
        _rows(admin, db, "INSERT INTO t VALUES (2)")
        letters_url = f"/v1/databases/{db}/webhooks/{hook}/dead-letters"
        _until(lambda: admin.get(letters_url).json()["dead_letters"],
               lambda x: len(x) == 2, "two dead letters")
        letters = _json(shoal("webhook", "dead-letters", db, hook, "--json"))["dead_letters"]
        assert [[e["key"] for e in x["events"]] for x in letters] == [[[1]], [[2]]]
        table = shoal("webhook", "dead-letters", db, hook)
        assert table.returncode == 0 and "2 dead letters" in table.stdout
        assert "HTTP 503" in table.stdout and letters[0]["id"] in table.stdout
        first, second = letters[0]["id"], letters[1]["id"]
        assert _json(shoal("webhook", "discard", db, hook, first, "--json")) == {
            "discarded": first}
        receiver.down = False
        replayed = shoal("webhook", "replay", db, hook, second)
        assert replayed.returncode == 0 and f"replaying 1 dead letter: {second}" in \
            replayed.stdout
        assert [e["key"] for e in receiver.wait_for(1)] == [[2]]  # the discarded one: never
        _until(lambda: admin.get(letters_url).json()["dead_letters"], lambda x: x == [],
               "the replayed letter delivered")
        assert _json(shoal("webhook", "replay", db, hook, "--json")) == {"replaying": []}
        assert receiver.bad_signatures == 0
    again = shoal("webhook", "discard", db, hook, first)
    assert again.returncode == 1 and again.stderr.startswith("error DEAD_LETTER_NOT_FOUND: ")
    for args, code in ((["nosuch", "http://h/"], "DATABASE_NOT_FOUND"),
                       ([db, "ftp://h/"], "INVALID_REQUEST"),
                       ([db, "http://h/", "--branch", "nope"], "BRANCH_NOT_FOUND")):
        failed = shoal("webhook", "create", *args)
        assert failed.returncode == 1 and failed.stderr.startswith(f"error {code}: "), args
    for args in (["--op", "upsert"], ["--max-attempts", "many"]):
        usage = shoal("webhook", "create", db, "http://h/", *args)
        assert usage.returncode == 2 and args[1] in usage.stderr


def test_client_commands_run_without_apsw(server: ServerProcess, admin: httpx.Client,
                                          new_db: Callable[[], str]) -> None:
    """`shoal sql` where apsw cannot be imported: the client side needs none of the server."""
    db = new_db()
    branch = _branched(admin, db)
    code = ("import sys\nsys.modules['apsw'] = None\nfrom shoal.cli import main\n"
            "main(sys.argv[1:])\n")
    proc = subprocess.run(
        [sys.executable, "-c", code, "sql", db, "INSERT INTO t VALUES (?)", "--arg", "no apsw",
         "--branch", branch, "--json"], capture_output=True, text=True, timeout=60,
        env=_env(SHOAL_URL=server.url, SHOAL_TOKEN=server.admin_token))
    assert proc.returncode == 0, proc.stderr
    assert _branch_rows(admin, db, branch) == [["main"], ["no apsw"]]


def test_shell_prompt_names_the_branch() -> None:
    out = cli.Output(as_json=False)
    with Client("http://h/db/orders/branches/preview-42") as client:
        shell = cli.Shell(client, *client.resolve(), out)
        assert shell.prompt(False) == "orders/preview-42> "
        assert shell.prompt(True) == " " * 15 + "...> "
        assert cli.Shell(client, "orders", "main", out).prompt(False) == "orders> "


def test_token_commands(shoal: Run, server: ServerProcess, admin: httpx.Client,
                        new_db: Callable[[], str]) -> None:
    db = new_db()
    _rows(admin, db, "CREATE TABLE t (x)")
    made = _json(shoal("token", "create", "--databases", db, "--access", "read",
                       "--expires-in", "120", "--json"))
    assert made["access"] == "read" and made["databases"] == [db]
    reader = _env(SHOAL_URL=server.url, SHOAL_TOKEN=made["token"])
    assert shoal("sql", db, "SELECT count(*) FROM t", env=reader).returncode == 0
    denied = shoal("sql", db, "INSERT INTO t VALUES (1)", env=reader)
    assert denied.returncode == 1 and denied.stderr.startswith("error READ_ONLY: ")
    revoked = shoal("token", "revoke", made["id"])
    assert revoked.returncode == 0 and made["id"] in revoked.stdout
    after = shoal("sql", db, "SELECT 1", env=reader)
    assert after.returncode == 1 and after.stderr.startswith("error TOKEN_REVOKED: ")
    table = shoal("token", "create", "--databases", "*", "--access", "write")
    assert table.returncode == 0
    line = [ln for ln in table.stdout.splitlines() if ln.startswith("token: ")]
    assert len(line) == 1 and line[0].count(".") == 2  # the whole JWT on one line


def test_token_list_command(shoal: Run, admin: httpx.Client,
                            new_db: Callable[[], str]) -> None:
    db = new_db()
    live = _json(shoal("token", "create", "--databases", db, "--access", "read", "--json"))
    gone = _json(shoal("token", "create", "--databases", db, "--access", "write", "--json"))
    assert shoal("token", "revoke", gone["id"]).returncode == 0
    listed = _json(shoal("token", "list", "--database", db, "--json"))["tokens"]
    assert all(t["databases"] in ("*", [db]) for t in listed)  # the shared node's "*" ones
    assert [t["id"] for t in listed if t["databases"] == [db]] == [live["id"]]
    everything = _json(shoal("token", "list", "--database", db, "--all", "--json"))["tokens"]
    assert {t["id"] for t in everything if t["databases"] == [db]} == {live["id"], gone["id"]}
    assert [t["revoked"] for t in everything if t["id"] == gone["id"]] == [True]
    table = shoal("token", "list", "--database", db, "--all")
    assert table.returncode == 0, table.stderr
    assert live["id"] in table.stdout and gone["id"] in table.stdout
    assert "revoked" in table.stdout and f"{len(everything)} tokens" in table.stdout
    assert live["token"] not in table.stdout + json.dumps(everything)  # never a secret
    one = _json(shoal("token", "list", "--limit", "1", "--json"))["tokens"]
    assert len(one) == 1
    bad = shoal("token", "list", "--database", "Bad Name")
    assert bad.returncode == 1 and bad.stderr.startswith("error INVALID_NAME: ")


def test_fleet_token_commands(shoal: Run, server: ServerProcess, admin: httpx.Client) -> None:
    """A provisioning token for a prefix creates a tenant's database and mints its token;
    a token bound to a branch is listed with it."""
    plane = _json(shoal("token", "create", "--databases", "clifleet-*", "--access",
                        "provision", "--json"))
    assert plane["access"] == "provision" and plane["databases"] == ["clifleet-*"]
    as_plane = _env(SHOAL_URL=server.url, SHOAL_TOKEN=plane["token"])
    assert shoal("db", "create", "clifleet-a", env=as_plane).returncode == 0
    bound = _json(shoal("token", "create", "--databases", "clifleet-a", "--access", "write",
                        "--branch", "main", "--json", env=as_plane))
    assert bound["branch"] == "main" and bound["databases"] == ["clifleet-a"]
    denied = shoal("sql", "clifleet-a", "SELECT 1", env=as_plane)
    assert denied.returncode == 1 and denied.stderr.startswith("error PROVISION_ONLY: ")
    table = shoal("token", "list", "--database", "clifleet-a", env=as_plane)
    assert table.returncode == 0, table.stderr
    assert bound["id"] in table.stdout and "clifleet-*" in table.stdout


def test_local_admin_token_fallback(shoal: Run, server: ServerProcess, tmp_path: Path) -> None:
    env = _env(SHOAL_URL=server.url)
    (tmp_path / "shoal-data").mkdir()
    none = shoal("db", "list", env=env, cwd=tmp_path)
    assert none.returncode == 1 and none.stderr.startswith("error UNAUTHORIZED: ")
    (tmp_path / "shoal-data" / "admin-token").write_text(server.admin_token + "\n")
    found = shoal("db", "list", "--json", env=env, cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    remote = shoal("db", "list", "--url", "http://127.0.0.2:9", env=env, cwd=tmp_path)
    assert remote.returncode == 1 and remote.stderr.startswith("error CONNECTION_ERROR: ")


@pytest.mark.parametrize("command", [["sql"], ["shell"], ["db", "list"], ["token", "create"],
                                     ["token", "list"], ["changes"], ["webhook", "create"],
                                     ["webhook", "replay"]])
def test_help_says_where_the_token_comes_from(command: list[str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([*command, "--help"])
    assert done.value.code == 0
    flat = " ".join(capsys.readouterr().out.split())
    assert "SHOAL_TOKEN" in flat and "shoal-data/admin-token" in flat and "SHOAL_URL" in flat
    assert "--json" in flat


def test_serve_is_still_there(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "--port" in out and "--data" in out and "--config" in out


# -- pieces of the CLI that need no subprocess -------------------------------------------------
@pytest.mark.parametrize(("text", "value"), [
    ("42", 42), ("2.5", 2.5), ("null", None), ("true", True), ('"007"', "007"),
    ("hello", "hello"), ("", ""), ('{"base64": "AAE="}', b"\x00\x01"),
    ('{"integer": "9007199254740993"}', 2**53 + 1),
])
def test_parse_arg(text: str, value: Any) -> None:
    assert cli.parse_arg(text) == value


def test_change_line() -> None:
    at = datetime(2026, 12, 4, 10, 15, 3, 120000, tzinfo=UTC)
    row = {"id": 7, "note": "two\nlines", "data": bytes(40), "x": 1.0}
    insert = Change("c1", 42, at, "orders", "insert", (7,), row, None)
    assert cli.change_line(insert) == (
        '2026-12-04T10:15:03.120Z  txid 42  insert  orders  [7]  id=7, note="two\\nlines", '
        f"data=x'{'00' * 32}'...(40 bytes), x=1.0")
    update = Change("c2", 43, at, "orders", "update", (7,), row | {"x": 1, "note": None}, row)
    assert cli.change_line(update).endswith('[7]  note: "two\\nlines" -> NULL, x: 1.0 -> 1')
    delete = Change("c3", 44, at, "t", "delete", ("k", b"\x01"), None, {"a": None})
    assert cli.change_line(delete).endswith("delete  t  [\"k\", x'01']  a=NULL")
    gap = Change("c4", 50, at, None, "uncaptured", None, None, None, from_txid=45)
    assert cli.change_line(gap).endswith("txid 50  uncaptured  txids 45..50: changes not "
                                         "captured")


@pytest.mark.parametrize("text", ['{"x": 1}', "[1, 2]"])
def test_parse_arg_refuses_non_values(text: str) -> None:
    with pytest.raises(cli.UsageError):
        cli.parse_arg(text)


def test_resolve_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SHOAL_TOKEN", "SHOAL_DATA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli.resolve_token("http://127.0.0.1:8080", None) is None
    (tmp_path / "shoal-data").mkdir()
    (tmp_path / "shoal-data" / "admin-token").write_text("secret\n")
    assert cli.resolve_token("http://localhost:8080", None) == "secret"
    assert cli.resolve_token("http://db.example.com", None) is None
    assert cli.resolve_token("http://127.0.0.1:8080", "given") == "given"
    monkeypatch.setenv("SHOAL_TOKEN", "env")
    assert cli.resolve_token("http://127.0.0.1:8080", None) == "env"
