"""shoal.rules alone: rule expressions (what is refused, what auth.* becomes, the values
bound), the data API's parsing (filters, order, cursors) and its SQL, run here against an
SQLite file of apsw's with the deny function Shoal's connections have: every operator,
keyset pages over NULLs in every order, rules on reads and writes, the feed's check."""

from __future__ import annotations

import itertools
from typing import Any

import apsw
import pytest

from shoal.errors import Code, ShoalError
from shoal.rules import (
    DENY,
    Filter,
    Order,
    Read,
    Rules,
    Shape,
    compile_expr,
    decode_cursor,
    delete_sql,
    encode_cursor,
    insert_sql,
    parse_filters,
    parse_order,
    quote,
    select_sql,
    update_sql,
    value_of,
    visible_sql,
)


class Who:
    def __init__(self, user: str | None = "alice", claims: dict[str, Any] | None = None,
                 subject: str = "tok_1", issuer: str = "https://idp", access: str = "write"):
        self.user, self.claims, self.subject = user, claims, subject
        self.issuer, self.access = issuer, access


def refused(text: str, query: bool = False) -> str:
    with pytest.raises(ShoalError) as err:
        compile_expr(text, query=query)
    assert err.value.code == Code.INVALID_RULE
    return err.value.message


# -- expressions ---------------------------------------------------------------------------------

def test_auth_names_become_parameters() -> None:
    e = compile_expr("owner = auth.sub AND org = auth.claims.org AND "
                     "x = AUTH.Claims.a.b AND y = auth . iss AND z = auth.access "
                     "AND auth.sub = 'auth.sub' AND \"auth.sub\" = 1 AND w = auth.sub")
    assert e.sql == ("owner = :auth_0 AND org = :auth_1 AND x = :auth_2 AND y = :auth_3 "
                     "AND z = :auth_4 AND :auth_0 = 'auth.sub' AND \"auth.sub\" = 1 "
                     "AND w = :auth_0")
    assert e.paths == (("sub",), ("claims", "org"), ("claims", "a", "b"), ("iss",),
                       ("access",))
    assert e.text.startswith("owner = auth.sub")
    assert compile_expr('auth.claims."odd name" = 1').paths == (("claims", "odd name"),)
    assert compile_expr("auth.claims.[br] = 1").paths == (("claims", "br"),)
    assert compile_expr("t.auth = 1 AND x.auth.sub = 2").sql == "t.auth = 1 AND x.auth.sub = 2"
    assert compile_expr("1.5e3 > 2 AND x'00' = x").sql == "1.5e3 > 2 AND x'00' = x"


@pytest.mark.parametrize("text", [
    "", "   ", "a; b", "a -- c", "a /* c */", "a = ?", "a = :x", "a = @x", "a = $x",
    "(a", "a)", "(a))", "a) OR (1", "auth", "auth.", "auth.nope", "auth.claims",
    "'open", '"open', "[open", "a\x00", "x" * 4097,
])
def test_what_a_rule_refuses(text: str) -> None:
    refused(text)


def test_named_query_statements() -> None:
    q = compile_expr("SELECT * FROM t -- mine\nWHERE o = auth.sub AND id = :id /* x */;",
                     query=True)
    assert q.sql.endswith("WHERE o = :auth_0 AND id = :id /* x */;")
    assert q.paths == (("sub",),)
    for text in ("SELECT 1; SELECT 2", "SELECT ?", "SELECT :auth_0", "SELECT :AUTH_x"):
        refused(text, query=True)
    assert "characters" in refused("x" * 4097)
    compile_expr("SELECT '" + "x" * 5000 + "'", query=True, limit=100_000)


