"""`probe()`: a store that cannot be used fails in seconds with its cause and a hint.

Every backend and wrapper answers it; S3 runs against moto's server (a missing bucket,
an endpoint nobody listens on) and, for the answers moto does not give (refused keys,
another region), against botocore's Stubber.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from shoal.storage import Unusable, open_store
from shoal.storage.faulty import FaultyStore
from shoal.storage.fenced import Fenced, FencedStore
from shoal.storage.file import FileStore
from shoal.storage.memory import MemoryStore
from shoal.storage.retry import RetryingStore
from shoal.storage.s3 import PROBE_TIMEOUT, S3Store
from tests.support.s3 import MotoS3, moto_server
from tests.support.server import free_port

AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    with moto_server() as server:
        yield server


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)


def unusable(store: Any) -> Unusable:
    started = time.monotonic()
    with pytest.raises(Unusable) as info:
        store.probe()
    assert time.monotonic() - started < PROBE_TIMEOUT + 1
    assert info.value.hint
    return info.value


def test_usable_stores_pass_through_every_wrapper(tmp_path: Path) -> None:
    def refuse() -> None:
        raise Fenced("not the lease holder")

    for inner in (MemoryStore(), FileStore(tmp_path / "store")):
        # faults are not injected into the probe, and the fence lets it through
        RetryingStore(FencedStore(FaultyStore(inner, rate=1.0), refuse)).probe()
    assert os.listdir(tmp_path / "store") == [".locks"]  # the probe's file is gone


def test_a_folder_that_cannot_be_made_or_written_is_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(Unusable) as made:
        open_store((tmp_path / "file" / "store").as_uri())
    assert "part of its path is a file" in str(made.value) and "file:///" in made.value.hint
    store = FileStore(tmp_path / "store")
    real_open = os.open

    def denied(path: Any, flags: int, *args: Any) -> int:
        if "probe" in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", denied)  # as root, chmod would not stop the write
    err = unusable(store)
    assert f"{tmp_path / 'store'} is not writable" in str(err) and "chown" in err.hint


@pytest.mark.usefixtures("aws_env")
def test_a_missing_bucket_and_a_dead_endpoint_fail_at_once(moto: MotoS3) -> None:
    moto.client.create_bucket(Bucket="there")
    S3Store("there", "shoal", endpoint_url=moto.endpoint).probe()
    err = unusable(S3Store("nowhere", "shoal", endpoint_url=moto.endpoint))
    assert "the bucket 'nowhere' does not exist" in str(err)
    assert f"aws s3 mb s3://nowhere --endpoint-url {moto.endpoint}" in err.hint
    dead = f"http://127.0.0.1:{free_port()}"
    err = unusable(S3Store("there", "shoal", endpoint_url=dead))
    assert f"cannot reach the object store at {dead}" in str(err)
    assert "s3_endpoint" in err.hint


def test_missing_credentials_are_named(monkeypatch: pytest.MonkeyPatch, moto: MotoS3,
                                       tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    err = unusable(S3Store("there", "shoal", endpoint_url=moto.endpoint, region="us-east-1"))
    assert "no usable AWS credentials" in str(err) and "AWS_ACCESS_KEY_ID" in err.hint


@pytest.mark.parametrize(("code", "status", "says", "hint"), [
    ("InvalidAccessKeyId", 403, "does not know the access key id", "AWS_ACCESS_KEY_ID"),
    ("SignatureDoesNotMatch", 403, "secret key does not match", "AWS_SECRET_ACCESS_KEY"),
    ("AccessDenied", 403, "access denied listing s3://b/p/", "s3:ListBucket"),
    ("PermanentRedirect", 301, "in another region", "AWS_DEFAULT_REGION"),
    ("SlowDown", 503, "answered SlowDown", "s3_endpoint"),
    ("", 404, "answered HTTP 404 without an S3 error", "not a console or a proxy"),
])
def test_refusals_say_which(code: str, status: int, says: str, hint: str) -> None:
    client = boto3.session.Session().client(
        "s3", region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s")
    with Stubber(client) as stub:
        stub.add_client_error("list_objects_v2", service_error_code=code,
                              http_status_code=status)
        err = unusable(S3Store("b", "p", client=client))
    assert says in str(err) and hint in err.hint
