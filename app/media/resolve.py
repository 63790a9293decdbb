"""Turn an `EditRequest`'s image references into sniffed `Image`s (docs/API.md, "Image inputs").

Uploads are probed as they are; `data:` URLs are decoded then probed; http(s) URLs go through
the guarded fetcher, all at once, so a request with several URL images waits for the slowest
one rather than the sum. The first failure cancels the rest and is raised as the request's error
(if several inputs have failed by then, the one earliest in parameter order); every failure is a
`GatewayError` naming its parameter.

Image bytes above `limits.spool_threshold_bytes` go to the request's spool (app/media/spool.py)
as they are fetched or decoded, and a spooled image is probed through a temporary mapping, so
nothing large stays in the process while the request waits upstream. A decoded `data:` URL
becomes the ref's `data` (the long URL string is dropped; the idempotency fingerprint then
hashes the image bytes, as for an upload).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from app.core.config import LimitsConfig
from app.core.errors import bad_request, too_large
from app.domain.blob import Blob, SpooledBlob
from app.domain.edit import EditRequest, Image, ImageRef
from app.media.fetch import GuardedFetcher, decode_data_url
from app.media.sniff import map_blob, probe, probe_mapped
from app.media.spool import Spool

# What stays of a decoded data URL in `ImageRef.url`: its header, bounded (for logs and task
# records), never the payload.
_DATA_URL_KEEP = 64

# Probing is a few ms per 8 MB (PNG CRCs); above this size it runs in a thread so a request with
# many large images does not stall the event loop for everyone else.
_THREAD_PROBE_BYTES = 1024 * 1024


async def resolve_images(
    req: EditRequest, fetcher: GuardedFetcher, limits: LimitsConfig, spool: Spool | None = None
) -> None:
    """Fill `req.images` (in the order of `req.image_refs`) and `req.mask`.

    Nothing here judges the images: the count was capped while parsing the body and the
    model's rules (count, formats, mask) are its adapter's `check_fields` / `check_images`.
    """
    refs = list(req.image_refs)
    if req.mask_ref is not None:
        refs.append(req.mask_ref)
    images = await _gather_in_order([resolve_ref(ref, fetcher, limits, spool) for ref in refs])
    if req.mask_ref is not None:
        req.mask = images.pop()
    req.images = images


async def resolve_ref(
    ref: ImageRef, fetcher: GuardedFetcher, limits: LimitsConfig, spool: Spool | None = None
) -> Image:
    """One reference → one sniffed image (uploaded bytes, `data:` URL or http(s) URL); large
    fetched or decoded bytes go to `spool` when there is one."""
    param = ref.param
    data: Blob
    if ref.data is not None:
        data = ref.data
        if len(data) > limits.max_image_bytes:
            raise too_large(
                f"{param}: {len(data):,} bytes is over the limit of {limits.max_image_bytes:,}",
                param,
            )
    elif ref.url:
        url = ref.url.strip()
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme == "data":
            data = decode_data_url(
                url, param=param, max_bytes=limits.max_image_bytes,
                spool=spool, spool_threshold=limits.spool_threshold_bytes,
            )  # fmt: skip
            ref.data = data
            ref.url = url[: min(url.find(",") + 1, _DATA_URL_KEEP)] + "..."
            del url
        elif scheme in ("http", "https"):
            data = await fetcher.fetch(
                url, param=param, max_bytes=limits.max_image_bytes,
                spool=spool, spool_threshold=limits.spool_threshold_bytes,
            )  # fmt: skip
        else:
            shown = f"{scheme!r}" if scheme else "(none)"
            raise bad_request(
                f"{param}: URL scheme {shown} is not allowed; give an http(s) URL, a "
                "data:image/...;base64 URL or upload the file",
                param,
            )
    else:
        raise bad_request(f"{param}: empty image input", param)

    check: Callable[[], Image]
    if isinstance(data, SpooledBlob):
        mapped = map_blob(data)  # here, not in the thread: the spool may close the descriptor
        check = partial(probe_mapped, data, mapped, param=param, max_pixels=limits.max_image_pixels)
    else:
        check = partial(probe, data, param=param, max_pixels=limits.max_image_pixels)
    if len(data) > _THREAD_PROBE_BYTES:
        return await asyncio.to_thread(check)
    return check()


async def _gather_in_order(coros: list[Coroutine[Any, Any, Image]]) -> list[Image]:
    """Run all, return results in order; on the first failure cancel the rest and raise it
    (the earliest by position if several have failed by then)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    if not tasks:
        return []
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:
        for t in tasks:
            t.cancel()
        raise
    failed = [t for t in tasks if t in done and not t.cancelled() and t.exception()]
    if failed:
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        exc = failed[0].exception()
        assert exc is not None
        raise exc
    return [t.result() for t in tasks]
