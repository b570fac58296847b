"""Change capture (shoal.feed.capture) and the pinned change format (shoal.feed.format)."""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.feed import OPS, Change, ChangeCapture, decode_changes, encode_changes


@pytest.fixture
def db(tmp_path: Path) -> Iterator[apsw.Connection]:
    conn = apsw.Connection(str(tmp_path / "db.sqlite"))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    yield conn
    conn.close()


def hidden(name: str) -> bool:
    return name.lower().startswith("_cf_shoal_")


def capture(conn: apsw.Connection, *statements: str | tuple[str, tuple[Any, ...]],
            cap: ChangeCapture | None = None,
            skip: Callable[[str], bool] = hidden) -> list[Change]:
    """Run ``statements`` (SQL, or SQL and its arguments) in one write transaction under a
    capture; a statement that fails is rolled back by SQLite alone, as the engine leaves
    it. The changes also survive encoding exactly."""
    cap = cap or ChangeCapture(conn, skip)
    conn.execute("BEGIN IMMEDIATE")
    cap.start()
    for statement in statements:
        sql, args = (statement, None) if isinstance(statement, str) else statement
        with contextlib.suppress(apsw.ConstraintError):
            conn.execute(sql, args)
    changes = cap.finish()
    conn.execute("COMMIT")
    blob = encode_changes(changes)
    assert decode_changes(blob) == changes
    assert encode_changes(decode_changes(blob)) == blob
    return changes


def brief(changes: list[Change]) -> list[tuple[Any, ...]]:
    return [(c.table, c.op, c.key, c.new, c.old) for c in changes]


# -- capture ---------------------------------------------------------------------------------
def test_insert_update_delete_give_whole_rows(db: apsw.Connection) -> None:
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b INT, c BLOB);"
               "INSERT INTO t VALUES (1, 'one', 10, x'01'), (2, 'two', 20, x'02')")
    changes = capture(db, "INSERT INTO t VALUES (3, 'three', 30, NULL)",
                      "UPDATE t SET b = 11 WHERE id = 1", "DELETE FROM t WHERE id = 2")
    assert {c.columns for c in changes} == {("id", "a", "b", "c")}
    assert sorted(brief(changes), key=lambda c: c[2]) == [
        ("t", "update", (1,), (1, "one", 11, b"\x01"), (1, "one", 10, b"\x01")),
        ("t", "delete", (2,), None, (2, "two", 20, b"\x02")),
        ("t", "insert", (3,), (3, "three", 30, None), None),
    ]


def test_update_of_one_column_gives_whole_old_and_new(db: apsw.Connection) -> None:
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, a, b, c, d);"
               "INSERT INTO t VALUES (1, 'a', 2.5, x'ff', NULL)")
    [change] = capture(db, "UPDATE t SET c = x'00' WHERE id = 1")
    assert change.op == "update"
    assert change.new == (1, "a", 2.5, b"\x00", None)
    assert change.old == (1, "a", 2.5, b"\xff", None)


def test_many_updates_are_read_back_in_one_pass(db: apsw.Connection) -> None:
    db.execute("CREATE TABLE t(k1 TEXT, k2 INT, v, w, PRIMARY KEY (k2, k1)) WITHOUT ROWID")
    db.executemany("INSERT INTO t VALUES (?, ?, ?, ?)",
                   [(f"k{i}", i % 7, i, str(i)) for i in range(5000)])
    changes = capture(db, "UPDATE t SET v = v + 1 WHERE k2 != 3")
    assert len(changes) == sum(1 for i in range(5000) if i % 7 != 3)
    for c in changes:
        assert c.new is not None and c.old is not None
        assert c.key == (c.new[1], c.new[0])
        assert c.new[2] == c.old[2] + 1 and c.new[3] == c.old[3] == str(c.old[2])


def test_multi_column_key_in_declaration_order_and_without_rowid(db: apsw.Connection) -> None:
    db.execute("CREATE TABLE w(a, b, c, v, PRIMARY KEY (c, a)) WITHOUT ROWID;"
               "CREATE TABLE r(a, b, v, PRIMARY KEY (b, a));"
               "INSERT INTO w VALUES (1, 2, 3, 'x'); INSERT INTO r VALUES (1, 2, 'x')")
    changes = capture(db, "UPDATE w SET v = 'y'", "UPDATE r SET v = 'y'",
                      "INSERT INTO w VALUES (4, 5, 6, 'z')")
    assert sorted(brief(changes), key=str) == sorted([
        ("w", "update", (3, 1), (1, 2, 3, "y"), (1, 2, 3, "x")),
        ("w", "insert", (6, 4), (4, 5, 6, "z"), None),
        ("r", "update", (2, 1), (1, 2, "y"), (1, 2, "x")),
    ], key=str)


