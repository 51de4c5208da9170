"""notifier.message: alert e-mails built within the RFC limits, whatever the text, and safe from
header injection; a few cases go through a real SMTP server (aiosmtpd on 127.0.0.1)."""

from __future__ import annotations

import email
import re
from datetime import datetime
from email.header import decode_header, make_header
from email.policy import compat32
from email.utils import getaddresses, parseaddr

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notifier.message import message_bytes, new_message_id, sanitize_header
from tests.messages import MESSAGE_ID, SENDER, WHEN, parse, plain_text, sample_message, send
from tests.servers.smtp import (
    USERNAME,
    SmtpServer,
)

ENCODED_WORD = re.compile(rb"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")


def _check_limits(data: bytes) -> None:
    """RFC 5322/2045/2047 limits on serialized bytes: 7-bit, lines of at most 998 octets, body
    lines (quoted-printable, base64, 7bit) of at most 76, encoded words of at most 75."""
    data.decode("ascii")
    head, _, body = data.partition(b"\r\n\r\n")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    long_body = [line for line in body.split(b"\r\n") if len(line) > 76]
    assert not long_body, long_body[:3]
    long_words = [w for w in ENCODED_WORD.findall(head + b"\r\n" + body) if len(w) > 75]
    assert not long_words, long_words[:3]


def _display_name(data: bytes, header: str = "From") -> str:
    """The first display name of `header`, decoded as RFC 2047 says: whitespace between two
    encoded words is dropped. (Python 3.11's policy.default parser keeps it in a phrase, so it
    would report spaces that no mail client shows.)"""
    raw = email.message_from_bytes(data, policy=compat32)[header]
    return parseaddr(str(make_header(decode_header(raw))))[0]


