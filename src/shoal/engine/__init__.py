"""The engine's one door: what the HTTP layer (``shoal.server``) may use.

The server imports from here and nowhere else under ``shoal.engine`` (a test checks it):
the :class:`Engine` facade, whose methods take a :class:`~shoal.tokens.Principal` and
check access themselves, and the values that cross between them (statements, results,
records, outcomes). Everything else in the package is the engine's own business.
"""

from shoal.engine.catalog import DatabaseRecord, TokenRecord
from shoal.engine.connection import (
    Result,
    Statement,
    TransactionControl,
    configure_sqlite,
    stopped,
)
from shoal.engine.database import REQUEST_GONE, Committed, make_bookmark
from shoal.engine.engine import BranchInfo, Engine, Idempotency, Outcome, parse_time
from shoal.engine.health import READ_ONLY
from shoal.engine.quota import DatabaseLimits

__all__ = [
    "READ_ONLY",
    "REQUEST_GONE",
    "BranchInfo",
    "Committed",
    "DatabaseLimits",
    "DatabaseRecord",
    "Engine",
    "Idempotency",
    "Outcome",
    "Result",
    "Statement",
    "TokenRecord",
    "TransactionControl",
    "configure_sqlite",
    "make_bookmark",
    "parse_time",
    "stopped",
]
