"""notifier.receive against a real Dovecot: TLS with the test CA, IDLE, ID before SELECT (a
163-style proxy), the junk folder by SPECIAL-USE or by name, UID-based search, POP3 UIDL,
refused logins and a dialogue log without secrets."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from notifier.receive import (
    ImapClient,
    MailboxRefused,
    MailboxUnavailable,
    Pop3Client,
    decode_folder,
    encode_folder,
)
from tests.servers.dovecot import JUNK_RAW, RECEIVER, RECEIVER_PASSWORD, Dovecot
from tests.servers.imap_proxy import IdProxy


def _mail(subject: str, extra: str = "") -> bytes:
    return (f"From: a@example.com\r\nTo: {RECEIVER}\r\nSubject: {subject}\r\n{extra}"
            f"Message-ID: <{subject}@example.com>\r\n\r\nbody of {subject}\r\n").encode()


def test_folder_names_round_trip_modified_utf7() -> None:
    assert decode_folder(JUNK_RAW) == "垃圾邮件"
    assert encode_folder("垃圾邮件") == JUNK_RAW
    assert decode_folder("Tom &- Jerry") == "Tom & Jerry"
    assert encode_folder("Tom & Jerry/已发送") == "Tom &- Jerry/&XfJT0ZAB-"


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_imap_over_verified_tls_finds_only_new_messages(dovecot: Dovecot, security: str) -> None:
    dovecot.deliver(RECEIVER, _mail(f"old-{security}"))
    with ImapClient(dovecot.account("imap", security)) as client:
        _, uidnext = client.select("INBOX")
        assert client.search(uidnext, "ALL") == []  # "n:*" names the last old one too: dropped
        dovecot.deliver(RECEIVER, _mail(f"new-{security}", "X-Notifier-Probe: tok1\r\n"))
        client.select("INBOX")
        new = client.search(uidnext, "HEADER", "X-Notifier-Probe", "tok1")
        assert len(new) == 1
        assert new[0] >= uidnext
        assert b"body of new-" in client.fetch(new[0])
        assert "ID" in client.capabilities


def test_junk_folder_found_by_special_use_and_decoded(dovecot: Dovecot) -> None:
    with ImapClient(dovecot.account()) as client:
        junk = client.junk_folder()
    assert junk is not None
    assert junk.name == "垃圾邮件"
    assert junk.raw == JUNK_RAW


def test_junk_folder_found_by_name_without_special_use(dovecot_no_idle: Dovecot) -> None:
    with ImapClient(dovecot_no_idle.account()) as client:
        junk = client.junk_folder()
        assert not client.has_idle
    assert junk is not None
    assert junk.name == "Spam"


def test_idle_wakes_up_when_mail_arrives(dovecot: Dovecot) -> None:
    with ImapClient(dovecot.account()) as client:
        client.select("INBOX")
        assert client.has_idle
        threading.Timer(0.3, dovecot.deliver, (RECEIVER, _mail("idle-wake"))).start()
        started = time.monotonic()
        assert client.idle(10) is True
        assert time.monotonic() - started < 3
        assert client.idle(0.2) is False  # nothing new: times out quietly


def test_id_is_sent_before_select_for_163_style_servers(dovecot: Dovecot, id_proxy: IdProxy) -> None:
    box = dovecot.account("imap", "none", port=id_proxy.port, host="127.0.0.1")
    with ImapClient(box) as client:
        client.select("INBOX")
    assert id_proxy.ids_seen == 1
    assert id_proxy.refused == 0


def test_a_server_refusing_select_says_unsafe_login(dovecot: Dovecot) -> None:
    proxy = IdProxy(dovecot.imap, hide_id=True)  # as if 163 did not advertise ID
    try:
        box = dovecot.account("imap", "none", port=proxy.port, host="127.0.0.1")
        with ImapClient(box) as client, pytest.raises(MailboxRefused, match="Unsafe Login"):
            client.select("INBOX")
        assert proxy.refused == 1
    finally:
        proxy.close()


def test_server_gone_mid_idle_raises_unavailable(dovecot: Dovecot) -> None:
    proxy = IdProxy(dovecot.imap, require_id=False)
    try:
        box = dovecot.account("imap", "none", port=proxy.port, host="127.0.0.1")
        client = ImapClient(box)
        client.connect()
        client.select("INBOX")
        threading.Timer(0.2, proxy.cut).start()
        with pytest.raises(MailboxUnavailable):
            client.idle(10)
        client.close()
    finally:
        proxy.close()


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
@pytest.mark.usefixtures("fresh_client_ip")
def test_wrong_password_is_refused_clearly_without_the_secret(dovecot: Dovecot, protocol: str) -> None:
    client = (ImapClient if protocol == "imap" else Pop3Client)(
        dovecot.account(protocol, password="Wrong-Code-0000"))
    with pytest.raises(MailboxRefused) as info:
        client.connect()
    assert "Could not log in" in str(info.value)
    assert "authorization code" in str(info.value)
    assert "Wrong-Code-0000" not in str(info.value)
    assert info.value.exit_code == 78
    client.close()


def test_untrusted_certificate_is_refused(dovecot: Dovecot) -> None:
    client = ImapClient(dovecot.account(ca_file=None))
    with pytest.raises(MailboxRefused, match="not trusted"):
        client.connect()


def test_pop3_uidl_retr_and_dele(dovecot: Dovecot) -> None:
    with Pop3Client(dovecot.account("pop3")) as pop:
        before = set(pop.uidl())
    dovecot.deliver(RECEIVER, _mail("pop-one"))
    with Pop3Client(dovecot.account("pop3", "starttls")) as pop:
        new = {uid: n for uid, n in pop.uidl().items() if uid not in before}
        assert len(new) == 1
        (number,) = new.values()
        assert b"Subject: pop-one" in pop.headers(number)
        assert b"body of pop-one" in pop.fetch(number)
        pop.delete(number)
    with Pop3Client(dovecot.account("pop3")) as pop:
        assert not set(pop.uidl()) - before


def test_debug_dialogue_masks_login_and_pass(dovecot: Dovecot, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="notifier.imap"):
        with ImapClient(dovecot.account()) as client:
            client.select("INBOX")
        with Pop3Client(dovecot.account("pop3")) as pop:
            pop.uidl()
    text = caplog.text
    assert "LOGIN" in text
    assert "PASS ****" in text
    assert "SELECT" in text
    assert RECEIVER_PASSWORD not in text


def test_oversized_message_is_refused_by_size_without_fetching(dovecot: Dovecot) -> None:
    with ImapClient(dovecot.account()) as client:
        _, uidnext = client.select("INBOX")
        dovecot.deliver(RECEIVER, _mail("big") + b"x" * 3000 + b"\r\n")
        client.select("INBOX")
        (uid,) = client.search(uidnext, "SUBJECT", "big")
        with pytest.raises(Exception, match="more than"):
            client.fetch(uid, max_bytes=1000)
