"""Object storage for results and queued inputs: a local directory or an S3-compatible bucket."""

from __future__ import annotations

from pathlib import Path

from app.core.config import StorageConfig
from app.storage.base import ObjectInfo, ObjectStorage, Opened, StorageError, check_key

__all__ = ["ObjectInfo", "ObjectStorage", "Opened", "StorageError", "check_key", "open_storage"]


def open_storage(config: StorageConfig, data_dir: Path) -> ObjectStorage:
    """The storage the `storage:` config block describes (local: `<data_dir>/files`)."""
    if config.kind == "s3":
        from app.storage.s3 import S3Storage

        assert config.bucket is not None  # the config model requires it for s3
        return S3Storage(
            bucket=config.bucket, prefix=config.prefix, endpoint_url=config.endpoint_url,
            region=config.region, access_key_id=config.access_key_id,
            secret_access_key=config.secret_access_key, timeout_s=config.timeout_s,
        )  # fmt: skip
    from app.storage.local import LocalStorage

    return LocalStorage(Path(config.path) if config.path else data_dir / "files")
