"""One HTTP/1.1 exchange on an asyncio stream: write the request, read the response under caps.

The url kind's fetches are plain GETs of pages, thousands per pass, so the parsing here is
the minimum RFC 9112 asks of a client and no more: a status line, header fields (obsolete
line folding joined), and a body framed by chunked coding, Content-Length or the end of the
connection; gzip and deflate are decoded as they arrive, capped at `max_bytes` after
decoding, so neither a huge body nor a small gzip bomb costs memory. 1xx responses are
skipped. Whatever the server sends that does not parse is a `BrokenResponse`, never a
traceback.

Nothing here knows about time: the caller bounds the whole exchange with one deadline
(asyncio.timeout), which cancels a read however slowly the server drips.
"""

from __future__ import annotations

import asyncio
import re
import zlib

HEAD_MAX = 64 * 1024  # status line and header fields together (http.client allows 100 x 64 KB)
MAX_FIELDS = 100  # header fields in one response, as http.client counts them
DRAIN_MAX = 64 * 1024  # an unwanted body up to this size is read so its connection is reused
READ_SIZE = 64 * 1024
_NO_BODY = frozenset({204, 304})
REDIRECTS = frozenset({301, 302, 303, 307, 308})  # followed when they name a Location
_HEX = re.compile(rb"[0-9a-fA-F]{1,16}")
_DECODED = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class FetchError(Exception):
    """The exchange failed; the message is the reason as a person would say it."""


class BrokenResponse(FetchError):
    """The server sent something that is not HTTP, or closed the connection mid-response."""


class Hangup(BrokenResponse):
    """The connection closed before the response's first byte: on a kept-alive connection, the
    server had just given it up, and the request may go again on a new one."""


class NotHttp(BrokenResponse):
    """The first line is not an HTTP/1.x status line. On a kept-alive connection that is most
    likely what the previous response left over (a server that sent more than its
    Content-Length), so the request may go again on a new connection."""


class TooBig(FetchError):
    """The body is larger than the caller accepts (declared or as it arrived, after decoding)."""


class Headers:
    """Response header fields by lower-case name; repeated fields are joined with ", " as RFC
    9110 allows, except Set-Cookie, whose values are kept apart (`getlist`)."""

    __slots__ = ("_cookies", "_fields")

    def __init__(self, fields: dict[str, str], cookies: list[str]) -> None:
        self._fields = fields
        self._cookies = cookies

    def get(self, name: str) -> str | None:
        return self._fields.get(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._fields

    def getlist(self, name: str) -> list[str]:
        if name.lower() == "set-cookie":
            return list(self._cookies)
        found = self._fields.get(name.lower())
        return [] if found is None else [found]


class Response:
    """A response with its body read (and decoded), or left unread when it was not wanted."""

    __slots__ = ("body", "headers", "reason", "reusable", "status")

    def __init__(self, status: int, reason: str, headers: Headers, body: bytes, reusable: bool) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.reusable = reusable  # the connection may carry another request


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes,
                   body: bytes | None, method: str, max_bytes: int) -> Response:
    """Send one request and read its response.

    The body of a redirect or an error (4xx, 5xx) is of no use: it is read only when small,
    so that the connection is reused, and otherwise the connection is given up.
    """
    writer.write(head + body if body else head)
    if body and len(body) > READ_SIZE:
        await writer.drain()
    while True:
        status, reason, headers, keep_alive = await read_head(reader)
        if not 100 <= status < 200 or status == 101:
            break
    if method == "HEAD" or status in _NO_BODY or status == 101:
        return Response(status, reason, headers, b"", keep_alive and status != 101)
    wanted = status < 400 and not (status in REDIRECTS and "location" in headers)
    return await _read_body(reader, status, reason, headers, keep_alive, max_bytes, wanted)