def test_rowid_table_without_primary_key_is_keyed_by_rowid(db: apsw.Connection) -> None:
    db.execute("CREATE TABLE r(a, b); INSERT INTO r(rowid, a, b) VALUES (41, 'x', 1)")
    changes = capture(db, "UPDATE r SET b = 2", "INSERT INTO r(rowid, a, b) VALUES (7, 'y', 3)",
                      "DELETE FROM r WHERE rowid = 7", "INSERT INTO r VALUES ('z', 4)")
    assert {c.columns for c in changes} == {("a", "b")}
    assert sorted(brief(changes), key=str) == sorted([
        ("r", "update", (41,), ("x", 2), ("x", 1)),
        ("r", "insert", (42,), ("z", 4), None),
    ], key=str)


def test_rowid_is_read_under_a_free_name(db: apsw.Connection) -> None:
    """A column named rowid hides that name of the rowid: the read uses _rowid_."""
    db.execute("CREATE TABLE r(rowid, v); INSERT INTO r(_rowid_, rowid, v) VALUES (5, 'c', 1)")
    [change] = capture(db, "UPDATE r SET v = 2")
    assert (change.columns, change.key, change.new, change.old) == \
        (("rowid", "v"), (5,), ("c", 2), ("c", 1))


def test_integer_primary_key_is_a_column_and_the_key(db: apsw.Connection) -> None:
    db.execute("CREATE TABLE t(name TEXT, id INTEGER PRIMARY KEY, v)")
    [change] = capture(db, "INSERT INTO t(name, v) VALUES ('n', 1)")
    assert change.columns == ("name", "id", "v")
    assert (change.key, change.new) == ((1,), ("n", 1, 1))


def test_rolled_back_savepoint_leaves_no_trace(db: apsw.Connection) -> None:
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'a')")
    changes = capture(db, "SAVEPOINT s", "INSERT INTO t VALUES (2, 'b')",
                      "UPDATE t SET v = 'z' WHERE id = 1", "DELETE FROM t WHERE id = 1",
                      "ROLLBACK TO s", "RELEASE s", "INSERT INTO t VALUES (3, 'c')")
    assert brief(changes) == [("t", "insert", (3,), (3, "c"), None)]


def test_statement_failing_midway_leaves_no_trace(db: apsw.Connection) -> None:
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v UNIQUE); INSERT INTO t VALUES (1, 'a')")
    changes = capture(db, "INSERT INTO t VALUES (2, 'b'), (3, 'c'), (4, 'a'), (5, 'e')",
                      "INSERT INTO t VALUES (6, 'f')")
    assert brief(changes) == [("t", "insert", (6,), (6, "f"), None)]
    assert db.execute("SELECT count(*) FROM t").get == 2


def test_insert_then_delete_is_nothing(db: apsw.Connection) -> None:
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    assert capture(db, "INSERT INTO t VALUES (1, 'a')", "DELETE FROM t WHERE id = 1") == []


def test_insert_then_update_is_one_insert_of_the_final_row(db: apsw.Connection) -> None:
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v, w)")
    changes = capture(db, "INSERT INTO t VALUES (1, 'a', 0)", "UPDATE t SET v = 'b'",
                      "UPDATE t SET w = w + 1")
    assert brief(changes) == [("t", "insert", (1,), (1, "b", 1), None)]


def test_update_back_to_the_old_value_is_nothing(db: apsw.Connection) -> None:
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'a')")
    assert capture(db, "UPDATE t SET v = 'b'", "UPDATE t SET v = 'a'") == []


def test_changing_the_key_is_a_delete_and_an_insert(db: apsw.Connection) -> None:
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'a')")
    changes = capture(db, "UPDATE t SET id = 2")
    assert sorted(brief(changes), key=str) == [
        ("t", "delete", (1,), None, (1, "a")), ("t", "insert", (2,), (2, "a"), None)]


