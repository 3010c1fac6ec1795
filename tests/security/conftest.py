"""The running-app fixtures of the integration suite, shared by the security tests, and the moto S3
server of the audit-archive tests."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator

import pytest

from tests.integration.conftest import api, api_factory  # noqa: F401 - re-exported fixtures

LOCKED, UNLOCKED = "ck-audit-locked", "ck-audit-plain"


def _reset(endpoint: str) -> None:
    # moto keeps one in-memory S3 per process, shared by every server it starts: start each test empty.
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=10).close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto S3 server with one Object Lock bucket and one plain bucket; credentials via the standard
    AWS environment variables, as in production."""
    import boto3  # imported here: the other security tests need neither
    from moto.server import ThreadedMotoServer

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    _reset(endpoint)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=LOCKED, ObjectLockEnabledForBucket=True)
    s3.create_bucket(Bucket=UNLOCKED)
    yield endpoint
    _reset(endpoint)
    server.stop()
