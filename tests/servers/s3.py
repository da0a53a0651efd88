"""A real S3 endpoint over HTTP on 127.0.0.1: moto in server mode, in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.servers.prefect_server import free_port

ACCESS_KEY = "testing-access-key"
SECRET_KEY = "testing-secret-key-do-not-log"


class MotoS3:
    """`moto_server` on a fixed port; stop()/start() keep the port, so clients can reconnect.

    moto keeps buckets in memory: a restart loses them (tests recreate what they need).
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "MotoS3":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url, timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise TimeoutError("moto server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        self.proc = None

    def create_bucket(self, name: str | None = None) -> str:
        import boto3

        name = name or f"b-{uuid.uuid4().hex[:12]}"
        boto3.client(
            "s3", endpoint_url=self.url, region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        ).create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    server = MotoS3().start()
    yield server
    server.stop()


@pytest.fixture()
def s3_store_block(moto_s3: MotoS3):  # type: ignore[no-untyped-def]
    """An AetherObjectStore on a fresh bucket of the moto server."""
    from pydantic import SecretStr

    from aether_prefect.blocks import AetherObjectStore

    bucket = moto_s3.create_bucket()
    return AetherObjectStore(
        backend="s3", bucket=bucket, prefix="aether", endpoint_url=moto_s3.url, region="us-east-1",
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SecretStr(SECRET_KEY),
    )
