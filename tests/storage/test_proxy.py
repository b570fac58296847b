"""StoreProxy: S3 requests pass through untouched, and chosen ones are held, dropped,
refused, delayed or cut, per request, with the store's state checked directly on moto."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from shoal.storage import NotFound, PreconditionFailed
from shoal.storage.s3 import S3Store
from tests.support.proxy import AWS_ENV, StoreProxy, s3_settings
from tests.support.s3 import MotoS3, moto_server
from tests.support.server import ServerProcess

_keys = itertools.count()


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    with moto_server() as server:
        server.client.create_bucket(Bucket="proxy-tests")
        yield server


@pytest.fixture(scope="module")
def shared_proxy(moto: MotoS3) -> Iterator[StoreProxy]:
    with StoreProxy(moto.endpoint) as proxy:
        yield proxy


@pytest.fixture
def proxy(shared_proxy: StoreProxy) -> Iterator[StoreProxy]:
    yield shared_proxy
    shared_proxy.up()
    shared_proxy.clear()


@pytest.fixture(scope="module")
def store(shared_proxy: StoreProxy) -> Iterator[S3Store]:
    """Through the proxy, configured as a node's store is (3 attempts, Expect: 100-continue)."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in AWS_ENV.items():
            mp.setenv(name, value)
        s3 = S3Store("proxy-tests", "shoal", endpoint_url=shared_proxy.url)
    yield s3
    s3.close()


@pytest.fixture(scope="module")
def once(shared_proxy: StoreProxy) -> Any:
    """A boto3 client through the proxy that does not retry."""
    return boto3.session.Session().client(
        "s3", endpoint_url=shared_proxy.url, aws_access_key_id="testing",
        aws_secret_access_key="testing", region_name="us-east-1",
        config=Config(retries={"total_max_attempts": 1}))  # "max_attempts" counts retries


@pytest.fixture
def key() -> str:
    """A fresh key (relative to the `store` prefix)."""
    return f"k{next(_keys)}"


def stored(moto: MotoS3, key: str) -> bytes | None:
    """The object's bytes, read on moto directly (not through the proxy)."""
    try:
        out = moto.client.get_object(Bucket="proxy-tests", Key=f"shoal/{key}")
    except ClientError:
        return None
    return bytes(out["Body"].read())


