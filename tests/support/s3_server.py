"""An S3 endpoint for tests: moto's standalone server on a free port (real HTTP S3), or the
MinIO/S3 named by `IMAGEGATE_TEST_S3_URL` (+ `IMAGEGATE_TEST_S3_KEY`, `IMAGEGATE_TEST_S3_SECRET`,
`IMAGEGATE_TEST_S3_BUCKET`, `IMAGEGATE_TEST_S3_REGION`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import boto3

from tests.support.net import free_port, wait_port


@dataclass
class S3Endpoint:
    url: str
    key: str
    secret: str
    region: str
    bucket: str
    # moto accepts a presigned URL after its expiry; MinIO and S3 refuse it (403)
    enforces_presign_expiry: bool = True

    def client(self):  # type: ignore[no-untyped-def]
        return boto3.client(
            "s3", endpoint_url=self.url, aws_access_key_id=self.key,
            aws_secret_access_key=self.secret, region_name=self.region,
        )  # fmt: skip

    def storage_config(self, **extra: object) -> dict[str, object]:
        """The `storage:` config block for this endpoint."""
        return {
            "kind": "s3", "bucket": self.bucket, "endpoint_url": self.url, "region": self.region,
            "access_key_id": self.key, "secret_access_key": self.secret, **extra,
        }  # fmt: skip

    def new_prefix(self) -> str:
        return f"t-{uuid.uuid4().hex[:12]}/"


class S3Server:
    """Starts moto_server unless IMAGEGATE_TEST_S3_URL points at a running endpoint."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoint: S3Endpoint

    def start(self) -> S3Endpoint:
        url = os.environ.get("IMAGEGATE_TEST_S3_URL")
        if url:
            self.endpoint = S3Endpoint(
                url=url,
                key=os.environ.get("IMAGEGATE_TEST_S3_KEY", "minioadmin"),
                secret=os.environ.get("IMAGEGATE_TEST_S3_SECRET", "minioadmin"),
                region=os.environ.get("IMAGEGATE_TEST_S3_REGION", "us-east-1"),
                bucket=os.environ.get("IMAGEGATE_TEST_S3_BUCKET", "imagegate-test"),
            )
        else:
            port = free_port()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            wait_port(port, timeout=30)
            self.endpoint = S3Endpoint(
                url=f"http://127.0.0.1:{port}", key="testing", secret="testing",
                region="us-east-1", bucket="imagegate-test", enforces_presign_expiry=False,
            )  # fmt: skip
        client = self.endpoint.client()
        try:
            client.head_bucket(Bucket=self.endpoint.bucket)
        except Exception:
            client.create_bucket(Bucket=self.endpoint.bucket)
        return self.endpoint

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def assert_signed_expiry(url: str, expires_s: int, slack_s: float = 5) -> None:
    """A SigV4 presigned URL signed just now for `expires_s` seconds, give or take `slack_s`
    (what a server that enforces expiry checks; moto does not, so tests read the URL too)."""
    q = parse_qs(urlsplit(url).query)
    assert abs(int(q["X-Amz-Expires"][0]) - expires_s) <= slack_s, q.get("X-Amz-Expires")
    signed = datetime.strptime(q["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert abs(signed.timestamp() - time.time()) < 10