def _newlines(text: str) -> str:
    """How a text part reads back: CR LF and lone CR become LF, and it ends with one."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text if text.endswith("\n") else text + "\n"


# --- building --------------------------------------------------------------------------------

def test_structure_and_headers() -> None:
    msg = parse(message_bytes(sample_message()))
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert {p.get_content_charset() for p in parts} == {"utf-8"}
    assert msg["Message-ID"] == MESSAGE_ID
    assert msg["Date"].datetime == WHEN
    assert msg["MIME-Version"] == "1.0"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert str(msg["From"]) == SENDER
    assert str(msg["To"]) == "李四 <li@example.com>"
    assert msg["Subject"] == "价格变化 price changed"
    assert "Bcc" not in msg
    assert [p["MIME-Version"] for p in parts] == [None, None]


def test_chinese_headers_are_rfc2047_encoded() -> None:
    head = message_bytes(sample_message()).split(b"\r\n\r\n")[0].decode("ascii")
    assert "=?utf-8?" in head
    assert "张三" not in head


def test_text_only_and_naive_date() -> None:
    msg = parse(message_bytes(sample_message(html=None, date=datetime(2024, 5, 1, 8, 30), to=[])))
    assert msg.get_content_type() == "text/plain"
    assert msg["Date"].datetime.tzinfo is not None
    assert str(msg["To"]) == "undisclosed-recipients:;"


def test_attachments_wrap_the_alternative_in_mixed() -> None:
    snapshot = "全文 snapshot\n".encode() * 50
    msg = parse(message_bytes(sample_message(attachments=[("快照.txt", "text/plain", snapshot)])))
    assert msg.get_content_type() == "multipart/mixed"
    alternative, attachment = msg.iter_parts()
    assert alternative.get_content_type() == "multipart/alternative"
    assert attachment.get_filename() == "快照.txt"
    assert attachment.get_content_type() == "text/plain"
    assert attachment.get_payload(decode=True) == snapshot


def test_long_lines_are_encoded_never_8bit() -> None:
    text = "x" * 5000 + "\n" + "长" * 5000 + "\n"
    html = "<p>" + "y" * 5000 + "</p>"
    data = message_bytes(sample_message(text=text, html=html,
                                  attachments=[("a.bin", "application/x-thing", b"\0" * 5000)]))
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    data.decode("ascii")  # 7-bit clean
    msg = parse(data)
    encodings = {p["Content-Transfer-Encoding"] for p in msg.walk() if not p.is_multipart()}
    assert encodings <= {"7bit", "quoted-printable", "base64"}
    assert plain_text(msg) == text


# Display names without the characters that make "Name <addr>" ambiguous (quotes, brackets,
# commas...): those are refused, which test_hostile_addresses_cannot_inject_headers covers.
NAME_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters='"\\<>(),;:@[]')
# Arbitrary text rarely has long runs of words; these put spaces, CJK, emoji, long tokens and
# controls next to each other, where encoded words get cut.
PIECES = ["招聘公告", "😀", "price", " ", "价格 ", "https://example.com/a?b=c&d=" + "x" * 70, "\t",
          "\x1b[31m", "\x00", "= ?", "Zhang San", "长" * 30, "é"]
TEXTS = st.one_of(st.text(max_size=300), st.lists(st.sampled_from(PIECES), max_size=60).map("".join))
NAME_PIECES = ["张三", " ", "😀", "Li", "机器人 "]
NAMES = st.one_of(st.text(NAME_CHARS, max_size=80),
                  st.lists(st.sampled_from(NAME_PIECES), max_size=40).map("".join))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=TEXTS, text=st.one_of(st.text(max_size=3000), TEXTS), html=st.text(max_size=2000),
       name=NAMES)
def test_any_text_stays_within_line_and_encoded_word_limits(subject: str, text: str, html: str,
                                                            name: str) -> None:
    msg = sample_message(subject=subject, text=text, html=html, sender=f"{name} <{USERNAME}>",
                   to=[f"{name} <li@example.com>"])
    data = message_bytes(msg)
    _check_limits(data)
    parsed = parse(data)
    assert parsed["Subject"] == sanitize_header(subject)
    assert parsed["From"].addresses[0].addr_spec == USERNAME
    assert [a.addr_spec for a in parsed["To"].addresses] == ["li@example.com"]
    assert _display_name(data) == getaddresses([sanitize_header(f"{name} <{USERNAME}>")])[0][0]
    assert plain_text(parsed) == _newlines(text)
    html_part = parsed.get_body(("html",))
    assert html_part is not None
    assert str(html_part.get_content()).replace("\r\n", "\n") == _newlines(html)


LONG_CASES = {
    "long ascii line": ("price list", "x" * 5000 + "\n"),
    "long chinese line": ("价格变化" * 40, "长" * 3000 + "\n"),
    "long url": ("see https://example.com/" + "a" * 120,
                 "https://example.com/search?q=" + "%E4%BB%B7" * 200 + "&page=2\n"),
    "mixed with emoji": ("招聘公告 😀 " * 30, ("第一行 line 😀 " * 100 + "\n") * 20),
    "trailing spaces and =": ("= ?= =?", "a = b   \n" * 50 + "=" * 300 + "\n"),
}


@pytest.mark.parametrize("case", LONG_CASES)
def test_long_lines_chinese_subjects_and_urls_arrive_within_limits(smtp_server: SmtpServer,
                                                                   case: str) -> None:
    subject, text = LONG_CASES[case]
    name = "通知机器人" * 12  # a long Chinese display name: several encoded words
    data = message_bytes(sample_message(subject=subject, text=text, html=f"<pre>{text}</pre>",
                                  sender=f"{name} <{USERNAME}>", to=[f"{name} <li@example.com>"]))
    send(smtp_server, data)
    (received,) = smtp_server.wait_for(1)
    _check_limits(received.content)
    parsed = parse(received.content)
    assert parsed["Subject"] == sanitize_header(subject)
    assert _display_name(received.content) == name
    assert _display_name(received.content, "To") == name
    assert plain_text(parsed) == text


@pytest.mark.parametrize("subject", [
    "x\r\nBcc: evil@example.com", "x\nBcc: evil@example.com", "x\rBcc: evil@example.com",
    "x\u2028Bcc: evil@example.com", "x\x00\x85\x0bBcc: evil@example.com",
])
def test_hostile_subject_cannot_inject_headers(subject: str) -> None:
    data = message_bytes(sample_message(subject=subject))
    msg = parse(data)
    assert "Bcc" not in msg
    assert msg["Subject"] == "x Bcc: evil@example.com"
    assert b"\r\nBcc" not in data


def test_hostile_addresses_cannot_inject_headers() -> None:
    msg = parse(message_bytes(sample_message(to=["Evil\r\nBcc evil <a@b.c>"])))
    assert "Bcc" not in msg
    assert [a.addr_spec for a in msg["To"].addresses] == ["a@b.c"]
    assert msg["To"].addresses[0].display_name == "Evil Bcc evil"
    for ambiguous in ("Evil\r\nBcc: x@example.com <a@b.c>", "a@b.c, d@e.f", "nobody"):
        with pytest.raises(ValueError, match="not one mail address"):
            sample_message(to=[ambiguous])


@pytest.mark.parametrize("subject", ["Sale =?utf-8?b?5byg5LiJ?= now", "价格 =?utf-8?b?5byg5LiJ?="])
def test_encoded_words_in_titles_stay_literal(subject: str) -> None:
    decoded = parse(message_bytes(sample_message(subject=subject)))["Subject"]
    assert "张三" not in decoded
    assert "?utf-8?b?5byg5LiJ?=" in decoded


def test_sanitize_header() -> None:
    assert sanitize_header("a\tb\r\n  c\x00d") == "a b c d"
    assert sanitize_header("=?utf-8?q?x?=") == "= ?utf-8?q?x?="
    capped = sanitize_header("z" * 500)
    assert len(capped) == 200
    assert capped.endswith("…")
    assert sanitize_header("abc", limit=3) == "abc"


def test_new_message_id() -> None:
    first, second = new_message_id(SENDER), new_message_id(SENDER)
    assert first != second
    assert first.startswith("<")
    assert first.endswith("@example.com>")
    assert new_message_id("nobody").endswith("@notifier.invalid>")
    assert new_message_id("a@[127.0.0.1]").endswith("@notifier.invalid>")
    assert new_message_id("a@例子.测试").endswith("@xn--fsqu00a.xn--0zwm56d>")
    assert "\n" not in new_message_id("a@exa mple\r\n.com")


