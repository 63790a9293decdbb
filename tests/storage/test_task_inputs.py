"""Queued tasks' inputs in object storage (local and S3): a request whose images are spooled
files is stored from the files and loads back byte for byte."""

from __future__ import annotations

import os

from app.domain.edit import EditRequest, Image, ImageRef
from app.storage import ObjectStorage
from app.tasks.inputs import REF_MAGIC, TaskInputs
from app.tasks.payload import decode_request, encode_request, frame_request
from tests.support.spool import Spooler


def _request(spool: Spooler, big: bytes, mask: bytes) -> EditRequest:
    image, mask_blob = spool(big), spool(mask)
    return EditRequest(
        model="gpt-image-2", prompt="make it blue ✓", body_kind="multipart",
        image_refs=[ImageRef(param="image[0]", data=image), ImageRef("image[1]", url="https://x.test/a.png")],
        mask_ref=ImageRef(param="mask", data=mask_blob), callback_url="https://hooks.example.com/x",
        images=[Image(image, "image/png", 4000, 3000, has_alpha=True),
                Image(b"small", "image/png", 1, 1)],
        mask=Image(mask_blob, "image/png", 4000, 3000, has_alpha=True),
    )  # fmt: skip


async def test_a_queued_task_with_spooled_images_round_trips(storage: ObjectStorage) -> None:
    big, mask = os.urandom(6 * 1024 * 1024 + 1), os.urandom(300_000)
    meta = {"quote": {"tier": "other"}, "base_url": "https://gw.example"}
    with Spooler() as spool:
        req = _request(spool, big, mask)
        frame = frame_request(req, meta=meta)
        assert encode_request(req, meta=meta) == b"".join(
            p if isinstance(p, bytes) else p.read_all() for p in frame
        )
        for inputs in (TaskInputs(storage), TaskInputs(storage, inline=True)):
            queued = await inputs.stash("t1", frame)
            assert queued.startswith(REF_MAGIC) != inputs.inline
            loaded = await inputs.load(queued)
            assert loaded is not None
            back, back_meta = decode_request(loaded)
            assert back_meta == meta
            assert [i.data for i in back.images] == [big, b"small"]
            assert back.mask is not None and back.mask.data == mask
            assert [(r.param, r.url) for r in back.image_refs] == [
                ("image[0]", None), ("image[1]", "https://x.test/a.png"),
            ]  # fmt: skip
    await TaskInputs(storage).drop("t1")
    assert await storage.get(TaskInputs.key("t1")) is None
