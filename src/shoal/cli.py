"""The `shoal` command: `serve`, and client commands that talk to a server over HTTP."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.table import Table
from rich.text import Text

from shoal import settings as settings_mod
from shoal.client import (
    DEFAULT_URL,
    Change,
    Client,
    ClientError,
    CursorExpired,
    Result,
    Transaction,
    from_json,
    split_sql,
    to_json,
    transaction_control,
)
from shoal.client.results import UNCAPTURED

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
HISTORY_FILE = "~/.shoal_history"


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run a Shoal node",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="settings (flag, env SHOAL_<NAME>, or TOML key):\n" + "\n".join(
                           f"  {s.name:<20} {s.help} (default: {s.default})"
                           for s in settings_mod.SETTINGS))
    p.add_argument("--config", help="TOML settings file (env SHOAL_CONFIG)")
    for s in settings_mod.SETTINGS:
        if s.secret:
            continue
        flag = "--" + s.name.replace("_", "-")
        p.add_argument(flag, dest=s.name, default=None,
                       help=s.help.replace("%", "%%"))  # argparse formats help with %
    # set by `serve --workers N` on the worker nodes it starts (server/workers.py)
    p.add_argument("--worker-socket", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-count", type=int, default=1, help=argparse.SUPPRESS)
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    overrides = {s.name: getattr(args, s.name, None) for s in settings_mod.SETTINGS}
    try:
        resolved = settings_mod.load(args.config, overrides)
    except settings_mod.SettingsError as exc:
        print(f"shoal: {exc}", file=sys.stderr)
        return 2
    if resolved.workers > 1:  # a supervisor: it imports no engine
        from shoal.server.workers import Supervisor

        return Supervisor(resolved).start()
    from shoal.server.main import serve

    serve(resolved, args.worker_socket, args.worker_count)
    return 0


# -- client commands: shared plumbing ------------------------------------------------------------
class UsageError(Exception):
    """A command line the client refuses before sending anything."""


def _common_options() -> argparse.ArgumentParser:
    """--url, --token and --json, shared by every client command."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("server")
    g.add_argument("--url", default=None,
                   help=f"server URL (env SHOAL_URL; default {DEFAULT_URL})")
    g.add_argument("--token", default=None,
                   help="bearer token (env SHOAL_TOKEN; local fallback below)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return p


CLIENT_EPILOG = f"""\
server and token:
  --url, else $SHOAL_URL, else {DEFAULT_URL}. A URL naming a branch
  (.../db/NAME/branches/BRANCH) makes it the branch of NAME that commands use
  unless --branch says otherwise.
  --token, else $SHOAL_TOKEN. With neither, when the URL is local (127.0.0.1,
  localhost, ::1), the admin token is read from ./shoal-data/admin-token
  ($SHOAL_DATA/admin-token when SHOAL_DATA is set) if that file exists.
errors print 'error CODE: message' on stderr and exit with status 1."""


def _client_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
                   common: argparse.ArgumentParser, text: str) -> argparse.ArgumentParser:
    """A client subcommand: shared options, and the epilog on where the token comes from."""
    return sub.add_parser(name, parents=[common], help=text, description=text,
                          epilog=CLIENT_EPILOG,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def resolve_token(url: str, token: str | None) -> str | None:
    """--token, else SHOAL_TOKEN, else a local node's admin-token file (for `make run` users)."""
    if token:
        return token
    if os.environ.get("SHOAL_TOKEN"):
        return os.environ["SHOAL_TOKEN"]
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    if host in LOCAL_HOSTS:
        path = Path(os.environ.get("SHOAL_DATA") or "shoal-data") / "admin-token"
        if path.is_file():
            return path.read_text().strip() or None
    return None


def print_error(code: str, message: str, hint: str | None = None,
                statement: int | None = None) -> None:
    """`error CODE: message` on stderr (plain text: messages may hold brackets)."""
    print(f"error {code}: {message}", file=sys.stderr)
    if statement is not None:
        print(f"  in statement {statement}", file=sys.stderr)
    if hint:
        print(f"  hint: {hint}", file=sys.stderr)


ClientCommand = Callable[[argparse.Namespace, Client, "Output"], int]


def _client_command(func: ClientCommand) -> Callable[[argparse.Namespace], int]:
    """Wrap a command: build the client, print typed errors as `error CODE: message`, exit 1."""

    def run(args: argparse.Namespace) -> int:
        url = args.url or os.environ.get("SHOAL_URL") or DEFAULT_URL
        try:
            client = Client(url, resolve_token(url, args.token),
                            consistency="strong" if getattr(args, "strong", False) else None)
        except ValueError as exc:
            print_error("USAGE", str(exc))
            return 1
        try:
            with client:
                _start_session(args, client)
                status = func(args, client, Output(args.json))
                if status == 0 and getattr(args, "show_bookmark", False):
                    _show_bookmark(args, client)
                return status
        except ClientError as exc:
            print_error(exc.code, exc.message, exc.hint, exc.statement)
        except UsageError as exc:
            print_error("USAGE", str(exc))
        except KeyboardInterrupt:
            return 130
        return 1

    return run


# -- sessions: one command is one client session -------------------------------------------------
def _session_options(p: argparse.ArgumentParser) -> None:
    """--bookmark, --strong and --show-bookmark, for the commands that query a branch."""
    g = p.add_argument_group("session (read-your-writes)")
    g.add_argument("--bookmark", default=None, metavar="BOOKMARK",
                   help="read no older than this bookmark (one --show-bookmark printed)")
    g.add_argument("--strong", action="store_true",
                   help="have the database's leader answer (Shoal-Consistency: strong)")
    g.add_argument("--show-bookmark", action="store_true",
                   help="print the branch's last bookmark on stderr when done, for the next "
                        "command's --bookmark")


def _start_session(args: argparse.Namespace, client: Client) -> None:
    """--bookmark: sent with the command's requests of its branch until a newer one comes."""
    if getattr(args, "bookmark", None):
        try:
            client.remember(args.bookmark, database=args.database, branch=args.branch)
        except ValueError as exc:
            raise UsageError(f"--bookmark: {exc}") from None


def _show_bookmark(args: argparse.Namespace, client: Client) -> None:
    """--show-bookmark: the bookmark alone on a line of stderr (stdout keeps the results)."""
    bookmark = client.bookmark(args.database, args.branch)
    if bookmark:
        print(bookmark, file=sys.stderr)


# -- output --------------------------------------------------------------------------------------
def _cell(value: Any) -> Text:
    """One SQL value for a table: NULL dimmed, blobs as x'hex' (long ones cut)."""
    if value is None:
        return Text("NULL", style="dim")
    if isinstance(value, bytes):
        shown = value[:32].hex()
        more = f"… ({len(value)} bytes)" if len(value) > 32 else ""
        return Text(f"x'{shown}'{more}", style="cyan")
    if isinstance(value, float):
        return Text(repr(value))
    return Text(str(value))


class Output:
    """Tables through rich, or JSON with --json: one place decides the format."""

    def __init__(self, as_json: bool):
        self.as_json = as_json
        self.console: Console = Console(highlight=False)

    def json(self, data: Any) -> None:
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def json_line(self, data: Any) -> None:
        """One JSON value on one line (JSON Lines: a stream a script reads as it comes)."""
        sys.stdout.write(json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    def plain(self, text: str) -> None:
        """A line no terminal width may wrap or cut (tokens)."""
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def message(self, text: str) -> None:
        self.console.print(Text(text), soft_wrap=True)  # SQL text stays as written

    def done(self, data: dict[str, Any], text: str) -> None:
        """The outcome of a command with no listing: data with --json, else a sentence."""
        if self.as_json:
            self.json(data)
        else:
            self.message(text)

    def table(self, columns: list[str], rows: list[tuple[Any, ...]] | list[list[Any]],
              footer: str | None = None, whole: tuple[str, ...] = ()) -> None:
        """``whole``: columns the others give way to first (ids to copy stay on one line
        while the terminal is wide enough for them)."""
        table = Table(header_style="bold")
        for name in columns:
            table.add_column(name, overflow="fold",  # wrap long values, never cut them
                             no_wrap=name in whole)
        for row in rows:
            table.add_row(*(_cell(v) for v in row))
        self.console.print(table)
        if footer:
            self.console.print(footer, style="dim")

    def fields(self, items: dict[str, Any]) -> None:
        self.table(["field", "value"], [[k, v] for k, v in items.items()])

    def results(self, results: list[Result]) -> None:
        if self.as_json:
            meta = asdict(results[0].meta) if results else {}
            self.json({"results": [r.to_json() for r in results], "meta": meta})
            return
        for result in results:
            if result.columns:
                n = len(result.rows)
                self.table(result.columns, result.rows, f"{n} row{'s' * (n != 1)}")
            elif result.rows_affected:
                n = result.rows_affected
                self.message(f"{n} row{'s' * (n != 1)} affected")
            else:
                self.message("ok")


# -- db ------------------------------------------------------------------------------------------
def _db_create(args: argparse.Namespace, client: Client, out: Output) -> int:
    info = client.create_database(args.name)
    out.done(info, f"created database {info['name']}")
    return 0


def _db_list(args: argparse.Namespace, client: Client, out: Output) -> int:
    if args.deleted:
        gone = client.deleted_databases()
        if out.as_json:
            out.json({"databases": gone})
        else:
            out.table(["name", "deleted_at", "restorable_until", "incarnation"],
                      [[d["name"], d["deleted_at"], d["restorable_until"], d["incarnation"]]
                       for d in gone],
                      f"{len(gone)} deleted database{'s' * (len(gone) != 1)}")
        return 0
    databases = client.list_databases(limit=args.limit)
    if out.as_json:
        out.json({"databases": databases})
    else:
        out.table(["name", "created_at"], [[d["name"], d.get("created_at")] for d in databases],
                  f"{len(databases)} database{'s' * (len(databases) != 1)}")
    return 0


def _db_info(args: argparse.Namespace, client: Client, out: Output) -> int:
    info = client.database(args.name)
    usage = client.usage(args.name)
    if out.as_json:
        out.json(info | {"usage": usage})
        return 0
    branches = info.get("branches") or []
    out.fields({
        "name": info["name"],
        "created_at": info.get("created_at"),
        "size_bytes": info.get("size_bytes"),
        "txid": info.get("txid"),
        "open": info.get("open"),
        "branches": ", ".join(b["name"] if isinstance(b, dict) else str(b) for b in branches),
        "rows_read": usage.get("rows_read"),
        "rows_written": usage.get("rows_written"),
        "queries": usage.get("queries"),
    })
    return 0


_UNSET: Any = object()  # an option not given
LIMIT_OPTIONS = ("size_bytes", "rows_read", "rows_written", "period", "queries_per_second",
                 "transactions")


def _limit_value(text: str) -> float | None:
    """A limit on the command line: a number, or 'default' (the node's)."""
    if text == "default":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or 'default': {text!r}") from None
    return int(value) if value.is_integer() else value


def _db_limits(args: argparse.Namespace, client: Client, out: Output) -> int:
    given = {k: getattr(args, k) for k in LIMIT_OPTIONS if getattr(args, k) is not _UNSET}
    if args.clear or given:
        own = {} if args.clear else dict(client.limits(args.name)["limits"])
        own.update(given)
        found = client.set_limits(args.name, **{k: v for k, v in own.items() if v is not None})
    else:
        found = client.limits(args.name)
    if out.as_json:
        out.json(found)
        return 0
    own = found["limits"]
    out.table(["limit", "in force", "own"],
              [[k, found["effective"][k], own.get(k, "(default)")] for k in LIMIT_OPTIONS],
              f"limits of {args.name} (0: none)")
    return 0


def _db_compact(args: argparse.Namespace, client: Client, out: Output) -> int:
    done = client.compact(args.name, branch=args.branch)
    if out.as_json:
        out.json(done)
        return 0
    out.fields({k: done.get(k) for k in ("database", "branch", "txid", "bytes_before",
                                         "bytes_after", "storage_bytes", "ms")})
    return 0


def _db_delete(args: argparse.Namespace, client: Client, out: Output) -> int:
    if not args.yes:
        what = ("and its history, for good" if args.purge else
                "(restorable with 'shoal db undelete' within the node's history_retention)")
        if not sys.stdin.isatty():
            print(f"shoal: refusing to delete {args.name} without --yes (no terminal to "
                  f"ask on)", file=sys.stderr)
            return 2
        answer = input(f"Delete database {args.name} {what}? Type its name to confirm: ")
        if answer.strip() != args.name:
            print("shoal: not deleted", file=sys.stderr)
            return 1
    client.delete_database(args.name, purge=args.purge)
    out.done({"deleted": args.name, "purged": args.purge},
             f"deleted database {args.name}" + (" and its history" if args.purge else
                                                "; 'shoal db undelete' brings it back"))
    return 0


def _db_undelete(args: argparse.Namespace, client: Client, out: Output) -> int:
    info = client.undelete_database(args.name, args.incarnation)
    out.done(info, f"brought back database {info['name']} "
                   f"({len(info.get('branches') or [])} branches)")
    return 0


# -- sql -----------------------------------------------------------------------------------------
def parse_arg(text: str) -> Any:
    """A --arg: JSON when it parses (1, 2.5, null, true, "007", {"base64": ...}), else the text."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, dict):
        try:
            return from_json(value)
        except ValueError:
            raise UsageError(f"--arg {text}: an object must be {{\"base64\": ...}}, "
                             "{\"integer\": ...} or {\"float\": ...}") from None
    if isinstance(value, list):
        raise UsageError(f"--arg {text}: an array is not an SQL value")
    return value


def _sql(args: argparse.Namespace, client: Client, out: Output) -> int:
    statements = split_sql(args.sql)
    if not statements:
        raise UsageError("no SQL statement given")
    values = [parse_arg(a) for a in args.arg]
    if values and len(statements) > 1:
        raise UsageError("--arg needs a single statement; this SQL holds "
                         f"{len(statements)}")
    items: list[Any] = [(statements[0], values)] if values else statements
    out.results(client.batch(items, database=args.database, branch=args.branch))
    return 0


# -- shell ---------------------------------------------------------------------------------------
# SQLite's tables and Shoal's (engine/tables.py: current and older names); LIKE ignores case
_HIDDEN = " AND ".join(f"name NOT LIKE '{prefix}%' ESCAPE '\\'"
                       for prefix in ("sqlite\\_", "\\_cf\\_shoal\\_", "\\_shoal\\_"))
SHELL_HELP = """\
End each SQL statement with ';' (it may span lines). BEGIN, COMMIT and ROLLBACK open and
end an interactive transaction on the server.
  .tables            list tables and views
  .schema [TABLE]    show CREATE statements
  .help              this text
  .quit / .exit      leave (an open transaction is rolled back)"""


class Shell:
    """Reads statements until ';', runs them, draws results; dot-commands for the schema."""

    def __init__(self, client: Client, database: str, branch: str, out: Output):
        self.client = client
        self.database = database
        self.branch = branch
        self.name = database if branch == "main" else f"{database}/{branch}"
        self.out = out
        self.tx: Transaction | None = None
        self.errors = 0

    def prompt(self, continuing: bool) -> str:
        if continuing:
            return " " * max(len(self.name) - 2, 0) + "...> "
        return f"{self.name}{'*' if self.tx else ''}> "

    def loop(self, read: Callable[[str], str]) -> None:
        """Until EOF or .quit: ``read(prompt)`` gives a line or raises EOFError."""
        buffer: list[str] = []
        while True:
            try:
                line = read(self.prompt(bool(buffer)))
            except EOFError:
                break
            except KeyboardInterrupt:
                buffer.clear()
                continue
            if not buffer and line.strip().startswith("."):
                if not self.dot(line.strip()):
                    break
                continue
            buffer.append(line)
            text = "\n".join(buffer)
            if not text.strip():
                buffer.clear()
            elif sqlite3.complete_statement(text):
                buffer.clear()
                try:
                    self.run_text(text)
                except KeyboardInterrupt:  # stop waiting for this one, keep the shell
                    self.fail("INTERRUPTED", "stopped waiting for the server")
        if split_sql("\n".join(buffer)):
            self.fail("INCOMPLETE", "input ended inside a statement (missing ';')")
        self.finish()

    def run_text(self, text: str) -> None:
        for statement in split_sql(text):
            try:
                self.run(statement)
            except ClientError as exc:
                if self.tx is not None and self.tx.done:
                    self.tx = None
                    self.out.message("the transaction has ended")
                self.fail(exc.code, exc.message, exc.hint)

    def run(self, sql: str) -> None:
        control = transaction_control(sql)
        if control == "BEGIN":
            if self.tx is not None:
                self.fail("USAGE", "a transaction is already open")
                return
            tx = self.client.transaction(database=self.database, branch=self.branch)
            tx.begin()
            self.tx = tx
            self.out.message(f"transaction {tx.id} open ({tx.mode}); COMMIT or ROLLBACK ends it")
        elif control is not None:
            ending, self.tx = self.tx, None
            if ending is None:
                self.fail("USAGE", "no transaction is open")
                return
            if control == "ROLLBACK":
                ending.rollback()
                self.out.message("rolled back")
            else:
                ending.commit()
                self.out.message(f"committed (txid {ending.txid})" if ending.txid
                                 else "committed")
        else:
            self.out.results([self.execute(sql)])

    def execute(self, sql: str, args: list[Any] | None = None) -> Result:
        if self.tx is not None:
            return self.tx.execute(sql, args)
        return self.client.execute(sql, args, database=self.database, branch=self.branch)

    def dot(self, line: str) -> bool:
        """Run a dot-command; False means leave the shell."""
        command, _, rest = line.partition(" ")
        rest = rest.strip()
        try:
            if command in (".quit", ".exit"):
                return False
            if command == ".help":
                self.out.message(SHELL_HELP)
            elif command == ".tables":
                result = self.execute("SELECT name FROM sqlite_schema WHERE type IN "
                                      f"('table', 'view') AND {_HIDDEN} ORDER BY name")
                names = [str(row[0]) for row in result.rows]
                if self.out.as_json:
                    self.out.json(names)
                elif names:
                    self.out.message("\n".join(names))
            elif command == ".schema":
                where = " AND tbl_name = ?" if rest else ""
                result = self.execute(
                    f"SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL AND {_HIDDEN}{where} "
                    "ORDER BY tbl_name, type DESC, name", [rest] if rest else None)
                sql = [f"{row[0]!s};" for row in result.rows]
                if self.out.as_json:
                    self.out.json(sql)
                elif sql:
                    self.out.message("\n".join(sql))
            else:
                self.fail("USAGE", f"unknown command {command}; try .help")
        except ClientError as exc:
            self.fail(exc.code, exc.message, exc.hint)
        return True

    def fail(self, code: str, message: str, hint: str | None = None) -> None:
        self.errors += 1
        print_error(code, message, hint)

    def finish(self) -> None:
        """Leaving with a transaction open rolls it back, as sqlite3 does."""
        tx, self.tx = self.tx, None
        if tx is not None:
            try:
                tx.rollback()
                self.out.message("rolled back the open transaction")
            except ClientError as exc:
                self.fail(exc.code, exc.message, exc.hint)


def _stdin_lines() -> Callable[[str], str]:
    """Non-interactive input: stdin lines, no prompts."""
    lines: Iterator[str] = iter(sys.stdin)

    def read(prompt: str) -> str:
        try:
            return next(lines).rstrip("\n")
        except StopIteration:
            raise EOFError from None

    return read


def _terminal() -> Callable[[str], str]:
    """Interactive input: prompt_toolkit with persistent history."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory

    session: PromptSession[str] = PromptSession(
        history=FileHistory(os.path.expanduser(HISTORY_FILE)))
    return session.prompt


def _shell(args: argparse.Namespace, client: Client, out: Output) -> int:
    database, branch = client.resolve(args.database, args.branch)
    where = f"{client.url}/db/{database}"
    if branch == "main":
        client.database(database)  # fail early on a wrong name or token
    else:
        client.branch(branch, database=database)
        where += f"/branches/{branch}"
    interactive = sys.stdin.isatty()
    shell = Shell(client, database, branch, out)
    if interactive:
        out.message(f"shoal shell on {where}; .help for help")
    shell.loop(_terminal() if interactive else _stdin_lines())
    return 1 if shell.errors and not interactive else 0


# -- the audit log -------------------------------------------------------------------------------
_AGO = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _when(text: str | None) -> str | None:
    """--since/--until: unix seconds, RFC 3339, or a time ago (30m, 2h, 7d)."""
    if text is None:
        return None
    if len(text) > 1 and text[-1] in _AGO and text[:-1].isdigit():
        return f"{time.time() - int(text[:-1]) * _AGO[text[-1]]:.3f}"
    return text


def _audit(args: argparse.Namespace, client: Client, out: Output) -> int:
    found = client.audit(args.database, since=_when(args.since), until=_when(args.until),
                         limit=args.limit)
    if out.as_json:
        out.json({"records": found})
        return 0
    out.table(["time", "token", "subject", "method", "route", "database", "kind", "rows",
               "status"],
              [[r["time"], r["token"] or "-", r["subject"] or "", r["method"], r["route"],
                r["database"] or "", r["kind"], f"{r['rows_read']}/{r['rows_written']}",
                f"{r['status']} {r['code'] or ''}".strip()] for r in found],
              f"{len(found)} record{'s' * (len(found) != 1)}", whole=("time",))
    return 0


# -- tokens --------------------------------------------------------------------------------------
def _token_create(args: argparse.Namespace, client: Client, out: Output) -> int:
    scope = args.databases.strip()
    databases: list[str] | str = "*" if scope == "*" else \
        [d.strip() for d in scope.split(",") if d.strip()]
    if not databases:
        raise UsageError("--databases needs names (a,b) or '*'")
    made = client.create_token(databases, args.access, args.expires_in, branch=args.branch)
    if out.as_json:
        out.json(made)
    else:
        scope_text = made["databases"] if isinstance(made["databases"], str) \
            else ", ".join(made["databases"])
        out.fields({"id": made["id"], "databases": scope_text, "access": made["access"]}
                   | ({"branch": made["branch"]} if made.get("branch") else {})
                   | {"expires_at": made["expires_at"]})
        out.plain(f"token: {made['token']}")  # one unbroken line, easy to copy; shown once
    return 0


def _token_revoke(args: argparse.Namespace, client: Client, out: Output) -> int:
    client.revoke_token(args.id)
    out.done({"revoked": args.id}, f"revoked token {args.id}")
    return 0


def _token_list(args: argparse.Namespace, client: Client, out: Output) -> int:
    found = client.tokens(args.database, expired=args.all, revoked=args.all, limit=args.limit)
    if out.as_json:
        out.json({"tokens": found})
        return 0

    def state(t: dict[str, Any]) -> str:
        return "revoked" if t["revoked"] else "expired" if t["expired"] else "live"

    def scope(t: dict[str, Any]) -> str:
        reach = t["databases"] if isinstance(t["databases"], str) else ", ".join(t["databases"])
        gone = ", ".join(t.get("narrowed") or ())
        return f"{reach} (no longer: {gone})" if gone else reach

    out.table(["id", "databases", "access", "branch", "created_by", "created_at", "expires_at",
               "state"],
              [[t["id"], scope(t), t["access"], t.get("branch") or "", t["created_by"],
                t["created_at"], t["expires_at"], state(t)] for t in found],
              f"{len(found)} token{'s' * (len(found) != 1)}", whole=("id",))
    return 0


# -- branches and point in time ------------------------------------------------------------------
def point(text: str) -> dict[str, str]:
    """--to / --at: an ISO 8601 time when it parses as one, else a bookmark."""
    try:
        datetime.fromisoformat(text.strip())
    except ValueError:
        return {"bookmark": text.strip()}
    return {"timestamp": text.strip()}


def _branch_rows(branches: list[dict[str, Any]]) -> list[list[Any]]:
    return [[b["name"], b.get("parent"), b.get("fork_txid"), b.get("txid"), b.get("created_at"),
             b.get("size_bytes"), b.get("store_bytes")] for b in branches]


BRANCH_COLUMNS = ["name", "parent", "fork_txid", "txid", "created_at", "size_bytes",
                  "store_bytes"]


def _branch_create(args: argparse.Namespace, client: Client, out: Output) -> int:
    at = point(args.at) if args.at else {}
    made = client.create_branch(args.name, database=args.database, source=args.source,
                                timestamp=at.get("timestamp"), bookmark=at.get("bookmark"),
                                materialise=args.materialise)
    out.done(made, f"created branch {made['name']} of {made['parent']} at txid "
                   f"{made['fork_txid']}")
    return 0


def _branch_list(args: argparse.Namespace, client: Client, out: Output) -> int:
    branches = client.list_branches(args.database)
    if out.as_json:
        out.json({"branches": branches})
    else:
        out.table(BRANCH_COLUMNS, _branch_rows(branches),
                  f"{len(branches)} branch{'es' * (len(branches) != 1)}")
    return 0


def _branch_delete(args: argparse.Namespace, client: Client, out: Output) -> int:
    client.delete_branch(args.name, database=args.database)
    out.done({"deleted": args.name}, f"deleted branch {args.name}")
    return 0


def _branch_reset(args: argparse.Namespace, client: Client, out: Output) -> int:
    reset = client.reset_branch(args.name, database=args.database)
    out.done(reset, f"reset branch {reset['name']} to {reset['parent']} at txid "
                    f"{reset['fork_txid']}")
    return 0


def _restore(args: argparse.Namespace, client: Client, out: Output) -> int:
    to = point(args.to)
    done = client.restore(database=args.database, branch=args.branch,
                          timestamp=to.get("timestamp"), bookmark=to.get("bookmark"),
                          keep_as=args.keep_as)
    out.done(done, f"restored {args.database}/{done['branch']} to txid "
                   f"{done['restored_to']['txid']}; the state before is branch "
                   f"{done['kept_as']}")
    return 0


def _history(args: argparse.Namespace, client: Client, out: Output) -> int:
    window = client.history(database=args.database, branch=args.branch)
    if out.as_json:
        out.json(window)
    else:
        out.table(["point", "txid", "time"], [
            ["earliest", window["earliest"]["txid"], window["earliest"]["time"]],
            ["latest", window["latest"]["txid"], window["latest"]["time"]]])
    return 0


# -- change feed ---------------------------------------------------------------------------------
FEED_OPS = ("insert", "update", "delete")
FOLLOW_WAIT = 25.0  # seconds each page of --follow waits: the longest the server allows


def _value(value: Any) -> str:
    """One SQL value inside a line: text as a JSON string (one line whatever it holds),
    blobs as x'hex' (long ones cut), NULL."""
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        more = f"...({len(value)} bytes)" if len(value) > 32 else ""
        return f"x'{value[:32].hex()}'{more}"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value) if isinstance(value, float) else str(value)


def change_line(change: Change) -> str:
    """A change for a person, on one line: time, txid, op, table, key, and the row (an
    update: the columns it changed, old -> new; a delete: the row it removed)."""
    at = change.at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    head = f"{at}  txid {change.txid}  {change.op:<6}"
    if change.op == UNCAPTURED:
        return f"{head}  txids {change.from_txid}..{change.txid}: changes not captured"
    old, new = change.old or {}, change.new or {}
    if change.op == "update":
        row = ", ".join(f"{k}: {_value(old.get(k))} -> {_value(v)}" for k, v in new.items()
                        if k not in old or old[k] != v or type(old[k]) is not type(v))
    else:
        row = ", ".join(f"{k}={_value(v)}" for k, v in (new or old).items())
    key = ", ".join(_value(v) for v in change.key or ())
    return f"{head}  {change.table}  [{key}]  {row}"


def _names(values: list[str]) -> list[str] | None:
    """--table a --table b,c: every name given, or None for all."""
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    return names or None


def _op_list(text: str) -> str:
    """An --op value: insert, update or delete, or several of them (a,b)."""
    wrong = [op for op in text.split(",") if op.strip() not in FEED_OPS]
    if wrong:
        raise argparse.ArgumentTypeError(f"{', '.join(wrong)}: use {', '.join(FEED_OPS)}")
    return text


@contextlib.contextmanager
def _held(signum: int) -> Iterator[None]:
    """Hold a signal back (it is delivered when the block ends), where one would leave
    state half-updated."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signum})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})


def _changes(args: argparse.Namespace, client: Client, out: Output) -> int:
    """Print changes as they come; at the end (the feed's, or Ctrl-C's) the cursor to go
    on from, alone on stderr, for the next run's --since. An error prints only itself:
    each JSON line holds its change's cursor."""
    feed = client.changes(args.since, database=args.database, branch=args.branch,
                          tables=_names(args.table), ops=_names(args.op),
                          wait=FOLLOW_WAIT if args.follow else args.wait, follow=args.follow)
    status = 0
    shown = feed.cursor  # past every change printed
    printing: str | None = None  # while one is printed: the cursor before it
    try:
        for change in feed:
            with _held(signal.SIGINT):  # Ctrl-C lands between changes, never mid-bookkeeping
                printing = shown
                if out.as_json:
                    out.json_line(change.to_json())
                else:
                    out.plain(change_line(change))
                printing, shown = None, feed.cursor
    except KeyboardInterrupt:
        status = 0 if args.follow else 130  # Ctrl-C is how --follow ends
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except CursorExpired as exc:
        print_error(exc.code, exc.message, "rebuild what you made from the feed, then go on "
                                           f"with --since {exc.earliest}")
        return 1
    cursor = feed.cursor if printing is None else printing  # a change cut off: not past it
    if cursor:
        print(cursor, file=sys.stderr)
    return status


# -- webhooks ------------------------------------------------------------------------------------
def _every(names: list[str] | None) -> str:
    """A webhook's tables or ops for a person: the names, or every one (None)."""
    return "(all)" if names is None else ", ".join(names)


def _shown(value: Any) -> Any:
    """A field a webhook or dead letter may leave empty (no error, no attempt yet)."""
    if isinstance(value, bool):
        return _yes(value)
    return "-" if value is None else value


def _yes(value: Any) -> str:
    return "yes" if value else "no"


def _webhook_create(args: argparse.Namespace, client: Client, out: Output) -> int:
    made = client.create_webhook(args.database, args.endpoint, branch=args.branch,
                                 tables=_names(args.table), ops=_names(args.op),
                                 batch_size=args.batch_size, max_attempts=args.max_attempts,
                                 max_age=args.max_age, since=args.since)
    if out.as_json:
        out.json(made)
        return 0
    out.fields({"id": made["id"], "database": made["database"], "branch": made["branch"],
                "url": made["url"], "tables": _every(made["tables"]),
                "ops": _every(made["ops"]), "batch_size": made["batch_size"],
                "max_attempts": made["max_attempts"], "max_age": made["max_age"],
                "created_at": made["created_at"]})
    out.plain(f"secret: {made['secret']}")  # one unbroken line, easy to copy
    out.message("The secret is shown this once: give it to the receiver now, which "
                "verifies each delivery's webhook-signature with it (Standard Webhooks).")
    return 0


def _webhook_list(args: argparse.Namespace, client: Client, out: Output) -> int:
    hooks = client.webhooks(args.database)
    if out.as_json:
        out.json({"webhooks": hooks})
        return 0
    rows = []
    for hook in hooks:
        delivery = hook.get("delivery") or {}
        rows.append([hook["id"], hook["branch"], hook["url"], _every(hook["tables"]),
                     _every(hook["ops"]), delivery.get("delivered"),
                     delivery.get("dead_letters"), _yes(delivery.get("retrying"))])
    out.table(["id", "branch", "url", "tables", "ops", "delivered", "dead letters",
               "retrying"], rows,
              f"{len(hooks)} webhook{'s' * (len(hooks) != 1)}"
              + ("; 'shoal webhook show' has the last error" if hooks else ""), whole=("id",))
    return 0


DELIVERY_FIELDS = ("cursor", "retrying", "attempts", "next_attempt_at", "last_error",
                   "last_attempt_at", "last_success_at", "delivered", "dead_letters")


def _webhook_show(args: argparse.Namespace, client: Client, out: Output) -> int:
    hook = client.webhook(args.database, args.id)
    if out.as_json:
        out.json(hook)
        return 0
    delivery = hook.get("delivery") or {}
    out.fields({"id": hook["id"], "database": hook["database"], "branch": hook["branch"],
                "url": hook["url"], "tables": _every(hook["tables"]),
                "ops": _every(hook["ops"]), "batch_size": hook["batch_size"],
                "max_attempts": hook["max_attempts"], "max_age": hook["max_age"],
                "created_at": hook["created_at"]}
               | {name: _shown(delivery.get(name)) for name in DELIVERY_FIELDS})
    return 0


def _webhook_delete(args: argparse.Namespace, client: Client, out: Output) -> int:
    client.delete_webhook(args.database, args.id)
    out.done({"deleted": args.id}, f"deleted webhook {args.id} and its dead letters")
    return 0


def _dead_letters(args: argparse.Namespace, client: Client, out: Output) -> int:
    letters = client.dead_letters(args.database, args.id)
    if out.as_json:
        out.json({"dead_letters": letters})
        return 0
    out.table(["id", "events", "attempts", "dead_at", "error", "replaying"],
              [[x["id"], len(x["events"]), x["attempts"], x["dead_at"], x["error"],
                _yes(x["replaying"])] for x in letters],
              f"{len(letters)} dead letter{'s' * (len(letters) != 1)}"
              + ("; 'shoal webhook replay' delivers them again" if letters else ""),
              whole=("id",))
    return 0


def _webhook_replay(args: argparse.Namespace, client: Client, out: Output) -> int:
    marked = client.replay_dead_letters(args.database, args.id, args.letter)
    text = f"replaying {len(marked)} dead letter{'s' * (len(marked) != 1)}"
    if marked:
        text += f": {', '.join(marked)}; each leaves the list once delivered"
    out.done({"replaying": marked}, text)
    return 0


def _webhook_discard(args: argparse.Namespace, client: Client, out: Output) -> int:
    client.delete_dead_letter(args.database, args.id, args.letter)
    out.done({"discarded": args.letter}, f"discarded dead letter {args.letter} of webhook "
                                         f"{args.id} (not delivered)")
    return 0


# -- the data API, row rules and named queries ---------------------------------------------------
VERBS = ("select", "insert", "update", "delete")


def _row_json(row: dict[str, Any]) -> dict[str, Any]:
    return {k: to_json(v) for k, v in row.items()}


def _row_table(out: Output, rows: list[dict[str, Any]], columns: list[str] | None,
               footer: str) -> None:
    """Rows (dicts) as a table: the columns of the first row (or those asked for)."""
    names = list(rows[0]) if rows else columns or []
    if not names:
        out.message(footer)
        return
    out.table(names, [[r.get(n) for n in names] for r in rows], footer)


def _where(text: str) -> tuple[str, str]:
    """A --where: col=op.value (the data API's filter, as written)."""
    column, eq, value = text.partition("=")
    if not eq or not column or "." not in value:
        raise argparse.ArgumentTypeError(f"{text!r}: write col=op.value (eq.5, gte.2, "
                                         "in.(a,b), is.null, like.a%)")
    return column, value


def _rows(args: argparse.Namespace, client: Client, out: Output) -> int:
    page = client.rows(args.database, args.table, select=args.select, where=args.where,
                       order=args.order, limit=args.limit, after=args.after,
                       branch=args.branch)
    rows = page["rows"]
    if out.as_json:
        out.json({"rows": [_row_json(r) for r in rows], "next": page["next"],
                  "bookmark": page["bookmark"]})
        return 0
    footer = f"{len(rows)} row{'s' * (len(rows) != 1)}"
    if page["next"]:
        footer += f"; the next page: --after {page['next']}"
    _row_table(out, rows, args.select.split(",") if args.select else None, footer)
    return 0


def _rules_rows(rules: dict[str, dict[str, str | None]]) -> list[list[Any]]:
    return [[table, verb, found[verb] if found.get(verb) is not None else "-"]
            for table, found in sorted(rules.items()) for verb in VERBS]


RULES_NOTE = "a verb without a rule (-) is refused to tokens bound by rules"


def _rules_show(args: argparse.Namespace, client: Client, out: Output) -> int:
    rules = client.rules(args.database, branch=args.branch)
    if out.as_json:
        database, branch = client.resolve(args.database, args.branch)
        out.json({"database": database, "branch": branch, "rules": rules})
        return 0
    if not rules:
        out.message("no rules: tokens bound by rules see no table of this branch")
        return 0
    out.table(["table", "verb", "rule"], _rules_rows(rules),
              f"{len(rules)} table{'s' * (len(rules) != 1)} with rules; {RULES_NOTE}")
    return 0


def _verb_list(text: str) -> list[str]:
    """A --clear value: a verb, several (a,b), or all."""
    verbs = [v.strip() for v in text.split(",") if v.strip()]
    if verbs == ["all"]:
        return list(VERBS)
    wrong = [v for v in verbs if v not in VERBS]
    if wrong or not verbs:
        raise argparse.ArgumentTypeError(f"{', '.join(wrong) or repr(text)}: use "
                                         f"{', '.join(VERBS)} or all")
    return verbs


def _rules_set(args: argparse.Namespace, client: Client, out: Output) -> int:
    given = {verb: getattr(args, verb) for verb in VERBS if getattr(args, verb) is not None}
    cleared = {verb for verbs in args.clear for verb in verbs}
    both = sorted(cleared & set(given))
    if both:
        raise UsageError(f"--{both[0]} and --clear {both[0]}: set it or clear it")
    if not given and not cleared:
        raise UsageError("give a rule to set (--select, --insert, --update, --delete "
                         "EXPR) or one to remove (--clear VERB)")
    done = client.set_rules(args.database, args.table, branch=args.branch,
                            **given, **dict.fromkeys(cleared))
    if out.as_json:
        out.json(done)
        return 0
    out.table(["table", "verb", "rule"], _rules_rows({done["table"]: done["rules"]}),
              f"rules of {done['table']} set; {RULES_NOTE}")
    return 0


def _query_list(args: argparse.Namespace, client: Client, out: Output) -> int:
    found = client.named_queries(args.database, branch=args.branch)
    if out.as_json:
        out.json({"queries": found})
        return 0
    out.table(["name", "description", "sql"],
              [[q["name"], q["description"], q["sql"]] for q in found],
              f"{len(found)} named quer{'ies' if len(found) != 1 else 'y'}", whole=("name",))
    return 0


def _query_set(args: argparse.Namespace, client: Client, out: Output) -> int:
    done = client.set_named_query(args.database, args.name, args.sql, args.description,
                                  branch=args.branch)
    out.done(done, f"set named query {done['name']}")
    return 0


def _query_delete(args: argparse.Namespace, client: Client, out: Output) -> int:
    client.delete_named_query(args.database, args.name, branch=args.branch)
    out.done({"deleted": args.name}, f"deleted named query {args.name}")
    return 0


def _named_arg(text: str) -> tuple[str, str]:
    name, eq, value = text.partition("=")
    if not eq or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: write name=value")
    return name, value


def _query_run(args: argparse.Namespace, client: Client, out: Output) -> int:
    values = {name: parse_arg(value) for name, value in args.arg}
    done = client.run_named_query(args.database, args.name, values, branch=args.branch)
    rows = done["rows"]
    if out.as_json:
        out.json(done | {"rows": [_row_json(r) for r in rows]})
    elif done["columns"]:
        _row_table(out, rows, done["columns"], f"{len(rows)} row{'s' * (len(rows) != 1)}")
    else:
        n = done["rows_affected"]
        out.message(f"{n} row{'s' * (n != 1)} affected")
    return 0


# -- trusted identity providers ------------------------------------------------------------------
ISSUER_COLUMNS = ["issuer", "audience", "keys", "databases", "access", "rules", "branch"]


def _access_text(access: Any) -> str:
    """An issuer's access: a level, or from a claim (role: owner=write, ...; default read)."""
    if not isinstance(access, dict):
        return str(access)
    mapped = ", ".join(f"{value}={level}" for value, level in access.get("map", {}).items())
    default = access.get("default")
    return f"{access.get('claim')}: {mapped}" + (f"; default {default}" if default else
                                                  "; else refused")


def _issuer_rows(issuers: list[dict[str, Any]], database: str | None) -> list[list[Any]]:
    """One row an issuer; a database's own grants that database (its ``databases`` is
    left out), the node's the names and templates it lists."""
    rows = []
    for i in issuers:
        audience = i.get("audience")
        keys = i["jwks_url"] if i.get("jwks_url") else f"file {i.get('jwks_file')}"
        rows.append([i["issuer"], ", ".join(audience) if isinstance(audience, list)
                     else audience, keys, ", ".join(i.get("databases") or [database or "-"]),
                     _access_text(i.get("access")), _yes(i.get("rules", True)),
                     i.get("branch") or "-"])
    return rows


def _issuers_table(out: Output, issuers: list[dict[str, Any]], database: str | None,
                   footer: str) -> None:
    out.table(ISSUER_COLUMNS, _issuer_rows(issuers, database), footer,
              whole=("issuer",))


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'s' * (n != 1)}"


