"""The URLs a Shoal client takes: a server, and optionally a database and one of its branches.

The forms are the server's own paths (the ones libSQL clients use too), so one URL works
everywhere::

    http(s)://HOST[:PORT][/PREFIX]                       a server
    http(s)://HOST[:PORT][/PREFIX]/db/NAME               its database NAME (branch main)
    http(s)://HOST[:PORT][/PREFIX]/db/NAME/branches/B    branch B of NAME
    shoal://HOST[:PORT]/NAME[/branches/B]                the same over plain HTTP
    shoals://HOST[:PORT]/NAME[/branches/B]               ... and over HTTPS
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import urlsplit

DEFAULT_URL = "http://127.0.0.1:8080"

_DB_PATH = re.compile(r"^(.*)/db/([^/]+)(?:/branches/([^/]+))?/?$")
_SHOAL_PATH = re.compile(r"^/([^/]+)(?:/branches/([^/]+))?/?$")
FORMS = ("http(s)://HOST[/PREFIX][/db/NAME[/branches/BRANCH]], "
         "shoal://HOST/NAME[/branches/BRANCH] or shoals://...")


class Address(NamedTuple):
    """What a URL names: the server's base URL, a database, a branch of it (None: absent)."""

    base: str
    database: str | None = None
    branch: str | None = None


def parse_url(url: str) -> Address:
    """The server, database and branch a URL names; ValueError for a URL of no known form."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme in ("shoal", "shoals"):
        scheme = "https" if scheme == "shoals" else "http"
        short = _SHOAL_PATH.match(parts.path)
        if short and parts.netloc:
            return Address(f"{scheme}://{parts.netloc}", short.group(1), short.group(2))
    elif scheme not in ("http", "https"):
        raise ValueError(f"unsupported URL {url!r}: use {FORMS}")
    if not parts.netloc:
        raise ValueError(f"URL {url!r} has no host")
    path = parts.path
    found = _DB_PATH.match(path)
    if found:
        return Address(f"{scheme}://{parts.netloc}{found.group(1).rstrip('/')}",
                       found.group(2), found.group(3))
    if re.search(r"/db/[^/]+/.", path):
        raise ValueError(f"URL {url!r}: after /db/NAME only /branches/BRANCH may follow; "
                         f"use {FORMS}")
    return Address(f"{scheme}://{parts.netloc}{path.rstrip('/')}")