def test_claims_as_values() -> None:
    who = Who(claims={"org": "acme", "n": 7, "ok": True, "no": False, "f": 1.5,
                      "list": ["a", "b"], "obj": {"b": 1, "a": {"c": None}},
                      "big": 2**70, "neg": -(2**63)})
    assert value_of(who, ("sub",)) == "alice"
    assert value_of(Who(user=None), ("sub",)) == "tok_1"
    assert value_of(who, ("iss",)) == "https://idp"
    assert value_of(who, ("access",)) == "write"
    assert value_of(who, ("claims", "org")) == "acme"
    assert value_of(who, ("claims", "n")) == 7
    assert value_of(who, ("claims", "ok")) == 1 and value_of(who, ("claims", "no")) == 0
    assert value_of(who, ("claims", "f")) == 1.5
    assert value_of(who, ("claims", "list")) == '["a","b"]'
    assert value_of(who, ("claims", "obj")) == '{"a":{"c":null},"b":1}'
    assert value_of(who, ("claims", "obj", "b")) == 1
    assert value_of(who, ("claims", "obj", "a", "c")) is None
    assert value_of(who, ("claims", "org", "deeper")) is None
    assert value_of(who, ("claims", "missing")) is None
    assert value_of(who, ("claims", "big")) == str(2**70)
    assert value_of(who, ("claims", "neg")) == -(2**63)
    assert value_of(Who(claims=None), ("claims", "org")) is None
    into: dict[str, Any] = {}
    compile_expr("a = auth.claims.org OR b = auth.sub").bind(who, into)
    assert into == {"auth_0": "acme", "auth_1": "alice"}


# -- parsing -----------------------------------------------------------------------------------

def test_filters() -> None:
    got = parse_filters([("a", "eq.1"), ("b", "neq.x.y"), ("c", "lt.2"), ("d", "lte.2"),
                         ("e", "gt.2"), ("f", "gte.2"), ("g", "like.a%"), ("h", "glob.a*"),
                         ("i", "in.(1,\"2,3\",\"a\"\"b\",)"), ("j", "is.null"),
                         ("k", "is.notnull"), ("select", "x"), ("order", "y"),
                         ("limit", "1"), ("after", "z"), ("branch", "b"), ("l", "eq.")])
    assert got == [Filter("a", "eq", "1"), Filter("b", "neq", "x.y"), Filter("c", "lt", "2"),
                   Filter("d", "lte", "2"), Filter("e", "gt", "2"), Filter("f", "gte", "2"),
                   Filter("g", "like", "a%"), Filter("h", "glob", "a*"),
                   Filter("i", "in", ("1", "2,3", 'a"b', "")), Filter("j", "is", "null"),
                   Filter("k", "is", "notnull"), Filter("l", "eq", "")]
    for bad in ("eq", "between.1", "in.1,2", "in.()", "in.(\"a)", "in.(\"a\"b)", "is.x"):
        with pytest.raises(ShoalError) as err:
            parse_filters([("a", bad)])
        assert err.value.code == Code.INVALID_REQUEST, bad
    parse_filters([("a", "in.(" + ",".join("1" * 100) + ")")])
    with pytest.raises(ShoalError):
        parse_filters([("a", "in.(" + ",".join(["1"] * 101) + ")")])
    parse_filters([(f"c{i}", "eq.1") for i in range(32)])
    with pytest.raises(ShoalError):
        parse_filters([(f"c{i}", "eq.1") for i in range(33)])


def test_order_and_cursor() -> None:
    assert parse_order(None) == [] and parse_order("") == []
    assert parse_order("a.desc,b,c.asc,d.x") == [Order("a", True), Order("b"), Order("c"),
                                                  Order("d.x")]
    parse_order("a,b,c,d")
    with pytest.raises(ShoalError):
        parse_order("a,b,c,d,e")
    values = [None, 1, -2**63, 1.5, "x", b"\x00\xff", ""]
    assert decode_cursor(encode_cursor(values)) == values
    assert "=" not in encode_cursor(values)
    for bad in ("!!", "", encode_cursor([]) + "x", "gaFh"):  # bad base64, a map, junk
        with pytest.raises(ShoalError) as err:
            decode_cursor(bad) if bad else decode_cursor("@")
        assert err.value.code == Code.INVALID_REQUEST
    with pytest.raises(ShoalError):
        decode_cursor(encode_cursor([[1]]))  # type: ignore[list-item]