def test_trigger_writes_are_captured(db: apsw.Connection) -> None:
    db.execute("""
        CREATE TABLE t(id INTEGER PRIMARY KEY, v);
        CREATE TABLE audit(n INTEGER PRIMARY KEY, what TEXT, id INT);
        CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN
            INSERT INTO audit(what, id) VALUES ('insert', new.id);
        END;
    """)
    changes = capture(db, "INSERT INTO t VALUES (7, 'x')")
    assert sorted(brief(changes)) == [
        ("audit", "insert", (1,), (1, "insert", 7), None),
        ("t", "insert", (7,), (7, "x"), None),
    ]


def test_cascade_deletes_are_captured(db: apsw.Connection) -> None:
    db.execute("""
        CREATE TABLE parent(id INTEGER PRIMARY KEY);
        CREATE TABLE child(id INTEGER PRIMARY KEY,
                           p INT REFERENCES parent(id) ON DELETE CASCADE);
        INSERT INTO parent VALUES (1), (2);
        INSERT INTO child VALUES (10, 1), (11, 1), (12, 2);
    """)
    changes = capture(db, "DELETE FROM parent WHERE id = 1")
    assert sorted(brief(changes)) == [
        ("child", "delete", (10,), None, (10, 1)),
        ("child", "delete", (11,), None, (11, 1)),
        ("parent", "delete", (1,), None, (1,)),
    ]


def test_skipped_and_sqlite_tables_are_not_captured(db: apsw.Connection) -> None:
    db.execute("CREATE TABLE _cf_SHOAL_state(k INTEGER PRIMARY KEY, txid INT);"
               "INSERT INTO _cf_SHOAL_state VALUES (0, 0);"
               "CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, v)")
    changes = capture(db, "INSERT INTO t(v) VALUES ('a')", "UPDATE _cf_SHOAL_state SET txid = 1",
                      "INSERT INTO t(v) VALUES ('b')", "UPDATE _cf_SHOAL_state SET txid = 2",
                      "ANALYZE")
    assert {c.table for c in changes} == {"t"}
    assert db.execute("SELECT count(*) FROM sqlite_sequence").get == 1


def test_skip_decides_per_table(db: apsw.Connection) -> None:
    db.execute("CREATE TABLE a(id INTEGER PRIMARY KEY); CREATE TABLE b(id INTEGER PRIMARY KEY)")
    changes = capture(db, "INSERT INTO a VALUES (1)", "INSERT INTO b VALUES (1)",
                      skip=lambda name: name == "b")
    assert [c.table for c in changes] == ["a"]


def test_generated_columns_are_not_carried(db: apsw.Connection) -> None:
    db.execute("""
        CREATE TABLE g(id INTEGER PRIMARY KEY, a INT,
                       v INT GENERATED ALWAYS AS (a * 2) VIRTUAL,
                       s INT GENERATED ALWAYS AS (a * 3) STORED, b TEXT);
        INSERT INTO g(id, a, b) VALUES (1, 1, 'x'), (2, 2, 'y');
    """)
    changes = capture(db, "UPDATE g SET a = 5 WHERE id = 1", "DELETE FROM g WHERE id = 2",
                      "INSERT INTO g(id, a, b) VALUES (3, 3, 'z')")
    assert {c.columns for c in changes} == {("id", "a", "b")}
    assert sorted(brief(changes)) == [
        ("g", "delete", (2,), None, (2, 2, "y")),
        ("g", "insert", (3,), (3, 3, "z"), None),
        ("g", "update", (1,), (1, 5, "x"), (1, 1, "x")),
    ]


def test_values_round_trip_exactly(db: apsw.Connection) -> None:
    values = [None, 0, -(2**63), 2**63 - 1, -0.0, 1.5, math.inf, -math.inf, 2.0**-1074,
              "", "é\u2603\U0001f600\x00", b"", b"\x00\xff" * 1000]
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    changes = capture(db, *(("INSERT INTO t VALUES (?, ?)", (i, v))
                            for i, v in enumerate(values)))
    got = {c.key[0]: c.new[1] for c in changes if c.new is not None}
    for i, v in enumerate(values):
        assert type(got[i]) is type(v) and _same(got[i], v)
    again = {c.key[0]: c.new[1] for c in decode_changes(encode_changes(changes)) if c.new}
    assert all(_same(again[i], v) for i, v in enumerate(values))


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b and (
        not isinstance(a, float) or math.copysign(1, a) == math.copysign(1, b))


