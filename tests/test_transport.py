"""notifier.transport: delivering through real SMTP servers (aiosmtpd on 127.0.0.1) and Maildir.

Certificates are always verified: clients trust the test CA through ``ca_file``. Every fault
is a real server reply or a real dropped connection, never a mocked smtplib.
"""

from __future__ import annotations

import base64
import logging
import mailbox
import os
import time
from pathlib import Path

import pytest

from notifier.errors import (
    DeliveryError,
    HeldDeliveryError,
    PermanentDeliveryError,
    RateLimitedError,
    TransientDeliveryError,
)
from notifier.message import message_bytes
from notifier.secrets import redact
from notifier.transport import PORT_HINT, MaildirTransport, SmtpTransport
from tests.messages import MESSAGE_ID, MODES, SENDER, TO, parse, plain_text, sample_message, send
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

# --- delivery --------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_delivers_in_every_mode(request: pytest.FixtureRequest, mode: str) -> None:
    server: SmtpServer = request.getfixturevalue(mode)
    assert send(server) == {}
    (received,) = server.wait_for(1)
    assert received.mail_from == USERNAME
    assert received.rcpt_tos == tuple(TO)
    assert b"hidden@example.com" not in received.content
    msg = parse(received.content)
    assert msg.get_content_type() == "multipart/alternative"
    assert msg["Message-ID"] == MESSAGE_ID
    assert msg["Subject"] == "价格变化 price changed"
    assert str(msg["From"]) == SENDER
    assert "Bcc" not in msg
    assert plain_text(msg) == "第一行\nsecond line\n"
    assert server.logins == [USERNAME]


def test_long_lines_survive_a_real_server(smtp_server: SmtpServer) -> None:
    text = "长" * 5000 + "\n" + "x" * 5000 + "\n"
    send(smtp_server, message_bytes(sample_message(text=text, html="<p>" + "y" * 5000)))
    (received,) = smtp_server.wait_for(1)
    assert max(len(line) for line in received.content.split(b"\r\n")) <= 998
    assert plain_text(parse(received.content)) == text


@pytest.mark.parametrize("mode", ["smtp_server", "starttls_server"])
def test_untrusted_certificate_is_refused(request: pytest.FixtureRequest, mode: str) -> None:
    server: SmtpServer = request.getfixturevalue(mode)
    with pytest.raises(HeldDeliveryError, match="ca_file"):
        send(server, ca_file=None)
    assert server.received == []
    assert server.logins == []


def test_unreadable_ca_file_is_held(smtp_server: SmtpServer, tmp_path: Path) -> None:
    with pytest.raises(HeldDeliveryError, match="ca_file"):
        send(smtp_server, ca_file=str(tmp_path / "missing.pem"))


def test_missing_starttls_is_held(plain_server: SmtpServer) -> None:
    with pytest.raises(HeldDeliveryError, match="STARTTLS"):
        send(plain_server, security="starttls")
    assert plain_server.logins == []


def test_no_clear_text_password_over_the_network(plain_server: SmtpServer) -> None:
    with pytest.raises(HeldDeliveryError, match="unencrypted"):
        send(plain_server, host="192.0.2.1")  # TEST-NET: refused before connecting


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
        send(smtp_server)
    assert type(caught.value) is error
    assert hint in str(caught.value)
    assert PASSWORD not in str(caught.value)
    assert caught.value.__context__ is None  # smtplib's frames (with the password) are gone
    assert smtp_server.received == []
    assert send(smtp_server) == {}  # the fault was for one attempt: a retry gets through
    smtp_server.wait_for(1)


def test_wrong_password_is_held(smtp_server: SmtpServer) -> None:
    with pytest.raises(HeldDeliveryError) as caught:
        send(smtp_server, password="Wrong-Secret-42")
    message = str(caught.value)
    assert "535" in message
    assert "authorization code" in message
    assert "Wrong-Secret-42" not in message


@pytest.mark.parametrize("security", ["ssl", "starttls", "none"])
def test_silent_server_times_out_as_transient(silent_server: SilentServer, security: str) -> None:
    started = time.monotonic()
    with pytest.raises(TransientDeliveryError, match="no answer within 1 seconds"):
        send(silent_server, security=security, timeout=1.0, username=None)
    assert time.monotonic() - started < 3


def test_starttls_client_at_an_implicit_tls_port_gets_the_port_hint(smtp_server: SmtpServer) -> None:
    """The implicit-TLS server waits for a handshake, the client for a greeting: after the
    timeout one handshake shows the port speaks TLS, and the user is told which setting."""
    started = time.monotonic()
    for security in ("starttls", "none"):
        with pytest.raises(HeldDeliveryError) as caught:
            send(smtp_server, security=security, timeout=0.5)
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
        send(server, security="ssl", timeout=1.0)
    message = str(caught.value)
    assert PORT_HINT in message
    assert "does not speak implicit TLS" in message
    assert time.monotonic() - started < 2
    assert server.logins == []


def test_rate_limited_recipients_retry_slowly(smtp_server: SmtpServer) -> None:
    smtp_server.refuse_recipient("a@example.com", "450 4.7.1 Recipient rate limit exceeded")
    smtp_server.refuse_recipient("b@example.com", "550 5.1.1 No such user")
    with pytest.raises(RateLimitedError):
        send(smtp_server, recipients=["a@example.com", "b@example.com"])


@pytest.mark.parametrize("reply", [DROP, GARBAGE])
def test_failed_quit_after_accepted_data_is_success(smtp_server: SmtpServer, reply: str) -> None:
    smtp_server.fail("QUIT", reply)
    assert send(smtp_server) == {}
    assert len(smtp_server.wait_for(1)) == 1


def test_partial_refusal_returns_the_refused(smtp_server: SmtpServer) -> None:
    smtp_server.refuse_recipient("gone@example.com")
    refused = send(smtp_server, recipients=["li@example.com", "gone@example.com"])
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
        send(smtp_server, recipients=["a@example.com", "b@example.com"])
    # Compared through redact(): any test may have registered a secret that occurs in a reply.
    assert caught.value.refused == {"a@example.com": redact("550 5.1.1 No such user"),
                                    "b@example.com": redact(second)}
    assert smtp_server.received == []


def test_several_messages_over_one_connection(smtp_server: SmtpServer) -> None:
    ids = [f"<alert-{n}@example.com>" for n in range(3)]
    with SmtpTransport(make_account(smtp_server)) as transport:
        for message_id in ids:
            transport.send(USERNAME, ["li@example.com"], message_bytes(sample_message(message_id=message_id)))
    received = smtp_server.wait_for(3)
    assert [parse(r.content)["Message-ID"] for r in received] == ids
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
            transport.send(USERNAME, ["li@example.com"], message_bytes(sample_message()))
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
        assert transport.send(USERNAME, TO, message_bytes(sample_message())) == {}
        assert str(path) in transport.describe()
    box = mailbox.Maildir(path, create=False)
    (key,) = box.keys()
    msg = parse(box.get_bytes(key))
    assert msg["Subject"] == "价格变化 price changed"
    assert msg["Return-Path"] == f"<{USERNAME}>"
    assert msg.get_all("Delivered-To") == TO
    assert plain_text(msg) == "第一行\nsecond line\n"


def test_maildir_failure_is_a_delivery_error(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    with pytest.raises(TransientDeliveryError, match="Could not write to the Maildir"):
        MaildirTransport(blocker / "maildir").open()


def test_transport_reconnects_after_a_failure(smtp_server: SmtpServer) -> None:
    smtp_server.fail("DATA", "451 4.3.0 Try later")
    data = message_bytes(sample_message())
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