def test_shape() -> None:
    s = Shape.of("t", [("id", 1, 0), ("a", 0, 0), ("g", 0, 2), ("h", 0, 3), ("v", 0, 1)],
                 False)
    assert s.columns == ("id", "a", "g", "h") and s.writable == frozenset({"id", "a"})
    assert s.key == ("_rowid_",)
    assert Shape.of("t", [("_rowid_", 0, 0)], False).key == ("rowid",)
    assert Shape.of("t", [("_rowid_", 0, 0), ("ROWID", 0, 0)], False).key == ("oid",)
    with pytest.raises(ShoalError):
        Shape.of("t", [("_rowid_", 0, 0), ("rowid", 0, 0), ("oid", 0, 0)], False)
    assert Shape.of("t", [("id", 1, 0, "integer"), ("a", 0, 0, "")], False).key == ("id",)
    assert Shape.of("t", [("id", 1, 0, "INT"), ("a", 0, 0, "")], False).key == ("_rowid_",)
    assert Shape.of("t", [("id", 1, 0, "TEXT")], False).key == ("_rowid_",)
    assert Shape.of("t", [("a", 1, 0, "INTEGER"), ("b", 2, 0, "INTEGER")],
                    False).key == ("_rowid_",)
    assert Shape.of("t", [("id", 1, 0, "INTEGER", 0), ("a", 0, 0, "", 1), ("b", 0, 0, "", 0)],
                    False).not_null == frozenset({"a"})
    w = Shape.of("t", [("b", 2, 0), ("a", 1, 0), ("c", 0, 0)], True)
    assert w.key == ("a", "b")
    assert s.column("A") == "a" and s.column("id") == "id"
    with pytest.raises(ShoalError) as err:
        s.column("nope")
    assert err.value.code == Code.UNKNOWN_COLUMN
    assert quote('a"b') == '"a""b"'


# -- the SQL, run --------------------------------------------------------------------------------

def _deny(*args: Any) -> Any:
    raise ShoalError(Code.RULE_DENIED, "denied")


@pytest.fixture
def conn() -> apsw.Connection:
    c = apsw.Connection(":memory:")
    c.create_scalar_function(DENY, _deny)
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, owner TEXT NOT NULL, n INTEGER, s TEXT, "
              "g TEXT GENERATED ALWAYS AS (s || '!'))")
    rows = [(i, "alice" if i % 2 else "bob", None if i % 3 == 0 else i % 4,
             None if i % 5 == 0 else f"s{i % 3}") for i in range(1, 31)]
    c.executemany("INSERT INTO t(id, owner, n, s) VALUES (?, ?, ?, ?)", rows)
    return c


SHAPE = Shape("t", ("id", "owner", "n", "s", "g"), frozenset({"id", "owner", "n", "s"}),
              ("id",), frozenset({"owner"}))  # (id: the rowid's alias, INTEGER PRIMARY KEY)
OWN = compile_expr("owner = auth.sub")


def run(conn: apsw.Connection, sql: str, args: dict[str, Any]) -> list[tuple[Any, ...]]:
    return list(conn.execute(sql, args))


def read(conn: apsw.Connection, r: Read, rule: Any = None,
         who: Any = None) -> tuple[list[tuple[Any, ...]], int]:
    sql, args, shown = select_sql(SHAPE, r, rule, who)
    return run(conn, sql, args), shown


@pytest.mark.parametrize(("filters", "where"), [
    ([Filter("n", "eq", "2")], "n = 2"), ([Filter("n", "neq", "2")], "n != 2"),
    ([Filter("n", "lt", "2")], "n < 2"), ([Filter("n", "lte", "2")], "n <= 2"),
    ([Filter("n", "gt", "2")], "n > 2"), ([Filter("n", "gte", "2")], "n >= 2"),
    ([Filter("s", "like", "S1%")], "s LIKE 'S1%'"), ([Filter("s", "glob", "s[12]")],
                                                     "s GLOB 's[12]'"),
    ([Filter("id", "in", ("1", "2", "40"))], "id IN (1, 2, 40)"),
    ([Filter("n", "is", "null")], "n IS NULL"), ([Filter("s", "is", "notnull")],
                                                  "s IS NOT NULL"),
    ([Filter("n", "gte", "1"), Filter("owner", "eq", "bob")], "n >= 1 AND owner = 'bob'"),
])
def test_filters_select_what_sql_would(conn: apsw.Connection, filters: list[Filter],
                                       where: str) -> None:
    got, shown = read(conn, Read(columns=("id",), filters=filters, limit=100))
    want = [r[0] for r in conn.execute(f"SELECT id FROM t WHERE {where} ORDER BY id")]
    assert [r[0] for r in got] == want and shown == 1


