"""Objects in an S3-compatible bucket (AWS S3, MinIO, R2, ...), through obstore.

obstore (Rust, `object_store`) was chosen over aiobotocore by measurement: about half the
client CPU per 8 MB put and get and faster gets (bench/results/2026-11-29-s3-clients.md), and
presigning is a local computation with no I/O. Credentials: the configured pair, else the
standard AWS chain through boto3's session when boto3 is installed (environment, shared
config/credentials files and profiles, web identity, container and instance metadata), else
obstore's own environment/web-identity/metadata lookup.

`put_pieces` streams an object made of pieces (a queued task's header and spooled images):
an object up to one part (5 MiB) goes as one PUT; a larger one as a multipart upload fed
chunk by chunk from the files, at most two parts in flight, so a put holds about 10 MiB of it
in memory whatever its size (S3 needs each part whole before sending it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import obstore
from obstore.exceptions import NotFoundError
from obstore.store import S3Store

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

from app.storage.base import (
    ObjectInfo,
    Opened,
    Piece,
    StorageError,
    check_key,
    piece_chunks,
    pieces_size,
)

_STREAM_CHUNK = 1024 * 1024
_PART = 5 * 1024 * 1024  # S3's smallest multipart part (but the last)
_PARTS_IN_FLIGHT = 2
_NOT_FOUND = (NotFoundError, FileNotFoundError)
_MAX_PRESIGN_S = 7 * 24 * 3600  # SigV4 limit


class S3Storage:
    kind = "s3"

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        timeout_s: float = 60,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        kwargs: dict[str, Any] = {}
        if endpoint_url:
            kwargs["endpoint"] = endpoint_url.rstrip("/")
            kwargs["virtual_hosted_style_request"] = False
        if region:
            kwargs["region"] = region
        if access_key_id and secret_access_key:
            kwargs["access_key_id"] = access_key_id
            kwargs["secret_access_key"] = secret_access_key
        else:
            provider = _aws_chain()
            if provider is not None:
                kwargs["credential_provider"] = provider
        options: ClientConfig = {
            "timeout": timedelta(seconds=timeout_s),
            "connect_timeout": timedelta(seconds=min(timeout_s, 5)),
        }
        if endpoint_url and endpoint_url.startswith("http://"):
            options["allow_http"] = True
        # A few quick retries, bounded by the timeout: a request waiting on storage should
        # fail over to a 503 in seconds, not after obstore's default three minutes.
        retry: RetryConfig = {"max_retries": 3, "retry_timeout": timedelta(seconds=timeout_s)}
        self.store = S3Store(
            bucket,
            prefix=prefix.strip("/") or None,
            client_options=options,
            retry_config=retry,
            **kwargs,
        )

    async def put(self, key: str, data: bytes) -> None:
        check_key(key)
        try:
            await obstore.put_async(self.store, key, data)
        except Exception as exc:
            raise StorageError(f"s3 put failed: {exc}") from exc

    async def put_pieces(self, key: str, pieces: Sequence[Piece]) -> None:
        check_key(key)
        try:
            if pieces_size(pieces) <= _PART:
                data = b"".join(piece_chunks(pieces))
                await obstore.put_async(self.store, key, data, use_multipart=False)
            else:
                await obstore.put_async(
                    self.store, key, piece_chunks(pieces), chunk_size=_PART,
                    max_concurrency=_PARTS_IN_FLIGHT,
                )  # fmt: skip
        except Exception as exc:
            raise StorageError(f"s3 put failed: {exc}") from exc

    async def get(self, key: str) -> bytes | None:
        got = await self._get(key)
        if got is None:
            return None
        try:
            return bytes(await got.bytes_async())
        except Exception as exc:
            raise StorageError(f"s3 get failed: {exc}") from exc

    async def open(self, key: str) -> Opened | None:
        got = await self._get(key)
        if got is None:
            return None
        return Opened(_info(got.meta), _chunks(got.stream(min_chunk_size=_STREAM_CHUNK)))

    async def _get(self, key: str) -> Any:
        """The started GET of `key` (body not read yet), or None when there is no such object."""
        check_key(key)
        try:
            return await obstore.get_async(self.store, key)
        except _NOT_FOUND:
            return None
        except Exception as exc:
            raise StorageError(f"s3 get failed: {exc}") from exc

    async def head(self, key: str) -> ObjectInfo | None:
        check_key(key)
        try:
            meta = await obstore.head_async(self.store, key)
        except _NOT_FOUND:
            return None
        except Exception as exc:
            raise StorageError(f"s3 head failed: {exc}") from exc
        return _info(meta)

    async def delete(self, key: str) -> None:
        check_key(key)
        try:
            await obstore.delete_async(self.store, key)
        except _NOT_FOUND:
            pass
        except Exception as exc:
            raise StorageError(f"s3 delete failed: {exc}") from exc

    async def delete_older(self, prefix: str, before: float) -> int:
        """Lists the folder; meant for tests and small buckets. Production buckets expire
        objects with a lifecycle rule instead (see docs/SCALING.md)."""
        folder = check_key(prefix.rstrip("/")) if prefix else None
        try:
            listed = await obstore.list_with_delimiter_async(self.store, folder)
            old = [m["path"] for m in listed["objects"] if m["last_modified"].timestamp() < before]
            if old:
                await obstore.delete_async(self.store, old)
        except Exception as exc:
            raise StorageError(f"s3 sweep failed: {exc}") from exc
        return len(old)

    async def presign_get(self, key: str, expires_s: int) -> str | None:
        check_key(key)
        expires = timedelta(seconds=max(1, min(expires_s, _MAX_PRESIGN_S)))
        try:
            return await obstore.sign_async(self.store, "GET", key, expires)
        except Exception as exc:
            raise StorageError(f"s3 presign failed: {exc}") from exc

    async def close(self) -> None:
        pass


async def _chunks(stream: Any) -> AsyncIterator[bytes]:
    async for chunk in stream:
        yield bytes(chunk)


def _aws_chain() -> Any:
    """boto3's credential chain for obstore, when boto3 is installed and finds credentials."""
    try:
        import boto3
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        return None
    session = boto3.session.Session()
    if session.get_credentials() is None:
        return None
    return Boto3CredentialProvider(session)


def _info(meta: Any) -> ObjectInfo:
    """Size and modification time from obstore's object metadata."""
    return ObjectInfo(size=meta["size"], modified=meta["last_modified"].timestamp())