@pytest.mark.parametrize("name", ['with space', 'quo"te', "it's", "order", "select", "Ünï"])
def test_table_and_column_names_needing_quotes(db: apsw.Connection, name: str) -> None:
    q = '"' + name.replace('"', '""') + '"'
    db.execute(f"CREATE TABLE {q}({q} INTEGER PRIMARY KEY, \"a b\", \"c\"\"d\");"
               f"INSERT INTO {q} VALUES (1, 'x', 'y')")
    [change] = capture(db, f"UPDATE {q} SET \"a b\" = 'z'")
    assert (change.table, change.columns) == (name, (name, "a b", 'c"d'))
    assert (change.new, change.old) == ((1, "z", "y"), (1, "x", "y"))


def test_order_is_by_table_then_the_sessions_order(db: apsw.Connection) -> None:
    db.execute("CREATE TABLE a(id INTEGER PRIMARY KEY); CREATE TABLE b(id INTEGER PRIMARY KEY)")
    statements = ["INSERT INTO b VALUES (1)", "INSERT INTO a VALUES (1)",
                  "INSERT INTO b VALUES (2)", "INSERT INTO a VALUES (2)"]
    first = capture(db, *statements)
    assert [c.table for c in first] == ["b", "b", "a", "a"]
    db.execute("DELETE FROM a; DELETE FROM b")
    assert capture(db, *statements) == first


def test_abort_then_start_again(db: apsw.Connection) -> None:
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    cap = ChangeCapture(db, hidden)
    cap.abort()  # never started: nothing to do
    db.execute("BEGIN")
    cap.start()
    db.execute("INSERT INTO t VALUES (1, 'gone')")
    cap.abort()
    cap.abort()
    db.execute("ROLLBACK")
    assert brief(capture(db, "INSERT INTO t VALUES (2, 'kept')", cap=cap)) == \
        [("t", "insert", (2,), (2, "kept"), None)]
    with pytest.raises(RuntimeError):
        cap.finish()  # finish() ended the capture


def test_one_capture_over_many_transactions_follows_the_schema(
        db: apsw.Connection, tmp_path: Path) -> None:
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    cap = ChangeCapture(db, hidden)
    assert brief(capture(db, "INSERT INTO t VALUES (1, 'a')", cap=cap)) == \
        [("t", "insert", (1,), (1, "a"), None)]
    other = apsw.Connection(str(tmp_path / "db.sqlite"))  # another connection alters it
    other.execute("ALTER TABLE t ADD COLUMN w DEFAULT 'd'")
    other.close()
    [change] = capture(db, "UPDATE t SET v = 'b'", cap=cap)
    assert (change.columns, change.new, change.old) == \
        (("id", "v", "w"), (1, "b", "d"), (1, "a", "d"))
    assert capture(db, "SELECT 1", cap=cap) == []


def test_table_created_in_the_transaction_is_captured(db: apsw.Connection) -> None:
    changes = capture(db, "CREATE TABLE n(id INTEGER PRIMARY KEY, v)",
                      "INSERT INTO n VALUES (1, 'a')", "UPDATE n SET v = 'b'")
    assert brief(changes) == [("n", "insert", (1,), (1, "b"), None)]


def test_create_table_as_select_rows_are_not_captured(db: apsw.Connection) -> None:
    """SQLite reports no row changes for the rows CREATE TABLE AS writes (documented)."""
    assert capture(db, "CREATE TABLE c AS SELECT 1 AS a, 2 AS b") == []


def test_shadow_tables_of_virtual_tables_are_not_captured(db: apsw.Connection) -> None:
    db.execute("CREATE VIRTUAL TABLE f USING fts5(body); CREATE TABLE t(id INTEGER PRIMARY KEY)")
    changes = capture(db, "INSERT INTO f VALUES ('hello world')", "INSERT INTO t VALUES (1)")
    assert [c.table for c in changes] == ["t"]