@pytest.mark.parametrize("order", [
    [Order("id")], [Order("id", True)], [Order("n")], [Order("n", True)], [Order("s")],
    [Order("s", True)], [Order("n"), Order("s", True)], [Order("n", True), Order("s")],
    [Order("s", True), Order("n", True)], [Order("owner"), Order("n")],
])
@pytest.mark.parametrize("limit", [1, 4, 7])
def test_keyset_pages_are_the_order_cut_in_pages(conn: apsw.Connection, order: list[Order],
                                                 limit: int) -> None:
    by = ", ".join(f"{o.column}{' DESC' if o.desc else ''}" for o in order)
    tie = " DESC" if order[-1].desc else ""  # the key breaks ties in the last one's way
    want = [r[0] for r in conn.execute(f"SELECT id FROM t ORDER BY {by}, id{tie}")]
    seen: list[int] = []
    after = None
    for _ in range(100):
        rows, shown = read(conn, Read(columns=("id",), order=order, limit=limit, after=after))
        page = rows[:limit]
        seen += [r[0] for r in page]
        if len(rows) <= limit:
            break
        after = list(page[-1][shown:])
    assert seen == want


def test_a_cursor_of_another_order_is_refused(conn: apsw.Connection) -> None:
    with pytest.raises(ShoalError):
        read(conn, Read(order=[Order("n")], after=[1]))


def test_select_columns_and_rule(conn: apsw.Connection) -> None:
    rows, shown = read(conn, Read(columns=("S", "id"), limit=100), OWN, Who("bob"))
    assert shown == 2 and {r[1] % 2 for r in rows} == {0} and len(rows) == 15
    rows, _ = read(conn, Read(filters=[Filter("owner", "eq", "alice")]), OWN, Who("bob"))
    assert rows == []
    rows, _ = read(conn, Read(limit=100), OWN, Who(None))  # the token's id: nobody's
    assert rows == []
    rule = compile_expr("owner = auth.sub OR n = auth.claims.n")
    rows, _ = read(conn, Read(columns=("id",), limit=100), rule, Who("bob", {"n": 1}))
    assert len(rows) == 15 + len([i for i in range(1, 31, 2) if i % 3 and i % 4 == 1])


def test_writes_under_rules(conn: apsw.Connection) -> None:
    rules = Rules(select=OWN, insert=OWN, update=OWN, delete=OWN)
    bob = Who("bob")
    (sql, args), = insert_sql(SHAPE, [{"owner": "bob", "s": "x"}], rules, bob)
    assert run(conn, sql, args)[0][:5] == (31, "bob", None, "x", "x!")
    (sql, args), = insert_sql(SHAPE, [{"owner": "bob"}, {"owner": "alice"}], rules, bob)
    with pytest.raises(ShoalError):
        run(conn, sql, args)
    assert conn.execute("SELECT count(*) FROM t").get == 31  # the statement undid its rows
    groups = insert_sql(SHAPE, [{"owner": "bob"}, {"s": "y", "owner": "bob"}, {}], None, None)
    assert len(groups) == 3 and groups[2][0].startswith('INSERT INTO main."t" DEFAULT VALUES')
    with pytest.raises(ShoalError):
        insert_sql(SHAPE, [{}, {}], None, None)
    with pytest.raises(ShoalError):
        insert_sql(SHAPE, [{"g": "x"}], None, None)  # generated
    with pytest.raises(ShoalError):
        insert_sql(SHAPE, [{"owner": "a", "OWNER": "b"}], None, None)
    sql, args = update_sql(SHAPE, {"s": "z"}, [], rules, bob)
    assert len(run(conn, sql, args)) == 16  # bob's, and only his
    sql, args = update_sql(SHAPE, {"owner": "alice"}, [Filter("id", "eq", "2")], rules, bob)
    with pytest.raises(ShoalError):
        run(conn, sql, args)  # his row would leave him
    with pytest.raises(ShoalError):
        update_sql(SHAPE, {}, [], rules, bob)
    sql, args = update_sql(SHAPE, {"s": "admin"}, [Filter("id", "eq", "1")], None, None)
    assert len(run(conn, sql, args)) == 1
    sql, args = delete_sql(SHAPE, [Filter("id", "lt", "5")], rules, bob)
    assert [r[0] for r in run(conn, sql, args)] == [2, 4]
    sql, args = delete_sql(SHAPE, [], None, None)
    assert len(run(conn, sql, args)) == 29


def test_rules_bind_their_own_parameters(conn: apsw.Connection) -> None:
    two = Rules(select=compile_expr("owner = auth.sub"),
                update=compile_expr("n IS NOT auth.claims.n AND owner = auth.sub"))
    sql, args = update_sql(SHAPE, {"s": "q"}, [Filter("id", "lte", "4")], two,
                           Who("bob", {"n": 2}))
    assert sorted(r[0] for r in run(conn, sql, args)) == [4]  # 2 has n = 2


