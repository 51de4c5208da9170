"""notifier.rewrite: From becomes the login, the writer is kept, and nothing else changes."""

from __future__ import annotations

import email
import email.policy
from email.utils import getaddresses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.rewrite import CRLF, crlf, name_of, rewrite, split, too_long

LOGIN = "12345678@qq.com"


def headers(data: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def test_cron_mail_gets_the_login_as_from_and_keeps_its_writer() -> None:
    cron = (b"From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@host1> backup\n"
            b"X-Cron-Env: <SHELL=/bin/sh>\n\nbackup done\n")
    out = rewrite(cron, "root", LOGIN, "host1")
    message = headers(out.data)
    assert str(message["From"]) == f"Cron Daemon on host1 via notifier <{LOGIN}>"
    assert str(message["Reply-To"]) == "Cron Daemon <root@host1>"
    assert out.sender == LOGIN
    assert out.message_id == str(message["Message-ID"])
    assert out.message_id.endswith("@qq.com>")
    assert message["Date"]
    assert out.data.endswith(b"\r\n\r\nbackup done\r\n")


def test_an_existing_reply_to_message_id_and_date_are_kept() -> None:
    data = (b"From: Alice <alice@corp.example>\r\nReply-To: team@corp.example\r\n"
            b"Message-ID: <abc@corp.example>\r\nDate: Mon, 30 Nov 2026 10:00:00 +0800\r\n\r\nhi")
    out = rewrite(data, "alice@corp.example", LOGIN, "host1")
    assert out.message_id == "<abc@corp.example>"
    assert out.data.count(b"Reply-To:") == 1
    assert b"Reply-To: team@corp.example\r\n" in out.data
    assert b"Date: Mon, 30 Nov 2026 10:00:00 +0800\r\n" in out.data
    sender = headers(out.data)["From"].addresses[0]
    assert (sender.display_name, sender.addr_spec) == ("Alice on corp.example via notifier", LOGIN)


def test_bcc_is_removed_with_its_folded_lines() -> None:
    data = b"To: a@x.example\r\nBcc: secret@x.example,\r\n  other@x.example\r\nSubject: s\r\n\r\nbody"
    out = rewrite(data, "me@x.example", None, "host1")
    assert b"secret" not in out.data
    assert b"other@" not in out.data
    assert out.data.startswith(b"To: a@x.example\r\nSubject: s\r\n")


def test_without_a_login_from_is_left_alone() -> None:
    data = b"From: me@x.example\r\nSubject: s\r\n\r\nbody"
    out = rewrite(data, "me@x.example", None, "host1")
    assert out.sender == "me@x.example"
    assert out.data.startswith(b"From: me@x.example\r\nSubject: s\r\n")


def test_a_non_ascii_writer_is_encoded_and_8bit_headers_pass_through() -> None:
    data = "From: 张三 <zhang@corp.example>\r\nSubject: 备份完成\r\n\r\n正文".encode()
    out = rewrite(data, "zhang@corp.example", LOGIN, "host1")
    from_line = next(f for f in split(out.data)[0] if name_of(f) == "from")
    assert from_line.isascii(), "an encoded display name, never raw 8-bit in the new From"
    assert "张三 on corp.example via notifier" in str(headers(out.data)["From"])
    assert "Subject: 备份完成\r\n".encode() in out.data
    assert out.data.endswith("\r\n\r\n正文".encode())


def test_a_writer_cannot_inject_headers_through_the_envelope_or_an_encoded_name() -> None:
    evil = "=?utf-8?q?Eve=0D=0ABcc:_victim@x.example?= <eve@x.example>"
    out = rewrite(f"From: {evil}\r\n\r\nbody".encode(), "x\r\nBcc: victim@x.example", LOGIN, "h")
    fields = [name_of(f) for f in split(out.data)[0]]
    assert "bcc" not in fields
    assert all(f.count(b"\r\n") == 1 for f in split(out.data)[0])
    out = rewrite(b"Subject: no from\r\n\r\nbody", "x\r\nBcc: victim@x.example", LOGIN, "h")
    assert [name_of(f) for f in split(out.data)[0]].count("bcc") == 0
    assert str(headers(out.data)["Reply-To"]) == "unknown@h"


def test_bare_lf_becomes_crlf_and_crlf_stays() -> None:
    assert crlf(b"a\nb\r\nc\n") == b"a\r\nb\r\nc\r\n"


_FIELD_NAMES = st.sampled_from(["Subject", "To", "Cc", "X-Mailer", "Content-Type", "X-Spam",
                                "Received", "List-Id", "Reply-To"])
_VALUES = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), max_size=60).map(
    lambda v: v.encode())