def _issuers_list(args: argparse.Namespace, client: Client, out: Output) -> int:
    if args.database is not None:
        own = client.issuers(args.database)
        if out.as_json:
            out.json({"database": args.database, "issuers": own})
        elif not own:
            out.message(f"{args.database} trusts no identity provider of its own (the "
                        "node's may still grant it: 'shoal issuers list')")
        else:
            _issuers_table(out, own, args.database,
                           f"{_count(len(own), 'issuer')} of {args.database}'s own")
        return 0
    node = client.issuers()
    if out.as_json:
        out.json(node)
        return 0
    if node["issuers"]:
        _issuers_table(out, node["issuers"], None,
                       f"{_count(len(node['issuers']), 'issuer')} of the node (issuers_file)")
    else:
        out.message("the node trusts no identity provider of its own (issuers_file)")
    keys = node.get("keys") or []
    if keys:
        out.table(["key source", "kids", "fetched", "error"],
                  [[k["source"], ", ".join(k["kids"]) or "-", _yes(k["fetched"]),
                    k["error"] or "-"] for k in keys],
                  f"{_count(len(keys), 'key source')} (the node's issuers and every "
                  "database's); fetched: read at least once", whole=("kids",))
    return 0


def _issuers_file(path: str) -> list[dict[str, Any]]:
    """--file: {"issuers": [...]} or the list alone, as JSON ('-': stdin)."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        data = json.loads(text)
    except OSError as exc:
        raise UsageError(f"--file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"--file {path}: not JSON ({exc})") from None
    if isinstance(data, dict) and set(data) == {"issuers"}:
        data = data["issuers"]
    if not isinstance(data, list) or not all(isinstance(i, dict) for i in data):
        raise UsageError(f'--file {path}: write {{"issuers": [...]}} or a list of issuers, '
                         'each an object {"issuer", "audience", "jwks_url", "access", ...}')
    return data


def _issuers_set(args: argparse.Namespace, client: Client, out: Output) -> int:
    given = [] if args.issuers_command == "clear" else _issuers_file(args.file)
    try:
        now = client.set_issuers(args.database, given)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if out.as_json:
        out.json({"database": args.database, "issuers": now})
    elif not now:
        out.message(f"{args.database} trusts no identity provider of its own now")
    else:
        _issuers_table(out, now, args.database,
                       f"{args.database} trusts {_count(len(now), 'issuer')} of its own now")
    return 0


def _issuers_revoke(args: argparse.Namespace, client: Client, out: Output) -> int:
    try:
        done = client.revoke_issuer(args.issuer, jti=args.jti, database=args.database)
    except ValueError as exc:  # an empty --jti is refused, never taken for every token
        raise UsageError(str(exc)) from None
    where = f" (database {done['database']}'s issuer)" if done.get("database") else ""
    if "jti" in done:
        text = f"revoked token {done['jti']} of {done['issuer']}{where}: id {done['id']}"
    else:
        text = (f"revoked every token of {done['issuer']}{where} issued before "
                f"{done['issued_before']}; those it issues from now on are accepted")
    out.done(done, text)
    return 0


def _branch_option(p: argparse.ArgumentParser, text: str) -> None:
    """--branch: which branch of the command's database; the URL's branch of it by default."""
    p.add_argument("--branch", default=None, metavar="BRANCH",
                   help=f"{text} (default: the URL's branch of that database, else main)")


def _add_branch_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                         common: argparse.ArgumentParser) -> None:
    branch = sub.add_parser("branch", help="create, list, delete and reset branches")
    bs = branch.add_subparsers(dest="branch_command", required=True,
                               metavar="{create,list,delete,reset}")
    p = _client_parser(bs, "create", common, "create a branch (copies no data)")
    p.add_argument("database")
    p.add_argument("name", help="name: [a-z0-9][a-z0-9_-]{0,62}")
    p.add_argument("--from", dest="source", default=None, help="source branch (default main)")
    p.add_argument("--at", default=None, metavar="TIMESTAMP|BOOKMARK",
                   help="fork point: an ISO 8601 time or a bookmark (default: latest)")
    p.add_argument("--materialise", action="store_true",
                   help="return once the node has hydrated the branch (its first query "
                        "then does not wait for it)")
    p.set_defaults(func=_client_command(_branch_create))
    p = _client_parser(bs, "list", common, "list branches with their fork points and sizes")
    p.add_argument("database")
    p.set_defaults(func=_client_command(_branch_list))
    p = _client_parser(bs, "delete", common, "delete a branch")
    p.add_argument("database")
    p.add_argument("name")
    p.set_defaults(func=_client_command(_branch_delete))
    p = _client_parser(bs, "reset", common,
                       "reset a branch to its parent's latest state (drops its own writes)")
    p.add_argument("database")
    p.add_argument("name")
    p.set_defaults(func=_client_command(_branch_reset))

    p = _client_parser(sub, "restore", common,
                       "restore a branch in place to a time or bookmark; the state before "
                       "stays reachable as a branch")
    p.add_argument("database")
    p.add_argument("--to", required=True, metavar="TIMESTAMP|BOOKMARK",
                   help="an ISO 8601 time (UTC unless it names a zone) or a bookmark")
    _branch_option(p, "the branch to restore")
    p.add_argument("--keep-as", default=None, metavar="NAME",
                   help="name of the branch keeping the state before (default: generated)")
    p.set_defaults(func=_client_command(_restore))

    p = _client_parser(sub, "history", common, "the restorable window of a branch")
    p.add_argument("database")
    _branch_option(p, "the branch whose history to show")
    p.set_defaults(func=_client_command(_history))

    p = _client_parser(sub, "changes", common,
                       "print a branch's committed row changes (its change feed), one a "
                       "line; the cursor to go on from ends up alone on stderr")
    p.add_argument("database")
    _branch_option(p, "the branch whose changes to read")
    p.add_argument("--since", default=None, metavar="CURSOR",
                   help="start after this cursor (the one a run printed, a change's, or a "
                        "bookmark); default: from now")
    p.add_argument("--table", action="append", default=[], metavar="TABLE",
                   help="only this table's changes (repeat, or a,b)")
    p.add_argument("--op", action="append", default=[], type=_op_list, metavar="OP",
                   help=f"only these operations: {', '.join(FEED_OPS)} (repeat, or a,b)")
    p.add_argument("--follow", "-f", action="store_true",
                   help="keep printing new changes until Ctrl-C (through node restarts)")
    p.add_argument("--wait", type=float, default=1.0, metavar="SECONDS",
                   help="without --follow: how long to wait for a first change, up to 25 "
                        "(default 1: a commit reaches the feed once it is durable)")
    p.set_defaults(func=_client_command(_changes))


def _add_webhook_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                          common: argparse.ArgumentParser) -> None:
    hook = sub.add_parser("webhook", help="deliver a branch's changes to a URL; dead letters "
                                          "(needs an admin token for the database)")
    hs = hook.add_subparsers(dest="webhook_command", required=True,
                             metavar="{create,list,show,delete,dead-letters,replay,discard}")
    p = _client_parser(hs, "create", common,
                       "make a webhook: the branch's committed row changes POSTed to URL in "
                       "signed batches; prints its id and its secret (shown once)")
    p.add_argument("database")
    p.add_argument("endpoint", metavar="URL",  # not dest url: --url is the server's
                   help="where the batches go: an http:// or https:// URL")
    _branch_option(p, "the branch whose changes to deliver")
    p.add_argument("--table", action="append", default=[], metavar="TABLE",
                   help="only this table's changes (repeat, or a,b)")
    p.add_argument("--op", action="append", default=[], type=_op_list, metavar="OP",
                   help=f"only these operations: {', '.join(FEED_OPS)} (repeat, or a,b)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="events a request carries at most (default 100)")
    p.add_argument("--max-attempts", type=int, default=None, metavar="N",
                   help="attempts of a batch before it becomes a dead letter (default 16)")
    p.add_argument("--max-age", type=float, default=None, metavar="SECONDS",
                   help="seconds from a batch's first attempt after which it becomes a dead "
                        "letter (default 86400)")
    p.add_argument("--since", default=None, metavar="CURSOR|TIME",
                   help="deliver the changes after this cursor (a bookmark, a change's "
                        "cursor) or ISO 8601 time; default: from now")
    p.set_defaults(func=_client_command(_webhook_create))
    for name, helps, letter, run in (
            ("list", "a database's webhooks and how their deliveries go", None, _webhook_list),
            ("show", "a webhook and its delivery state: cursor, retrying, attempts, last "
                     "error, delivered, dead letters", None, _webhook_show),
            ("delete", "delete a webhook (its deliveries stop; its dead letters go too)", None,
             _webhook_delete),
            ("dead-letters", "the batches a webhook gave up on, oldest first (--json: with "
                             "their events)", None, _dead_letters),
            ("replay", "deliver a webhook's dead letters again (all, or the one named), "
                       "before its next batch", "the dead letter's id (default: every one)",
             _webhook_replay),
            ("discard", "delete a dead letter without delivering it", "the dead letter's id",
             _webhook_discard)):
        p = _client_parser(hs, name, common, helps)
        p.add_argument("database")
        if name != "list":
            p.add_argument("id")
        if letter is not None:
            p.add_argument("letter", help=letter, nargs="?" if name == "replay" else None)
        p.set_defaults(func=_client_command(run))


def _add_data_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                       common: argparse.ArgumentParser) -> None:
    p = _client_parser(sub, "rows", common,
                       "a page of a table's rows through the data API (Shoal writes the SQL; "
                       "a token bound by rules sees what they pass)")
    p.add_argument("database")
    p.add_argument("table")
    p.add_argument("--where", action="append", default=[], type=_where,
                   metavar="COL=OP.VALUE",
                   help="a filter, ANDed with the others (repeat): eq, neq, lt, lte, gt, "
                        "gte, like, glob (age=gte.18), in.(a,b), is.null, is.notnull")
    p.add_argument("--select", default=None, metavar="A,B", help="the columns to show")
    p.add_argument("--order", default=None, metavar="COL[.desc],...",
                   help="the order (the table's key always ends it)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="rows a page, 1 to 1000 (default 100)")
    p.add_argument("--after", default=None, metavar="CURSOR",
                   help="the page after the one that printed this cursor")
    _branch_option(p, "the branch to read")
    p.set_defaults(func=_client_command(_rows))

    rules = sub.add_parser(
        "rules", help="show or set row rules (needs an admin token)",
        description="show or set row rules; 'shoal rules DB' is 'shoal rules show DB' "
                    "(for a database named show or set, write 'shoal rules show NAME')")
    rs = rules.add_subparsers(dest="rules_command", required=True, metavar="{show,set}")
    p = _client_parser(rs, "show", common, "every table's rules, by verb "
                                           "('shoal rules DB' for short)")
    p.add_argument("database")
    _branch_option(p, "the branch whose rules to show")
    p.set_defaults(func=_client_command(_rules_show))
    p = _client_parser(rs, "set", common,
                       "set a table's rules (SQL expressions over its columns and auth.sub, "
                       "auth.claims.NAME...); verbs not named keep theirs; one commit")
    p.add_argument("database")
    p.add_argument("table")
    for verb, helps in zip(VERBS, (
            "the rule a row must pass to be seen (read; updated or deleted; in the feed)",
            "the rule a new row must pass", "the rule a row must pass before and after an "
            "update", "the rule a row must pass to be deleted"), strict=True):
        p.add_argument("--" + verb, default=None, metavar="EXPR", help=helps)
    p.add_argument("--clear", action="append", default=[], type=_verb_list, metavar="VERB",
                   help="remove a verb's rule (repeat, or a,b; all: every one): tokens "
                        "bound by rules are refused it")
    _branch_option(p, "the branch whose rules to set")
    p.set_defaults(func=_client_command(_rules_set))

    query = sub.add_parser("named-query",
                           help="named queries: SQL an admin registers, tokens bound by rules "
                                "run")
    qs = query.add_subparsers(dest="query_command", required=True,
                              metavar="{list,set,delete,run}")
    for name, helps, run in (
            ("list", "a database's named queries", _query_list),
            ("set", "register or replace a named query (needs an admin token)", _query_set),
            ("delete", "delete a named query (needs an admin token)", _query_delete),
            ("run", "run a named query and print its rows", _query_run)):
        p = _client_parser(qs, name, common, helps)
        p.add_argument("database")
        if name != "list":
            p.add_argument("name")
        if name == "set":
            p.add_argument("--sql", required=True,
                           help="one statement: :name parameters, auth.sub and "
                                "auth.claims.NAME the caller's (bound by Shoal)")
            p.add_argument("--description", default="", help="what it is for")
        if name == "run":
            p.add_argument("--arg", action="append", default=[], type=_named_arg,
                           metavar="NAME=VALUE",
                           help="a value for :NAME (repeat); JSON when it parses as JSON "
                                "(42, null, \"007\"), else the text itself")
        _branch_option(p, "the branch whose queries to use")
        p.set_defaults(func=_client_command(run))


def _add_issuer_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                         common: argparse.ArgumentParser) -> None:
    issuers = sub.add_parser("issuers", help="identity providers whose tokens a database or "
                                             "the node trusts; revoke their tokens")
    is_ = issuers.add_subparsers(dest="issuers_command", required=True,
                                 metavar="{list,set,clear,revoke}")
    p = _client_parser(is_, "list", common,
                       "a database's own trusted issuers (an admin token of it), or with no "
                       "database the node's and their key sources: key ids, last error (an "
                       "admin token of every database)")
    p.add_argument("database", nargs="?", default=None)
    p.set_defaults(func=_client_command(_issuers_list))
    p = _client_parser(is_, "set", common,
                       "replace a database's own trusted issuers (at most 4; needs an admin "
                       "token of it)")
    p.add_argument("database")
    p.add_argument("--file", required=True, metavar="PATH",
                   help='a JSON file: {"issuers": [...]} or the list alone, each issuer '
                        '{"issuer", "audience", "jwks_url", "access", "rules", "branch", '
                        '"leeway"} (-: stdin)')
    p.set_defaults(func=_client_command(_issuers_set))
    p = _client_parser(is_, "clear", common,
                       "trust no identity provider of the database's own any more (tokens "
                       "the node's issuers grant it still work; needs an admin token of it)")
    p.add_argument("database")
    p.set_defaults(func=_client_command(_issuers_set))
    p = _client_parser(is_, "revoke", common,
                       "revoke one token of an identity provider (--jti), or every token it "
                       "issued before now; on every node of a cluster within a minute")
    p.add_argument("issuer", help="the issuer as trusted (its tokens' iss)")
    p.add_argument("--jti", default=None,
                   help="the token's jti (default: every token the issuer issued until now)")
    p.add_argument("--database", default=None,
                   help="the database's own issuer (an admin token of it may revoke); "
                        "default: the node's (an admin token of every database)")
    p.set_defaults(func=_client_command(_issuers_revoke))


def _add_client_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = _common_options()

    db = sub.add_parser("db", help="create, list, inspect and delete databases")
    dbs = db.add_subparsers(dest="db_command", required=True,
                            metavar="{create,list,info,limits,compact,delete,undelete}")
    p = _client_parser(dbs, "create", common, "create a database")
    p.add_argument("name", help="name: [a-z0-9][a-z0-9_-]{0,62}")
    p.set_defaults(func=_client_command(_db_create))
    p = _client_parser(dbs, "list", common, "list databases (every page)")
    p.add_argument("--limit", type=int, default=None, help="show at most this many")
    p.add_argument("--deleted", action="store_true",
                   help="list deleted databases still restorable instead")
    p.set_defaults(func=_client_command(_db_list))
    p = _client_parser(dbs, "info", common, "size, txid, branches and usage")
    p.add_argument("name")
    p.set_defaults(func=_client_command(_db_info))
    p = _client_parser(dbs, "limits", common, "show a database's limits, or change them "
                                              "(needs an admin token for every database)")
    p.add_argument("name")
    for name in LIMIT_OPTIONS:
        p.add_argument("--" + name.replace("_", "-"), type=_limit_value, default=_UNSET,
                       metavar="N", help="0: no limit; 'default': the node's")
    p.add_argument("--clear", action="store_true",
                   help="drop the database's own limits first (the node's defaults apply)")
    p.set_defaults(func=_client_command(_db_limits))
    p = _client_parser(dbs, "compact", common, "give a database's free pages back (VACUUM; "
                                               "needs admin; its writes wait while it runs)")
    p.add_argument("name")
    _branch_option(p, "the branch to compact")
    p.set_defaults(func=_client_command(_db_compact))
    p = _client_parser(dbs, "delete", common, "delete a database (restorable for the "
                                              "node's history_retention unless --purge)")
    p.add_argument("name")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.add_argument("--purge", action="store_true",
                   help="remove its history too, at once: it cannot be brought back")
    p.set_defaults(func=_client_command(_db_delete))
    p = _client_parser(dbs, "undelete", common, "bring back a deleted database")
    p.add_argument("name")
    p.add_argument("--incarnation", default=None,
                   help="which deleted one (see 'db list --deleted'); default the newest")
    p.set_defaults(func=_client_command(_db_undelete))

    p = _client_parser(sub, "sql", common, "run SQL (one transaction) and print results")
    p.add_argument("database")
    p.add_argument("sql", help="one statement, or several separated by ';'")
    p.add_argument("--arg", action="append", default=[], metavar="VALUE",
                   help="a value for the next '?' (repeat); JSON when it parses as JSON "
                        "(42, null, \"007\", {\"base64\": \"AAE=\"}), else the text itself")
    _branch_option(p, "the branch to run on")
    _session_options(p)
    p.set_defaults(func=_client_command(_sql))

    p = _client_parser(sub, "shell", common,
                       "interactive SQL shell (history in ~/.shoal_history); "
                       "reads stdin when it is not a terminal")
    p.add_argument("database")
    _branch_option(p, "the branch to work on")
    _session_options(p)
    p.set_defaults(func=_client_command(_shell))

    token = sub.add_parser("token", help="create, list and revoke access tokens")
    ts = token.add_subparsers(dest="token_command", required=True,
                              metavar="{create,list,revoke}")
    p = _client_parser(ts, "create", common, "create a token (needs an admin token)")
    p.add_argument("--databases", required=True,
                   help="comma-separated names and prefix patterns ('tenant-*'), or '*' for "
                        "all")
    p.add_argument("--access", choices=("read", "write", "admin", "provision"), default="read",
                   help="provision: create and delete the databases of its patterns and mint "
                        "their tokens, no data (a fleet's control plane)")
    p.add_argument("--branch", default=None,
                   help="bind a read or write token to this branch (it works there only)")
    p.add_argument("--expires-in", type=int, default=3600, metavar="SECONDS",
                   help="lifetime in seconds (default 3600)")
    p.set_defaults(func=_client_command(_token_create))
    p = _client_parser(ts, "list", common,
                       "list tokens, never their secrets (every page; needs an admin token: "
                       "one scoped to some databases lists the tokens it could revoke)")
    p.add_argument("--database", default=None, help="only tokens that reach this database")
    p.add_argument("--all", action="store_true",
                   help="expired and revoked tokens too (default: live ones only)")
    p.add_argument("--limit", type=int, default=None, help="show at most this many")
    p.set_defaults(func=_client_command(_token_list))
    p = _client_parser(ts, "revoke", common, "revoke a token by id, at once")
    p.add_argument("id")
    p.set_defaults(func=_client_command(_token_revoke))
    _add_branch_commands(sub, common)
    _add_webhook_commands(sub, common)
    _add_data_commands(sub, common)
    _add_issuer_commands(sub, common)
    p = _client_parser(sub, "audit", common,
                       "the audit log: who did what, when (oldest first; needs an admin token: "
                       "one scoped to some databases sees theirs)")
    p.add_argument("--database", default=None, help="only this database's records")
    p.add_argument("--since", default="1h", help="from this time: unix seconds, RFC 3339, or "
                   "ago as 30m, 2h, 7d (default 1h)")
    p.add_argument("--until", default=None, help="before this time (the same forms)")
    p.add_argument("--limit", type=int, default=1000, help="show at most this many "
                   "(default 1000)")
    p.set_defaults(func=_client_command(_audit))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shoal", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_client_commands(sub)
    return parser


def _shortcuts(argv: list[str]) -> list[str]:
    """`shoal rules DB ...` is `shoal rules show DB ...` (argparse's subcommands cannot
    take a database name in the subcommand's place)."""
    if len(argv) >= 2 and argv[0] == "rules" and argv[1] not in ("show", "set", "-h",
                                                                  "--help"):
        return ["rules", "show", *argv[1:]]
    return argv


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(_shortcuts(sys.argv[1:] if argv is None else argv))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sys.exit(args.func(args))