def test_visible(conn: apsw.Connection) -> None:
    rule = compile_expr("owner = auth.sub AND n IS NOT (SELECT 5 FROM t LIMIT 0)")
    sql, args, names = visible_sql(["id", "owner", "n"], "t", rule, 3, Who("bob"))
    for name, value in zip(names, [2, "bob", 2, 3, "alice", 3, 99, "bob", None],
                           strict=True):
        args[name] = value
    assert [r[0] for r in run(conn, sql, args)] == [1, 0, 0]  # alice's; a NULL n
    assert len(names) == 9 and len(set(names)) == 9
    # the event's rows stand in for the table, in the rule's subqueries too (docs/api.md)
    rule = compile_expr("id IN (SELECT id FROM t)")
    sql, args, names = visible_sql(["id"], "t", rule, 1, Who("bob"))
    args[names[0]] = 99
    assert run(conn, sql, args) == [(1,)]


def test_every_statement_is_one_statement() -> None:
    who = Who()
    for sql, _ in itertools.chain(
            [select_sql(SHAPE, Read(after=[1]), OWN, who)[:2]],
            insert_sql(SHAPE, [{"owner": "x"}], Rules(OWN, OWN, OWN, OWN), who),
            insert_sql(SHAPE, [{"id": 1, "owner": "x"}], Rules(OWN, OWN, OWN, OWN), who, True),
            [update_sql(SHAPE, {"s": 1}, [Filter("id", "eq", "1")],
                        Rules(OWN, OWN, OWN, OWN), who)],
            [delete_sql(SHAPE, [], Rules(OWN, OWN, OWN, OWN), who)]):
        assert apsw.complete(sql + ";") and sql.count(";") == 0


# -- the tokenizer's corners (what a rule's text may hold around auth.*) ------------------------

@pytest.mark.parametrize(("text", "sql"), [
    ("'it''s auth.sub' = auth.sub", "'it''s auth.sub' = :auth_0"),
    ('"a""b auth.sub" = auth.sub', '"a""b auth.sub" = :auth_0'),
    ("`a``b auth.sub` = auth.sub", "`a``b auth.sub` = :auth_0"),
    ("[a auth.sub] = auth.sub", "[a auth.sub] = :auth_0"),
    ("x'61' = auth.sub", "x'61' = :auth_0"),
    ("é = auth.sub AND _x$ = 1", "é = :auth_0 AND _x$ = 1"),
    ("0x1F = 31 AND 1.5e3 = auth.sub", "0x1F = 31 AND 1.5e3 = :auth_0"),
    ("auth.sub.x = 1", ":auth_0.x = 1"),  # a field has no parts: SQLite refuses the rest
    ("(auth.sub)", "(:auth_0)"),
    ("a=auth.sub", "a=:auth_0"),
    ("a\t=\nauth\n.\nsub", "a\t=\n:auth_0"),
    # what an identifier holds: a name going on into "auth" is another name
    ("x_auth.sub = 1", "x_auth.sub = 1"), ("x$auth.sub = 1", "x$auth.sub = 1"),
    ("x€auth.sub = 1", "x€auth.sub = 1"), ("€auth.sub = 1", "€auth.sub = 1"),
    ("_auth.sub = 1", "_auth.sub = 1"), ("x9auth.sub = 1", "x9auth.sub = 1"),
    ("9.5auth.sub = 1", "9.5auth.sub = 1"), ("'a'auth.sub", "'a':auth_0"),
    ("[x]auth.sub", "[x]:auth_0"), ('"x"auth.sub', '"x":auth_0'),
    ("'[' = auth.sub", "'[' = :auth_0"), ("\"'\" = auth.sub", "\"'\" = :auth_0"),
])
def test_rewriting_keeps_everything_else(text: str, sql: str) -> None:
    assert compile_expr(text).sql == sql


@pytest.mark.parametrize(("text", "path"), [
    ('auth.claims."a""b" = 1', ("claims", 'a"b')),
    ("auth.claims.`a``b` = 1", ("claims", "a`b")),
    ("auth.claims.[a]] = 1", ("claims", "a")),
    ("auth.claims.a.\"b\".c = 1", ("claims", "a", "b", "c")),
])
def test_claim_paths(text: str, path: tuple[str, ...]) -> None:
    assert compile_expr(text).paths == (path,)


