"""Trusted identity providers from shoal.client (``Client`` and ``AsyncClient``) and from
`shoal issuers`, run in process against a node trusting two providers (issuers_file) whose
JWKS tests/support/idp.py serves over HTTPS: a database's own issuers listed, set and
cleared; the node's listed with their key sources; tokens revoked by jti and by issuer (then
401 TOKEN_REVOKED); and the mistakes refused, by the client before sending anything and by
the CLI with the error's code and a non-zero status. tests/server/test_identity.py checks
the routes themselves."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.client import AsyncClient, AuthError, Client, ClientError, InvalidRequest, NotFound
from tests.support.cli_inprocess import Run, json_of, shoal_runner
from tests.support.idp import IdentityProvider
from tests.support.inprocess import InProcessNode

_names = itertools.count()


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    """The node's issuer: tenant-{org_id}, write."""
    with IdentityProvider() as provider:
        yield provider


@pytest.fixture(scope="module")
def spare() -> Iterator[IdentityProvider]:
    """The node's other issuer, whose every token a test revokes."""
    with IdentityProvider(audience="spare-app") as provider:
        yield provider


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, idp: IdentityProvider,
           spare: IdentityProvider) -> Iterator[InProcessNode]:
    """The module's node (conftest's ``new_db`` and ``admin`` use it): it trusts both."""
    root = tmp_path_factory.mktemp("issuers")
    (root / "issuers.json").write_text(json.dumps({"issuers": [
        idp.declaration(databases=["tenant-{org_id}"], access="write", rules=False),
        spare.declaration(databases=["spare-{org_id}"],
                          access={"claim": "role", "map": {"owner": "write"},
                                  "default": "read"}, rules=False, branch="main")]}))
    node = InProcessNode(root / "data", {"issuers_file": str(root / "issuers.json"),
                                         "jwks_ca_file": IdentityProvider.ca_file()}).start()
    yield node
    node.stop()


@pytest.fixture
def client(server: InProcessNode) -> Iterator[Client]:
    with Client(server.url, server.admin_token, transport=server.transport()) as c:
        yield c


def db_named(client: Client, name: str | None = None) -> str:
    name = name or f"iss{next(_names)}"
    client.create_database(name)
    return name


def count(server: InProcessNode, token: str, db: str) -> int:
    """SELECT 1 as ``token``'s holder (a ClientError when it is refused)."""
    with Client(server.url, token, transport=server.transport()) as c:
        value = c.execute("SELECT 1", database=db).rows[0][0]
    assert isinstance(value, int)
    return value


def refused(server: InProcessNode, token: str, db: str) -> ClientError:
    with pytest.raises(ClientError) as caught:
        count(server, token, db)
    return caught.value


# -- the client ---------------------------------------------------------------------------------
def test_a_database_s_issuers_set_listed_and_cleared(server: InProcessNode,
                                                     client: Client) -> None:
    db = db_named(client)
    assert client.issuers(db) == []
    with IdentityProvider(audience="own-app") as own:
        declared = own.declaration(access="read", rules=False)
        now = client.set_issuers(db, [declared])
        assert [i["issuer"] for i in now] == [own.issuer] and "databases" not in now[0]
        assert now[0]["jwks_url"] == own.jwks_url and now[0]["leeway"] == 30
        assert client.issuers(db) == now
        token = own.mint()
        assert count(server, token, db) == 1
        assert client.set_issuers(db, []) == [] and client.issuers(db) == []
        assert refused(server, token, db).code == "ISSUER_NOT_TRUSTED"
        # the server names the wrong field; the client refuses what it can see is wrong
        with pytest.raises(InvalidRequest, match="https://"):
            client.set_issuers(db, [declared | {"jwks_url": "http://127.0.0.1/jwks.json"}])
        with pytest.raises(TypeError, match="a list of issuers"):
            client.set_issuers(db, {"issuers": [declared]})  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="database"):
            client.set_issuers("", [declared])
        with pytest.raises(NotFound):
            client.issuers("nowhere")


def test_the_node_s_issuers_with_their_keys(server: InProcessNode, client: Client,
                                            idp: IdentityProvider,
                                            spare: IdentityProvider) -> None:
    db = db_named(client, "tenant-keys")
    assert count(server, idp.mint({"org_id": "keys"}), db) == 1  # its keys are read
    node = client.issuers()
    assert [i["issuer"] for i in node["issuers"]] == [idp.issuer, spare.issuer]
    assert node["issuers"][0]["databases"] == ["tenant-{org_id}"]
    source = next(k for k in node["keys"] if k["source"] == idp.jwks_url)
    assert source["kids"] == sorted(idp.keys) and source["fetched"] is True
    assert source["error"] is None
    scoped = client.create_token([db], "admin")["token"]
    with Client(server.url, scoped, transport=server.transport()) as c, \
            pytest.raises(AuthError) as caught:
        c.issuers()
    assert caught.value.code == "FORBIDDEN"


