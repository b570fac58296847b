"""Trusted issuers: what a node (``issuers_file``) or a database (``PUT .../issuers``) says
of an identity provider, checked once when read, and what a verified token's claims grant.

An issuer is trusted for one audience, with its keys at one place (an HTTPS URL, or a file
for the node's own issuers only: a database's admin never names a file of the node). The
databases it grants are templates over the token's claims (``tenant-{org_id}``): a value
that does not make a valid database name grants nothing, so a claim can never widen a
grant beyond the names its template can spell. A database's own issuer grants that
database and nothing else.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from shoal import names
from shoal.tokens import ACCESS_LEVELS, ISSUER

PLACEHOLDER = re.compile(r"\{([^{}]+)\}")
_STATIC = re.compile(r"[a-z0-9_-]*")
MAX_GRANTS = 100  # databases one token may be granted (templates over list claims multiply)
MAX_TEMPLATES = 20
MAX_LEEWAY = 300.0
DEFAULT_LEEWAY = 30.0
MAX_DATABASE_ISSUERS = 4  # a database's own issuers
FIELDS = {"issuer", "audience", "jwks_url", "jwks_file", "databases", "access", "rules",
          "branch", "leeway"}


class IssuerError(ValueError):
    """An issuer's declaration is not valid: the message says which field and why."""


@dataclass(frozen=True, slots=True)
class AccessMap:
    """Access from a claim: its value (or the best of a list's values) through ``map``,
    else ``default`` (None: no access)."""

    claim: str
    map: Mapping[str, str]
    default: str | None = None

    def of(self, claims: Mapping[str, Any]) -> str | None:
        value = claim_value(claims, self.claim)
        values = value if isinstance(value, list) else [value]
        found = [self.map[v] for v in values if isinstance(v, str) and v in self.map]
        if not found:
            return self.default
        return max(found, key=ACCESS_LEVELS.__getitem__)


@dataclass(frozen=True, slots=True)
class Issuer:
    """One trusted issuer. ``database`` set: a database's own (it grants that one only)."""

    issuer: str
    audience: str
    jwks_url: str | None
    jwks_file: str | None
    databases: tuple[str, ...]
    access: str | AccessMap
    rules: bool = True
    branch: str | None = None
    leeway: float = DEFAULT_LEEWAY
    database: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def source(self) -> str:
        """Where its keys are: the key of the JWKS cache (issuers may share one)."""
        return self.jwks_url or f"file:{self.jwks_file}"

    @property
    def scope(self) -> str:
        """What an issuer-wide revocation is kept under: the node's ('*') or a database's."""
        return self.database or "*"

    def grants(self, claims: Mapping[str, Any]) -> tuple[frozenset[str], str | None]:
        """(databases, access) for a verified token's claims."""
        if self.database is not None:
            dbs = frozenset({self.database})
        else:
            found: set[str] = set()
            for template in self.databases:
                found.update(expand(template, claims, MAX_GRANTS - len(found)))
            dbs = frozenset(found)
        access = self.access if isinstance(self.access, str) else self.access.of(claims)
        return dbs, access


def claim_value(claims: Mapping[str, Any], name: str) -> Any:
    """A claim by its exact name, else by a dotted path into nested objects
    (``realm_access.roles``)."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _texts(value: Any) -> list[str]:
    """A claim's values as text: a string or an integer, or a list of them; else none."""
    items = value if isinstance(value, list) else [value]
    return [str(v) for v in items
            if isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))]


def expand(template: str, claims: Mapping[str, Any], limit: int = MAX_GRANTS) -> list[str]:
    """The database names a template spells from the claims: each placeholder takes each of
    its claim's values; a name that is not valid is dropped (it grants nothing)."""
    statics = PLACEHOLDER.split(template)[::2]
    wanted = PLACEHOLDER.findall(template)
    choices = [_texts(claim_value(claims, name)) for name in wanted]
    out: list[str] = []
    for values in itertools.product(*choices):
        if len(out) >= limit:
            break
        name = statics[0] + "".join(v + s for v, s in zip(values, statics[1:], strict=True))
        if names.is_valid(name):
            out.append(name)
    return out


# -- reading a declaration --------------------------------------------------------------------
def _text(raw: Mapping[str, Any], key: str, longest: int = 1024) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip() or len(value) > longest:
        raise IssuerError(f"{key} must be a non-empty string (at most {longest} characters)")
    return value


def _level(value: Any, what: str) -> str:
    if value not in ACCESS_LEVELS:
        raise IssuerError(f"{what} must be one of read, write, admin")
    return str(value)


def _access(value: Any) -> str | AccessMap:
    if isinstance(value, str):
        return _level(value, "access")
    if not isinstance(value, Mapping) or set(value) - {"claim", "map", "default"}:
        raise IssuerError("access must be read, write, admin or {\"claim\": NAME, \"map\": "
                          "{VALUE: ACCESS}, \"default\": ACCESS}")
    claim = _text(value, "claim", 256)
    mapping = value.get("map")
    if not isinstance(mapping, Mapping) or not mapping or len(mapping) > 100:
        raise IssuerError("access.map must map claim values to read, write or admin")
    default = value.get("default")
    return AccessMap(claim, {str(k): _level(v, "access.map's values")
                             for k, v in mapping.items()},
                     None if default is None else _level(default, "access.default"))


