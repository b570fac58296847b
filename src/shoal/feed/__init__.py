"""The change feed: row changes captured at each commit (feed reading and webhooks will join)."""

from shoal.feed.capture import ChangeCapture
from shoal.feed.format import OPS, Change, decode_changes, encode_changes

__all__ = ["OPS", "Change", "ChangeCapture", "decode_changes", "encode_changes"]