async def read_head(reader: asyncio.StreamReader,
                    peer: str = "the server") -> tuple[int, str, Headers, bool]:
    """A response's status line and header fields; whether the connection stays open after it.
    `peer` names who answered in the failures ("the proxy example.net" for a CONNECT).

    The status line is read and checked first: a server that is not HTTP (an SMTP or FTP
    banner, then waiting) fails at once instead of at the fetch's deadline. The fields are
    then read in one piece, not line by line (a await per line cost a tenth of a fetch)."""
    status_line = (await _status_line(reader, peer)).decode("latin-1")
    version, _, rest = status_line.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not (code.isascii() and code.isdigit()):
        raise _not_http(status_line, peer)
    lines = (await _fields(reader, peer)).decode("latin-1").split("\r\n")[:-2]
    if len(status_line) + sum(len(line) + 2 for line in lines) > HEAD_MAX:
        raise BrokenResponse(f"{peer} sent more than {HEAD_MAX // 1024} KB of headers")
    if len(lines) > MAX_FIELDS:
        raise BrokenResponse(f"{peer} sent more than {MAX_FIELDS} header fields")
    fields: dict[str, str] = {}
    cookies: list[str] = []
    name = ""
    for line in lines:
        if line[:1] in (" ", "\t") and name:  # obsolete line folding: part of the field above
            fields[name] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        name = name.lower()
        if not colon or not name or name != name.strip():
            raise BrokenResponse(f"{peer} sent a malformed header line ({line[:60]!r})")
        value = value.strip()
        if name == "set-cookie":
            cookies.append(value)
        fields[name] = f"{fields[name]}, {value}" if name in fields else value
    connection = fields.get("connection", "").lower()
    keep_alive = "close" not in connection and (version != "HTTP/1.0" or "keep-alive" in connection)
    return int(code), reason.strip(), Headers(fields, cookies), keep_alive


