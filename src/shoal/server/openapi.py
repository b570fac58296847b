"""The OpenAPI 3.1 document of the native API, built from the router and the msgspec types."""

from __future__ import annotations

from typing import Any

import msgspec

from shoal.engine import DatabaseLimits
from shoal.errors import Code

# (method, template) -> (summary, request type name or None, success status)
_OPS: dict[tuple[str, str], tuple[str, str | None, int]] = {
    ("GET", "/health"): ("Liveness; open without a token", None, 200),
    ("GET", "/ready"): ("Readiness: ok, or degraded with reasons (200); read_only with "
                        "reasons (503); open without a token", None, 200),
    ("GET", "/metrics"): ("Prometheus metrics (text format)", None, 200),
    ("GET", "/openapi.json"): ("This document", None, 200),
    ("GET", "/v1/databases"): ("List databases (limit, cursor); deleted=true lists the "
                               "deleted ones still restorable (admin)", None, 200),
    ("POST", "/v1/databases"): ("Create a database", "CreateDatabaseRequest", 201),
    ("GET", "/v1/databases/{db}"): ("Describe a database", None, 200),
    ("DELETE", "/v1/databases/{db}"): (
        "Delete a database (admin); with an object store it stays restorable for "
        "history_retention (undelete); purge=true removes it and its history at once",
        None, 204),
    ("POST", "/v1/databases/{db}/undelete"): (
        "Bring back a deleted database with its branches and history (admin)",
        "UndeleteRequest", 200),
    ("POST", "/v1/databases/{db}/query"): (
        "Run statements in one transaction (all or nothing)", "QueryRequest", 200),
    ("GET", "/v1/databases/{db}/usage"): (
        "Cumulative usage, size, the limits in force and the current period's counts",
        None, 200),
    ("GET", "/v1/databases/{db}/limits"): (
        "The database's own limits and those in force (read)", None, 200),
    ("PUT", "/v1/databases/{db}/limits"): (
        "Replace the database's own limits (an admin token for every database)",
        "DatabaseLimits", 200),
    ("GET", "/v1/databases/{db}/cors"): (
        "The origins a browser may let call the database, besides the node's (read)",
        None, 200),
    ("PUT", "/v1/databases/{db}/cors"): (
        "Replace the database's allowed origins (admin); the node's cors_origins stay",
        "CorsRequest", 200),
    ("POST", "/v1/databases/{db}/compact"): (
        "Compact main (admin): VACUUM as one commit, the log re-based on a snapshot; "
        "writes wait while it runs", None, 200),
    ("POST", "/v1/databases/{db}/transactions"): (
        "Open an interactive transaction", "BeginRequest", 201),
    ("POST", "/v1/databases/{db}/transactions/{tx}/query"): (
        "Run statements inside the transaction", "QueryRequest", 200),
    ("POST", "/v1/databases/{db}/transactions/{tx}/commit"): ("Commit", None, 200),
    ("POST", "/v1/databases/{db}/transactions/{tx}/rollback"): ("Roll back", None, 200),
    ("GET", "/v1/databases/{db}/history"): (
        "Restorable window of main: earliest and latest points", None, 200),
    ("POST", "/v1/databases/{db}/restore"): (
        "Restore a branch in place to a time or bookmark (admin); names the branch keeping "
        "the state before", "RestoreRequest", 200),
    ("GET", "/v1/databases/{db}/branches"): ("List branches", None, 200),
    ("POST", "/v1/databases/{db}/branches"): (
        "Create a branch at the latest state, a time or a bookmark (admin; copies no data)",
        "CreateBranchRequest", 201),
    ("GET", "/v1/databases/{db}/branches/{branch}"): ("Describe a branch", None, 200),
    ("DELETE", "/v1/databases/{db}/branches/{branch}"): ("Delete a branch (admin)", None, 204),
    ("POST", "/v1/databases/{db}/branches/{branch}/reset"): (
        "Reset a branch to its parent's latest state (admin)", None, 200),
    ("POST", "/v1/databases/{db}/branches/{branch}/compact"): (
        "Compact a branch (admin), as /compact does main", None, 200),
    ("GET", "/v1/databases/{db}/branches/{branch}/history"): (
        "Restorable window of a branch", None, 200),
    ("POST", "/v1/databases/{db}/branches/{branch}/query"): (
        "Run statements on a branch in one transaction", "QueryRequest", 200),
    ("GET", "/v1/databases/{db}/branches/{branch}/usage"): ("Cumulative usage of a branch",
                                                            None, 200),
    ("POST", "/v1/databases/{db}/branches/{branch}/transactions"): (
        "Open an interactive transaction on a branch", "BeginRequest", 201),
    ("POST", "/v1/databases/{db}/branches/{branch}/transactions/{tx}/query"): (
        "Run statements inside the transaction", "QueryRequest", 200),
    ("POST", "/v1/databases/{db}/branches/{branch}/transactions/{tx}/commit"): (
        "Commit", None, 200),
    ("POST", "/v1/databases/{db}/branches/{branch}/transactions/{tx}/rollback"): (
        "Roll back", None, 200),
    ("POST", "/v1/tokens"): ("Create a token (admin)", "CreateTokenRequest", 201),
    ("GET", "/v1/tokens"): ("List tokens, never their secrets (admin: every token, or those "
                            "a scoped admin token could revoke)", None, 200),
    ("DELETE", "/v1/tokens/{id}"): ("Revoke a token at once (admin)", None, 204),
    ("GET", "/v1/audit"): ("The audit log: a record per request, every node's (admin: every "
                           "database's, or those of the databases the token administers)",
                           None, 200),
}