def _template(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 200:
        raise IssuerError("databases must be a list of names or templates (tenant-{org_id})")
    statics = PLACEHOLDER.split(value)[::2]
    if any(not _STATIC.fullmatch(s) for s in statics):
        raise IssuerError(f"databases: {value!r} is not a name or template: a template is "
                          "made of [a-z0-9_-] and {claim} placeholders")
    if not PLACEHOLDER.search(value) and not names.is_valid(value):
        raise IssuerError(f"databases: {value!r} is not a valid database name")
    return value


def parse_issuer(raw: Any, database: str | None = None) -> Issuer:
    """An issuer from its JSON declaration; ``database``: a database's own issuer."""
    if not isinstance(raw, Mapping):
        raise IssuerError("an issuer must be a JSON object")
    unknown = set(raw) - FIELDS
    if unknown:
        raise IssuerError(f"unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    issuer = _text(raw, "issuer")
    if issuer == ISSUER:
        raise IssuerError(f"issuer {ISSUER!r} is this server's own")
    audience = _text(raw, "audience")
    url, path = raw.get("jwks_url"), raw.get("jwks_file")
    if (url is None) == (path is None):
        raise IssuerError("give exactly one of jwks_url and jwks_file")
    if url is not None:
        url = _text(raw, "jwks_url", 2048)
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise IssuerError("jwks_url must be an https:// URL")
    if path is not None:
        if database is not None:
            raise IssuerError("a database's issuer names its keys by jwks_url (a file is the "
                              "node's to name)")
        path = _text(raw, "jwks_file", 4096)
    if database is not None:
        dbs = raw.get("databases")
        if dbs is not None and list(dbs) != [database]:
            raise IssuerError(f"a database's issuer grants that database only ({database})")
        templates: tuple[str, ...] = (database,)
    else:
        dbs = raw.get("databases")
        if not isinstance(dbs, list) or not dbs or len(dbs) > MAX_TEMPLATES:
            raise IssuerError(f"databases must be a list of 1 to {MAX_TEMPLATES} names or "
                              "templates (tenant-{org_id})")
        templates = tuple(_template(t) for t in dbs)
    rules = raw.get("rules", True)
    if not isinstance(rules, bool):
        raise IssuerError("rules must be true or false")
    branch = raw.get("branch")
    if branch is not None and not names.is_valid(branch):
        raise IssuerError("branch must be a valid branch name")
    leeway = raw.get("leeway", DEFAULT_LEEWAY)
    if isinstance(leeway, bool) or not isinstance(leeway, int | float) or \
            not 0 <= leeway <= MAX_LEEWAY:
        raise IssuerError(f"leeway must be seconds from 0 to {MAX_LEEWAY:g}")
    access = _access(raw.get("access"))
    normal = {"issuer": issuer, "audience": audience,
              **({"jwks_url": url} if url else {"jwks_file": path}),
              "access": raw.get("access"), "rules": rules, "leeway": leeway}
    if database is None:
        normal["databases"] = list(templates)
    if branch is not None:
        normal["branch"] = branch
    return Issuer(issuer, audience, url, path, templates, access, rules, branch,
                  float(leeway), database, normal)


def parse_issuers(raw: Any, database: str | None = None) -> tuple[Issuer, ...]:
    """A list of issuers (``{"issuers": [...]}`` or the bare list); IssuerError names the
    first wrong one by its position."""
    if isinstance(raw, Mapping) and set(raw) == {"issuers"}:
        raw = raw["issuers"]
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
        raise IssuerError("issuers must be a JSON list of issuer objects")
    if database is not None and len(raw) > MAX_DATABASE_ISSUERS:
        raise IssuerError(f"a database trusts at most {MAX_DATABASE_ISSUERS} issuers")
    out = []
    for i, item in enumerate(raw):
        try:
            out.append(parse_issuer(item, database))
        except IssuerError as exc:
            raise IssuerError(f"issuers[{i}]: {exc}") from None
    pairs = [(i.issuer, i.audience) for i in out]
    if len(set(pairs)) != len(pairs):
        raise IssuerError("an issuer is trusted once per audience")
    return tuple(out)


def load_issuers_file(path: str) -> tuple[Issuer, ...]:
    """The node's issuers from its JSON file (setting ``issuers_file``)."""
    try:
        with open(path, "rb") as fh:
            raw = json.load(fh)
    except (OSError, ValueError) as exc:
        raise IssuerError(f"cannot read {path}: {exc}") from None
    try:
        return parse_issuers(raw)
    except IssuerError as exc:
        raise IssuerError(f"{path}: {exc}") from None
