"""The commit log: every commit of every branch, durable in the object store.

- wal.py: read committed frames out of a SQLite -wal file, validated;
- capture.py: stamp each commit with its txid and time;
- headroom.py: zeros kept ahead of the WAL's end, so commits overwrite, not append;
- segment.py: consecutive commits, compressed and checksummed;
- snapshot.py: a full database image at a txid, and when to take one;
- shipper.py: upload segments in order, retrying, and report what is durable;
- timeline.py, branch.py: lines of history and the names that point at them;
- restore.py: rebuild a database file at any txid or time, verifying everything;
- retention.py: delete what the history window and the branches no longer need;
- layout.py: every object key.
"""
