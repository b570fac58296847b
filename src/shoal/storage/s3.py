"""An object store on any S3-compatible service (AWS S3, R2, GCS, MinIO, Ceph) via boto3.

Conditional writes use PutObject's ``If-None-Match`` / ``If-Match`` headers, so
leases and write-once objects need no coordination service. Credentials and
region come from the usual ``AWS_*`` variables and files; ``endpoint_url``
points at a non-AWS service.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from shoal.storage.base import (
    Blob,
    NotFound,
    ObjectInfo,
    PreconditionFailed,
    check_conditions,
    check_key,
)

_MISSING = {"NoSuchKey", "404", "NotFound"}


def _code(exc: ClientError) -> tuple[str, int]:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(error.get("Code", "")), int(status)


class S3Store:
    """Objects under ``prefix`` in ``bucket``; keys are relative to the prefix."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str | None = None, client: Any = None, max_connections: int = 32,
                 page_size: int = 1000):
        self.bucket = bucket
        self.page_size = page_size
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"
        self.client = client or boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region,
            config=Config(retries={"max_attempts": 3, "mode": "standard"},
                          max_pool_connections=max_connections,
                          # Newer botocore adds CRC checksum headers to every request by
                          # default; several S3-compatible services reject them.
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"))

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def get(self, key: str) -> Blob:
        try:
            out = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _code(exc)[0] in _MISSING or _code(exc)[1] == 404:
                raise NotFound(key) from None
            raise
        with out["Body"] as body:
            return Blob(body.read(), out["ETag"])

    def head(self, key: str) -> str:
        try:
            out = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _code(exc)[0] in _MISSING or _code(exc)[1] == 404:
                raise NotFound(key) from None
            raise
        return str(out["ETag"])

    def put(self, key: str, data: bytes, *, if_none_match: str | None = None,
            if_match: str | None = None) -> str:
        check_conditions(if_none_match, if_match)
        extra: dict[str, str] = {}
        if if_none_match:
            extra["IfNoneMatch"] = if_none_match
        if if_match is not None:
            extra["IfMatch"] = if_match
        try:
            out = self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                         **extra)
        except ClientError as exc:
            code, status = _code(exc)
            # 412: condition false. 409 ConditionalRequestConflict: a concurrent conditional
            # write won the race. If-Match on a missing key answers 404 NoSuchKey.
            conditional = bool(if_none_match) or if_match is not None
            if conditional and (status in (409, 412) or (
                    if_match is not None and (code in _MISSING or status == 404))):
                raise PreconditionFailed(
                    key, "If-None-Match" if if_none_match else "If-Match") from None
            raise
        return str(out["ETag"])

    def list(self, prefix: str, *, start_after: str = "") -> Iterator[ObjectInfo]:
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        if start_after:
            args["StartAfter"] = self.prefix + start_after
        cut = len(self.prefix)
        for page in self.client.get_paginator("list_objects_v2").paginate(
                **args, PaginationConfig={"PageSize": self.page_size}):
            for item in page.get("Contents", ()):
                modified = item.get("LastModified")  # a datetime with its zone
                yield ObjectInfo(item["Key"][cut:], int(item["Size"]),
                                 modified.timestamp() if modified is not None else None)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def close(self) -> None:
        self.client.close()
