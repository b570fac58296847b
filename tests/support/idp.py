"""A test identity provider: keys of every kind Shoal verifies (RSA, EC P-256, Ed25519), a
JWKS served over HTTPS on 127.0.0.1 (certificates from ``trustme``), and tokens minted with
any claims, algorithm, key id or header, good or forged.

    with IdentityProvider() as idp:
        kid = idp.add_key("ES256")
        token = idp.mint({"org_id": "acme"}, kid=kid)
        # the node: jwks_ca_file = CA.ca_file, an issuer {"issuer": idp.issuer,
        # "audience": idp.audience, "jwks_url": idp.jwks_url, ...}

Every provider of a test run is signed by one CA (:func:`ca_file`), so one
``jwks_ca_file`` setting trusts them all. ``fetches`` counts the JWKS reads (``requests``
lists every path asked for, so a test can see that nothing else was fetched);
``rotate`` adds a key and drops the old ones; ``max_age`` is the Cache-Control sent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ALGORITHMS = ("RS256", "ES256", "EdDSA")
_ca: trustme.CA | None = None
_ca_file: Path | None = None
_lock = threading.Lock()


def certificate_authority() -> trustme.CA:
    global _ca, _ca_file
    with _lock:
        if _ca is None:
            _ca = trustme.CA()
            _ca_file = Path(tempfile.mkdtemp(prefix="shoal-idp-")) / "ca.pem"
            _ca.cert_pem.write_to_path(str(_ca_file))
        return _ca


def ca_file() -> str:
    """The PEM of the CA every provider's certificate is signed by (jwks_ca_file)."""
    certificate_authority()
    assert _ca_file is not None
    return str(_ca_file)


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    @property
    def public(self) -> Any:
        return self.private.public_key()

    def jwk(self) -> dict[str, Any]:
        codec = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}[self.alg]
        out: dict[str, Any] = codec.to_jwk(self.public, as_dict=True)
        return out | {"kid": self.kid, "use": "sig", "alg": self.alg}

    def public_pem(self) -> bytes:
        return bytes(self.public.public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))


def new_key(alg: str, kid: str | None = None) -> SigningKey:
    private: Any
    if alg == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"no key for {alg}")
    return SigningKey(kid or f"{alg.lower()}-{secrets.token_hex(4)}", alg, private)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(header: dict[str, Any], claims: dict[str, Any], sign: Any = None) -> str:
    """A JWT put together by hand (``sign(signing_input) -> bytes``; none: no signature),
    for what pyjwt will not make: HS256 with a public key as the secret, say."""
    signing_input = (_b64(json.dumps(header).encode()) + "." +
                     _b64(json.dumps(claims).encode()))
    signature = sign(signing_input.encode()) if sign is not None else b""
    return signing_input + "." + _b64(signature)


def hs256_with(secret: bytes) -> Any:
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


