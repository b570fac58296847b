"""Rule expressions: an admin's SQL boolean over a row and the token's claims.

A rule is written as SQL, ``owner_id = auth.sub`` or ``org_id = auth.claims.org``, and
checked once, when it is saved: it must be one expression (balanced parentheses, no
``;``, no comment, no parameter of its own), of at most ``MAX_CHARS``. Every
``auth.<name>`` in it becomes a named parameter, so the claims are bound once per
statement (SQLite evaluates a parameter once, never per row) and the statement's text is
the same for every user: apsw's statement cache and SQLite's query plan serve all of
them. The names an expression may use:

- ``auth.sub``: the token's subject (an identity provider's ``sub``; a Shoal token's id);
- ``auth.iss``: its issuer (``shoal`` for Shoal's own tokens);
- ``auth.access``: ``read``, ``write`` or ``admin``;
- ``auth.claims.<name>[.<name>...]``: a claim of an identity provider's token, nested
  objects followed by name. A claim that is missing is NULL (so a comparison with it is
  never true); a list or an object is its JSON text (``org_id IN (SELECT value FROM
  json_each(auth.claims.orgs))``); true and false are 1 and 0.

Inside strings and quoted identifiers nothing is rewritten. ``auth`` is thus a reserved
name in rules: a table or column of that name must be quoted (``"auth".x``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from shoal.errors import Code, ShoalError
from shoal.wire import SQLValue

MAX_CHARS = 4096
FIELDS = ("sub", "iss", "access")
PARAM = "auth_"  # the parameters' names: :auth_0, :auth_1 ... (no data API name starts so)


class Claims(Protocol):
    """What a rule may read of the token (``tokens.Principal`` has these attributes)."""

    @property
    def user(self) -> str | None: ...
    @property
    def subject(self) -> str: ...
    @property
    def issuer(self) -> str: ...
    @property
    def access(self) -> str: ...
    @property
    def claims(self) -> Mapping[str, Any] | None: ...


def _bad(message: str) -> ShoalError:
    return ShoalError(Code.INVALID_RULE, message)


@dataclass(frozen=True, slots=True)
class Expr:
    """A checked expression: ``sql`` with ``auth.*`` as parameters ``:auth_<i>``, the path
    each stands for (("sub",), ("claims", "org"), ...) and the text as written."""

    text: str
    sql: str
    paths: tuple[tuple[str, ...], ...]

    def bind(self, who: Claims, into: dict[str, SQLValue]) -> None:
        """Put the values of this expression's ``auth.*`` into ``into``."""
        for i, path in enumerate(self.paths):
            into[f"{PARAM}{i}"] = value_of(who, path)


def value_of(who: Claims, path: tuple[str, ...]) -> SQLValue:
    """The value of ``auth.<path>`` for this token."""
    head = path[0]
    if head == "sub":
        return who.user if who.user is not None else who.subject
    if head == "iss":
        return who.issuer
    if head == "access":
        return who.access
    found: Any = who.claims or {}
    for name in path[1:]:
        if not isinstance(found, Mapping):
            return None
        found = found.get(name)
    return _sql_value(found)


def _sql_value(value: Any) -> SQLValue:
    if value is None or isinstance(value, str | float):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _ident_start(ch: str) -> bool:
    """SQLite's: a letter, '_', or any character past ASCII."""
    return ch.isalpha() or ch == "_" or not ch.isascii()


def _ident_end(text: str, i: int) -> int:
    """Where the identifier (or parameter name) going on at ``i`` ends."""
    # mutate: harmless constant (X is a name's character either way)
    while i < len(text) and (text[i].isalnum() or text[i] in "_$" or not text[i].isascii()):
        i += 1
    return i


def _quoted_end(text: str, i: int) -> int:
    """Where the string or quoted name opening at ``i`` ends (a doubled quote is one
    quote inside it; ``[...]`` has no escape)."""
    close = "]" if text[i] == "[" else text[i]
    while True:
        j = text.find(close, i + 1)
        if j < 0:  # mutate: harmless (found past i: never 0)
            raise _bad("an unterminated string or quoted name")
        if close == "]" or text[j + 1:j + 2] != close:
            return j + 1
        i = j + 1  # doubled: an escaped quote, and on past it


