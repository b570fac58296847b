"""`shoal rows`, `shoal rules` and `shoal named-query`, run in process against the App
(the CLI's Client given the node's transport): what they print, as tables and as JSON,
and how they refuse a command line. tests/integration/test_cli.py runs the CLI as a
subprocess; these commands add nothing a subprocess would show."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from shoal import cli
from shoal.client import Client
from tests.support.cli_inprocess import Run, json_of, shoal_runner
from tests.support.inprocess import InProcessNode
from tests.support.server import ServerProcess


@pytest.fixture
def shoal(server: ServerProcess, monkeypatch: pytest.MonkeyPatch,
          capsys: pytest.CaptureFixture[str]) -> Run:
    """shoal(*argv) -> (status, stdout, stderr), as `shoal` run with URL and token set."""
    assert isinstance(server, InProcessNode)
    return shoal_runner(server, monkeypatch, capsys, columns=200)


_json = json_of


@pytest.fixture
def db(server: ServerProcess, new_db: Callable[[], str]) -> str:
    name = new_db()
    assert isinstance(server, InProcessNode)
    with Client(server.url, server.admin_token, transport=server.transport()) as c:
        c.batch(["CREATE TABLE t(id INTEGER PRIMARY KEY, owner TEXT, data BLOB)",
                 "INSERT INTO t(owner, data) VALUES ('ann', x'0001'), ('bob', NULL), "
                 "('ann', NULL)"], database=name)
    return name


def test_rows(shoal: Run, db: str) -> None:
    page = _json(shoal("rows", db, "t", "--where", "owner=eq.ann", "--order", "id.desc",
                      "--json"))
    assert [r["id"] for r in page["rows"]] == [3, 1] and page["next"] is None
    assert page["rows"][1]["data"] == {"base64": "AAE="}  # the API's value encoding
    status, out, _ = shoal("rows", db, "t", "--select", "id,owner", "--limit", "2")
    assert status == 0 and "owner" in out and "data" not in out and "bob" in out
    assert "2 rows; the next page: --after " in out
    after = out.split("--after ")[1].split()[0]
    rest = _json(shoal("rows", db, "t", "--after", after, "--json"))
    assert [r["id"] for r in rest["rows"]] == [3]
    status, out, _ = shoal("rows", db, "t", "--where", "id=in.(1,2)", "--where",
                           "data=is.notnull")
    assert status == 0 and "x'0001'" in out and "1 row" in out
    status, out, _ = shoal("rows", db, "t", "--where", "id=gt.9", "--select", "id")
    assert status == 0 and "0 rows" in out
    status, _, err = shoal("rows", db, "t", "--where", "nope=eq.1")
    assert status == 1 and err.startswith("error UNKNOWN_COLUMN: ")
    status, _, err = shoal("rows", db, "t", "--where", "owner")
    assert status == 2 and "col=op.value" in err


def test_rules_show_and_set(shoal: Run, db: str) -> None:
    status, out, _ = shoal("rules", db)  # the shortcut of `rules show`
    assert status == 0 and "no rules" in out
    done = _json(shoal("rules", "set", db, "t", "--select", "owner = auth.sub",
                       "--delete", "0", "--json"))
    assert done["rules"] == {"select": "owner = auth.sub", "insert": None, "update": None,
                             "delete": "0"} and done["bookmark"]
    status, out, _ = shoal("rules", "show", db)
    lines = [" ".join(line.replace("│", " ").split()) for line in out.splitlines()]
    assert "t select owner = auth.sub" in lines and "t insert -" in lines
    assert "1 table with rules" in out
    shown = _json(shoal("rules", db, "--json"))
    assert shown == {"database": db, "branch": "main", "rules": {"t": done["rules"]}}
    status, out, _ = shoal("rules", "set", db, "t", "--clear", "delete",
                           "--insert", "owner = auth.sub")
    assert status == 0 and "rules of t set" in out
    assert _json(shoal("rules", db, "--json"))["rules"]["t"] == {
        "select": "owner = auth.sub", "insert": "owner = auth.sub", "update": None,
        "delete": None}
    # --clear all: every verb; a table without rules is not listed
    assert _json(shoal("rules", "set", db, "t", "--clear", "all", "--json"))["rules"] == \
        dict.fromkeys(cli.VERBS)
    assert _json(shoal("rules", db, "--json"))["rules"] == {}
    # refused: a rule that does not compile; nothing to do; the same verb set and cleared
    status, _, err = shoal("rules", "set", db, "t", "--select", "owner = ")
    assert status == 1 and err.startswith("error INVALID_RULE: ")
    status, _, err = shoal("rules", "set", db, "t")
    assert status == 1 and err.startswith("error USAGE: give a rule to set")
    status, _, err = shoal("rules", "set", db, "t", "--select", "1", "--clear", "select")
    assert status == 1 and "set it or clear it" in err
    status, _, err = shoal("rules", "set", db, "t", "--clear", "upsert")
    assert status == 2 and "use select, insert, update, delete or all" in err


def test_named_queries(shoal: Run, db: str) -> None:
    made = _json(shoal("named-query", "set", db, "by-owner", "--sql",
                       "SELECT id, data FROM t WHERE owner = :who ORDER BY id",
                       "--description", "rows of one owner", "--json"))
    assert made["name"] == "by-owner" and made["bookmark"]
    status, out, _ = shoal("named-query", "list", db)
    assert status == 0 and "by-owner" in out and "rows of one owner" in out
    assert "1 named query" in out
    ran = _json(shoal("named-query", "run", db, "by-owner", "--arg", "who=ann", "--json"))
    assert ran["columns"] == ["id", "data"]
    assert ran["rows"] == [{"id": 1, "data": {"base64": "AAE="}}, {"id": 3, "data": None}]
    status, out, _ = shoal("named-query", "run", db, "by-owner", "--arg", 'who="bob"')
    assert status == 0 and "2" in out and "1 row" in out
    status, _, err = shoal("named-query", "run", db, "by-owner")
    assert status == 1 and err.startswith("error INVALID_ARGUMENT: ")
    status, _, err = shoal("named-query", "run", db, "by-owner", "--arg", "who")
    assert status == 2 and "name=value" in err
    status, out, _ = shoal("named-query", "delete", db, "by-owner")
    assert status == 0 and "deleted named query by-owner" in out
    assert _json(shoal("named-query", "list", db, "--json")) == {"queries": []}
    status, _, err = shoal("named-query", "run", db, "by-owner")
    assert status == 1 and err.startswith("error QUERY_NOT_FOUND: ")
    status, _, err = shoal("named-query", "set", db, "x")  # --sql is required
    assert status == 2 and "--sql" in err


@pytest.mark.parametrize("command", [["rows"], ["rules", "show"], ["rules", "set"],
                                     ["named-query", "run"]])
def test_help_says_where_the_token_comes_from(command: list[str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([*command, "--help"])
    assert done.value.code == 0
    flat = " ".join(capsys.readouterr().out.split())
    assert "SHOAL_TOKEN" in flat and "--json" in flat


def test_rules_shortcut() -> None:
    assert cli.parse_args(["rules", "db1"]).func is not None
    for argv, database in ((["rules", "db1", "--json"], "db1"),
                           (["rules", "--json", "db1"], "db1"),
                           (["rules", "show", "set"], "set")):  # a database named set
        args = cli.parse_args(argv)
        assert (args.rules_command, args.database) == ("show", database)
    assert cli.parse_args(["rules", "set", "db1", "t", "--select", "1"]).rules_command == "set"