class IdentityProvider:
    """One issuer with its JWKS at ``jwks_url`` (HTTPS, 127.0.0.1, a port of its own)."""

    def __init__(self, issuer: str | None = None, audience: str = "shoal-test",
                 max_age: int | None = 300, algorithms: tuple[str, ...] = ALGORITHMS):
        self.keys: dict[str, SigningKey] = {}
        self.audience = audience
        self.max_age = max_age
        self.fetches = 0
        self.requests: list[str] = []
        self.status = 200  # what the JWKS URL answers (a failing provider: 500)
        # sign-in (POST /login {"username", "password"}, for a browser's page: CORS open):
        # username -> (password, the token's claims)
        self.accounts: dict[str, tuple[str, dict[str, Any]]] = {}
        self._issuer = issuer
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._count_lock = threading.Lock()
        for alg in algorithms:
            self.add_key(alg)

    # -- serving -------------------------------------------------------------------------------
    def start(self) -> IdentityProvider:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # (http.server's name)
                with provider._count_lock:
                    provider.requests.append(self.path)
                    if self.path == "/jwks.json":
                        provider.fetches += 1
                if self.path != "/jwks.json" or provider.status != 200:
                    self.send_response(404 if self.path != "/jwks.json" else provider.status)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                body = json.dumps(provider.jwks()).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                if provider.max_age is not None:
                    self.send_header("cache-control", f"public, max-age={provider.max_age}")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _cors(self) -> None:
                self.send_header("access-control-allow-origin", "*")
                self.send_header("access-control-allow-headers", "content-type")
                self.send_header("access-control-allow-methods", "POST")

            def do_OPTIONS(self) -> None:  # a browser's preflight of the sign-in
                self.send_response(204)
                self._cors()
                self.end_headers()

            def do_POST(self) -> None:
                """Sign-in: a token for a known username and password, else 401."""
                with provider._count_lock:
                    provider.requests.append(self.path)
                length = int(self.headers.get("content-length") or 0)
                try:
                    asked = json.loads(self.rfile.read(length))
                    password, claims = provider.accounts[asked["username"]]
                    known = self.path == "/login" and hmac.compare_digest(
                        str(asked["password"]), password)
                except (ValueError, KeyError, TypeError):
                    known = False
                body = json.dumps({"token": provider.mint(claims)} if known else
                                  {"error": "unknown user or password"}).encode()
                self.send_response(200 if known else 401)
                self._cors()
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        certificate_authority().issue_cert("127.0.0.1", "localhost").configure_cert(context)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True,
                                        name="test-idp")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> IdentityProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the provider first"
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    @property
    def jwks_url(self) -> str:
        return self.url + "/jwks.json"

    @property
    def issuer(self) -> str:
        return self._issuer or self.url + "/"

    ca_file = staticmethod(ca_file)

    def declaration(self, **fields: Any) -> dict[str, Any]:
        """An issuer as Shoal declares it: this provider's issuer, audience and JWKS URL."""
        return {"issuer": self.issuer, "audience": self.audience,
                "jwks_url": self.jwks_url} | fields

    # -- keys ----------------------------------------------------------------------------------
    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.jwk() for k in self.keys.values()]}

    def add_key(self, alg: str = "RS256", kid: str | None = None) -> str:
        key = new_key(alg, kid)
        self.keys[key.kid] = key
        return key.kid

    def remove_key(self, kid: str) -> None:
        del self.keys[kid]

    def rotate(self, alg: str = "RS256") -> str:
        """A new key of ``alg``; every other key is dropped. The new key's id."""
        kid = self.add_key(alg)
        for old in [k for k in self.keys if k != kid]:
            del self.keys[old]
        return kid

    def key(self, alg: str) -> SigningKey:
        return next(k for k in self.keys.values() if k.alg == alg)

    # -- tokens --------------------------------------------------------------------------------
    def claims(self, extra: dict[str, Any] | None = None,
               expires_in: float = 300) -> dict[str, Any]:
        now = int(time.time())
        out: dict[str, Any] = {"iss": self.issuer, "aud": self.audience, "sub": "user-1",
                               "iat": now, "exp": now + int(expires_in),
                               "jti": secrets.token_hex(8)}
        for name, value in (extra or {}).items():
            if value is None:
                out.pop(name, None)
            else:
                out[name] = value
        return out

    def mint(self, extra: dict[str, Any] | None = None, *, alg: str | None = None,
             kid: str | None = None, key: SigningKey | None = None,
             headers: dict[str, Any] | None = None, expires_in: float = 300) -> str:
        """A token signed with ``key`` (default: this provider's key ``kid``, or its first
        key of ``alg``, or its first key), naming ``kid`` and ``alg`` in its header (either
        may be set to lie). A claim given as None is left out."""
        signer = key or (self.keys[kid] if kid in self.keys else
                         self.key(alg) if alg else next(iter(self.keys.values())))
        header = {"kid": kid if kid is not None else signer.kid} | (headers or {})
        return jwt.encode(self.claims(extra, expires_in), signer.private,
                          algorithm=alg or signer.alg, headers=header)