def test_column_added_after_a_change(db: apsw.Connection) -> None:
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'a')")
    cap = ChangeCapture(db, hidden)
    [change] = capture(db, "UPDATE t SET v = 'b'", "ALTER TABLE t ADD COLUMN w DEFAULT 5",
                       "UPDATE t SET w = 6", cap=cap)
    assert cap.lost == frozenset()
    assert (change.columns, change.new, change.old) == \
        (("id", "v", "w"), (1, "b", 6), (1, "a", 5))


# -- schema changes after rows changed -------------------------------------------------------
@pytest.fixture
def two(db: apsw.Connection) -> apsw.Connection:
    db.execute("CREATE TABLE keep(id INTEGER PRIMARY KEY, v); INSERT INTO keep VALUES (1, 'a');"
               "CREATE TABLE d(id INTEGER PRIMARY KEY, x, y); INSERT INTO d VALUES (1, 'p', 'q')")
    return db


KEPT = ("keep", "update", (1,), (1, "b"), (1, "a"))


@pytest.mark.parametrize("statements", [
    # dropped after its rows changed
    ["UPDATE d SET x = 'z'", "INSERT INTO d VALUES (2, 'r', 's')", "DROP TABLE d"],
    # created, filled and dropped
    ["CREATE TABLE tmp(a PRIMARY KEY)", "INSERT INTO tmp VALUES (1)", "DROP TABLE tmp"],
    ["CREATE TABLE tmp(a)", "INSERT INTO tmp VALUES (1)", "DROP TABLE tmp"],
    # renamed away: counts as dropped
    ["DELETE FROM d", "ALTER TABLE d RENAME TO e"],
    # a 12-step ALTER TABLE: the filled copy is renamed over the original
    ["CREATE TABLE new_d(id INTEGER PRIMARY KEY, x)", "INSERT INTO new_d SELECT id, x FROM d",
     "DROP TABLE d", "ALTER TABLE new_d RENAME TO d"],
], ids=["drop", "create-drop", "create-drop-rowid", "rename", "12-step"])
def test_tables_gone_at_commit_contribute_nothing(two: apsw.Connection,
                                                  statements: list[str]) -> None:
    cap = ChangeCapture(two, hidden)
    changes = capture(two, "UPDATE keep SET v = 'b'", *statements, cap=cap)
    assert brief(changes) == [KEPT]
    assert cap.lost == frozenset()


@pytest.mark.parametrize("statements", [
    ["UPDATE d SET x = 'z'", "ALTER TABLE d DROP COLUMN y"],
    # a 12-step ALTER TABLE dropping a column, after rows of the original changed
    ["UPDATE d SET x = 'z'", "CREATE TABLE new_d(id INTEGER PRIMARY KEY, x)",
     "INSERT INTO new_d SELECT id, x FROM d", "DROP TABLE d", "ALTER TABLE new_d RENAME TO d"],
    # a new primary key
    ["UPDATE d SET x = 'z'", "DROP TABLE d", "CREATE TABLE d(id, x, y, PRIMARY KEY (x, id))",
     "INSERT INTO d VALUES (1, 'p', 'q')"],
], ids=["drop-column", "12-step", "new-key"])
def test_tables_that_no_longer_fit_are_lost(two: apsw.Connection,
                                            statements: list[str]) -> None:
    cap = ChangeCapture(two, hidden)
    changes = capture(two, "UPDATE keep SET v = 'b'", *statements, cap=cap)
    assert brief(changes) == [KEPT]
    assert cap.lost == {"d"}
    assert [r[0] for r in two.execute("SELECT name FROM sqlite_schema WHERE type = 'table' "
                                      "ORDER BY name")] == ["d", "keep"]  # stand-ins undone
    after = capture(two, "UPDATE d SET x = 'w'", cap=cap)  # the next commit is whole again
    assert any(c.new is not None and "w" in c.new for c in after)
    assert cap.lost == frozenset()


def test_same_shape_recreated_reads_the_new_table(two: apsw.Connection) -> None:
    """Dropped and created again alike: the rows are compared with the new table's."""
    changes = capture(two, "UPDATE d SET x = 'z'", "DROP TABLE d",
                      "CREATE TABLE d(id INTEGER PRIMARY KEY, x, y)",
                      "INSERT INTO d VALUES (1, 'n', 'q')")
    assert brief(changes) == [("d", "update", (1,), (1, "n", "q"), (1, "p", "q"))]


