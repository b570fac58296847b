"""Python's libSQL clients against a real node, unchanged: libsql-client (HTTP and WebSocket),
libsql-experimental (the Rust remote client, over /v3/pipeline and /v3/cursor) and SQLAlchemy
through sqlalchemy-libsql. Versions are pinned in pyproject.toml's test extras."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import httpx
import libsql_client
import libsql_experimental
import pytest
import sqlalchemy as sa

from tests.support.server import ServerProcess

_names = itertools.count()


@pytest.fixture
def new_database(node: ServerProcess) -> Callable[[], str]:
    def make() -> str:
        name = f"py{next(_names)}"
        with node.client() as admin:
            r = admin.post("/v1/databases", json={"name": name})
            assert r.status_code == 201, r.text
        return name

    return make


def host(node: ServerProcess) -> str:
    return node.url.removeprefix("http://")


@pytest.mark.parametrize("scheme", ["http", "ws"])
def test_libsql_client(node: ServerProcess, new_database: Callable[[], str], scheme: str) -> None:
    db = new_database()
    url = f"{scheme}://{host(node)}/db/{db}/"

    async def scenario() -> None:
        async with libsql_client.create_client(url, auth_token=node.admin_token) as client:
            await client.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE, "
                                 "n INTEGER, data BLOB, f REAL)")
            rs = await client.execute("INSERT INTO t (name, n, data, f) VALUES (?, ?, ?, ?)",
                                      ["a", 2**62 + 1, b"\x00\xff", 0.5])
            assert rs.rows_affected == 1 and rs.last_insert_rowid == 1
            rs = await client.execute("SELECT name, n, data, f FROM t WHERE name = :name",
                                      {"name": "a"})
            assert rs.columns == ("name", "n", "data", "f")
            assert tuple(rs.rows[0]) == ("a", 2**62 + 1, b"\x00\xff", 0.5)
            assert rs.rows[0]["n"] == 2**62 + 1
            results = await client.batch([
                libsql_client.Statement("INSERT INTO t (name) VALUES (?)", ["b"]),
                "SELECT count(*) FROM t",
            ])
            assert results[1].rows[0][0] == 2
            with pytest.raises(libsql_client.LibsqlError) as info:
                await client.batch(["INSERT INTO t (name) VALUES ('c')",
                                    "INSERT INTO t (name) VALUES ('a')"])
            assert info.value.code == "SQLITE_CONSTRAINT"
            with pytest.raises(libsql_client.LibsqlError) as info:
                await client.execute("SELEC 1")
            assert info.value.code == "SQLITE_ERROR"
            if scheme == "ws":  # this client offers transactions over WebSocket only
                tx = client.transaction()
                await tx.execute("INSERT INTO t (name) VALUES ('tx')")
                await tx.rollback()
                tx = client.transaction()
                await tx.execute("INSERT INTO t (name) VALUES ('tx2')")
                await tx.commit()
            rs = await client.execute("SELECT name FROM t ORDER BY id")
            expected = ["a", "b"] + (["tx2"] if scheme == "ws" else [])
            assert [r[0] for r in rs.rows] == expected

    asyncio.run(scenario())


def test_libsql_client_sync_without_trailing_slash_needs_a_database(
        node: ServerProcess, new_database: Callable[[], str]) -> None:
    db = new_database()
    with libsql_client.create_client_sync(f"http://{host(node)}/db/{db}",
                                          auth_token=node.admin_token) as client:
        with pytest.raises(libsql_client.LibsqlError) as info:
            client.execute("SELECT 1")
        assert info.value.code == "DATABASE_REQUIRED"
    with node.client() as admin:
        token = admin.post("/v1/tokens", json={"databases": [db], "access": "write"}).json()
    with libsql_client.create_client_sync(f"http://{host(node)}/db/{db}",
                                          auth_token=token["token"]) as client:
        assert client.execute("SELECT 1").rows[0][0] == 1  # a token for one database


def test_libsql_experimental_dbapi(node: ServerProcess, new_database: Callable[[], str]) -> None:
    db = new_database()
    conn = libsql_experimental.connect(f"http://{host(node)}/db/{db}/",
                                       auth_token=node.admin_token)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, b BLOB)")
    conn.execute("INSERT INTO t (v, b) VALUES (?, ?)", ("one", b"\x01\x02"))
    conn.commit()
    conn.execute("INSERT INTO t (v) VALUES ('rolled back')")
    conn.rollback()
    rows = conn.execute("SELECT v, b, ?1 + 1 FROM t", (41,)).fetchall()
    assert rows == [("one", b"\x01\x02", 42)]
    conn.execute("CREATE UNIQUE INDEX t_v ON t(v)")
    with pytest.raises(ValueError, match="UNIQUE constraint failed"):
        conn.execute("INSERT INTO t (v) VALUES ('one')")
    with node.client() as admin:
        count = admin.post(f"/v1/databases/{db}/query",
                           json={"statements": ["SELECT count(*) FROM t"]}).json()
    assert count["results"][0]["rows"] == [[1]]


def test_sqlalchemy_libsql(node: ServerProcess, new_database: Callable[[], str]) -> None:
    db = new_database()
    engine = sa.create_engine(f"sqlite+libsql://{host(node)}/db/{db}/",
                              connect_args={"auth_token": node.admin_token})
    meta = sa.MetaData()
    authors = sa.Table("authors", meta, sa.Column("id", sa.Integer, primary_key=True),
                       sa.Column("name", sa.String, unique=True, nullable=False))
    books = sa.Table("books", meta, sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("author_id", sa.ForeignKey("authors.id"), nullable=False),
                     sa.Column("title", sa.String))
    meta.create_all(engine)
    assert set(sa.inspect(engine).get_table_names()) >= {"authors", "books"}
    with engine.begin() as conn:
        author_id = conn.execute(authors.insert().values(name="Ann")).inserted_primary_key[0]
        conn.execute(books.insert(), [{"author_id": author_id, "title": t} for t in "xyz"])
    # libsql-experimental raises ValueError (not a DB-API error class) for SQLite errors
    with pytest.raises(ValueError, match="UNIQUE"), engine.begin() as conn:
        conn.execute(authors.insert().values(name="Bob"))
        conn.execute(authors.insert().values(name="Ann"))
    with engine.connect() as conn:
        rows = conn.execute(sa.select(authors.c.name, sa.func.count(books.c.id))
                            .join(books).group_by(authors.c.name)).all()
        assert rows == [("Ann", 3)]
        assert conn.execute(sa.select(sa.func.count()).select_from(authors)).scalar() == 1
    engine.dispose()


def test_python_clients_keep_a_read_token_read_only(node: ServerProcess,
                                                    new_database: Callable[[], str]) -> None:
    db = new_database()
    with node.client() as admin:
        admin.post(f"/v1/databases/{db}/query", json={"statements": ["CREATE TABLE t (x)"]})
        token = admin.post("/v1/tokens", json={"databases": [db], "access": "read"}).json()
    with libsql_client.create_client_sync(f"ws://{host(node)}/db/{db}",
                                          auth_token=token["token"]) as client:
        assert client.execute("SELECT count(*) FROM t").rows[0][0] == 0
        with pytest.raises(libsql_client.LibsqlError) as info:
            client.execute("INSERT INTO t VALUES (1)")
        assert info.value.code == "SQLITE_READONLY"
    assert httpx.get(node.url + "/health").status_code == 200
