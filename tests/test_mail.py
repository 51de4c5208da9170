"""Building alert mail and delivering it through real SMTP servers (aiosmtpd on 127.0.0.1).

Certificates are always verified: clients trust the test CA through ``ca_file``. Every fault
is a real server reply or a real dropped connection, never a mocked smtplib.
"""

from __future__ import annotations

import ast
import base64
import email
import logging
import mailbox
import os
import re
import time
from datetime import datetime, timedelta, timezone
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.policy import compat32, default
from email.utils import getaddresses, parseaddr
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notifier.errors import (
    DeliveryError,
    HeldDeliveryError,
    PermanentDeliveryError,
    RateLimitedError,
    TransientDeliveryError,
)
from notifier.mail import (
    PORT_HINT,
    MaildirTransport,
    SmtpTransport,
    build_message,
    message_bytes,
    new_message_id,
    sanitize_header,
)
from notifier.secrets import redact
from tests.servers.smtp import (
    DROP,
    GARBAGE,
    PASSWORD,
    USERNAME,
    LocalCA,
    SilentServer,
    SmtpServer,
    make_account,
)

MODES = ["smtp_server", "starttls_server", "plain_server"]
SENDER = f"张三 <{USERNAME}>"
MESSAGE_ID = "<alert-1@example.com>"
WHEN = datetime(2024, 5, 1, 8, 30, tzinfo=timezone(timedelta(hours=8)))
TO = ["li@example.com", "cc@example.com", "hidden@example.com"]  # the last one is Bcc


def _message(**overrides: object) -> EmailMessage:
    values: dict[str, Any] = {
        "subject": "价格变化 price changed", "text": "第一行\nsecond line\n",
        "html": "<p>价格 <b>128</b></p>", "sender": SENDER, "to": ["李四 <li@example.com>"],
        "cc": ["cc@example.com"], "message_id": MESSAGE_ID, "date": WHEN,
    }
    values.update(overrides)
    return build_message(**values)


def _parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=default)
    assert isinstance(msg, EmailMessage)
    return msg


def _plain(msg: EmailMessage) -> str:
    """The text part as text; base64 text keeps its canonical CRLF line ends."""
    body = msg.get_body(("plain",))
    assert body is not None
    return str(body.get_content()).replace("\r\n", "\n")


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


def _send(server: SmtpServer | SilentServer, data: bytes | None = None,
          recipients: list[str] = TO, **account: object) -> dict[str, str]:
    with SmtpTransport(make_account(server, **account)) as transport:
        return transport.send(USERNAME, recipients, data or message_bytes(_message()))


# --- building --------------------------------------------------------------------------------

def test_structure_and_headers() -> None:
    msg = _parse(message_bytes(_message()))
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
    head = message_bytes(_message()).split(b"\r\n\r\n")[0].decode("ascii")
    assert "=?utf-8?" in head
    assert "张三" not in head


def test_text_only_and_naive_date() -> None:
    msg = _parse(message_bytes(_message(html=None, date=datetime(2024, 5, 1, 8, 30), to=[])))
    assert msg.get_content_type() == "text/plain"
    assert msg["Date"].datetime.tzinfo is not None
    assert str(msg["To"]) == "undisclosed-recipients:;"


def test_attachments_wrap_the_alternative_in_mixed() -> None:
    snapshot = "全文 snapshot\n".encode() * 50
    msg = _parse(message_bytes(_message(attachments=[("快照.txt", "text/plain", snapshot)])))
    assert msg.get_content_type() == "multipart/mixed"
    alternative, attachment = msg.iter_parts()
    assert alternative.get_content_type() == "multipart/alternative"
    assert attachment.get_filename() == "快照.txt"
    assert attachment.get_content_type() == "text/plain"
    assert attachment.get_payload(decode=True) == snapshot


def test_long_lines_are_encoded_never_8bit() -> None:
    text = "x" * 5000 + "\n" + "长" * 5000 + "\n"
    html = "<p>" + "y" * 5000 + "</p>"
    data = message_bytes(_message(text=text, html=html,
                                  attachments=[("a.bin", "application/x-thing", b"\0" * 5000)]))
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    data.decode("ascii")  # 7-bit clean
    msg = _parse(data)
    encodings = {p["Content-Transfer-Encoding"] for p in msg.walk() if not p.is_multipart()}
    assert encodings <= {"7bit", "quoted-printable", "base64"}
    assert _plain(msg) == text


