"""Python client for Shoal's native HTTP API: :class:`Client` (blocking) and :class:`AsyncClient`.

Both speak the same ``/v1`` API over one keep-alive ``httpx`` connection pool::

    from shoal.client import Client

    with Client("http://127.0.0.1:8080", token, database="orders") as db:
        db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB)")
        db.execute("INSERT INTO t (v) VALUES (?)", [b"\\x00\\x01"], idempotency_key="req-42")
        rows = db.execute("SELECT * FROM t").rows          # [(1, b'\\x00\\x01')]
        with db.transaction() as tx:                        # commit on success,
            tx.execute("UPDATE t SET v = NULL")             # rollback on an exception

``url`` defaults to ``$SHOAL_URL`` (else ``http://127.0.0.1:8080``) and ``token`` to
``$SHOAL_TOKEN``. The URL may name a database and a branch of it too:
``http://host:8080/db/orders``, ``http://host:8080/db/orders/branches/preview-42``,
``shoal://host:8080/orders[/branches/B]`` (plain HTTP) or ``shoals://host/orders``
(HTTPS); so may ``database=`` and ``branch=``, on the client and on each call.

Values travel losslessly: ``None``, ``int`` (any 64-bit value; beyond 2**53 as
``{"integer"}``), ``float`` (infinities as ``{"float"}``; NaN binds as NULL, as SQLite
stores it), ``str`` and ``bytes``-like (as ``{"base64"}``); rows come back as tuples of
the same Python types. :func:`to_json` and :func:`from_json` are the one conversion path.

Each client is a read-your-writes session: it keeps the newest bookmark per (database,
branch) and sends it (``Shoal-Bookmark``) with later queries of that branch, so a replica
answers no older than what the client saw. ``db.bookmark()`` gives it to pass on (a
cookie, the next invocation); ``remember(bookmark)`` or ``bookmarks=[...]`` takes one in;
``consistency="strong"`` asks the leader; ``session=False`` sends none.

``db.changes(since=cursor)`` iterates over a branch's committed row changes
(:class:`Change`), long-polling page after page; ``async for`` on ``AsyncClient``'s.
``db.create_webhook(None, url)`` has the server POST them to ``url`` instead (admin; the
answer holds the signing secret, shown once); ``webhooks``, ``webhook``,
``delete_webhook``, and the batches given up on: ``dead_letters``,
``replay_dead_letters``, ``delete_dead_letter``.

The data API reads and writes a table's rows without SQL (Shoal writes it, adding the
table's row rules for a token bound by them): ``rows`` (a page: ``{"rows", "next",
"bookmark"}``; ``where={"owner": "eq.ann", "at": 5}``), ``iter_rows`` (every page),
``insert_rows``, ``update_rows``, ``delete_rows`` (the rows written), ``table_schema``.
Admins manage the rules (``rules``, ``set_rules``; a verb left :data:`KEEP` keeps its
rule, None removes it) and named queries (``named_queries``, ``set_named_query``,
``delete_named_query``); ``run_named_query`` runs one. Rows are dicts of Python values.

Failures raise :class:`ClientError` subclasses carrying the server's stable ``code``.
The DB-API 2.0 (PEP 249) module built on this client is :mod:`shoal.dbapi`.

The package imports nothing of the server (no apsw), so it installs and runs beside any
application: ``codec`` (values), ``sql`` (statement splitting), ``urls``, ``errors``,
``results``, ``calls`` (the requests, shared by both clients), ``sync`` and ``aio``.
"""

from shoal.client.aio import AsyncChangeFeed, AsyncClient, AsyncTransaction
from shoal.client.calls import DEFAULT_TIMEOUT, KEEP, Consistency, Where
from shoal.client.codec import from_json, to_json
from shoal.client.errors import (
    AlreadyExists,
    AuthError,
    Busy,
    ClientError,
    ConnectionFailed,
    CursorExpired,
    InvalidRequest,
    NotFound,
    ServerError,
    SQLError,
    Timeout,
    TransactionExpired,
)
from shoal.client.results import Change, Meta, Result
from shoal.client.sql import first_keyword, split_sql, transaction_control
from shoal.client.sync import ChangeFeed, Client, Transaction
from shoal.client.urls import DEFAULT_URL, Address, parse_url

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "KEEP",
    "Address",
    "AlreadyExists",
    "AsyncChangeFeed",
    "AsyncClient",
    "AsyncTransaction",
    "AuthError",
    "Busy",
    "Change",
    "ChangeFeed",
    "Client",
    "ClientError",
    "ConnectionFailed",
    "Consistency",
    "CursorExpired",
    "InvalidRequest",
    "Meta",
    "NotFound",
    "Result",
    "SQLError",
    "ServerError",
    "Timeout",
    "Transaction",
    "TransactionExpired",
    "Where",
    "first_keyword",
    "from_json",
    "parse_url",
    "split_sql",
    "to_json",
    "transaction_control",
]