def test_under_shoals_authorizer_and_a_tracer_that_refuses_more_statements(
        two: apsw.Connection) -> None:
    """The engine's connection vets and counts a user's statements (one per run): the
    capture's SQL inside a user's statement is neither refused nor counted; finish() runs
    as the engine's own SQL (SQLite's session opens a SAVEPOINT, refused to users)."""
    from shoal.engine.policy import Guard  # the engine's: imported here only

    guard = Guard()
    two.authorizer = guard
    ran: list[str] = []

    def one_statement(cursor: apsw.Cursor, sql: str, bindings: Any) -> bool:
        ran.append(sql)
        return len(ran) == 1

    cap = ChangeCapture(two, hidden)
    for statements, lost in ((["UPDATE keep SET v = 'b'"], set()),
                             (["CREATE TABLE n(id INTEGER PRIMARY KEY)", "INSERT INTO n VALUES (1)",
                               "UPDATE d SET x = 'z'", "ALTER TABLE d DROP COLUMN y"], {"d"})):
        guard.internal = True
        two.execute("BEGIN")
        guard.internal = False
        cap.start()
        two.exec_trace = one_statement
        for sql in statements:
            ran.clear()
            two.execute(sql)
        two.exec_trace = None
        guard.internal = True
        changes = cap.finish()
        two.execute("COMMIT")
        guard.internal = False
        assert cap.lost == lost
        assert {c.table for c in changes} == ({"keep"} if not lost else {"n"})
    assert two.authorizer is guard
    with pytest.raises(apsw.AuthError):
        two.execute("SAVEPOINT shoal_feed_capture")  # still refused to users


def test_an_authorizer_refusing_finish_is_an_error_not_a_silent_loss(
        two: apsw.Connection) -> None:
    from shoal.engine.policy import Guard

    cap = ChangeCapture(two, hidden)
    two.execute("BEGIN")
    cap.start()
    two.execute("UPDATE keep SET v = 'b'")
    two.authorizer = Guard()
    with pytest.raises(apsw.AuthError):
        cap.finish()
    two.authorizer = None
    two.execute("ROLLBACK")


# -- the format ------------------------------------------------------------------------------
PINNED = [
    Change("t", "insert", ("id", "v"), (1,), (1, "a"), None),
    Change("t", "update", ("id", "v"), (1,), (1, b"\x00\xff"), (1, "a")),
    Change("r", "delete", ("x", "y"), (-(2**63), "k"), None, (2**63 - 1, None)),
    Change("t", "delete", ("id", "v"), (1,), None, (1, -0.0)),
]
PINNED_BLOB = bytes.fromhex(
    "930192" "92a17492a26964a176" "92a17292a178a179"
    "94"
    "95000091019201a161c0"
    "95000191019201c40200ff9201a161"
    "95010292d38000000000000000a16bc092cf7fffffffffffffffc0"
    "9500029101c09201cb8000000000000000")


def test_pinned_format() -> None:
    assert encode_changes(PINNED) == PINNED_BLOB
    decoded = decode_changes(PINNED_BLOB)
    assert decoded == PINNED
    assert math.copysign(1, decoded[3].old[1]) == -1
    assert decoded[1].new is not None and type(decoded[1].new[1]) is bytes


def test_no_changes_is_empty() -> None:
    assert encode_changes([]) == b""
    assert decode_changes(b"") == []


values = (st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
          | st.floats(allow_nan=False) | st.text() | st.binary())


@st.composite
def changes_(draw: st.DrawFn) -> Change:
    columns = tuple(draw(st.lists(st.text(max_size=8), min_size=1, max_size=5)))
    op = draw(st.sampled_from(OPS))
    row = st.lists(values, min_size=len(columns), max_size=len(columns)).map(tuple)
    return Change(draw(st.sampled_from(["t", "u", "a b", ""]) | st.text(max_size=8)), op,
                  columns, tuple(draw(st.lists(values, min_size=1, max_size=3))),
                  None if op == "delete" else draw(row), None if op == "insert" else draw(row))


@settings(max_examples=300)
@given(st.lists(changes_(), max_size=12))
def test_round_trip_property(changes: list[Change]) -> None:
    blob = encode_changes(changes)
    decoded = decode_changes(blob)
    assert decoded == changes
    assert encode_changes(decoded) == blob  # -0.0, int vs float, str vs bytes: all kept
    for a, b in zip(changes, decoded, strict=True):
        for x, y in zip(itertools.chain(a.key, a.new or (), a.old or ()),
                        itertools.chain(b.key, b.new or (), b.old or ()), strict=True):
            assert _same(x, y) or (x != x and y != y)


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_garbage_only_ever_raises_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        decode_changes(data)