def test_revoke_one_token_by_jti(server: InProcessNode, client: Client,
                                 idp: IdentityProvider) -> None:
    db = db_named(client, "tenant-rev")
    leaked, kept = idp.mint({"org_id": "rev", "jti": "leaked-1"}), idp.mint({"org_id": "rev"})
    assert count(server, leaked, db) == 1
    with pytest.raises(ValueError, match="jti"):  # never taken for every token
        client.revoke_issuer(idp.issuer, jti="")
    done = client.revoke_issuer(idp.issuer, jti="leaked-1")
    assert done["issuer"] == idp.issuer and done["database"] is None
    assert done["jti"] == "leaked-1" and done["id"].startswith("ext_")
    assert refused(server, leaked, db).code == "TOKEN_REVOKED"
    assert count(server, kept, db) == 1
    with pytest.raises(NotFound):
        client.revoke_issuer("https://nobody.example/")


def test_async_client_revokes_a_database_s_issuer(server: InProcessNode,
                                                  client: Client) -> None:
    db = db_named(client)
    with IdentityProvider(audience="async-app") as own:
        before = own.mint({"iat": int(time.time()) - 10})
        scoped = client.create_token([db], "admin")["token"]

        async def go() -> dict[str, Any]:
            async with AsyncClient(server.url, scoped,
                                   transport=server.async_transport()) as c:
                now = await c.set_issuers(db, [own.declaration(access="write", rules=False)])
                assert await c.issuers(db) == now
                with pytest.raises(AuthError):  # a token of one database: not the node's
                    await c.revoke_issuer(own.issuer)
                return await c.revoke_issuer(own.issuer, database=db)

        done = asyncio.run(go())
        assert done["database"] == db and "jti" not in done and done["issued_before"]
        assert refused(server, before, db).code == "TOKEN_REVOKED"
        assert count(server, own.mint({"iat": int(time.time()) + 2}), db) == 1


# -- the CLI ------------------------------------------------------------------------------------
@pytest.fixture
def shoal(server: InProcessNode, monkeypatch: pytest.MonkeyPatch,
          capsys: pytest.CaptureFixture[str]) -> Run:
    """shoal(*argv) -> (status, stdout, stderr), as `shoal` run with URL and token set."""
    assert isinstance(server, InProcessNode)
    return shoal_runner(server, monkeypatch, capsys, columns=250)


_json = json_of


def _lines(out: str) -> list[str]:
    """A table's lines, cells separated by single spaces."""
    return [" ".join(line.replace("│", " ").split()) for line in out.splitlines()]


def test_cli_set_list_and_clear(shoal: Run, client: Client, tmp_path: Path) -> None:
    db = db_named(client)
    status, out, _ = shoal("issuers", "list", db)
    assert status == 0 and f"{db} trusts no identity provider of its own" in out
    with IdentityProvider(audience="cli-app") as own:
        role = {"claim": "role", "map": {"owner": "write"}, "default": "read"}
        (tmp_path / "one.json").write_text(json.dumps({"issuers": [
            own.declaration(access=role, rules=False, branch="main")]}))
        status, out, _ = shoal("issuers", "set", db, "--file", str(tmp_path / "one.json"))
        assert status == 0 and f"{db} trusts 1 issuer of its own now" in out
        row = f"{own.issuer} cli-app {own.jwks_url} {db} role: owner=write; default read " \
              "no main"
        assert row in _lines(out)
        assert _lines(shoal("issuers", "list", db)[1])[3] == row
        shown = _json(shoal("issuers", "list", db, "--json"))
        assert shown["database"] == db and shown["issuers"][0]["access"] == role
        # the list alone is a file too
        (tmp_path / "two.json").write_text(json.dumps([
            own.declaration(access="read"), own.declaration(audience="x", access="admin")]))
        done = _json(shoal("issuers", "set", db, "--file", str(tmp_path / "two.json"),
                           "--json"))
        assert [(i["audience"], i["access"], i["rules"]) for i in done["issuers"]] == [
            ("cli-app", "read", True), ("x", "admin", True)]
        status, out, _ = shoal("issuers", "clear", db)
        assert status == 0 and f"{db} trusts no identity provider of its own now" in out
        assert _json(shoal("issuers", "list", db, "--json")) == {"database": db,
                                                                 "issuers": []}


