"""Web origins a browser may let call Shoal: the node's ``cors_origins`` and a database's own.

A browser sends the page's origin (``Origin: https://app.example.com``) with a cross-origin
request and lets the page read the answer only if the server names that origin back
(CORS); it sends it with a WebSocket upgrade too, where the server itself must refuse an
origin it does not know. An allowed origin is written as one of:

- ``scheme://host[:port]``: exactly that origin (``https://app.example.com``,
  ``http://localhost:5173``, ``capacitor://localhost``). The scheme and host are lowercased,
  a default port (``:443`` for https, ``:80`` for http) and one trailing ``/`` are dropped,
  as a browser writes an origin;
- ``scheme://*.host[:port]``: every subdomain of ``host`` at any depth, with that scheme and
  port; not ``host`` itself (name it too). ``host`` needs two labels at least:
  ``https://*.example.com``, never ``https://*.com``;
- ``*``: any origin.

Refused: a path, query or fragment, a user name or password, a ``*`` anywhere else, and
``null`` (the origin of sandboxed iframes, ``file:`` pages and redirects, which any page
can make itself: allowing it is allowing every page; write ``*`` for that).

Pure functions and a matcher, no I/O: the settings, the engine (a database's own list) and
the server (each request's ``Origin``) share them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_ORIGINS = 100  # a database's own list (the node's list has no cap)
MAX_LENGTH = 300  # characters of one origin
DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?"
_ORIGIN = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<wild>\*\.)?"
    rf"(?P<host>\[[0-9a-f:.]+\]|{_LABEL}(?:\.{_LABEL})*)(?::(?P<port>[0-9]{{1,5}}))?")
_IPV4 = re.compile(r"[0-9]+(?:\.[0-9]+){3}")
_SPLIT = re.compile(r"[,\s]+")

FORMS = ("scheme://host[:port] (no path), scheme://*.example.com[:port] for its subdomains, "
         "or * for any origin")


def normalize(pattern: str) -> str:
    """An allowed origin as it is matched (ValueError, saying why, if it is not one)."""
    text = pattern.strip()
    if text == "*":
        return "*"
    if len(text) > MAX_LENGTH:
        raise ValueError(f"an origin has at most {MAX_LENGTH} characters: {text[:40]!r}...")
    lower = text.lower()
    if lower == "null":
        raise ValueError("'null' is the origin of sandboxed iframes and file: pages, which any "
                         "page can make: allowing it allows every page (write '*' for that)")
    if lower.endswith("/") and not lower.endswith("//"):
        lower = lower[:-1]
    found = _ORIGIN.fullmatch(lower)
    if found is None:
        raise ValueError(f"{text!r} is not an origin: write {FORMS}")
    scheme, wild, host, port = found["scheme"], found["wild"], found["host"], found["port"]
    if wild and (host.startswith("[") or _IPV4.fullmatch(host) or "." not in host):
        raise ValueError(f"{text!r}: a wildcard needs a domain of two labels at least after "
                         f"'*.' (https://*.example.com)")
    if port is not None and not 0 < int(port) <= 65535:
        raise ValueError(f"{text!r}: the port must be 1 to 65535")
    if port is not None and DEFAULT_PORTS.get(scheme) == str(int(port)):
        port = None
    return f"{scheme}://{wild or ''}{host}" + (f":{int(port)}" if port is not None else "")


def parse(raw: str | Iterable[str], limit: int | None = None) -> tuple[str, ...]:
    """Allowed origins from a setting (separated by commas or spaces) or a list: each
    normalised, duplicates dropped, in order (ValueError naming the first bad one)."""
    items = _SPLIT.split(raw) if isinstance(raw, str) else list(raw)
    out: dict[str, None] = {}
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"an origin is a string, got {item!r}")
        if item.strip():
            out[normalize(item)] = None
    if limit is not None and len(out) > limit:
        raise ValueError(f"at most {limit} origins, got {len(out)}")
    return tuple(out)


class Origins:
    """A compiled list of allowed origins: :meth:`allows` takes an ``Origin`` header's
    value (a browser writes it lowercase, without a default port)."""

    __slots__ = ("_wild", "any", "exact", "patterns")

    def __init__(self, patterns: Iterable[str] = ()):
        self.patterns = tuple(normalize(p) for p in patterns)
        self.any = "*" in self.patterns
        self.exact = frozenset(p for p in self.patterns if "://*." not in p and p != "*")
        wild = []
        for p in self.patterns:
            if "://*." in p:
                scheme, rest = p.split("://*.", 1)
                # one label or more, then the rest exactly (its port included)
                wild.append(re.escape(scheme + "://") + rf"(?:{_LABEL}\.)+" + re.escape(rest))
        self._wild = re.compile("|".join(wild)) if wild else None

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def allows(self, origin: str) -> bool:
        if self.any:
            return True
        origin = origin.lower()
        if origin in self.exact:
            return True
        return self._wild is not None and self._wild.fullmatch(origin) is not None


def same_origin(origin: str, host: str | None) -> bool:
    """Whether ``origin`` names the host the request was sent to (its ``Host`` header): a
    page the node itself serves, or one behind the same proxy."""
    if not host:
        return False
    _, sep, rest = origin.lower().partition("://")
    return bool(sep) and rest == host.lower()


__all__ = ["MAX_ORIGINS", "Origins", "normalize", "parse", "same_origin"]
