"""notifier.relaydata: the DATA reader keeps aiosmtpd's rules while reading in large pieces.

Each case feeds a real asyncio.StreamReader the bytes a client would send after DATA, split
at every position too (TCP may cut anywhere), and compares with what aiosmtpd's line-by-line
reader would have kept.
"""

from __future__ import annotations

import asyncio

import pytest

from notifier.relaydata import TooBig, read_data

LIMIT = 1000


async def _read(chunks: list[bytes], limit: int = LIMIT, reader_limit: int = LIMIT) -> tuple[bytes, bytes]:
    """The message read from `chunks`, and what stays in the reader for the next command."""
    reader = asyncio.StreamReader(limit=reader_limit)
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    message = await read_data(reader, limit)
    return message, await reader.read()


def read(sent: bytes, **limits: int) -> tuple[bytes, bytes]:
    """`sent` read whole and cut in two at every position: the answer must not change."""
    whole = asyncio.run(_read([sent], **limits))
    for at in range(1, len(sent)):
        assert asyncio.run(_read([sent[:at], sent[at:]], **limits)) == whole, at
    return whole


@pytest.mark.parametrize(("sent", "message"), [
    (b".\r\n", b""),
    (b"Subject: x\r\n\r\nbody\r\n.\r\n", b"Subject: x\r\n\r\nbody\r\n"),
    (b"Regards.\r\nok.\r\n.\r\n", b"Regards.\r\nok.\r\n"),  # lines that merely end with "."
    (b"..\r\n...x\r\n.y\r\n.\r\n", b".\r\n..x\r\ny\r\n"),  # a leading "." is always taken out
    (b"a\nb\n.\nc\r\n.\r\n", b"a\nb\n.\nc\r\n"),  # bare LF ends no line, so ".\n" ends nothing
    (b"x\r\n. \r\n.\r\n", b"x\r\n \r\n"),
])
def test_the_message_ends_at_a_lone_dot_line_and_is_unstuffed(sent: bytes, message: bytes) -> None:
    assert read(sent) == (message, b"")


def test_what_follows_the_end_is_left_for_the_next_command() -> None:
    assert read(b"hi\r\n.\r\nQUIT\r\n") == (b"hi\r\n", b"QUIT\r\n")


def test_lines_may_be_as_long_as_the_limit() -> None:
    line = b"x" * 990
    assert read(line + b"\r\n.\r\n") == (line + b"\r\n", b"")


@pytest.mark.parametrize("sent", [
    b"y" * 1200 + b"\r\n.\r\n",  # one line over the reader's limit
    b"y.\r\n" * 300 + b".\r\n",  # short pieces adding up to more than the limit
])
def test_a_message_over_the_limit_is_read_to_its_end_and_dropped(sent: bytes) -> None:
    async def rest() -> bytes:
        reader = asyncio.StreamReader(limit=LIMIT)
        reader.feed_data(sent + b"RSET\r\n")
        reader.feed_eof()
        with pytest.raises(TooBig):
            await read_data(reader, LIMIT)
        return await reader.read()

    assert asyncio.run(rest()) == b"RSET\r\n"


def test_a_client_that_goes_away_in_the_middle_is_noticed() -> None:
    with pytest.raises(asyncio.IncompleteReadError):
        asyncio.run(_read([b"Subject: x\r\n\r\ncut off"]))
