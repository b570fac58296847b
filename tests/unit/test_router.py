"""The router: static paths, templates with parameters, and the paths it has resolved."""

from __future__ import annotations

from typing import Any

import pytest

from shoal.errors import Code, ShoalError
from shoal.server.http import Request, Response, Router


def _handler(name: str) -> Any:
    async def handle(request: Request) -> Response:
        return Response(200, name.encode())
    handle.__name__ = name
    return handle


def _request(method: str, path: str) -> Request:
    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}
    return Request({"method": method, "path": path, "headers": []}, receive)


@pytest.fixture
def router() -> Router:
    r = Router()
    r.add("GET", "/health", _handler("health"))
    r.add("POST", "/v1/databases/{db}/query", _handler("query"))
    r.add("GET", "/v1/databases/{db}/branches/{branch}", _handler("branch"))
    r.add("DELETE", "/v1/databases/{db}/branches/{branch}", _handler("drop"))
    r.add("GET", "/v1/databases/{db}/tables", _handler("tables"))
    return r


def _resolve(router: Router, method: str, path: str) -> tuple[str, str, dict[str, str]]:
    request = _request(method, path)
    handler = router.resolve(request)
    return handler.__name__, request.route, request.params


def test_static_and_template_routes(router: Router) -> None:
    assert _resolve(router, "GET", "/health") == ("health", "/health", {})
    assert _resolve(router, "POST", "/v1/databases/app/query") == (
        "query", "/v1/databases/{db}/query", {"db": "app"})
    assert _resolve(router, "GET", "/v1/databases/app/branches/dev") == (
        "branch", "/v1/databases/{db}/branches/{branch}", {"db": "app", "branch": "dev"})
    assert _resolve(router, "DELETE", "/v1/databases/app/branches/dev")[0] == "drop"
    assert _resolve(router, "GET", "/v1/databases/app/tables")[0] == "tables"


def test_a_path_resolves_the_same_each_time(router: Router) -> None:
    first = _resolve(router, "POST", "/v1/databases/app/query")
    for _ in range(3):
        assert _resolve(router, "POST", "/v1/databases/app/query") == first
    assert _resolve(router, "POST", "/v1/databases/other/query")[2] == {"db": "other"}


def test_each_request_gets_its_own_parameters(router: Router) -> None:
    """A handler may change its request's params: the next request to the path must not
    see it (the resolved path is kept, its parameters copied out)."""
    request = _request("POST", "/v1/databases/app/query")
    router.resolve(request)
    request.params["db"] = "changed"
    request.params["extra"] = "x"
    assert _resolve(router, "POST", "/v1/databases/app/query")[2] == {"db": "app"}
    again = _request("POST", "/v1/databases/app/query")
    router.resolve(again)
    again.params.clear()
    assert _resolve(router, "POST", "/v1/databases/app/query")[2] == {"db": "app"}


def test_the_method_is_checked_for_a_resolved_path_too(router: Router) -> None:
    for _ in range(2):  # the second time from the resolved paths
        with pytest.raises(ShoalError) as err:
            _resolve(router, "PUT", "/v1/databases/app/branches/dev")
        assert err.value.code is Code.METHOD_NOT_ALLOWED
        assert "use GET, DELETE" in err.value.message


def test_unknown_paths_are_not_found_and_not_kept(router: Router) -> None:
    for path in ("/v1/databases/app/nothing", "/v2/databases/app/query", "/", "/v1"):
        for _ in range(2):
            with pytest.raises(ShoalError) as err:
                _resolve(router, "GET", path)
            assert err.value.code is Code.NOT_FOUND
    assert not router._resolved


def test_resolved_paths_are_bounded(router: Router) -> None:
    for i in range(Router.RESOLVED * 2 + 5):
        assert _resolve(router, "POST", f"/v1/databases/db{i}/query")[2] == {"db": f"db{i}"}
        assert len(router._resolved) <= Router.RESOLVED
    assert _resolve(router, "POST", "/v1/databases/db3/query")[2] == {"db": "db3"}


def test_a_route_added_later_is_found(router: Router) -> None:
    """Paths resolved before a route is added are forgotten: the new route may take them."""
    with pytest.raises(ShoalError):
        _resolve(router, "GET", "/v1/databases/app/nothing")
    assert _resolve(router, "GET", "/v1/databases/app/tables")[0] == "tables"
    router.add("GET", "/v1/databases/app/tables", _handler("special"))
    assert _resolve(router, "GET", "/v1/databases/app/tables")[0] == "special"
    router.add("GET", "/v1/databases/{db}/nothing", _handler("nothing"))
    assert _resolve(router, "GET", "/v1/databases/app/nothing")[0] == "nothing"


def test_long_paths_are_resolved_but_not_kept(router: Router) -> None:
    """A path can be as long as the headers allow: keeping such paths would let a client
    fill the router's memory with 4,096 of them."""
    long_name = "x" * (Router.RESOLVED_CHARS + 1)
    assert _resolve(router, "POST", f"/v1/databases/{long_name}/query")[2] == {"db": long_name}
    assert not router._resolved
