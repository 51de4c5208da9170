"""Decode fetched bytes to text the way browsers do, so Chinese (GBK/GB2312) pages read right.

Cheap evidence first (override, BOM, Content-Type, <meta>/<?xml?>, valid UTF-8); the slow
statistical detector only sees the rare undeclared legacy page. Shared by the url and file
watchers.
"""

from __future__ import annotations

import codecs
import functools
import re

# Browsers decode these labels with a superset codec (WHATWG Encoding); so do we, or characters
# that pages really use (GBK-only hanzi on "gb2312" pages, curly quotes on "latin-1") break.
_SUPERSETS = {"gb2312": "gb18030", "gbk": "gb18030", "iso8859-1": "cp1252", "ascii": "cp1252",
              "big5": "big5hkscs", "shift_jis": "cp932", "euc_kr": "cp949"}
_LABELS = {"x-gbk": "gbk", "x-sjis": "shift_jis", "x-euc-jp": "euc_jp"}
_HEADER_CHARSET = re.compile(r"charset\s*=\s*[\"']?\s*([\w.:-]+)", re.I)
_BODY_CHARSET = re.compile(
    rb"<meta[^>]*?charset\s*=\s*[\"']?\s*([\w.:-]+)|^\s*<\?xml[^>]*?encoding\s*=\s*[\"']([\w.:-]+)",
    re.I,
)
_SNIFF_BYTES = 8192
_ASCII = bytes(range(128))
_PREFERRED = ("gb18030", "cp1252")
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


@functools.lru_cache(maxsize=256)
def codec_name(label: str) -> str | None:
    """Python's text codec for a charset label, widened as browsers do; None if unknown."""
    label = label.strip().lower()
    try:
        name = codecs.lookup(_LABELS.get(label, label)).name
        b"".decode(name)  # rejects codecs that are not text encodings (rot13, base64...)
    except LookupError:
        return None
    return _SUPERSETS.get(name, name)


def guess_encoding(body: bytes) -> str | None:
    """A plausible codec for undeclared bytes that are not valid UTF-8, or None (binary).

    UTF-8 with a few stray bytes stays UTF-8. Otherwise charset_normalizer decides; it often
    ties on short texts (GBK vs Big5, cp1252 vs cp1250), and ties go to GB18030 then cp1252,
    the commonest legacy encodings of the pages and files our users watch.
    """
    high = len(body) - len(body.translate(None, _ASCII))
    invalid = body.decode("utf-8", errors="replace").count("\ufffd")
    if high - invalid > 10 * invalid:  # valid multi-byte sequences dominate
        return "utf-8"
    import charset_normalizer  # noqa: PLC0415 - 3 MB that only undeclared legacy pages need

    matches = list(charset_normalizer.from_bytes(body))
    if not matches:
        return None
    score = (matches[0].chaos, matches[0].coherence)
    tied = {codec_name(m.encoding) for m in matches if (m.chaos, m.coherence) == score}
    return next((name for name in _PREFERRED if name in tied), codec_name(matches[0].encoding))


def decode(body: bytes, content_type: str = "", override: str | None = None) -> str:
    """Decode a response: override, BOM, Content-Type, <meta>/<?xml?>, UTF-8, then a guess.

    Never raises: bytes invalid in the chosen charset become U+FFFD.
    """
    return _decode(body, content_type, override)[0]


def decode_text(body: bytes, content_type: str = "", override: str | None = None) -> str | None:
    """Decode like `decode`, or return None when the bytes are not text.

    Not text: a NUL character in the decoded text (UTF-16 pages decode without any), or an
    undeclared body that is neither UTF-8 nor any charset the detector recognises.
    """
    text, plausible = _decode(body, content_type, override)
    return text if plausible and "\0" not in text else None


def _decode(body: bytes, content_type: str, override: str | None) -> tuple[str, bool]:
    """The text, and False when it came from undeclared bytes no charset explains."""
    codec = codec_name(override) if override else _declared(body, content_type)
    if codec is None:
        if b"\0" in body[:_SNIFF_BYTES]:  # binary; UTF-16/32 text declares itself with a BOM
            return body.decode("utf-8", errors="replace"), False
        try:
            return body.decode("utf-8"), True  # the common case, and far cheaper than detection
        except UnicodeDecodeError:
            codec = guess_encoding(body)
            if codec is None:
                return body.decode("utf-8", errors="replace"), False
    return body.decode(codec, errors="replace"), True


def _declared(body: bytes, content_type: str) -> str | None:
    for bom, name in _BOMS:
        if body.startswith(bom):
            return name
    header = _HEADER_CHARSET.search(content_type)
    if header and (codec := codec_name(header.group(1))):
        return codec
    content_type = content_type.lower()
    if content_type and "html" not in content_type and "xml" not in content_type:
        return None  # a <meta> inside JSON or plain text is content, not a declaration
    meta = _BODY_CHARSET.search(body[:_SNIFF_BYTES])
    return codec_name((meta.group(1) or meta.group(2)).decode("ascii")) if meta else None
