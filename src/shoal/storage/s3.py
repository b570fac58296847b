"""An object store on any S3-compatible service (AWS S3, R2, GCS, MinIO, Ceph) via boto3.

Conditional writes use PutObject's ``If-None-Match`` / ``If-Match`` headers, so
leases and write-once objects need no coordination service. Credentials and
region come from the usual ``AWS_*`` variables and files; ``endpoint_url``
points at a non-AWS service.

botocore retries throttling and 5xx answers itself (standard mode); a failure left after
that (a network error, a timeout, any S3 error but NotFound's and PreconditionFailed's)
is StorageUnavailable, its message the S3 error code and HTTP status or botocore's
error, never the request's credentials or signature.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from shoal.storage.base import (
    Blob,
    NotFound,
    ObjectInfo,
    PreconditionFailed,
    StorageUnavailable,
    Unusable,
    check_conditions,
    check_key,
)

_MISSING = {"NoSuchKey", "404", "NotFound"}
PROBE_TIMEOUT = 2.0  # seconds to connect and to read, for the check at start (one attempt)
# the bucket lives in another region than the request was signed for
_REGION = {"PermanentRedirect", "AuthorizationHeaderMalformed",
           "IllegalLocationConstraintException"}
_CHECK_ALL = "Check store, s3_endpoint and the AWS_* settings."


def _config(**extra: Any) -> Config:
    # Newer botocore adds CRC checksum headers to every request by default; several
    # S3-compatible services reject them.
    return Config(request_checksum_calculation="when_required",
                  response_checksum_validation="when_required", **extra)


def _code(exc: ClientError) -> tuple[str, int]:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(error.get("Code", "")), int(status)


_USERINFO = re.compile(r"(?<=://)[^@\s\"']+@")  # user:password@ in a URL (a path's @ too)


def _reason(exc: ClientError | BotoCoreError) -> str:
    """What failed, for a message: S3's error code and status (not the error body, which
    may echo the access key id and the string signed), or botocore's error with any
    password in its URLs cut out."""
    if isinstance(exc, ClientError):
        code, status = _code(exc)
        return f"{code or 'error'} (HTTP {status})"
    return f"{type(exc).__name__}: {_USERINFO.sub('***@', str(exc))}"


class S3Store:
    """Objects under ``prefix`` in ``bucket``; keys are relative to the prefix."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str | None = None, client: Any = None, max_connections: int = 32,
                 page_size: int = 1000):
        self.bucket = bucket
        self.page_size = page_size
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"
        self.endpoint_url = endpoint_url
        self._session = None if client is not None else boto3.session.Session()
        self._region = region
        self.client = client or self._client(
            _config(retries={"max_attempts": 3, "mode": "standard"},
                    max_pool_connections=max_connections))

    def _client(self, config: Config) -> Any:
        assert self._session is not None
        return self._session.client("s3", endpoint_url=self.endpoint_url,
                                    region_name=self._region, config=config)

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    @contextlib.contextmanager
    def _failing(self, op: str, key: str) -> Iterator[None]:
        """botocore's errors inside (the answers made of some, NotFound and
        PreconditionFailed, are raised before) are the store failing."""
        try:
            yield
        except (ClientError, BotoCoreError) as exc:
            raise StorageUnavailable(key, f"S3 {op} of {self.url}{key} failed: "
                                          f"{_reason(exc)}") from exc

    def get(self, key: str) -> Blob:
        with self._failing("GetObject", key):
            try:
                out = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as exc:
                if _code(exc)[0] in _MISSING or _code(exc)[1] == 404:
                    raise NotFound(key) from None
                raise
            with out["Body"] as body:
                return Blob(body.read(), out["ETag"])

    def head(self, key: str) -> str:
        with self._failing("HeadObject", key):
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
        with self._failing("PutObject", key):
            try:
                out = self.client.put_object(Bucket=self.bucket, Key=self._key(key),
                                             Body=data, **extra)
            except ClientError as exc:
                code, status = _code(exc)
                # 412: condition false. 409 ConditionalRequestConflict: a concurrent
                # conditional write won the race. If-Match on a missing key answers 404.
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
        pages = iter(self.client.get_paginator("list_objects_v2").paginate(
            **args, PaginationConfig={"PageSize": self.page_size}))
        while True:
            with self._failing("ListObjectsV2", prefix):  # each page is a request
                page = next(pages, None)
            if page is None:
                return
            for item in page.get("Contents", ()):
                modified = item.get("LastModified")  # a datetime with its zone
                yield ObjectInfo(item["Key"][cut:], int(item["Size"]),
                                 modified.timestamp() if modified is not None else None)

    def delete(self, key: str) -> None:
        with self._failing("DeleteObject", key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def probe(self) -> None:
        """One ListObjectsV2 (MaxKeys=1) under the prefix, with a client that waits
        PROBE_TIMEOUT and does not retry: it needs the bucket, the credentials, the
        endpoint and the right to list, as every start does."""
        client = self.client if self._session is None else self._client(
            _config(connect_timeout=PROBE_TIMEOUT, read_timeout=PROBE_TIMEOUT,
                    retries={"total_max_attempts": 1}))
        try:
            client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except (ClientError, BotoCoreError) as exc:
            raise self._unusable(exc, str(client.meta.endpoint_url)) from None
        finally:
            if client is not self.client:
                client.close()

    def _unusable(self, exc: ClientError | BotoCoreError, endpoint: str) -> Unusable:
        """The probe's failure as the operator needs it: the cause, and what to do."""
        custom = self.endpoint_url is not None
        where = f"{self.url} (endpoint {endpoint})"
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return Unusable(f"no usable AWS credentials for {where}: {exc}",
                            "Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, "
                            "or run with an instance role).")
        if isinstance(exc, BotoConnectionError | HTTPClientError):
            return Unusable(f"cannot reach the object store at {endpoint}: {exc}",
                            "Check s3_endpoint (scheme, host, port) and that the service runs "
                            "and is reachable from this host." if custom else
                            "Check this host's network access to AWS S3; for another S3 "
                            "service (MinIO, R2, GCS, Ceph) set s3_endpoint.")
        if not isinstance(exc, ClientError):
            return Unusable(f"the object store {where} failed: {exc}",
                            _CHECK_ALL)
        code, status = _code(exc)
        if code == "NoSuchBucket":
            mb = f"aws s3 mb s3://{self.bucket}" + (f" --endpoint-url {endpoint}" if custom
                                                     else "")
            return Unusable(f"the bucket {self.bucket!r} does not exist at {endpoint}",
                            f"Create it (`{mb}`, or in the provider's console), or fix the "
                            f"bucket name in store. A bucket on MinIO, R2, GCS or Ceph also "
                            f"needs s3_endpoint pointing at that service.")
        if not code or code == str(status):  # an answer without S3's XML error body
            return Unusable(f"{endpoint} answered HTTP {status} without an S3 error: it does "
                            f"not look like an S3 API", "Check s3_endpoint: the URL of the S3 "
                            "service itself (scheme, host, port), not a console or a proxy.")
        if code == "InvalidAccessKeyId":
            return Unusable(f"the object store at {endpoint} does not know the access key id "
                            f"in use (InvalidAccessKeyId)",
                            "Check AWS_ACCESS_KEY_ID (or AWS_PROFILE); keys of one S3 service "
                            "do not work on another (check s3_endpoint).")
        if code == "SignatureDoesNotMatch":
            return Unusable(f"the object store at {endpoint} refused the request's signature "
                            f"(SignatureDoesNotMatch): the secret key does not match the "
                            f"access key id", "Check AWS_SECRET_ACCESS_KEY (or AWS_PROFILE).")
        if code in _REGION:
            return Unusable(f"the bucket {self.bucket!r} is in another region than the one "
                            f"in use ({code})",
                            "Set AWS_DEFAULT_REGION to the bucket's region.")
        if code == "AccessDenied" or status == 403:
            return Unusable(f"access denied listing {where} ({code or status})",
                            f"Grant the node's credentials s3:ListBucket, s3:GetObject, "
                            f"s3:PutObject and s3:DeleteObject on bucket {self.bucket!r} "
                            f"(prefix {self.prefix or '/'}).")
        return Unusable(f"the object store {where} answered {code or status}: {exc}",
                        _CHECK_ALL)

    def close(self) -> None:
        self.client.close()