_FOLDED = st.lists(_VALUES, min_size=1, max_size=3).map(b"\r\n\t".join)


@settings(max_examples=150, deadline=None)
@given(fields=st.lists(st.tuples(_FIELD_NAMES, _FOLDED), max_size=8),
       body=st.binary(max_size=300).map(crlf), has_from=st.booleans(), has_bcc=st.booleans())
def test_every_other_header_and_the_body_pass_byte_for_byte(
        fields: list[tuple[str, bytes]], body: bytes, has_from: bool, has_bcc: bool) -> None:
    kept = [name.encode() + b": " + value + CRLF for name, value in fields]
    extra = [b"From: Someone <someone@corp.example>\r\n"] if has_from else []
    extra += [b"Bcc: hidden@corp.example\r\n"] if has_bcc else []
    data = b"".join(extra + kept) + CRLF + body
    out = rewrite(data, "someone@corp.example", LOGIN, "host1").data
    out_fields, rest = split(out)
    others = [f for f in out_fields if name_of(f) not in ("from", "reply-to", "message-id", "date")]
    assert others == [f for f in kept if name_of(f) != "reply-to"]
    assert rest == CRLF + body
    assert b"hidden@corp.example" not in out
    assert [addr for _, addr in getaddresses([str(headers(out)["From"])])] == [LOGIN]


LONG = "y" * 1500 + " é"  # longer than the 998 octets a line may have in SMTP


def test_a_line_longer_than_smtp_carries_is_re_encoded_quoted_printable() -> None:
    out = rewrite(f"Subject: s\r\n\r\nfirst\r\n{LONG}\r\n".encode(), "job@host1", LOGIN, "host1").data
    assert max(len(line) for line in out.split(CRLF)) <= 998
    message = headers(out)
    assert message["Content-Transfer-Encoding"] == "quoted-printable"
    assert message.get_content().replace("\r\n", "\n") == f"first\n{LONG}\n"


def test_in_a_multipart_message_only_the_part_with_the_long_line_is_re_encoded() -> None:
    data = ("Subject: s\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
            "--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nshort é\r\n"
            "--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            f"{LONG}\r\n"
            "--b--\r\n").encode()
    out = rewrite(data, "job@host1", LOGIN, "host1").data
    assert max(len(line) for line in out.split(CRLF)) <= 998
    short, long = headers(out).iter_parts()
    assert "Content-Transfer-Encoding" not in short
    assert short.get_content() == "short é"
    assert long["Content-Transfer-Encoding"] == "quoted-printable"
    assert long.get_content() == LONG  # the CRLF before the boundary belongs to the boundary


def test_a_message_with_short_lines_passes_untouched() -> None:
    body = CRLF + ("z" * 998).encode() + CRLF
    out = rewrite(b"Subject: s\r\n" + body, "job@host1", LOGIN, "host1").data
    assert out.endswith(body)
    assert b"quoted-printable" not in out


@pytest.mark.parametrize(("data", "long"), [
    (b"", False), (b"x" * 998, False), (b"x" * 999, True), (b"a\r\n" + b"x" * 998 + b"\r\nb", False),
    (b"a\r\n" + b"x" * 999 + b"\r\n", True), (b"x" * 500 + b"\r" + b"x" * 500, False),
    (b"x" * 500 + b"\n" + b"x" * 500, False), (b"x" * 600 + b" " + b"x" * 600, True),
])
def test_a_line_is_too_long_past_998_octets_whichever_of_cr_or_lf_ends_it(data: bytes, long: bool) -> None:
    assert too_long(data) is long
