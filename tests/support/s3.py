"""A real HTTP S3 API for tests: moto's server on a free loopback port."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3

from shoal.storage.s3 import S3Store
from tests.support.server import free_port

_buckets = itertools.count()


@dataclass
class MotoS3:
    """A running moto server and one shared client (building clients is slow)."""

    endpoint: str
    client: Any

    def new_store(self, prefix: str = "shoal", page_size: int = 1000) -> S3Store:
        """A store on a fresh, empty bucket."""
        bucket = f"test-bucket-{next(_buckets)}"
        self.client.create_bucket(Bucket=bucket)
        return S3Store(bucket, prefix, client=self.client, page_size=page_size)


@contextmanager
def moto_server() -> Iterator[MotoS3]:
    """Start ThreadedMotoServer on 127.0.0.1; stop it afterwards."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint, aws_access_key_id="testing",
        aws_secret_access_key="testing", region_name="us-east-1")
    try:
        yield MotoS3(endpoint, client)
    finally:
        server.stop()
