"""Storage fixtures: every storage test runs against the local directory and a real S3
endpoint (moto's server, or MinIO when IMAGEGATE_TEST_S3_URL is set)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.storage import ObjectStorage
from app.storage.local import LocalStorage
from app.storage.s3 import S3Storage
from tests.support.s3_server import S3Endpoint


@pytest.fixture(params=["local", "s3"])
async def storage(
    request: pytest.FixtureRequest, tmp_path: Path, s3: S3Endpoint
) -> AsyncIterator[ObjectStorage]:
    st: ObjectStorage
    if request.param == "local":
        st = LocalStorage(tmp_path / "files")
    else:
        st = S3Storage(
            bucket=s3.bucket, prefix=s3.new_prefix(), endpoint_url=s3.url, region=s3.region,
            access_key_id=s3.key, secret_access_key=s3.secret,
        )  # fmt: skip
    yield st
    await st.close()