class Call(threading.Thread):
    """Run a blocking client call in the background; keep its result or exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: Any = None
        self.error: Exception | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.fn()
        except Exception as exc:
            self.error = exc

    def outcome(self, timeout: float = 5.0) -> Any:
        self.join(timeout)
        assert not self.is_alive(), "call still blocked"
        return self.error or self.result


def test_pass_through(proxy: StoreProxy, store: S3Store, moto: MotoS3, key: str) -> None:
    etag = store.put(f"{key}/a", b"hello")
    assert store.get(f"{key}/a").data == b"hello"
    assert store.head(f"{key}/a") == etag
    assert [i.key for i in store.list(f"{key}/")] == [f"{key}/a"]
    with pytest.raises(PreconditionFailed):
        store.put(f"{key}/a", b"again", if_none_match="*")
    etag2 = store.put(f"{key}/a", b"swapped", if_match=etag)
    assert stored(moto, f"{key}/a") == b"swapped" and etag2 != etag
    store.delete(f"{key}/a")
    with pytest.raises(NotFound):
        store.get(f"{key}/a")
    with pytest.raises(NotFound):
        store.head(f"{key}/a")
    seen = proxy.requests(path=f"/{key}")
    assert [(s.method, s.status, s.answered) for s in seen] == [
        ("PUT", 200, 200), ("GET", 200, 200), ("HEAD", 200, 200), ("PUT", 412, 412),
        ("PUT", 200, 200), ("DELETE", 204, 204), ("GET", 404, 404), ("HEAD", 404, 404)]
    listing = proxy.requests("GET", path=r"^/proxy-tests$")[-1]
    assert f"prefix=shoal%2F{key}%2F" in listing.query and listing.status == 200
    assert seen[0].body == b"hello" and seen[0].path == f"/proxy-tests/shoal/{key}/a"
    assert seen[0].finished is not None and seen[0].finished >= seen[0].time


def test_hold_then_release(proxy: StoreProxy, store: S3Store, moto: MotoS3, key: str) -> None:
    rule = proxy.hold("PUT", rf"/shoal/{key}$")
    put = Call(lambda: store.put(key, b"late"))
    held = rule.wait(timeout=5)
    assert [(s.method, s.body, s.status) for s in held] == [("PUT", b"late", None)]
    time.sleep(0.2)
    assert stored(moto, key) is None and put.is_alive()
    rule.release()
    assert isinstance(put.outcome(), str)  # the ETag
    assert stored(moto, key) == b"late"
    assert held[0].status == held[0].answered == 200
    store.put(key, b"next")  # the rule is gone once settled
    assert stored(moto, key) == b"next"


def test_held_put_with_expect_continue_does_not_wait(proxy: StoreProxy, moto: MotoS3,
                                                    key: str) -> None:
    """The proxy answers 100 Continue itself, so a client waiting for it sends its body."""
    rule = proxy.hold("PUT", rf"/shoal/{key}$")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(f"PUT /proxy-tests/shoal/{key} HTTP/1.1\r\nHost: x\r\n"
                     "Content-Length: 4\r\nExpect: 100-continue\r\n\r\n".encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"body")
        held = rule.wait(timeout=5)
        assert held[0].body == b"body" and "expect" in held[0].headers
        rule.release()
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
    assert stored(moto, key) == b"body"


def test_chunked_request_body(proxy: StoreProxy, moto: MotoS3, key: str) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(f"PUT /proxy-tests/shoal/{key} HTTP/1.1\r\nHost: x\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n"
                     "3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\n\r\n".encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
    assert proxy.requests("PUT", rf"/{key}$")[0].body == b"abcdefg"
    assert stored(moto, key) == b"abcdefg"


def test_a_held_request_outlives_its_client(proxy: StoreProxy, moto: MotoS3, key: str) -> None:
    """The client times out and leaves; on release the write still lands, unheard."""
    impatient = boto3.session.Session().client(
        "s3", endpoint_url=proxy.url, aws_access_key_id="testing",
        aws_secret_access_key="testing", region_name="us-east-1",
        config=Config(read_timeout=0.3, retries={"total_max_attempts": 1}))
    rule = proxy.hold("PUT", rf"/shoal/{key}$")
    with pytest.raises(BotoCoreError, match="Read timeout"):
        impatient.put_object(Bucket="proxy-tests", Key=f"shoal/{key}", Body=b"late")
    [held] = rule.wait(timeout=5)
    assert stored(moto, key) is None
    rule.release()
    deadline = time.monotonic() + 5
    while held.finished is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stored(moto, key) == b"late"
    assert (held.status, held.answered, held.client_gone) == (200, None, True)


def test_hold_then_drop(proxy: StoreProxy, once: Any, moto: MotoS3, key: str) -> None:
    rule = proxy.hold("PUT", rf"/shoal/{key}$")
    put = Call(lambda: once.put_object(Bucket="proxy-tests", Key=f"shoal/{key}", Body=b"x"))
    rule.wait(timeout=5)
    rule.drop()
    error = put.outcome()
    assert isinstance(error, BotoCoreError), error  # a connection error, not an answer
    assert stored(moto, key) is None
    assert proxy.requests("PUT", rf"/{key}$")[0].answered is None


def test_a_retrying_client_resends_a_dropped_put(proxy: StoreProxy, store: S3Store,
                                                 moto: MotoS3, key: str) -> None:
    """A node's store retries: dropping one request is not enough to lose a write."""
    rule = proxy.hold("PUT", rf"/shoal/{key}$", count=1)
    put = Call(lambda: store.put(key, b"x"))
    rule.wait(timeout=5)
    rule.drop()
    assert isinstance(put.outcome(), str)
    assert stored(moto, key) == b"x"
    assert [s.answered for s in proxy.requests("PUT", rf"/{key}$")] == [None, 200]


def test_response_hold_lands_while_client_waits(proxy: StoreProxy, once: Any, moto: MotoS3,
                                                key: str) -> None:
    rule = proxy.hold("PUT", rf"/shoal/{key}$", phase="response")
    put = Call(lambda: once.put_object(Bucket="proxy-tests", Key=f"shoal/{key}", Body=b"x"))
    held = rule.wait(timeout=5)
    assert stored(moto, key) == b"x"  # landed...
    time.sleep(0.2)
    assert put.is_alive()  # ...but unanswered
    assert held[0].status == 200 and held[0].answered is None
    rule.drop()  # the answer is lost
    assert isinstance(put.outcome(), BotoCoreError)
    assert stored(moto, key) == b"x" and held[0].answered is None


