"""How a watcher shows binary content: one line with its size and SHA-256.

Bytes that are not text must not reach filters, diffs and mails (a NUL cuts a C string, a
PNG "diff" is noise), yet a change to them must still be noticed. So the `file` and `url`
kinds replace them with a summary line such as
``binary content (image/png), 12345 bytes, sha256 9f86d0…``, which changes whenever the
bytes do, and `describe_change` turns two such lines into one readable sentence.
"""

from __future__ import annotations

import re

SNIFF_BYTES = 8192  # a NUL in the first 8 KB marks a binary file, as git and grep decide

# Media types that are binary whatever their bytes look like. Other application/* types
# (JSON, XML, JavaScript, vendor types) are decided by sniffing, as is a missing label.
_BINARY_TOP = frozenset({"image", "audio", "video", "font", "model"})
_BINARY_APPLICATION = frozenset({
    "octet-stream", "pdf", "zip", "gzip", "x-gzip", "x-tar", "x-bzip2", "x-xz", "zstd",
    "x-7z-compressed", "x-rar-compressed", "vnd.rar", "java-archive", "wasm", "x-msdownload",
    "x-executable", "x-sharedlib", "vnd.android.package-archive", "x-debian-package",
    "x-rpm", "x-apple-diskimage", "x-iso9660-image", "msword", "vnd.ms-excel",
    "vnd.ms-powerpoint", "x-protobuf", "protobuf", "vnd.sqlite3", "x-sqlite3", "cbor",
    "msgpack", "x-msgpack", "ogg", "epub+zip", "x-shockwave-flash",
})
_BINARY_VENDOR_PREFIXES = ("vnd.openxmlformats-", "vnd.oasis.opendocument.")
_SUMMARY = re.compile(r"^(?P<what>binary [^\n]*?), (?P<size>\d+) bytes, sha256 (?P<digest>[0-9a-f]{64})$")


def binary_type(content_type: str) -> bool:
    """Whether a Content-Type (parameters allowed) names a binary format: image/png, PDF..."""
    mime = content_type.partition(";")[0].strip().lower()
    top, _, sub = mime.partition("/")
    if sub.endswith(("+xml", "+json", "+yaml")):  # image/svg+xml is text
        return False
    if top in _BINARY_TOP:
        return True
    return top == "application" and (sub in _BINARY_APPLICATION
                                      or sub.startswith(_BINARY_VENDOR_PREFIXES))


def summary(what: str, size: int, digest: str) -> str:
    """The text a binary thing is compared by: `what` starts with "binary"."""
    return f"{what}, {size} bytes, sha256 {digest}"


def describe_change(old: str, new: str) -> str | None:
    """"binary content (image/png) changed (size 10 → 12 bytes, sha256 1a2b3c4d… → …)" for
    two summaries, or None when either text is not a binary summary (so a text diff fits)."""
    before, after = _SUMMARY.match(old.strip()), _SUMMARY.match(new.strip())
    if before is None or after is None:
        return None
    what = after["what"] if after["what"] == before["what"] else f"{before['what']} → {after['what']}"
    return (f"{what} changed (size {int(before['size']):,} → {int(after['size']):,} bytes, "
            f"sha256 {before['digest'][:12]}… → {after['digest'][:12]}…)")
