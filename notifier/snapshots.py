"""How kept versions are stored: the newest whole, each older one as a delta against the next.

A watcher keeps up to `history` versions of a page that usually changes a few lines at a time.
Stored as they are, 1,000 watchers x 100 versions of a 13 KB page take 1.3 GB; zlib alone only
halves that (text compresses about 2.2x), while a line delta against the neighbouring version
is about 250 bytes (bench/history.py measures all three). So the newest version is kept whole,
zlib-compressed, for the check that reads it every time; each older one is a *reverse* delta
against the next newer version: trimming history deletes the oldest, which nothing depends on.

A stored value is one of:
- `str`: a version written whole by notifier before deltas (schema 3), read as it is;
- `b"z" + zlib(utf-8 text)`: a whole version;
- `b"d" + zlib(json ops)`: a delta; each op is either `[i, j]`, lines i..j of the newer version,
  or a string, lines of this version's own. Lines keep their line ends, so joining them gives
  back exactly the text that was stored.

Readers never see any of this: notifier.store hands out text.
"""

from __future__ import annotations

import json
import zlib

from notifier.diff import opcodes

WHOLE = b"z"
DELTA = b"d"
_LEVEL = 6
Stored = str | bytes


def whole(text: str) -> bytes:
    """`text` compressed, readable without any other version."""
    return WHOLE + zlib.compress(_encode(text), _LEVEL)


def delta(text: str, newer: str) -> bytes:
    """`text` as a delta against `newer` (the next version), or whole when that is smaller.
    The result is decoded again before it is trusted: a version must never come back different."""
    ours, theirs = text.splitlines(keepends=True), newer.splitlines(keepends=True)
    ops: list[list[int] | str] = []
    for tag, i1, i2, j1, j2 in opcodes(theirs, ours):
        if tag == "equal":
            ops.append([i1, i2])
        elif j2 > j1:
            ops.append("".join(ours[j1:j2]))
    packed = DELTA + zlib.compress(json.dumps(ops, ensure_ascii=False, separators=(",", ":"))
                                   .encode("utf-8", "surrogatepass"), _LEVEL)
    full = whole(text)
    if len(packed) >= len(full) or text_of(packed, newer) != text:
        return full
    return packed


def needs_newer(stored: Stored) -> bool:
    """Whether `stored` is a delta, which only the next newer version can decode."""
    return isinstance(stored, bytes) and stored[:1] == DELTA


def text_of(stored: Stored, newer: str | None = None) -> str:
    """The version `stored` holds; a delta needs the text of the next newer version."""
    if isinstance(stored, str):
        return stored
    body = zlib.decompress(stored[1:])
    if stored[:1] == WHOLE:
        return body.decode("utf-8", "surrogatepass")
    if stored[:1] != DELTA or newer is None:
        raise ValueError(f"a stored version of unknown format {stored[:1]!r}, or a delta without "
                         f"the version after it")
    lines = newer.splitlines(keepends=True)
    ops = json.loads(body.decode("utf-8", "surrogatepass"))
    return "".join("".join(lines[op[0]:op[1]]) if isinstance(op, list) else op for op in ops)


def size_of(stored: Stored) -> int:
    """Bytes the stored value takes (for `notifier history` and the benchmark)."""
    return len(stored.encode("utf-8", "surrogatepass")) if isinstance(stored, str) else len(stored)


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")