@pytest.mark.parametrize(("text", "sql"), [
    ("SELECT 1 -- auth.sub\nWHERE a = auth.sub", "SELECT 1 -- auth.sub\nWHERE a = :auth_0"),
    ("SELECT /* auth.sub */ auth.sub", "SELECT /* auth.sub */ :auth_0"),
    ("SELECT auth.sub /* open", "SELECT :auth_0 /* open"),
    ("SELECT auth.sub -- to the end", "SELECT :auth_0 -- to the end"),
    ("SELECT :a, @b, $c, auth.sub", "SELECT :a, @b, $c, :auth_0"),
    ("SELECT auth.sub;  \n ", "SELECT :auth_0;  \n "),
    ("SELECT a::b", "SELECT a::b"),
    ("SELECT 1 --c\nauth.sub", "SELECT 1 --c\n:auth_0"),
    ("SELECT /*/ auth.sub */ auth.sub", "SELECT /*/ auth.sub */ :auth_0"),
    ("SELECT /**/auth.sub", "SELECT /**/:auth_0"),
    ("SELECT :x$y, :auth", "SELECT :x$y, :auth"),
    ("SELECT 1;", "SELECT 1;"),
])
def test_named_query_texts(text: str, sql: str) -> None:
    assert compile_expr(text, query=True).sql == sql


@pytest.mark.parametrize("text", ["'a''", '"a""', "[a", "`a", "a ;", "a = :b", "1 -- x",
                                  "1 /* x */", "a = @b c", "a = ?1", "a = $b", "1;"])
def test_rule_mode_refuses_what_a_query_may_hold(text: str) -> None:
    refused(text)


def test_sql_values_keep_their_types() -> None:
    who = Who(claims={"t": True, "max": 2**63 - 1, "over": 2**63, "min": -(2**63),
                      "under": -(2**63) - 1})
    assert type(value_of(who, ("claims", "t"))) is int
    assert value_of(who, ("claims", "max")) == 2**63 - 1
    assert value_of(who, ("claims", "over")) == str(2**63)
    assert value_of(who, ("claims", "min")) == -(2**63)
    assert value_of(who, ("claims", "under")) == str(-(2**63) - 1)
    assert compile_expr("a" * 4096) and refused("a" * 4097)
    with pytest.raises(ShoalError):
        compile_expr("b" * 11, limit=10)
    compile_expr("b" * 10, limit=10)


# -- the SQL's corners ---------------------------------------------------------------------------

def test_rules_by_verb() -> None:
    r = Rules(select=OWN, delete=compile_expr("1"))
    assert r.get("select") is OWN and r.get("insert") is None
    assert r.as_json() == {"select": "owner = auth.sub", "insert": None, "update": None,
                           "delete": "1"}
    assert Read().limit == 100 and Read().after is None


def test_a_page_reads_one_row_past_its_limit(conn: apsw.Connection) -> None:
    rows, _ = read(conn, Read(columns=("id",), limit=3))
    assert len(rows) == 4


def test_the_key_order_is_a_range_search(conn: apsw.Connection) -> None:
    for order, after in (([], [5]), ([Order("id")], [5])):
        sql, args, _ = select_sql(SHAPE, Read(order=order, after=after), None, None)
        plan = " ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args))
        assert "rowid>?" in plan, plan
    sql, args, _ = select_sql(SHAPE, Read(order=[Order("id", True)], after=[5]), None, None)
    plan = " ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args))
    assert "rowid<?" in plan, plan
    conn.execute("CREATE INDEX t_n ON t(n)")
    conn.execute("CREATE INDEX t_owner ON t(owner)")
    for column, way, index in (("n", False, "t_n"), ("owner", False, "t_owner"),
                               ("owner", True, "t_owner")):
        # a page of an index's order is a range of the index (descending, for a column
        # that holds no NULL: NULLs come last, after every value)
        sql, args, _ = select_sql(SHAPE, Read(order=[Order(column, way)], after=["b", 7]),
                                  None, None)
        plan = " ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args))
        assert f"INDEX {index} ({column}" in plan and "SCAN" not in plan, (column, way, plan)


def test_cursors_that_do_not_decode() -> None:
    for bad in ("A", "AAAAA", "!!", "gA"):  # a base64 length no encoder makes, junk, a map
        with pytest.raises(ShoalError):
            decode_cursor(bad)