def _tokens(text: str, query: bool) -> list[tuple[str, int, int]]:
    """(kind, start, end) of the tokens that can make up ``auth.<path>``: ident, quoted (a
    name in quotes) and op (one character); strings, numbers, parameters, comments and
    spaces are skipped. Refuses what a single expression cannot hold (``query``: a named
    query's statement, which may hold comments and ``:name`` parameters)."""
    out: list[tuple[str, int, int]] = []
    i, n, depth = 0, len(text), 0
    while i < n:
        ch = text[i]
        start = i
        if ch.isspace():
            i += 1
        elif ch in "'\"`[":
            i = _quoted_end(text, i)
            if ch != "'":
                out.append(("quoted", start, i))
        elif text.startswith(("--", "/*"), i):
            if not query:
                raise _bad("a rule holds no comment")
            if ch == "-":  # to the line's end
                end = text.find("\n", i)
                i = n if end < 0 else end + 1  # mutate: harmless (found past '-')
            else:
                end = text.find("*/", i + 2)
                i = n if end < 0 else end + 2  # mutate: harmless (found past '/*')
        elif ch == ";":
            if not query or text[i + 1:].strip():
                raise _bad("one expression or statement (no ';')")
            i = n  # one statement may end with ';'
        elif ch == "?" or (ch in ":@$" and _ident_end(text, i + 1) > i + 1):
            if not query:
                raise _bad("a rule binds no parameter of its own: use auth.sub, "
                           "auth.claims.<name>")
            if ch == "?":
                raise _bad("a named query's parameters are named (:name)")
            i = _ident_end(text, i + 1)  # mutate: harmless constant (i + 1 is a name's)
            if text[start + 1:i].lower().startswith(PARAM):
                raise _bad(f"parameter names starting with {PARAM} are Shoal's")
        elif _ident_start(ch):
            i = _ident_end(text, i)
            out.append(("ident", start, i))
        elif ch.isdigit():  # numbers, with their exponent and hex forms, are one token
            # mutate: harmless constant (a '.' left to an op keeps auth after it as it is)
            while i < n and (text[i].isalnum() or text[i] == "."):
                i += 1
        else:
            depth += (ch == "(") - (ch == ")")
            if depth < 0:
                raise _bad("unbalanced parentheses")
            out.append(("op", start, i + 1))
            i += 1
    if depth:
        raise _bad("unbalanced parentheses")
    return out


def compile_expr(text: str, query: bool = False, limit: int = MAX_CHARS) -> Expr:
    """Check a rule's text and turn its ``auth.*`` into parameters (INVALID_RULE if it is
    not one expression, or names an ``auth`` field there is not). ``query``: the text is a
    named query's one statement, with parameters (``:name``) of its own."""
    if not isinstance(text, str) or not text.strip():
        raise _bad("a rule is a non-empty SQL expression")
    if len(text) > limit:
        raise _bad(f"at most {limit} characters")
    if "\x00" in text:
        raise _bad("no NUL character")
    toks = _tokens(text, query)
    parts: list[str] = []
    paths: dict[tuple[str, ...], int] = {}  # each path's parameter number
    last = 0
    k = 0
    while k < len(toks):
        kind, start, end = toks[k]
        word = text[start:end]
        after_dot = k > 0 and text[toks[k - 1][1]:toks[k - 1][2]] == "."
        if kind == "ident" and word.lower() == "auth" and not after_dot:
            path, k_end = _path(text, toks, k)
            parts.append(text[last:start])
            number = paths.setdefault(path, len(paths))
            parts.append(f":{PARAM}{number}")
            last = toks[k_end - 1][2]
            k = k_end
            continue
        k += 1
    parts.append(text[last:])
    return Expr(text, "".join(parts), tuple(paths))  # (a dict keeps its order)


def _path(text: str, toks: list[tuple[str, int, int]], k: int) -> tuple[tuple[str, ...], int]:
    """The ``auth.a.b`` path starting at token k, and the index past it."""
    names: list[str] = []
    j = k + 1
    while j + 1 < len(toks) and text[toks[j][1]:toks[j][2]] == "." and \
            toks[j + 1][0] in ("ident", "quoted"):
        kind, s, e = toks[j + 1]
        name = text[s:e]
        if kind == "quoted":
            name = name[1:-1].replace(name[0] * 2, name[0]) if name[0] != "[" else name[1:-1]
        names.append(name)
        j += 2
        if names[0].lower() != "claims":
            break
    if not names:
        raise _bad("'auth' alone is not a value: use auth.sub, auth.iss, auth.access or "
                   "auth.claims.<name>")
    head = names[0].lower()
    if head in FIELDS:
        return (head,), j
    if head == "claims" and len(names) > 1:
        return ("claims", *names[1:]), j
    raise _bad(f"auth.{names[0]} is not known: use auth.sub, auth.iss, auth.access or "
               "auth.claims.<name>")
