"""Both HTTP servers a node can run (`http_server`): granian, the optional extra, serves the
same API as uvicorn; without the extra the setting is refused at start, by name."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import pytest

from shoal.settings import Settings, SettingsError
from tests.support.server import ServerProcess

needs_granian = pytest.mark.skipif(importlib.util.find_spec("granian") is None,
                                   reason="the granian extra is not installed")


@needs_granian
def test_granian_serves_the_native_api_and_hrana(
        start_server: Callable[..., ServerProcess]) -> None:
    node = start_server(http_server="granian")
    with node.client() as c:
        assert c.post("/v1/databases", json={"name": "g"}).status_code == 201
        r = c.post("/v1/databases/g/query", json={"statements": [
            {"sql": "CREATE TABLE t(a)"}, {"sql": "INSERT INTO t VALUES (?)", "args": [7]},
            {"sql": "SELECT a FROM t"}]})
        assert r.status_code == 200 and r.json()["results"][2]["rows"] == [[7]]
        r = c.post("/db/g/v2/pipeline", json={"requests": [
            {"type": "execute", "stmt": {"sql": "SELECT count(*) FROM t"}}, {"type": "close"}]})
        assert r.status_code == 200
        assert r.json()["results"][0]["response"]["result"]["rows"] == [
            [{"type": "integer", "value": "1"}]]
    assert "Traceback" not in node.log()


def test_granian_without_its_extra_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "granian" else real(name, *a))
    with pytest.raises(SettingsError, match=r"pip install 'shoal\[granian\]'"):
        Settings(http_server="granian")
    with pytest.raises(SettingsError, match="http_server must be one of 'uvicorn', 'granian'"):
        Settings(http_server="hypercorn")
