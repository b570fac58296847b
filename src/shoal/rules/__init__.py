"""Row rules and the data API's SQL (one door).

SQLite has no row security, and Shoal never reads SQL text to enforce any: a token bound
by rules reaches a database only through statements Shoal writes itself
(:mod:`shoal.rules.query`), each holding the table's rule for its verb as an SQL
expression over the row and the token's claims (:mod:`shoal.rules.expr`). The engine
keeps the rules inside the database file, so branches and restores carry them.
"""

from shoal.rules.expr import MAX_CHARS, PARAM, Claims, Expr, compile_expr, value_of
from shoal.rules.query import (
    DENY,
    MAX_FILTERS,
    MAX_IN,
    VERBS,
    Filter,
    Order,
    Read,
    Rules,
    Shape,
    decode_cursor,
    delete_sql,
    encode_cursor,
    insert_sql,
    parse_filters,
    parse_order,
    quote,
    select_sql,
    update_sql,
    visible_sql,
)

__all__ = [
    "DENY", "MAX_CHARS", "MAX_FILTERS", "MAX_IN", "PARAM", "VERBS", "Claims", "Expr", "Filter",
    "Order", "Read",
    "Rules", "Shape", "compile_expr", "decode_cursor", "delete_sql", "encode_cursor",
    "insert_sql", "parse_filters", "parse_order", "quote", "select_sql", "update_sql",
    "value_of", "visible_sql",
]
