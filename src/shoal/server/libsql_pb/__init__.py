"""libSQL's V1 sync protocol's messages (server/sync_v1.py): its .proto files, and the modules
and typed stubs protoc made of them (``make protos``; never edited by hand)."""