# Display names without the characters that make "Name <addr>" ambiguous (quotes, brackets,
# commas...): those are refused, which test_hostile_addresses_cannot_inject_headers covers.
NAME_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters='"\\<>(),;:@[]')
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
    msg = _message(subject=subject, text=text, html=html, sender=f"{name} <{USERNAME}>",
                   to=[f"{name} <li@example.com>"])
    data = message_bytes(msg)
    _check_limits(data)
    parsed = _parse(data)
    assert parsed["Subject"] == sanitize_header(subject)
    assert parsed["From"].addresses[0].addr_spec == USERNAME
    assert [a.addr_spec for a in parsed["To"].addresses] == ["li@example.com"]
    assert _display_name(data) == getaddresses([sanitize_header(f"{name} <{USERNAME}>")])[0][0]
    assert _plain(parsed) == _newlines(text)
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
    data = message_bytes(_message(subject=subject, text=text, html=f"<pre>{text}</pre>",
                                  sender=f"{name} <{USERNAME}>", to=[f"{name} <li@example.com>"]))
    _send(smtp_server, data)
    (received,) = smtp_server.wait_for(1)
    _check_limits(received.content)
    parsed = _parse(received.content)
    assert parsed["Subject"] == sanitize_header(subject)
    assert _display_name(received.content) == name
    assert _display_name(received.content, "To") == name
    assert _plain(parsed) == text


@pytest.mark.parametrize("subject", [
    "x\r\nBcc: evil@example.com", "x\nBcc: evil@example.com", "x\rBcc: evil@example.com",
    "x\u2028Bcc: evil@example.com", "x\x00\x85\x0bBcc: evil@example.com",
])
def test_hostile_subject_cannot_inject_headers(subject: str) -> None:
    data = message_bytes(_message(subject=subject))
    msg = _parse(data)
    assert "Bcc" not in msg
    assert msg["Subject"] == "x Bcc: evil@example.com"
    assert b"\r\nBcc" not in data


def test_hostile_addresses_cannot_inject_headers() -> None:
    msg = _parse(message_bytes(_message(to=["Evil\r\nBcc evil <a@b.c>"])))
    assert "Bcc" not in msg
    assert [a.addr_spec for a in msg["To"].addresses] == ["a@b.c"]
    assert msg["To"].addresses[0].display_name == "Evil Bcc evil"
    for ambiguous in ("Evil\r\nBcc: x@example.com <a@b.c>", "a@b.c, d@e.f", "nobody"):
        with pytest.raises(ValueError, match="not one mail address"):
            _message(to=[ambiguous])


@pytest.mark.parametrize("subject", ["Sale =?utf-8?b?5byg5LiJ?= now", "价格 =?utf-8?b?5byg5LiJ?="])
def test_encoded_words_in_titles_stay_literal(subject: str) -> None:
    decoded = _parse(message_bytes(_message(subject=subject)))["Subject"]
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