def test_in_lists_need_both_parentheses() -> None:
    for bad in ("in.(1,2", "in.1,2)", 'in.("a', 'in.("a"', 'in.(1,"a'):
        with pytest.raises(ShoalError):
            parse_filters([("a", bad)])
    assert parse_filters([("a", 'in.("")')]) == [Filter("a", "in", ("",))]


def test_writes_without_rules_run(conn: apsw.Connection) -> None:
    for sql, args in insert_sql(SHAPE, [{"owner": "x"}, {"s": "y", "owner": "y"}], None,
                                None):
        assert len(run(conn, sql, args)) == 1
    (sql, args), = insert_sql(SHAPE, [{}], None, None)
    with pytest.raises(apsw.ConstraintError):
        run(conn, sql, args)  # DEFAULT VALUES: owner is NOT NULL
    assert len(run(conn, *update_sql(SHAPE, {"s": "z"}, [Filter("owner", "eq", "x")], None,
                                     None))) == 1
    assert run(conn, *delete_sql(SHAPE, [Filter("owner", "eq", "x")], None, None))[0][1] == "x"
    assert SHAPE.column("owner") == "owner" and SHAPE.column("g") == "g"


@pytest.mark.parametrize(("text", "sql"), [
    ("'' = auth.sub", "'' = :auth_0"), ("'a''' = auth.sub", "'a''' = :auth_0"),
    ("X = auth.sub", "X = :auth_0"), ("a : b", "a : b"), ("a :=b", "a :=b"),
    (".auth.sub = 1", ".auth.sub = 1"), ("auth.sub auth.iss", ":auth_0 :auth_1"),
])
def test_more_rewriting_corners(text: str, sql: str) -> None:
    assert compile_expr(text).sql == sql


@pytest.mark.parametrize("text", ["Xa = :y", "auth.claims.'x' = 1"])
def test_more_refusals(text: str) -> None:
    refused(text)


def test_rules_are_compiled_as_rules_unless_told() -> None:
    with pytest.raises(ShoalError):
        compile_expr("a -- c")
    for text in ("SELECT 1;x", "SELECT 1; x"):
        refused(text, query=True)
    assert compile_expr("auth.claims.[a[[b] = 1").paths == (("claims", "a[[b"),)
    assert parse_filters([("a", "in.(,b)")]) == [Filter("a", "in", ("", "b"))]


def test_a_name_is_not_a_parameter() -> None:
    assert compile_expr("Xa = auth.sub").sql == "Xa = :auth_0"


def test_upserts(conn: apsw.Connection) -> None:
    rules = Rules(select=OWN, insert=OWN, update=compile_expr("owner = auth.sub AND s IS NOT 'x'"))
    bob = Who("bob")

    def upsert(rows: list[dict[str, Any]], who: Any = bob,
               r: Any = rules) -> list[tuple[Any, ...]]:
        (sql, args), = insert_sql(SHAPE, rows, r, who, upsert=True)
        return run(conn, sql, args)

    # a new row is inserted; a row there is updated (its key not set again)
    assert [x[:4] for x in upsert([{"id": 100, "owner": "bob", "s": "new"}])] == [
        (100, "bob", None, "new")]
    assert [x[:4] for x in upsert([{"id": 2, "owner": "bob", "n": 9}])] == [(2, "bob", 9, "s2")]
    # alice's row 1 is not bob's: left as it is and not returned
    assert upsert([{"id": 1, "owner": "bob", "s": "taken"}]) == []
    assert conn.execute("SELECT owner, s FROM t WHERE id = 1").fetchall() == [("alice", "s1")]
    # the row written must pass the insert and the update rule alike
    with pytest.raises(ShoalError):
        upsert([{"id": 101, "owner": "bob", "s": "x"}])
    with pytest.raises(ShoalError):
        upsert([{"id": 4, "owner": "alice"}])  # his row 4, given away
    # only key columns: nothing to set
    (sql, _), = insert_sql(SHAPE, [{"id": 4}], None, None, upsert=True)
    assert " ON CONFLICT DO NOTHING RETURNING " in sql
    with pytest.raises(ShoalError):
        insert_sql(SHAPE, [{}], None, None, upsert=True)
    # without rules (an admin): any row there is updated
    assert [x[:2] for x in upsert([{"id": 1, "owner": "zed"}], None, None)] == [(1, "zed")]
