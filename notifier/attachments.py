"""Files that travel with an alert: a watcher's screenshot, the snapshot of the new content.

An `Attachment` is made where the bytes are (a watcher's fetch, the alert builder) and turned
into a MIME part only by notifier.message. One with a `content_id` is shown inline by the HTML
part (``<img src="cid:...">``); the others are ordinary attachments. Every mail has a budget
for them (`fit`), so a huge snapshot or screenshot never becomes a 50 MB message.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

MAX_TOTAL_BYTES = 10 * 1024 * 1024  # attachments of one mail, before base64 (which adds a third)


@dataclass(frozen=True)
class Attachment:
    """One file of an alert. `filename` may be any text (Chinese names are RFC 2231-encoded);
    `content_id` (without angle brackets) makes it an inline part the HTML refers to as
    ``cid:<content_id>``; `alt` says what an image shows, for readers without images."""

    filename: str
    content_type: str
    data: bytes
    content_id: str | None = None
    alt: str = ""

    @property
    def size(self) -> tuple[int, int] | None:
        """Width and height in pixels of a PNG or JPEG image, read from its header."""
        return image_size(self.data)


def fit(attachments: Sequence[Attachment], budget: int = MAX_TOTAL_BYTES) -> tuple[list[Attachment],
                                                                                    list[Attachment]]:
    """The attachments that fit in `budget` bytes, in order, and those left out."""
    kept: list[Attachment] = []
    left: list[Attachment] = []
    for item in attachments:
        if len(item.data) <= budget:
            kept.append(item)
            budget -= len(item.data)
        else:
            left.append(item)
    return kept, left


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG or baseline/progressive JPEG, or None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if not data.startswith(b"\xff\xd8"):
        return None
    at = 2
    while at + 9 < len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            at += 2
            continue
        length = struct.unpack(">H", data[at + 2:at + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            height, width = struct.unpack(">HH", data[at + 5:at + 9])
            return width, height
        at += 2 + length
    return None