def test_response_hold_release_and_respond(proxy: StoreProxy, once: Any, key: str) -> None:
    rule = proxy.hold("GET", rf"/shoal/{key}$", phase="response", count=None)
    once.put_object(Bucket="proxy-tests", Key=f"shoal/{key}", Body=b"v")
    get = Call(lambda: once.get_object(Bucket="proxy-tests", Key=f"shoal/{key}")["Body"].read())
    rule.wait(timeout=5)
    rule.release()
    assert get.outcome() == b"v"

    rule = proxy.hold("PUT", rf"/shoal/{key}$", phase="response")
    put = Call(lambda: once.put_object(Bucket="proxy-tests", Key=f"shoal/{key}", Body=b"w"))
    rule.wait(timeout=5)
    rule.respond(500)
    error = put.outcome()
    assert isinstance(error, ClientError)
    assert error.response["Error"]["Code"] == "InternalError"
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 500


def test_nth_skips_earlier_matches(proxy: StoreProxy, store: S3Store, moto: MotoS3,
                                   key: str) -> None:
    rule = proxy.hold("PUT", rf"/shoal/{key}/", nth=2)
    assert isinstance(Call(lambda: store.put(f"{key}/1", b"1")).outcome(), str)  # 1st passes
    put = Call(lambda: store.put(f"{key}/2", b"2"))
    held = rule.wait(timeout=5)
    assert held[0].path.endswith(f"{key}/2")
    assert stored(moto, f"{key}/1") == b"1" and stored(moto, f"{key}/2") is None
    store.get(f"{key}/1")  # another method passes
    rule.release()
    assert isinstance(put.outcome(), str)
    assert isinstance(Call(lambda: store.put(f"{key}/3", b"3")).outcome(), str)  # count=1
    assert stored(moto, f"{key}/3") == b"3" and len(rule.acted) == 1


def test_match_on_the_query(proxy: StoreProxy, store: S3Store, once: Any, key: str) -> None:
    store.put(f"{key}/a/1", b"1")
    store.put(f"{key}/b/1", b"1")
    proxy.refuse("GET", query=rf"prefix=shoal/{key}/a/", status=500)  # decoded: no %2F
    assert [i.key for i in store.list(f"{key}/b/")] == [f"{key}/b/1"]
    with pytest.raises(ClientError, match="InternalError"):
        once.list_objects_v2(Bucket="proxy-tests", Prefix=f"shoal/{key}/a/")
    assert [s.answered for s in proxy.requests("GET", "^/proxy-tests$")[-2:]] == [200, 500]


def test_rules_apply_in_order(proxy: StoreProxy, once: Any, key: str) -> None:
    proxy.refuse("GET", rf"/shoal/{key}$", status=404, count=1)  # the 1st GET
    proxy.refuse("GET", rf"/shoal/{key}$", status=403, nth=2)  # skips the 1st and 2nd GETs
    proxy.refuse(path=rf"/shoal/{key}$", status=500)  # everything else
    statuses = []
    for _ in range(4):
        with pytest.raises(ClientError) as err:
            once.get_object(Bucket="proxy-tests", Key=f"shoal/{key}")
        statuses.append(err.value.response["ResponseMetadata"]["HTTPStatusCode"])
    # GET 1: rule 1. GET 2: rule 2 skips its 1st match -> rule 3. GETs 3, 4: rule 2.
    assert statuses == [404, 500, 403, 403]


def test_refuse(proxy: StoreProxy, once: Any, moto: MotoS3, key: str) -> None:
    rule = proxy.refuse("PUT", rf"/shoal/{key}$", status=503)
    with pytest.raises(ClientError) as err:
        once.put_object(Bucket="proxy-tests", Key=f"shoal/{key}", Body=b"x")
    assert err.value.response["Error"]["Code"] == "ServiceUnavailable"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert stored(moto, key) is None
    [seen] = proxy.requests("PUT", rf"/{key}$")
    assert seen.rule is rule and seen.status is None and seen.answered == 503
    rule.remove()
    once.put_object(Bucket="proxy-tests", Key=f"shoal/{key}", Body=b"x")
    assert stored(moto, key) == b"x"


def test_refuse_a_head_and_after_landing(proxy: StoreProxy, once: Any, moto: MotoS3,
                                         key: str) -> None:
    proxy.refuse("HEAD", rf"/shoal/{key}$", status=500)
    proxy.refuse("PUT", rf"/shoal/{key}$", status=503, phase="response")
    with pytest.raises(ClientError) as err:
        once.put_object(Bucket="proxy-tests", Key=f"shoal/{key}", Body=b"landed")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert stored(moto, key) == b"landed"  # the write landed; its answer was a 503
    with pytest.raises(ClientError) as err:
        once.head_object(Bucket="proxy-tests", Key=f"shoal/{key}")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    once.get_object(Bucket="proxy-tests", Key=f"shoal/{key}")  # the connection still works


