"""A store that fails says so as StorageUnavailable: naming the operation and the key,
keeping the backend's error as its cause, and never carrying a credential."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from shoal.errors import Code, disk_full
from shoal.storage import NotFound, PreconditionFailed, StorageUnavailable
from shoal.storage.file import FileStore
from shoal.storage.s3 import S3Store

SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY"
ACCESS_KEY = "AKIAIOSFODNN7SECRETID"


# -- a folder ----------------------------------------------------------------------------------


def test_a_folder_that_fails_is_unavailable_with_the_os_error_as_cause(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    store.put("a", b"a file where a folder should be")
    with pytest.raises(StorageUnavailable) as info:
        store.put("a/b", b"x")
    assert info.value.key == "a/b" and "put a/b" in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(NotFound):  # an answer, not a failure
        store.get("a/b")


def test_a_full_disk_under_a_folder_store_is_disk_full(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileStore(tmp_path / "store")

    def no_room(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_room)
    with pytest.raises(StorageUnavailable) as info:
        store.put("k", b"x")
    full = disk_full(info.value)
    assert full is not None and full.code == Code.DISK_FULL


def test_a_folder_that_cannot_be_listed_fails_the_listing(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """os.walk skips what it cannot read; a store must not list a partial history."""
    store = FileStore(tmp_path / "store")
    store.put("dbs/x/1", b"1")
    assert [o.key for o in store.list("dbs/nowhere/")] == []  # a missing folder: nothing
    scandir = os.scandir

    def refused(path: Any) -> Any:
        if str(path).endswith("dbs"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refused)
    with pytest.raises(StorageUnavailable, match="Permission denied"):
        list(store.list("dbs/"))


# -- S3 ----------------------------------------------------------------------------------------


def client_error(code: str, status: int, op: str) -> ClientError:
    """An S3 error body as a refused signature returns it: it names the access key id and
    the string signed."""
    return ClientError({"Error": {"Code": code, "Message": f"{code} for {ACCESS_KEY}",
                                  "AWSAccessKeyId": ACCESS_KEY,
                                  "StringToSign": f"AWS4-HMAC-SHA256 {SECRET_KEY}"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, op)


class Failing:
    """An S3 client whose every call raises ``error``."""

    def __init__(self, error: Exception):
        self.error = error

    def _raise(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error

    get_object = head_object = put_object = delete_object = _raise

    def get_paginator(self, name: str) -> Any:
        error = self.error

        class Pages:
            def paginate(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
                raise error  # when the first page is fetched, as botocore's pages do
                yield {}

        return Pages()

    def close(self) -> None:
        pass


ERRORS = [
    client_error("SlowDown", 503, "PutObject"),
    client_error("InternalError", 500, "PutObject"),
    client_error("SignatureDoesNotMatch", 403, "PutObject"),
    EndpointConnectionError(endpoint_url=f"http://{ACCESS_KEY}:{SECRET_KEY}@minio:9000/b/k"),
    ReadTimeoutError(endpoint_url="http://minio:9000/b/k"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("call", ["get", "head", "put", "delete", "list"])
def test_s3_failures_are_unavailable_and_name_no_secret(error: Exception, call: str) -> None:
    store = S3Store("bucket", "prefix", client=Failing(error))
    run = {"get": lambda: store.get("k"), "head": lambda: store.head("k"),
           "put": lambda: store.put("k", b"x", if_none_match="*"),
           "delete": lambda: store.delete("k"), "list": lambda: list(store.list("k"))}[call]
    with pytest.raises(StorageUnavailable) as info:
        run()
    message = str(info.value)
    assert info.value.key == "k" and "s3://bucket/prefix/k" in message
    assert info.value.__cause__ is error
    assert SECRET_KEY not in message and ACCESS_KEY not in message
    assert SECRET_KEY not in repr(info.value) and ACCESS_KEY not in repr(info.value)
    if isinstance(error, ClientError):
        code = error.response["Error"]["Code"]
        assert f"{code} (HTTP {error.response['ResponseMetadata']['HTTPStatusCode']})" \
            in message


def test_s3_answers_stay_answers() -> None:
    """A missing key and a lost condition are what the store said, not failures."""
    missing = S3Store("b", client=Failing(client_error("NoSuchKey", 404, "GetObject")))
    with pytest.raises(NotFound):
        missing.get("k")
    lost = S3Store("b", client=Failing(client_error("PreconditionFailed", 412, "PutObject")))
    with pytest.raises(PreconditionFailed):
        lost.put("k", b"x", if_none_match="*")
