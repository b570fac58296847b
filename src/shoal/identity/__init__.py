"""Tokens from external identity providers (OIDC/OAuth JWTs), the package's one door.

The engine builds one :class:`Identity` from the node's issuers (setting
``issuers_file``) and keeps each database's own issuers in it (``set_database``); it asks
``cached`` and ``verify`` for tokens that are not Shoal's own, and passes revocations in
(``revoked``). Tokens are verified with the issuer's published keys (JWKS), read only
from the URL (or file) the issuer was declared with; see ``verifier.py`` for the cache
and the key reads, ``issuers.py`` for what an issuer grants, ``keys.py`` for the keys.
"""

from shoal.identity.issuers import (
    MAX_DATABASE_ISSUERS,
    AccessMap,
    Issuer,
    IssuerError,
    expand,
    load_issuers_file,
    parse_issuer,
    parse_issuers,
)
from shoal.identity.keys import Fetch, HTTPSFetch, Key, KeysUnavailable, max_age, parse_jwks
from shoal.identity.verifier import (
    EXTERNAL,
    Identity,
    KeysNeeded,
    issuer_revocation,
    token_id,
)

__all__ = [
    "EXTERNAL",
    "MAX_DATABASE_ISSUERS",
    "AccessMap",
    "Fetch",
    "HTTPSFetch",
    "Identity",
    "Issuer",
    "IssuerError",
    "Key",
    "KeysNeeded",
    "KeysUnavailable",
    "expand",
    "issuer_revocation",
    "load_issuers_file",
    "max_age",
    "parse_issuer",
    "parse_issuers",
    "parse_jwks",
    "token_id",
]