@settings(max_examples=200)
@given(st.lists(changes_(), min_size=1, max_size=4), st.data())
def test_damaged_blobs_only_ever_raise_value_error(changes: list[Change],
                                                   data: st.DataObject) -> None:
    blob = encode_changes(changes)
    cut = data.draw(st.integers(min_value=1, max_value=len(blob) - 1))
    with pytest.raises(ValueError):
        decode_changes(blob[:cut])  # every proper prefix is truncated
    at = data.draw(st.integers(min_value=0, max_value=len(blob) - 1))
    flipped = blob[:at] + bytes([blob[at] ^ data.draw(st.integers(1, 255))]) + blob[at + 1:]
    with contextlib.suppress(ValueError):
        decode_changes(flipped)


def _msgpack(obj: Any) -> bytes:
    import msgspec

    return msgspec.msgpack.encode(obj)


@pytest.mark.parametrize(("obj", "message"), [
    ([2, [], []], "unknown change format version 2"),
    (["1", [], []], "malformed"),
    ([1, [], [], 0], "4 parts"),
    ([], "empty"),
    ({"a": 1}, "malformed"),
    ([1, [["t", ["a"]]], [[1, 0, [1], [1], None]]], "names table 1"),
    ([1, [["t", ["a"]]], [[0, 3, [1], [1], None]]], "unknown op 3"),
    ([1, [["t", ["a"]]], [[0, 0, [], [1], None]]], "empty key"),
    ([1, [["t", []]], [[0, 0, [1], [], None]]], "no columns"),
    ([1, [["t", ["a"]]], [[0, 0, [1], [1, 2], None]]], "2 values for 1 columns"),
    ([1, [["t", ["a"]]], [[0, 1, [1], [1], [1, 2]]]], "2 values for 1 columns"),
    ([1, [["t", ["a"]]], [[0, 0, [1], None, None]]], "without a new row"),
    ([1, [["t", ["a"]]], [[0, 0, [1], [1], [1]]]], "with an old row"),
    ([1, [["t", ["a"]]], [[0, 2, [1], [1], [1]]]], "with a new row"),
    ([1, [["t", ["a"]]], [[0, 0, [1], [True], None]]], "type bool"),
    ([1, [["t", ["a"]]], [[0, 0, [1], [[1]], None]]], "type list"),
    ([1, [["t", ["a"]]], [[0, 0, [2**63], [1], None]]], "64 bits"),
    ([1, [["t", ["a"]]], [[0, 0, [1], [1]]]], "malformed"),
])
def test_malformed_blobs_are_refused(obj: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_changes(_msgpack(obj))


def test_updates_and_deletes_may_come_without_their_old_row() -> None:
    """A table that keeps no old rows (the database's feed settings)."""
    changes = [Change("t", "update", ("a",), (1,), (1,), None),
               Change("t", "delete", ("a",), (1,), None, None)]
    assert decode_changes(encode_changes(changes)) == changes


def test_trailing_bytes_are_refused() -> None:
    with pytest.raises(ValueError, match="trailing"):
        decode_changes(PINNED_BLOB + b"\x00")


def test_deep_nesting_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        decode_changes(b"\x93\x01\x90\x91" + b"\x91" * 100_000)


@pytest.mark.parametrize("change", [
    Change("t", "upsert", ("a",), (1,), (1,), None),
    Change("t", "insert", ("a",), (), (1,), None),
    Change("t", "insert", (), (1,), (), None),
    Change("t", "insert", ("a",), (1,), (1, 2), None),
    Change("t", "insert", ("a",), (1,), None, None),
    Change("t", "insert", ("a",), (1,), (1,), (1,)),
    Change("t", "delete", ("a",), (1,), (1,), (1,)),
    Change("t", "insert", ("a",), (1,), (object(),), None),
    Change("t", "insert", ("a",), (2**65,), (1,), None),
])
def test_encode_refuses_malformed_changes(change: Change) -> None:
    with pytest.raises(ValueError):
        encode_changes([change])