async def _fields(reader: asyncio.StreamReader, peer: str) -> bytes:
    """The header fields after the status line, up to and with the empty line that ends them.

    The end is the first LF CR LF; the two bytes read first tell an empty field section
    ("\\r\\n" at once), whose end has no LF before it once the status line is read."""
    try:
        start = await reader.readexactly(2)
        if start == b"\r\n":
            return start
        return start + await reader.readuntil(b"\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise BrokenResponse(f"{peer} closed the connection without a complete response") from exc
    except asyncio.LimitOverrunError as exc:
        raise BrokenResponse(f"{peer} sent more than {HEAD_MAX // 1024} KB of headers") from exc


def _not_http(sent: str, peer: str) -> NotHttp:
    return NotHttp(f"{peer} did not answer in HTTP/1.x (it sent {sent[:60]!r})")


async def _status_line(reader: asyncio.StreamReader, peer: str) -> bytes:
    """A response's first line, without its CRLF."""
    try:
        return (await reader.readuntil(b"\r\n"))[:-2]
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise Hangup(f"{peer} closed the connection without answering") from exc
        if not exc.partial.startswith(b"HTTP/"[:len(exc.partial)]):
            text = exc.partial.decode("latin-1")
            raise _not_http(text, peer) from exc
        raise BrokenResponse(f"{peer} closed the connection without a complete response") from exc
    except asyncio.LimitOverrunError as exc:
        raise BrokenResponse(f"{peer} sent more than {HEAD_MAX // 1024} KB of headers") from exc


async def _read_body(reader: asyncio.StreamReader, status: int, reason: str, headers: Headers,
                     keep_alive: bool, max_bytes: int, wanted: bool) -> Response:
    transfer = _codings(headers.get("transfer-encoding"))
    chunked = transfer[-1:] == ["chunked"]
    length_text = headers.get("content-length")
    # With Transfer-Encoding, Content-Length means nothing; without chunked last, the body
    # ends with the connection (RFC 9112, 6.3).
    length = None if transfer or length_text is None else _length(length_text)
    if not wanted:
        if length is not None and length <= DRAIN_MAX:
            await _exactly(reader, length)
            return Response(status, reason, headers, b"", keep_alive)
        return Response(status, reason, headers, b"", False)
    if length is not None and length > max_bytes:
        raise TooBig(f"declared {length:,} bytes")
    body = _Body(max_bytes, _coding(transfer, headers.get("content-encoding")))
    if length is not None:
        body.add(await _exactly(reader, length))
    elif chunked:
        await _read_chunks(reader, body)
    else:  # HTTP/1.0 style, or a transfer-coding without chunked last: ends with the connection
        keep_alive = False
        while data := await reader.read(READ_SIZE):
            body.add(data)
    return Response(status, reason, headers, body.done(), keep_alive)


def _length(text: str) -> int:
    values = {v.strip() for v in text.split(",")}  # a repeated field must repeat the same number
    if len(values) != 1 or not ((value := values.pop()).isascii() and value.isdigit()):
        raise BrokenResponse(f"the server sent an invalid Content-Length ({text[:40]!r})")
    return int(value)


async def _exactly(reader: asyncio.StreamReader, size: int) -> bytes:
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError as exc:
        raise BrokenResponse(f"the server closed the connection after {len(exc.partial):,} of "
                             f"{size:,} bytes") from exc


async def _read_chunks(reader: asyncio.StreamReader, body: _Body) -> None:
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise BrokenResponse("the server broke off a chunked body") from exc
        size_text = line.split(b";", 1)[0].strip()
        if not _HEX.fullmatch(size_text):  # int() would take "-5", "0x10" and "1_0" too
            raise BrokenResponse(f"the server sent an invalid chunk size ({size_text[:20]!r})")
        size = int(size_text, 16)
        if size == 0:
            break
        while size > READ_SIZE:  # a big chunk: decoded and capped as its bytes arrive
            if not (data := await reader.read(READ_SIZE)):
                raise BrokenResponse("the server broke off a chunked body")
            body.add(data)
            size -= len(data)
        data = await _exactly(reader, size + 2)
        if data[-2:] != b"\r\n":  # else a wrong size would shift the framing, silently
            raise BrokenResponse("the server sent a chunk that does not match its declared size")
        body.add(data[:-2])
    while (await _trailer_line(reader)) != b"\r\n":  # trailer fields are read and ignored
        pass


async def _trailer_line(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        raise BrokenResponse("the server broke off a chunked body's trailer") from exc


def _codings(field: str | None) -> list[str]:
    return [c for c in (part.strip().lower() for part in (field or "").split(",")) if c and c != "identity"]


def _coding(transfer: list[str], content_encoding: str | None) -> str | None:
    """The one compression to undo: a transfer-coding other than chunked (which notifier never
    asks for, but a server may send) or the content-coding. Layers of them are refused rather
    than handed on half-decoded."""
    codings = [c for c in transfer if c != "chunked"] + _codings(content_encoding)
    if len(codings) > 1:
        raise BrokenResponse(f"the server compressed the body more than once ({', '.join(codings)}); "
                             f"notifier undoes one gzip or deflate")
    return codings[0] if codings else None


class _Body:
    """A body as it arrives: decoded (gzip, deflate) and capped at `limit` bytes after decoding."""

    __slots__ = ("_decoder", "_deflate", "_parts", "_seen", "_size", "limit")

    def __init__(self, limit: int, encoding: str | None) -> None:
        self.limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        wbits = _DECODED.get(encoding or "")  # _coding's: stripped and lower-case
        self._decoder = zlib.decompressobj(wbits) if wbits else None
        self._deflate = wbits == zlib.MAX_WBITS  # "deflate" is sometimes raw deflate, no zlib header
        self._seen = b""  # "deflate" input before any output: replayed if it turns out raw

    def add(self, data: bytes) -> None:
        self._keep(data if self._decoder is None else self._decode(data))

    def _decode(self, data: bytes) -> bytes:
        assert self._decoder is not None
        if self._deflate:
            self._seen += data
        try:
            out = self._decoder.decompress(data, self.limit - self._size + 1)
        except zlib.error as exc:
            if not (self._deflate and not self._size):
                raise BrokenResponse(f"the body could not be decompressed ({exc})") from None
            # zlib checks the header only once it has two bytes, which may have come in
            # two pieces: decode everything seen so far, not just this piece.
            seen, self._seen = self._seen, b""
            self._decoder, self._deflate = zlib.decompressobj(-zlib.MAX_WBITS), False
            return self._decode(seen)
        if self._deflate and (out or len(self._seen) >= 2):
            self._deflate, self._seen = False, b""  # the zlib header passed: no raw deflate
        if self._decoder.unconsumed_tail:  # more output than the cap allows
            raise TooBig("too large after decompression")
        return out

    def done(self) -> bytes:
        if self._decoder is not None:
            self._keep(self._decoder.flush())
        return self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)

    def _keep(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self.limit:
            raise TooBig("too large")
        if data:
            self._parts.append(data)
