"""SQL text as the client needs to see it: where statements end, and which ones are
transaction control. Tokens only, no parser: SQLite (on the server) stays the judge."""

from __future__ import annotations

import re
import sqlite3

_TOKEN = re.compile(
    r"""'(?:[^']|'')*'?|"(?:[^"]|"")*"?|`[^`]*`?|\[[^\]]*\]?|--[^\n]*|/\*.*?(?:\*/|\Z)"""
    r"""|;|[^'"`\[\-/;]+|.""",
    re.S,
)
_WORD = re.compile(r"[A-Za-z_]+")


def _is_comment(token: str) -> bool:
    return token.startswith(("--", "/*"))


def split_sql(script: str) -> list[str]:
    """Cut a script into single statements (the API takes one per entry).

    Semicolons inside quotes, comments and trigger bodies do not cut: a piece ends
    only where SQLite itself would call the statement complete. Comment-only pieces
    are dropped; a trailing statement without ``;`` is kept.
    """
    out: list[str] = []
    start = 0
    content = False
    pos = 0
    for match in _TOKEN.finditer(script):
        token = match.group()
        pos = match.end()
        if token == ";":
            piece = script[start:pos]
            if sqlite3.complete_statement(piece):
                if content:
                    out.append(piece.strip())
                start, content = pos, False
        elif not content and not _is_comment(token) and token.strip():
            content = True
    if content:
        out.append(script[start:].strip())
    return out


def first_keyword(sql: str) -> str:
    """The statement's first keyword, upper case, skipping comments ('' if none)."""
    for match in _TOKEN.finditer(sql):
        token = match.group()
        if _is_comment(token) or not token.strip():
            continue
        word = _WORD.match(token.lstrip())
        return word.group().upper() if word else ""
    return ""


def transaction_control(sql: str) -> str | None:
    """"BEGIN", "COMMIT" or "ROLLBACK" when ``sql`` starts or ends a transaction, else None.

    The API refuses these as SQL (every request is a transaction already); the shell and
    the DB-API map them onto interactive transactions. ``END`` is ``COMMIT``; ``ROLLBACK TO``
    (a savepoint) is ordinary SQL.
    """
    keyword = first_keyword(sql)
    if keyword in ("BEGIN", "COMMIT"):
        return keyword
    if keyword == "END":
        return "COMMIT"
    if keyword == "ROLLBACK" and not re.search(r"\bTO\b", sql, re.IGNORECASE):
        return "ROLLBACK"
    return None