def test_cli_lists_the_node_s_issuers_and_keys(shoal: Run, server: InProcessNode,
                                               client: Client, idp: IdentityProvider,
                                               spare: IdentityProvider) -> None:
    assert count(server, idp.mint({"org_id": "cli"}), db_named(client, "tenant-cli")) == 1
    status, out, _ = shoal("issuers", "list")
    lines = _lines(out)
    assert status == 0
    assert f"{idp.issuer} shoal-test {idp.jwks_url} tenant-{{org_id}} write no -" in lines
    assert f"{spare.issuer} spare-app {spare.jwks_url} spare-{{org_id}} role: owner=write; " \
           "default read no main" in lines
    assert f"{idp.jwks_url} {', '.join(sorted(idp.keys))} yes -" in lines
    assert "2 issuers of the node (issuers_file)" in out and "key source" in out
    node = _json(shoal("issuers", "list", "--json"))
    assert set(node) == {"issuers", "keys"} and len(node["issuers"]) == 2


def test_cli_revokes_by_jti_and_by_issuer(shoal: Run, server: InProcessNode, client: Client,
                                          idp: IdentityProvider,
                                          spare: IdentityProvider) -> None:
    db = db_named(client, "tenant-cli-rev")
    leaked = idp.mint({"org_id": "cli-rev", "jti": "cli-leaked"})
    assert count(server, leaked, db) == 1
    status, out, _ = shoal("issuers", "revoke", idp.issuer, "--jti", "cli-leaked")
    assert status == 0 and f"revoked token cli-leaked of {idp.issuer}: id ext_" in out
    assert refused(server, leaked, db).code == "TOKEN_REVOKED"

    spared = db_named(client, "spare-cli")
    older = spare.mint({"org_id": "cli", "iat": int(time.time()) - 10})
    assert count(server, older, spared) == 1
    done = _json(shoal("issuers", "revoke", spare.issuer, "--json"))
    assert done["issuer"] == spare.issuer and done["issued_before"]
    assert refused(server, older, spared).code == "TOKEN_REVOKED"
    assert count(server, spare.mint({"org_id": "cli", "iat": int(time.time()) + 2}),
                 spared) == 1
    status, out, _ = shoal("issuers", "revoke", spare.issuer)
    assert status == 0 and f"revoked every token of {spare.issuer} issued before 20" in out


def test_cli_errors(shoal: Run, client: Client, tmp_path: Path,
                    idp: IdentityProvider) -> None:
    db = db_named(client)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"issuers": [idp.declaration(
        access="read", jwks_url="http://127.0.0.1/jwks.json")]}))
    status, _, err = shoal("issuers", "set", db, "--file", str(bad))
    assert status == 1 and err.startswith("error INVALID_REQUEST: issuers: issuers[0]: "
                                          "jwks_url must be an https:// URL")
    status, _, err = shoal("issuers", "set", "nowhere", "--file", str(bad.with_name("x")))
    assert status == 1 and err.startswith("error USAGE: --file ") and "x" in err
    bad.write_text('{"issuer": "https://a/"}')
    status, _, err = shoal("issuers", "set", db, "--file", str(bad))
    assert status == 1 and err.startswith('error USAGE: --file') and '{"issuers": [...]}' in err
    bad.write_text("{not json")
    status, _, err = shoal("issuers", "set", db, "--file", str(bad))
    assert status == 1 and "not JSON" in err
    status, _, err = shoal("issuers", "clear", "nowhere")
    assert status == 1 and err.startswith("error DATABASE_NOT_FOUND: ")
    status, _, err = shoal("issuers", "revoke", "https://nobody.example/")
    assert status == 1 and err.startswith("error NOT_FOUND: no such trusted issuer")
    status, _, err = shoal("issuers", "revoke", idp.issuer, "--jti", "")
    assert status == 1 and err.startswith("error USAGE: jti")
    scoped = client.create_token([db], "admin")["token"]
    status, _, err = shoal("issuers", "list", "--token", scoped)
    assert status == 1 and err.startswith("error FORBIDDEN: ")
    status, _, err = shoal("issuers", "set", db)
    assert status == 2 and "--file" in err
    status, _, err = shoal("issuers")
    assert status == 2 and "list,set,clear,revoke" in err