_OPEN = ("/health", "/ready")  # no token, whatever the settings

# (method, template) -> query parameters: (name, type, description)
_QUERY: dict[tuple[str, str], list[tuple[str, str, str]]] = {
    ("GET", "/v1/databases"): [
        ("limit", "integer", "Page size, 1 to 1000 (default 100)"),
        ("cursor", "string", "next_cursor of the previous page"),
        ("deleted", "boolean", "List deleted databases still restorable instead")],
    ("GET", "/v1/tokens"): [
        ("database", "string", "Only tokens that reach this database"),
        ("include", "string", "expired, revoked or all (comma-separated): also list those "
                              "(default: live tokens only)"),
        ("limit", "integer", "Page size, 1 to 1000 (default 100)"),
        ("cursor", "string", "next_cursor of the previous page")],
    ("GET", "/v1/audit"): [
        ("database", "string", "Only this database's records"),
        ("since", "string", "From this time (unix seconds or RFC 3339), inclusive"),
        ("until", "string", "Before this time (unix seconds or RFC 3339)"),
        ("limit", "integer", "Page size, 1 to 1000 (default 100)"),
        ("cursor", "string", "next_cursor of the previous page")],
    ("DELETE", "/v1/databases/{db}"): [
        ("purge", "boolean", "Remove the database and its history at once (no undelete); "
                             "on a deleted name, remove its deleted incarnations")],
}

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": {"type": "string", "description": "Stable code: " + ", ".join(
                         c for c in Code if not c.sqlite and not c.hrana)
                     + ", or an SQLite primary result code name (SQLITE_CONSTRAINT, ...)"},
            "message": {"type": "string"},
            "hint": {"type": "string"},
            "extended_code": {"type": "string", "description": "SQLite extended code name"},
            "statement": {"type": "integer", "description": "Index of the failing statement"},
        },
    }},
}


def openapi_document(routes: list[tuple[str, str]]) -> dict[str, Any]:
    from shoal.server import api  # the request types live with their handlers

    kinds = [api.QueryRequest, api.CreateDatabaseRequest, api.CreateTokenRequest,
             api.BeginRequest, api.CreateBranchRequest, api.RestoreRequest,
             api.UndeleteRequest, DatabaseLimits, api.CorsRequest]
    _, components = msgspec.json.schema_components(
        kinds, ref_template="#/components/schemas/{name}")
    components["Error"] = _ERROR
    paths: dict[str, Any] = {}
    for method, template in sorted(routes, key=lambda r: (r[1], r[0])):
        summary, body, status = _OPS.get((method, template), (template, None, 200))
        op: dict[str, Any] = {
            "summary": summary,
            "responses": {
                str(status): {"description": "Success"},
                "4XX": {"description": "Error envelope", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        }
        params = [p[1:-1] for p in template.split("/") if p.startswith("{")]
        if params:
            op["parameters"] = [{"name": p, "in": "path", "required": True,
                                 "schema": {"type": "string"}} for p in params]
        for name, kind, about in _QUERY.get((method, template), []):
            op.setdefault("parameters", []).append({
                "name": name, "in": "query", "required": False, "description": about,
                "schema": {"type": kind}})
        if method == "POST" and not template.endswith(("/rollback", "/reset", "/restore",
                                                          "/branches", "/undelete",
                                                          "/compact")):
            op.setdefault("parameters", []).append({
                "name": "Idempotency-Key", "in": "header", "required": False,
                "schema": {"type": "string", "maxLength": 255}})
        if body:
            op["requestBody"] = {"required": body not in ("BeginRequest", "UndeleteRequest"),
                                 "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}}}
        if template == "/ready":
            op["responses"]["503"] = {"description": "read_only: the node refuses writes "
                                                     "(the same body, with reasons)"}
        if template not in _OPEN:
            op["security"] = [{"bearer": []}]
        paths.setdefault(template, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Shoal native API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
