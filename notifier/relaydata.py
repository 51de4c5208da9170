"""Read the text of an SMTP DATA command in large pieces.

aiosmtpd reads DATA one line at a time in Python: a 10 KB message of 66-byte lines is about
150 trips through its loop, and at a few hundred messages a second that loop was the relay's
largest cost (bench/relay.py). Here the end of the message is found by StreamReader's own
search for ".\\r\\n", so a message costs a few calls however many lines it has, with the same
rules: the message ends at a line that is a lone "."; a "." that starts a line is taken out
(RFC 5321 4.5.2, dot-unstuffing); bare LF is no line end; and a message over `limit` bytes is
read to its end but not kept, so memory stays bounded and the reply comes after the data, as
RFC 5321 4.2.5 implies.
"""

from __future__ import annotations

import asyncio

END = b".\r\n"  # the end of the data when it is a whole line: after CRLF, or first of all
LINE_START = b"\r\n."
ENDING = LINE_START + b"\r\n"  # a line of a lone "."


class TooBig(Exception):
    """The data was longer than the limit; all of it has been read and dropped."""


async def read_data(reader: asyncio.StreamReader, limit: int) -> bytes:
    """The message the client sent after its DATA, unstuffed, without the ending line.

    Raises TooBig when it was longer than `limit` (0: no limit of our own; the reader's limit
    still bounds one piece), IncompleteReadError when the client went away in the middle.
    """
    pieces: list[bytes] = []
    size, tail, overrun = 0, b"\r\n", False  # tail: the last bytes read; first the DATA line's end
    while True:
        try:
            piece = await reader.readuntil(END)
        except asyncio.LimitOverrunError as exc:  # one piece longer than the reader may hold
            piece, overrun = await reader.readexactly(exc.consumed), True
        ended = (tail + piece[-5:]).endswith(ENDING)
        tail = (tail + piece[-2:])[-2:]
        piece = piece[:-len(END)] if ended else piece
        size += len(piece)
        if overrun or (limit and size > limit):
            pieces.clear()  # nothing of a message that is too big is kept
        else:
            pieces.append(piece)
        if ended:
            break
    if overrun or (limit and size > limit):
        raise TooBig
    return unstuff(b"".join(pieces))


def unstuff(data: bytes) -> bytes:
    """Take the "." out of the start of every line that has one (the client doubled it)."""
    data = data[1:] if data.startswith(b".") else data
    return data.replace(LINE_START, b"\r\n")