def test_a_retrying_client_rides_out_one_refusal(proxy: StoreProxy, store: S3Store,
                                                 key: str) -> None:
    store.put(key, b"x")
    proxy.refuse("GET", rf"/shoal/{key}$", status=503, count=1)
    assert store.get(key).data == b"x"
    assert [s.answered for s in proxy.requests("GET", rf"/{key}$")] == [503, 200]


def test_cut(proxy: StoreProxy, once: Any, moto: MotoS3, key: str) -> None:
    proxy.cut("PUT", rf"/shoal/{key}/a$")
    proxy.cut("PUT", rf"/shoal/{key}/b$", phase="response")
    for name in "ab":
        with pytest.raises(BotoCoreError):
            once.put_object(Bucket="proxy-tests", Key=f"shoal/{key}/{name}", Body=b"x")
    assert stored(moto, f"{key}/a") is None and stored(moto, f"{key}/b") == b"x"


def test_delay(proxy: StoreProxy, store: S3Store, key: str) -> None:
    store.put(key, b"x")
    rule = proxy.delay("GET", rf"/shoal/{key}$", seconds=0.5)
    start = time.monotonic()
    store.head(key)  # another method: not delayed
    assert time.monotonic() - start < 0.4
    assert store.get(key).data == b"x"
    assert time.monotonic() - start >= 0.5
    assert len(rule.acted) == 1


def test_down_and_up(proxy: StoreProxy, once: Any, moto: MotoS3, key: str) -> None:
    once.put_object(Bucket="proxy-tests", Key=f"shoal/{key}", Body=b"0")  # a kept-alive conn
    proxy.down()
    for i in range(2):  # on the open connection, then on a new one
        with pytest.raises(BotoCoreError):
            once.put_object(Bucket="proxy-tests", Key=f"shoal/{key}", Body=f"{i}".encode())
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        assert sock.recv(10) == b""  # closed at once
    assert stored(moto, key) == b"0"
    proxy.up()
    once.put_object(Bucket="proxy-tests", Key=f"shoal/{key}", Body=b"up")
    assert stored(moto, key) == b"up"


def test_wait_times_out_and_clear_releases(proxy: StoreProxy, store: S3Store, moto: MotoS3,
                                           key: str) -> None:
    rule = proxy.hold("PUT", rf"/shoal/{key}$")
    with pytest.raises(TimeoutError):
        rule.wait(timeout=0.1)
    put = Call(lambda: store.put(key, b"x"))
    rule.wait(timeout=5)
    proxy.clear()
    assert isinstance(put.outcome(), str) and stored(moto, key) == b"x"


def test_stop_drops_held_requests_promptly(moto: MotoS3, key: str) -> None:
    proxy = StoreProxy(moto.endpoint).start()
    client = boto3.session.Session().client(
        "s3", endpoint_url=proxy.url, aws_access_key_id="testing",
        aws_secret_access_key="testing", region_name="us-east-1",
        config=Config(retries={"total_max_attempts": 1}))
    rule = proxy.hold("PUT", count=None, phase="request")
    put = Call(lambda: client.put_object(Bucket="proxy-tests", Key=f"shoal/{key}", Body=b"x"))
    rule.wait(timeout=5)
    start = time.monotonic()
    proxy.stop()
    assert time.monotonic() - start < 1
    assert isinstance(put.outcome(), BotoCoreError)
    assert stored(moto, key) is None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()


def test_a_node_works_through_the_proxy(moto: MotoS3, tmp_path: Path) -> None:
    moto.client.create_bucket(Bucket="proxy-node")
    with StoreProxy(moto.endpoint) as proxy:
        node = ServerProcess(tmp_path / "data", {**s3_settings(proxy, "proxy-node"),
                                                 "admin_token": "t"}, env=AWS_ENV)
        node.start()
        try:
            with node.client() as c:
                r = c.post("/v1/databases", json={"name": "d"})
                assert r.status_code == 201, r.text
                r = c.post("/v1/databases/d/query",
                           json={"statements": ["CREATE TABLE t(x)", "INSERT INTO t VALUES (1)"]})
                assert r.status_code == 200, r.text
        finally:
            node.stop()
        puts = proxy.requests("PUT", r"^/proxy-node/shoal/")
        assert puts and all(s.answered == 200 for s in puts), [(s.path, s.answered) for s in puts]
        assert any("/dbs/" in s.path for s in puts), [s.path for s in puts]
    keys = [o["Key"] for o in moto.client.list_objects_v2(Bucket="proxy-node")["Contents"]]
    assert any("/dbs/" in k for k in keys), keys