def test_mail_does_not_import_upper_layers() -> None:
    tree = ast.parse(Path("notifier/mail.py").read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    upper = {"notifier.store", "notifier.outbox", "notifier.daemon", "notifier.cli"}
    assert not imported & upper


# --- delivery --------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_delivers_in_every_mode(request: pytest.FixtureRequest, mode: str) -> None:
    server: SmtpServer = request.getfixturevalue(mode)
    assert _send(server) == {}
    (received,) = server.wait_for(1)
    assert received.mail_from == USERNAME
    assert received.rcpt_tos == tuple(TO)
    assert b"hidden@example.com" not in received.content
    msg = _parse(received.content)
    assert msg.get_content_type() == "multipart/alternative"
    assert msg["Message-ID"] == MESSAGE_ID
    assert msg["Subject"] == "价格变化 price changed"
    assert str(msg["From"]) == SENDER
    assert "Bcc" not in msg
    assert _plain(msg) == "第一行\nsecond line\n"
    assert server.logins == [USERNAME]


def test_long_lines_survive_a_real_server(smtp_server: SmtpServer) -> None:
    text = "长" * 5000 + "\n" + "x" * 5000 + "\n"
    _send(smtp_server, message_bytes(_message(text=text, html="<p>" + "y" * 5000)))
    (received,) = smtp_server.wait_for(1)
    assert max(len(line) for line in received.content.split(b"\r\n")) <= 998
    assert _plain(_parse(received.content)) == text


@pytest.mark.parametrize("mode", ["smtp_server", "starttls_server"])
def test_untrusted_certificate_is_refused(request: pytest.FixtureRequest, mode: str) -> None:
    server: SmtpServer = request.getfixturevalue(mode)
    with pytest.raises(HeldDeliveryError, match="ca_file"):
        _send(server, ca_file=None)
    assert server.received == []
    assert server.logins == []


def test_unreadable_ca_file_is_held(smtp_server: SmtpServer, tmp_path: Path) -> None:
    with pytest.raises(HeldDeliveryError, match="ca_file"):
        _send(smtp_server, ca_file=str(tmp_path / "missing.pem"))


def test_missing_starttls_is_held(plain_server: SmtpServer) -> None:
    with pytest.raises(HeldDeliveryError, match="STARTTLS"):
        _send(plain_server, security="starttls")
    assert plain_server.logins == []


def test_no_clear_text_password_over_the_network(plain_server: SmtpServer) -> None:
    with pytest.raises(HeldDeliveryError, match="unencrypted"):
        _send(plain_server, host="192.0.2.1")  # TEST-NET: refused before connecting


@pytest.mark.parametrize(("command", "reply", "error", "hint"), [
    ("DATA", "421 4.7.0 Try again later", TransientDeliveryError, "421 4.7.0"),
    ("DATA", "451 4.3.0 Temporary local problem", TransientDeliveryError, "451 4.3.0"),
    ("AUTH", "535 5.7.8 Error: authentication failed", HeldDeliveryError, "authorization code"),
    ("MAIL", "553 Mail from must equal authorized user", HeldDeliveryError, "must equal the login"),
    ("DATA", "554 DT:SPM 163 smtp3,GdxpCgC3 content rejected", PermanentDeliveryError, "DT:SPM"),
    ("DATA", "550 5.7.1 rate limit exceeded, try later", RateLimitedError, "rate limit"),
    ("MAIL", "550 Ip frequency limited", RateLimitedError, "frequency"),
    # 4xx replies that say we send too much wait as long as 5xx ones: a quick retry would
    # only prolong the block.
    ("DATA", "451 4.7.1 Rate limit exceeded, try again later", RateLimitedError, "Rate limit"),
    ("MAIL", "450 4.7.1 Too many messages from this account", RateLimitedError, "Too many"),
    ("MAIL", "451 Requested action aborted: frequency limited", RateLimitedError, "frequency"),
    ("DATA", "451 You are sending too frequently, please slow down", RateLimitedError, "frequently"),
    ("MAIL", "452 4.5.3 Daily sending quota exceeded", RateLimitedError, "exceeded"),
    ("AUTH", "454 4.7.0 Too many login attempts, try later", RateLimitedError, "Too many"),
    ("DATA", "452 4.3.1 Message size exceeds the limit", TransientDeliveryError, "452"),
    ("DATA", "552 5.3.4 Message size exceeds fixed limit", PermanentDeliveryError, "552"),
    ("DATA", DROP, TransientDeliveryError, "closed the connection"),
])
def test_faults_map_to_error_types(smtp_server: SmtpServer, command: str, reply: str,
                                   error: type[DeliveryError], hint: str) -> None:
    smtp_server.fail(command, reply)
    with pytest.raises(DeliveryError) as caught:
        _send(smtp_server)
    assert type(caught.value) is error
    assert hint in str(caught.value)
    assert PASSWORD not in str(caught.value)
    assert caught.value.__context__ is None  # smtplib's frames (with the password) are gone
    assert smtp_server.received == []
    assert _send(smtp_server) == {}  # the fault was for one attempt: a retry gets through
    smtp_server.wait_for(1)


def test_wrong_password_is_held(smtp_server: SmtpServer) -> None:
    with pytest.raises(HeldDeliveryError) as caught:
        _send(smtp_server, password="Wrong-Secret-42")
    message = str(caught.value)
    assert "535" in message
    assert "authorization code" in message
    assert "Wrong-Secret-42" not in message


@pytest.mark.parametrize("security", ["ssl", "starttls", "none"])
def test_silent_server_times_out_as_transient(silent_server: SilentServer, security: str) -> None:
    started = time.monotonic()
    with pytest.raises(TransientDeliveryError, match="no answer within 1 seconds"):
        _send(silent_server, security=security, timeout=1.0, username=None)
    assert time.monotonic() - started < 3


def test_starttls_client_at_an_implicit_tls_port_gets_the_port_hint(smtp_server: SmtpServer) -> None:
    """The implicit-TLS server waits for a handshake, the client for a greeting: after the
    timeout one handshake shows the port speaks TLS, and the user is told which setting."""
    started = time.monotonic()
    for security in ("starttls", "none"):
        with pytest.raises(HeldDeliveryError) as caught:
            _send(smtp_server, security=security, timeout=0.5)
        assert PORT_HINT in str(caught.value)
        assert "expects implicit TLS" in str(caught.value)
        assert "no answer" not in str(caught.value)
    assert time.monotonic() - started < 4
    assert smtp_server.logins == []
    assert smtp_server.received == []


@pytest.mark.parametrize("mode", ["starttls_server", "plain_server"])
def test_ssl_client_at_a_plain_or_starttls_port_gets_the_port_hint(request: pytest.FixtureRequest,
                                                                   mode: str) -> None:
    server: SmtpServer = request.getfixturevalue(mode)
    started = time.monotonic()
    with pytest.raises(HeldDeliveryError) as caught:
        _send(server, security="ssl", timeout=1.0)
    message = str(caught.value)
    assert PORT_HINT in message
    assert "does not speak implicit TLS" in message
    assert time.monotonic() - started < 2
    assert server.logins == []


def test_rate_limited_recipients_retry_slowly(smtp_server: SmtpServer) -> None:
    smtp_server.refuse_recipient("a@example.com", "450 4.7.1 Recipient rate limit exceeded")
    smtp_server.refuse_recipient("b@example.com", "550 5.1.1 No such user")
    with pytest.raises(RateLimitedError):
        _send(smtp_server, recipients=["a@example.com", "b@example.com"])


@pytest.mark.parametrize("reply", [DROP, GARBAGE])
def test_failed_quit_after_accepted_data_is_success(smtp_server: SmtpServer, reply: str) -> None:
    smtp_server.fail("QUIT", reply)
    assert _send(smtp_server) == {}
    assert len(smtp_server.wait_for(1)) == 1


def test_partial_refusal_returns_the_refused(smtp_server: SmtpServer) -> None:
    smtp_server.refuse_recipient("gone@example.com")
    refused = _send(smtp_server, recipients=["li@example.com", "gone@example.com"])
    assert refused == {"gone@example.com": "550 5.1.1 Mailbox unavailable"}
    (received,) = smtp_server.wait_for(1)
    assert received.rcpt_tos == ("li@example.com",)


@pytest.mark.parametrize(("second", "error"), [
    ("550 5.1.1 No such user", PermanentDeliveryError),
    ("450 4.2.1 Mailbox busy", TransientDeliveryError),
])
def test_all_recipients_refused(smtp_server: SmtpServer, second: str,
                                error: type[DeliveryError]) -> None:
    smtp_server.refuse_recipient("a@example.com", "550 5.1.1 No such user")
    smtp_server.refuse_recipient("b@example.com", second)
    with pytest.raises(error) as caught:
        _send(smtp_server, recipients=["a@example.com", "b@example.com"])
    # Compared through redact(): any test may have registered a secret that occurs in a reply.
    assert caught.value.refused == {"a@example.com": redact("550 5.1.1 No such user"),
                                    "b@example.com": redact(second)}
    assert smtp_server.received == []


def test_several_messages_over_one_connection(smtp_server: SmtpServer) -> None:
    ids = [f"<alert-{n}@example.com>" for n in range(3)]
    with SmtpTransport(make_account(smtp_server)) as transport:
        for message_id in ids:
            transport.send(USERNAME, ["li@example.com"], message_bytes(_message(message_id=message_id)))
    received = smtp_server.wait_for(3)
    assert [_parse(r.content)["Message-ID"] for r in received] == ids
    assert smtp_server.logins == [USERNAME]  # one login: one connection


def test_describe_names_the_server_not_the_password(plain_server: SmtpServer) -> None:
    transport = SmtpTransport(make_account(plain_server))
    assert transport.describe() == f"127.0.0.1:{plain_server.port} (none) as {USERNAME}"
    assert SmtpTransport(make_account(plain_server, username=None)).describe().endswith(
        "without login")


@pytest.mark.parametrize("excluded", ["LOGIN", "PLAIN"])
def test_debug_log_masks_credentials(tls_ca: LocalCA, caplog: pytest.LogCaptureFixture,
                                     excluded: str) -> None:
    caplog.set_level(logging.DEBUG)
    with SmtpServer("ssl", ca=tls_ca, ca_file=tls_ca.ca_file, exclude_auth=[excluded]) as server:
        account = make_account(server)
        with SmtpTransport(account, debug=True) as transport:
            transport.send(USERNAME, ["li@example.com"], message_bytes(_message()))
        with pytest.raises(HeldDeliveryError) as caught:
            SmtpTransport(make_account(server, password="Wrong-Secret-42"), debug=True).open()
    dialogue = [r.getMessage() for r in caplog.records if r.name == "notifier.smtp"]
    mechanism = "PLAIN" if excluded == "LOGIN" else "LOGIN"
    assert any(f"AUTH {mechanism}" in line for line in dialogue)
    everything = "\n".join(r.getMessage() for r in caplog.records) + str(caught.value)
    for password in (PASSWORD, "Wrong-Secret-42"):
        for form in (password, f"\0{USERNAME}\0{password}"):
            assert form not in everything
            assert base64.b64encode(form.encode()).decode() not in everything


def test_maildir_delivery(tmp_path: Path) -> None:
    path = tmp_path / "state" / "maildir"  # the state dir may not exist yet
    with MaildirTransport(path) as transport:
        assert transport.send(USERNAME, TO, message_bytes(_message())) == {}
        assert str(path) in transport.describe()
    box = mailbox.Maildir(path, create=False)
    (key,) = box.keys()
    msg = _parse(box.get_bytes(key))
    assert msg["Subject"] == "价格变化 price changed"
    assert msg["Return-Path"] == f"<{USERNAME}>"
    assert msg.get_all("Delivered-To") == TO
    assert _plain(msg) == "第一行\nsecond line\n"


def test_maildir_failure_is_a_delivery_error(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    with pytest.raises(TransientDeliveryError, match="Could not write to the Maildir"):
        MaildirTransport(blocker / "maildir").open()


def test_transport_reconnects_after_a_failure(smtp_server: SmtpServer) -> None:
    smtp_server.fail("DATA", "451 4.3.0 Try later")
    data = message_bytes(_message())
    with SmtpTransport(make_account(smtp_server)) as transport:
        with pytest.raises(TransientDeliveryError):
            transport.send(USERNAME, ["li@example.com"], data)
        assert transport.send(USERNAME, ["li@example.com"], data) == {}
    assert len(smtp_server.wait_for(1)) == 1
    assert smtp_server.logins == [USERNAME, USERNAME]


def test_maildir_messages_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with MaildirTransport(tmp_path / "maildir") as box:
            box.send("a@example.com", ["b@example.com"], b"Subject: x\r\n\r\nbody\r\n")
    finally:
        os.umask(old)
    (message,) = (tmp_path / "maildir" / "new").iterdir()
    assert message.stat().st_mode & 0o777 == 0o600
    assert box.last_reply == f"delivered as {message}"
