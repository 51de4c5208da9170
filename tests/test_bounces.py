"""notifier.bounces: the corpus's Postfix DSN and QQ/163/Gmail notices are bounces tied to the
original Message-ID; an auto-reply is not; and the scanner touches only new messages of a real
Dovecot mailbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from notifier.bounces import BounceScanner, recognise
from notifier.cli import main
from notifier.receive import ImapClient
from tests.servers.dovecot import SENDER, SENDER_PASSWORD, DeliveringSmtpServer, Dovecot
from tests.servers.smtp import LocalCA

MAIL = Path(__file__).parent / "data" / "mail"
ORIGINAL = "<170000.1.abc@example.com>"


@pytest.mark.parametrize(("name", "shape", "status", "why"), [
    ("postfix_dsn.eml", "rfc3464", "5.1.1", "User unknown"),
    ("gmail_bounce.eml", "rfc3464", "5.1.1", "does not exist"),
    ("qq_bounce.eml", "qq", None, "不存在"),
    ("163_bounce.eml", "attached", None, "Mailbox not found"),
])
def test_bounce_shapes_name_the_original_message(name: str, shape: str, status: str | None, why: str) -> None:
    bounce = recognise((MAIL / name).read_bytes())
    assert bounce is not None
    assert bounce.shape == shape
    assert ORIGINAL in bounce.message_ids
    assert why in bounce.reason
    if status:
        assert bounce.status == status
        assert bounce.recipients == ("nobody@example.com",)


@pytest.mark.parametrize("name", ["vacation_auto_reply.eml", "gbk_subject_b.eml", "html_only.eml"])
def test_auto_replies_and_ordinary_mail_are_not_bounces(name: str) -> None:
    assert recognise((MAIL / name).read_bytes()) is None


def test_a_delay_warning_is_not_a_bounce() -> None:
    data = (MAIL / "postfix_dsn.eml").read_bytes().replace(b"Action: failed", b"Action: delayed")
    assert recognise(data) is None


def test_scanner_fetches_only_new_candidates(dovecot: Dovecot) -> None:
    for n in range(30):
        dovecot.deliver(SENDER, f"From: a@example.com\r\nSubject: ordinary {n}\r\n\r\nhello\r\n".encode())
    dovecot.deliver(SENDER, (MAIL / "postfix_dsn.eml").read_bytes())
    dovecot.deliver(SENDER, (MAIL / "vacation_auto_reply.eml").read_bytes())
    scanner = BounceScanner()
    with ImapClient(dovecot.account(user=SENDER)) as client:
        first = scanner.scan(client)
        assert [b.shape for b in first] == ["rfc3464"]
        assert scanner.fetched == 1  # only the candidate the server picked, never ordinary mail
        assert scanner.scan(client) == []
        assert scanner.fetched == 0
        dovecot.deliver(SENDER, (MAIL / "qq_bounce.eml").read_bytes())
        again = scanner.scan(client)
    assert [b.shape for b in again] == ["qq"]
    assert scanner.fetched == 1


def test_bounces_command_matches_a_bounced_alert_in_the_send_log(
        tmp_path: Path, tls_ca: LocalCA, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The loop whole: a change alert leaves the outbox, the relay answers it with a DSN to the
    sender's own mailbox, and `notifier bounces` finds it there and names the alert."""
    monkeypatch.setenv("PW", SENDER_PASSWORD)
    watched = tmp_path / "page.txt"
    watched.write_text("price 10\n")
    config = tmp_path / "watchers.yaml"
    with DeliveringSmtpServer("ssl", ca=tls_ca, ca_file=tls_ca.ca_file, dovecot=dovecot) as relay:
        relay.route = lambda rcpt, data: "bounce"
        config.write_text(
            f"state_dir: {tmp_path / 'state'}\nmail: {{from: {SENDER}, to: [gone@example.com]}}\n"
            f"smtp:\n  out: {{host: {relay.host}, port: {relay.port}, security: ssl, username: {SENDER}, "
            f"password_env: PW, ca_file: {tls_ca.ca_file}}}\n"
            f"imap:\n  own: {{host: localhost, port: {dovecot.imaps}, username: {SENDER}, "
            f"password_env: PW, ca_file: {tls_ca.ca_file}}}\n"
            f"watchers:\n  - {{name: prices, kind: file, path: {watched}}}\n")
        assert main(["bounces", "-c", str(config)]) == 0  # first scan: the mailbox as it is
        assert main(["check", "--send", "-c", str(config)]) in (0, 1)  # the baseline
        watched.write_text("price 12\n")
        assert main(["check", "--send", "-c", str(config)]) == 1
        relay.wait_for(1)
    capsys.readouterr()
    assert main(["bounces", "-c", str(config)]) == 3
    out = capsys.readouterr().out
    assert "bounced: <" in out
    assert "change alert of prices" in out
    assert "gone@example.com" in out
    assert "User unknown" in out
    # Marked in the send log and alerted about, as the daemon's watch_bounces would.
    assert "1 alert(s) about them queued; `notifier check --send` or `notifier run` sends them." in out
    assert main(["log", "--watcher", "prices", "--status", "dead", "-c", str(config)]) == 0
    assert "1 entry." in capsys.readouterr().out
    assert main(["bounces", "-c", str(config)]) == 0  # only what is new since the last scan
    assert "0 bounce(s)" in capsys.readouterr().out


def test_bounces_command_without_a_state_database_keeps_the_position(
        tmp_path: Path, tls_ca: LocalCA, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing recorded, so the shared position must not move: the daemon still has to see them."""
    monkeypatch.setenv("PW", SENDER_PASSWORD)
    dovecot.deliver(SENDER, (MAIL / "qq_bounce.eml").read_bytes())
    config = tmp_path / "watchers.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\nmail: {{from: {SENDER}, to: [a@example.com]}}\n"
        f"smtp:\n  out: {{host: localhost, port: 1, security: ssl, username: {SENDER}, password_env: PW}}\n"
        f"imap:\n  own: {{host: localhost, port: {dovecot.imaps}, username: {SENDER}, "
        f"password_env: PW, ca_file: {tls_ca.ca_file}}}\nwatchers: []\n")
    assert main(["bounces", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "bounce(s) in own since the last scan" in out  # (the session's Dovecot has others too)
    assert "nothing was recorded" in out
    assert not (tmp_path / "state" / "bounces.json").exists()
    assert not (tmp_path / "state" / "state.db").exists()
