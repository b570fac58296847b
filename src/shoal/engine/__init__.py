"""The engine's one door: what the HTTP layer (``shoal.server``) may use.

The server imports from here and nowhere else under ``shoal.engine`` (a test checks it):
the :class:`Engine` facade, whose methods take a :class:`~shoal.tokens.Principal` and
check access themselves, and the values that cross between them (statements, results,
records, outcomes). Everything else in the package is the engine's own business.
"""

from shoal.engine.audit import KINDS as AUDIT_KINDS
from shoal.engine.audit import MAX_LIMIT as AUDIT_MAX_LIMIT
from shoal.engine.audit import TALLY as AUDIT_TALLY
from shoal.engine.audit import AuditPage
from shoal.engine.audit import Entry as AuditEntry
from shoal.engine.audit import Tally as AuditTally
from shoal.engine.catalog import DatabaseRecord, TokenInfo, TokenRecord
from shoal.engine.connection import (
    Description,
    Result,
    Statement,
    TransactionControl,
    configure_sqlite,
    stopped,
)
from shoal.engine.database import (
    REQUEST_GONE,
    Committed,
    Compacted,
    Transaction,
    make_bookmark,
    read_bookmark,
)
from shoal.engine.engine import (
    TIMELINE_HEADER,
    BranchInfo,
    DatabaseInfo,
    Engine,
    Idempotency,
    Outcome,
    ReadAt,
    Restored,
    parse_time,
)
from shoal.engine.health import READ_ONLY, Condition
from shoal.engine.memory import ceiling as memory_ceiling
from shoal.engine.quota import DatabaseLimits
from shoal.engine.registry import Deleted
from shoal.engine.rowrules import NamedQuery
from shoal.engine.rows import Rows
from shoal.engine.sync import PAGE as SYNC_PAGE
from shoal.engine.sync import Pulled as SyncPulled
from shoal.engine.sync import State as SyncState
from shoal.engine.sync import SyncInfo
from shoal.engine.sync_v1 import V1Frames as SyncV1Frames
from shoal.engine.sync_v1 import V1Hello as SyncV1Hello
from shoal.engine.sync_v1 import V1Snapshot as SyncV1Snapshot
from shoal.engine.webhooks import (
    LETTERS_PAGE,
    DeadLetter,
    Delivery,
    StateMoved,
    Webhook,
    WebhookSpec,
)
from shoal.feed.reader import ChangesPage
from shoal.feed.reader import Event as FeedEvent
from shoal.feed.reader import Filter as FeedFilter
from shoal.identity import KeysNeeded
from shoal.log.branch import Branch as LogBranch
from shoal.log.restore import History

__all__ = [
    "AUDIT_KINDS",
    "AUDIT_MAX_LIMIT",
    "AUDIT_TALLY",
    "LETTERS_PAGE",
    "READ_ONLY",
    "REQUEST_GONE",
    "SYNC_PAGE",
    "TIMELINE_HEADER",
    "AuditEntry",
    "AuditPage",
    "AuditTally",
    "BranchInfo",
    "ChangesPage",
    "Committed",
    "Compacted",
    "Condition",
    "DatabaseInfo",
    "DatabaseLimits",
    "DatabaseRecord",
    "DeadLetter",
    "Deleted",
    "Delivery",
    "Description",
    "Engine",
    "FeedEvent",
    "FeedFilter",
    "History",
    "Idempotency",
    "KeysNeeded",
    "LogBranch",
    "NamedQuery",
    "Outcome",
    "ReadAt",
    "Restored",
    "Result",
    "Rows",
    "StateMoved",
    "Statement",
    "SyncInfo",
    "SyncPulled",
    "SyncState",
    "SyncV1Frames",
    "SyncV1Hello",
    "SyncV1Snapshot",
    "TokenInfo",
    "TokenRecord",
    "Transaction",
    "TransactionControl",
    "Webhook",
    "WebhookSpec",
    "configure_sqlite",
    "make_bookmark",
    "memory_ceiling",
    "parse_time",
    "read_bookmark",
    "stopped",
]
