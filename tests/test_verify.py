"""`notifier verify-delivery`, the loop tested whole: notifier sends through aiosmtpd (implicit
TLS, the test CA), which drops the probe into a real Dovecot's Maildir (or the junk folder, or
answers with a bounce), and notifier finds it by IMAP (IDLE, polling, through a 163-style proxy)
or by POP3, then deletes only its probe."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from notifier.cli import main
from notifier.receive import ImapClient
from tests.servers.dovecot import (
    JUNK,
    RECEIVER,
    RECEIVER_PASSWORD,
    SENDER,
    SENDER_PASSWORD,
    DeliveringSmtpServer,
    Dovecot,
)
from tests.servers.imap_proxy import IdProxy
from tests.servers.smtp import LocalCA

AUTH_RESULTS = (b"Authentication-Results: mx.example.com; spf=pass smtp.mailfrom=robot@example.com;"
                b" dkim=none; dmarc=none\r\n")
Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def relay(tls_ca: LocalCA, dovecot: Dovecot) -> Iterator[DeliveringSmtpServer]:
    with DeliveringSmtpServer("ssl", ca=tls_ca, ca_file=tls_ca.ca_file, dovecot=dovecot) as server:
        yield server


def _config(tmp_path: Path, relay: DeliveringSmtpServer, mailbox: str) -> Path:
    path = tmp_path / "watchers.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        f"mail: {{from: {SENDER}, to: [{RECEIVER}]}}\n"
        f"smtp:\n  test: {{host: {relay.host}, port: {relay.port}, security: ssl, username: {SENDER}, "
        f"password_env: PW, ca_file: {relay.ca_file}, verify_with: box}}\n"
        f"{mailbox}\nwatchers: []\n")
    return path


def _box(dovecot: Dovecot, protocol: str = "imap", security: str = "ssl", user: str = RECEIVER,
         host: str = "localhost", port: int | None = None) -> str:
    port = port or {"imap": dovecot.imaps, "pop3": dovecot.pop3s}[protocol]
    return (f"{protocol}:\n  box: {{host: {host}, port: {port}, security: {security}, username: {user}, "
            f"password_env: IMAP_PW, ca_file: {dovecot.ca.ca_file}}}\n")


@pytest.fixture
def run(tmp_path: Path, relay: DeliveringSmtpServer, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> Run:
    monkeypatch.setenv("PW", SENDER_PASSWORD)
    monkeypatch.setenv("IMAP_PW", RECEIVER_PASSWORD)

    def go(mailbox: str, *args: str) -> tuple[int, str, str]:
        code = main(["verify-delivery", "-c", str(_config(tmp_path, relay, mailbox)), *args])
        out, err = capsys.readouterr()
        return code, out, err
    return go


def _probes(dovecot: Dovecot, folder: str = "INBOX", user: str = RECEIVER) -> list[int]:
    with ImapClient(dovecot.account(user=user)) as client:
        raw = folder if folder == "INBOX" else client.junk_folder().raw  # type: ignore[union-attr]
        client.select(raw, readonly=True)
        return client.search(1, "HEADER", "X-Notifier-Probe", '""')


def test_probe_found_in_inbox_by_idle_reported_and_deleted(run: Run, dovecot: Dovecot,
                                                          relay: DeliveringSmtpServer) -> None:
    dovecot.deliver(RECEIVER, b"From: someone@example.com\r\nSubject: keep me\r\n\r\nmine\r\n")
    relay.route = lambda rcpt, data: "INBOX"
    code, out, _ = run(_box(dovecot))
    assert code == 0, out
    assert "arrived in INBOX of box" in out
    assert "intact: same MIME structure" in out
    assert "deleted the probe from INBOX" in out
    assert _probes(dovecot) == []  # its own probe is gone ...
    with ImapClient(dovecot.account()) as client:
        client.select("INBOX", readonly=True)
        assert client.search(1, "SUBJECT", '"keep me"')  # ... and nothing else was touched


def test_receivers_verdicts_are_printed(run: Run, dovecot: Dovecot, relay: DeliveringSmtpServer) -> None:
    original = relay._deliver

    def with_verdicts(message: object) -> None:
        from tests.servers.smtp import Received  # noqa: PLC0415

        assert isinstance(message, Received)
        original(Received(message.mail_from, message.rcpt_tos, AUTH_RESULTS + message.content))
    relay._deliver = with_verdicts  # type: ignore[method-assign]
    code, out, _ = run(_box(dovecot), "--keep")
    assert code == 0, out
    assert "spf=pass" in out
    assert "dkim=none" in out
    assert "kept the probe" in out
    assert len(_probes(dovecot)) == 1


def test_probe_in_the_junk_folder_exits_1_with_advice(run: Run, dovecot: Dovecot,
                                                      relay: DeliveringSmtpServer) -> None:
    relay.route = lambda rcpt, data: JUNK
    code, out, _ = run(_box(dovecot))
    assert code == 1, out
    assert f"arrived in {JUNK}" in out
    assert "warning: the probe landed in the junk folder" in out
    assert _probes(dovecot, JUNK) == []


def test_polling_when_the_server_has_no_idle(tmp_path: Path, tls_ca: LocalCA, dovecot_no_idle: Dovecot,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PW", SENDER_PASSWORD)
    monkeypatch.setenv("IMAP_PW", RECEIVER_PASSWORD)
    with DeliveringSmtpServer("ssl", ca=tls_ca, ca_file=tls_ca.ca_file, dovecot=dovecot_no_idle) as relay:
        relay.route = lambda rcpt, data: "Spam"
        relay.delay = 0.3
        code = main(["verify-delivery", "-c", str(_config(tmp_path, relay, _box(dovecot_no_idle)))])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "arrived in Spam" in out


def test_pop3_finds_the_probe_by_uidl(run: Run, dovecot: Dovecot, relay: DeliveringSmtpServer) -> None:
    relay.delay = 0.2
    code, out, _ = run(_box(dovecot, "pop3"))
    assert code == 0, out
    assert "deleted the probe (POP3)" in out
    assert "intact" in out


def test_not_found_by_the_deadline_exits_2(run: Run, dovecot: Dovecot, relay: DeliveringSmtpServer) -> None:
    relay.route = lambda rcpt, data: "nowhere"  # accepted, then lost
    relay.dovecot = _Nowhere()  # type: ignore[assignment]
    code, out, _ = run(_box(dovecot), "--timeout", "1s")
    assert code == 2, out
    assert "NOT FOUND" in out
    assert "within 1 s" in out


class _Nowhere:
    def deliver(self, *args: object) -> None:
        pass


def test_a_bounce_quoting_the_probe_exits_3(run: Run, dovecot: Dovecot, relay: DeliveringSmtpServer,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAP_PW", SENDER_PASSWORD)
    relay.route = lambda rcpt, data: "bounce"  # the report lands in the sender's own mailbox
    code, out, _ = run(_box(dovecot, user=SENDER), "--to", "nobody@example.com")
    assert code == 3, out
    assert "BOUNCED" in out
    assert "User unknown" in out


@pytest.mark.usefixtures("fresh_client_ip")
def test_wrong_password_exits_78_without_the_secret(run: Run, dovecot: Dovecot,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAP_PW", "Wrong-Code-1234")
    code, out, err = run(_box(dovecot), "--debug-imap")
    assert code == 78
    assert "Could not log in to IMAP" in err
    assert "authorization code" in err
    assert "Wrong-Code-1234" not in out + err
    assert "LOGIN alerts@example.com ****" in err  # the --debug-imap dialogue, masked


def test_163_style_server_gets_id_before_select(run: Run, dovecot: Dovecot, id_proxy: IdProxy) -> None:
    code, out, _ = run(_box(dovecot, security="none", host="127.0.0.1", port=id_proxy.port))
    assert code == 0, out
    assert id_proxy.ids_seen >= 1
    assert id_proxy.refused == 0


def test_reconnects_when_the_server_goes_away_mid_idle(run: Run, dovecot: Dovecot,
                                                      relay: DeliveringSmtpServer) -> None:
    proxy = IdProxy(dovecot.imap, require_id=False)
    try:
        relay.delay = 1.2
        timer = threading.Timer(0.6, proxy.cut)
        timer.start()
        code, out, _ = run(_box(dovecot, security="none", host="127.0.0.1", port=proxy.port))
        timer.join()
    finally:
        proxy.close()
    assert code == 0, out
    assert "1 reconnect(s)" in out


def test_no_mailbox_configured_is_a_config_error(run: Run) -> None:
    code, _, err = run("")
    assert code == 78
    assert "verify_with" in err


def test_a_bounce_in_the_senders_own_mailbox_exits_3(run: Run, dovecot: Dovecot,
                                                     relay: DeliveringSmtpServer) -> None:
    """The probe goes to another mailbox; the report comes back to the login's own one, which
    is configured beside it: verify-delivery watches both."""
    relay.route = lambda rcpt, data: "bounce"
    own = (f"  own: {{host: localhost, port: {dovecot.imaps}, username: {SENDER}, password_env: PW, "
           f"ca_file: {dovecot.ca.ca_file}}}\n")
    code, out, _ = run(_box(dovecot) + own, "--to", "gone@example.com")
    assert code == 3, out
    assert "BOUNCED" in out
    assert "User unknown (reported to own)" in out
