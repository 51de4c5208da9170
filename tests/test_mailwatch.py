"""notifier.mailwatch: the daemon's delivery probes (`verify_every`) and bounce scans
(`watch_bounces`), against the real servers: aiosmtpd delivering into Dovecot (or answering
with a DSN to the sender's own mailbox), notifier finding it there by IMAP.

The whole loop runs in a `notifier run` process; the alert paths and the no-loop rule are
tested in-process on the same servers, with the real outbox delivering what was queued."""

from __future__ import annotations

import email
import email.policy
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from notifier import config, mailwatch
from notifier.bounces import Bounce
from notifier.config import Recipients
from notifier.errors import ConfigError, StateError
from notifier.outbox import Sender
from notifier.receipts import MailCheck
from notifier.relaylog import Relayed
from notifier.statedir import StateDir
from notifier.store import Queued, Store
from tests.messages import parse, plain_text
from tests.servers.dovecot import (
    JUNK,
    RECEIVER,
    RECEIVER_PASSWORD,
    SENDER,
    SENDER_PASSWORD,
    DeliveringSmtpServer,
    Dovecot,
)
from tests.servers.smtp import LocalCA, SmtpServer
from tests.test_daemon import StartDaemon, daemons, poll  # noqa: F401 - daemons is a fixture

GONE = "gone@example.com"  # the relay bounces mail to this address


@pytest.fixture
def relay(tls_ca: LocalCA, dovecot: Dovecot) -> Iterator[DeliveringSmtpServer]:
    """Delivers into Dovecot; mail to GONE comes back as a DSN to the sender's own mailbox."""
    with DeliveringSmtpServer("ssl", ca=tls_ca, ca_file=tls_ca.ca_file, dovecot=dovecot) as server:
        server.route = lambda rcpt, data: "bounce" if rcpt == GONE else "INBOX"
        yield server


@pytest.fixture(autouse=True)
def passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PW", SENDER_PASSWORD)
    monkeypatch.setenv("IMAP_PW", RECEIVER_PASSWORD)


def _smtp(name: str, server: SmtpServer, options: str = "") -> str:
    return (f"  {name}: {{host: {server.host}, port: {server.port}, security: ssl, username: {SENDER}, "
            f"password_env: PW, ca_file: {server.ca_file}{options}}}\n")


def _imap(dovecot: Dovecot, name: str, user: str, env: str) -> str:
    return (f"  {name}: {{host: localhost, port: {dovecot.imaps}, username: {user}, password_env: {env}, "
            f"ca_file: {dovecot.ca.ca_file}}}\n")


def _config(tmp_path: Path, dovecot: Dovecot, smtp: str, watched: Path | None = None,
            to: str = GONE) -> Path:
    path = tmp_path / "watchers.yaml"
    watchers = f"\n  - {{name: prices, kind: file, path: {watched}, every: 1s}}" if watched else " []"
    path.write_text(f"state_dir: {tmp_path / 'state'}\nmail: {{from: {SENDER}, to: [{to}]}}\n"
                    f"smtp:\n{smtp}imap:\n{_imap(dovecot, 'box', RECEIVER, 'IMAP_PW')}"
                    f"{_imap(dovecot, 'own', SENDER, 'PW')}watchers:{watchers}\n")
    return path


def _open(path: Path) -> tuple[config.Config, Store]:
    cfg = config.load(path)
    return cfg, StateDir(cfg.state_dir).open_store()


def _subject(data: bytes) -> str:
    return str(email.message_from_bytes(data, policy=email.policy.default)["Subject"])


def _cli(path: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "notifier.cli", "-c", str(path), *args],
                          capture_output=True, text=True, timeout=60, check=False)
    return done.stdout + done.stderr


def _maildir(cfg: config.Config) -> list[bytes]:
    return [p.read_bytes() for p in sorted((cfg.maildir / "new").glob("*"))] if cfg.maildir.exists() else []


def _send(cfg: config.Config, store: Store, alert: Queued) -> None:
    store.enqueue([alert])
    report = Sender(cfg, store).deliver()
    assert report.sent == 1, report.errors


# -- the whole loop, in a running daemon ------------------------------------------------------

def test_daemon_verifies_delivery_and_alerts_on_a_bounce_through_the_maildir(
        tmp_path: Path, dovecot: Dovecot, relay: DeliveringSmtpServer, daemons: StartDaemon) -> None:  # noqa: F811
    """`notifier run` probes the account at start (the probe arrives in INBOX), then a change
    alert to an address that bounces comes back as a DSN to the sender's own mailbox; the
    daemon's scan marks it in the send log, and the alert about it goes to the local Maildir,
    since the only account is the one whose mail bounced and nobody else is left to tell."""
    watched = tmp_path / "page.txt"
    watched.write_text("price 10\n")
    path = _config(tmp_path, dovecot, _smtp("out", relay, ", verify_with: box, verify_every: 1h, "
                                            "watch_bounces: true, bounce_every: 1s"), watched)
    cfg = config.load(path)
    daemon = daemons(path, {"PW": SENDER_PASSWORD, "IMAP_PW": RECEIVER_PASSWORD})
    daemon.wait_log(r"account=out delivery verified: arrived in INBOX of box")
    daemon.wait_log(r"watcher=prices kind=file outcome=")  # the baseline
    watched.write_text("price 12\n")
    poll(lambda: any("bounced" in _subject(m) for m in _maildir(cfg)), "the bounce alert in the Maildir")
    (alert,) = [m for m in _maildir(cfg) if "bounced" in _subject(m)]
    assert "prices is failing: its change alert" in _subject(alert)
    text = " ".join(plain_text(parse(alert)).split())
    assert f"to {GONE} bounced: 550 5.1.1 <{GONE}>: User unknown" in text
    assert [r.rcpt_tos for r in relay.received][-1] == (GONE,)  # nothing about it went out by smtp.out
    assert "outcome=bounced" in daemon.log()

    status = _cli(path, "status")
    assert "delivery probe of smtp.out at " in status
    assert ": inbox in " in status
    assert "bounce scan of smtp.out at " in status
    assert "bounces in the last 7 days" in status
    assert "prices  change alert <" in status
    stats = json.loads(_cli(path, "stats", "--json"))
    (prices,) = [w for w in stats["watchers"] if w["name"] == "prices"]
    assert prices["bounced"] == 1
    assert stats["totals"]["bounced"] == 1
    log_line = [line for line in _cli(path, "log", "--watcher", "prices").splitlines() if "change" in line]
    assert log_line[0].split()[2] == "dead"  # its only recipient bounced
    message_id = next(w for w in log_line[0].split() if w.startswith("<"))
    assert f"{GONE}  bounced" in _cli(path, "log", message_id)
    path.write_text(path.read_text().replace("bounce_every: 1s", "bounce_every: 2s"))
    daemon.wait_log(r"reloaded ")
    assert daemon.stop() == 0
    assert daemon.count("delivery verified") == 1  # a reload sends no extra probe
    assert daemon.count("outcome=bounced") == 1  # scanned every second, recorded once


# -- verify_every -------------------------------------------------------------------------------

def test_a_junked_probe_alerts_through_another_account(
        tmp_path: Path, dovecot: Dovecot, relay: DeliveringSmtpServer, smtp_server: SmtpServer) -> None:
    relay.route = lambda rcpt, data: JUNK
    path = _config(tmp_path, dovecot, _smtp("out", relay, ", verify_with: box, verify_every: 1d")
                   + _smtp("backup", smtp_server), to=RECEIVER)
    cfg, store = _open(path)
    try:
        assert mailwatch.verify_account(cfg, store, "out") == 1
        (check,) = store.mail_checks()
        assert (check.account, check.job, check.verdict) == ("out", "verify", "junk")
        Sender(cfg, store).deliver()
    finally:
        store.close()
    (alert,) = smtp_server.wait_for(1)
    assert _subject(alert.content).startswith(f"[notifier] notifier is failing: alerts sent through "
                                              f"smtp.out land in the junk folder ({JUNK}) of box")
    assert alert.rcpt_tos == (RECEIVER,)
    assert len(relay.received) == 1  # the probe; the alert about it went around smtp.out


def test_a_lost_probe_alerts_through_the_maildir_when_there_is_no_other_account(
        tmp_path: Path, dovecot: Dovecot, relay: DeliveringSmtpServer) -> None:
    relay.route = lambda rcpt, data: "Lost"  # accepted, then delivered to no folder anyone reads
    path = _config(tmp_path, dovecot, _smtp("out", relay, ", verify_with: box, verify_every: 1d, "
                                            "verify_timeout: 1s"), to=RECEIVER)
    cfg, store = _open(path)
    try:
        assert mailwatch.verify_account(cfg, store, "out") == 1
        assert store.mail_checks()[0].verdict == "not found"
        (queued,) = store.outbox()
        assert (queued.account, queued.kind) == (None, mailwatch.DELIVERY_KIND)
    finally:
        store.close()


@pytest.mark.usefixtures("fresh_client_ip")
def test_a_probe_that_cannot_run_is_a_status_line_not_an_alert(tmp_path: Path, dovecot: Dovecot,
                                                               relay: DeliveringSmtpServer,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAP_PW", "Wrong-Code-1234")
    path = _config(tmp_path, dovecot, _smtp("out", relay, ", verify_with: box, verify_every: 1d"))
    cfg, store = _open(path)
    try:
        assert mailwatch.verify_account(cfg, store, "out") == 0
        assert store.outbox() == []
    finally:
        store.close()
    status = _cli(path, "status")
    assert "delivery probe of smtp.out at " in status
    assert ": ERROR: Could not log in to IMAP" in status
    assert "Wrong-Code-1234" not in status


# -- watch_bounces ------------------------------------------------------------------------------

def test_a_bounce_alert_goes_to_the_other_recipients_through_another_account(
        tmp_path: Path, dovecot: Dovecot, relay: DeliveringSmtpServer, smtp_server: SmtpServer) -> None:
    watched = tmp_path / "page.txt"
    path = _config(tmp_path, dovecot, _smtp("out", relay, ", watch_bounces: true")
                   + _smtp("backup", smtp_server), watched)
    path.write_text(path.read_text().replace("every: 1s}", f"every: 1s, to: [{GONE}, {RECEIVER}]}}"))
    cfg, store = _open(path)
    try:
        mailwatch.watch_bounces(cfg, store, "out")  # the mailbox as it stands: earlier tests' bounces
        wc = cfg.watcher("prices")
        assert wc is not None
        _send(cfg, store, mailwatch.DetourAlerts(cfg).error_about(wc, "x", time.time(), "backup",
                                                                  wc.recipients, "change"))
        assert mailwatch.watch_bounces(cfg, store, "out") == 1
        Sender(cfg, store).deliver()
    finally:
        store.close()
    (alert,) = smtp_server.wait_for(1)
    assert alert.rcpt_tos == (RECEIVER,)  # the recipient left; not the address that bounced
    assert "bounced: 550 5.1.1" in _subject(alert.content)


def test_no_bounces_about_bounces(tmp_path: Path, dovecot: Dovecot, relay: DeliveringSmtpServer) -> None:
    """An alert about a bounce (or a failed probe) that bounces in turn is recorded and counted,
    and nothing more is queued; a bounce scanned twice is recorded once."""
    path = _config(tmp_path, dovecot, _smtp("out", relay, ", watch_bounces: true"))
    cfg, store = _open(path)
    try:
        mailwatch.watch_bounces(cfg, store, "out")
        for kind in (mailwatch.BOUNCE_KIND, mailwatch.DELIVERY_KIND):
            _send(cfg, store, mailwatch.DetourAlerts(cfg).error_about(None, "x", time.time(), None,
                                                                      Recipients((GONE,)), kind))
        assert mailwatch.watch_bounces(cfg, store, "out") == 0
        assert store.outbox() == []
        assert {(e.kind, e.status, e.recipients[0].status) for e in store.log_entries()} == {
            (mailwatch.BOUNCE_KIND, "dead", "bounced"), (mailwatch.DELIVERY_KIND, "dead", "bounced")}
        assert len(store.bounces(0)) == 2
        (cfg.state_dir / mailwatch.POSITIONS).unlink()  # scan the whole mailbox again
        mailwatch.watch_bounces(cfg, store, "out")
        assert len(store.bounces(0)) == 2
        assert store.outbox() == []
    finally:
        store.close()


def test_a_temporary_failure_is_counted_but_not_alerted(tmp_path: Path, dovecot: Dovecot,
                                                       relay: DeliveringSmtpServer) -> None:
    path = _config(tmp_path, dovecot, _smtp("out", relay))
    cfg, store = _open(path)
    try:
        _send(cfg, store, mailwatch.DetourAlerts(cfg).error_about(None, "x", time.time(), None,
                                                                  Recipients((GONE,)), "change"))
        (entry,) = store.log_entries()
        soft = Bounce((entry.message_id,), (GONE,), "4.2.2", "452 4.2.2 Mailbox full", "rfc3464")
        ((original, alerted),) = mailwatch.record(cfg, store, [soft], time.time())
        assert (original.message_id, alerted) == (entry.message_id, False)
        assert store.outbox() == []
        assert not mailwatch.unreachable(soft)
        assert mailwatch.unreachable(Bounce((), (), None, "退信", "qq"))
    finally:
        store.close()


def test_a_scan_position_that_cannot_be_kept_is_a_status_line(tmp_path: Path, dovecot: Dovecot,
                                                               relay: DeliveringSmtpServer) -> None:
    path = _config(tmp_path, dovecot, _smtp("out", relay, ", watch_bounces: true"))
    cfg, store = _open(path)
    try:
        (cfg.state_dir / mailwatch.POSITIONS).with_suffix(".tmp").mkdir()  # where it is written first
        assert mailwatch.watch_bounces(cfg, store, "out") == 0
        (check,) = store.mail_checks()
    finally:
        store.close()
    assert (check.job, check.verdict) == ("bounces", "error")
    assert check.detail.endswith("check the state directory and the network. It is tried again at its "
                                 "next run.")


# -- configuration and schedule ---------------------------------------------------------------

def test_options_need_a_mailbox_to_work_with(tmp_path: Path, dovecot: Dovecot,
                                            relay: DeliveringSmtpServer) -> None:
    path = tmp_path / "watchers.yaml"
    boxes = "".join(_imap(dovecot, name, RECEIVER, "IMAP_PW") for name in ("a", "b"))
    path.write_text(f"mail: {{to: [{RECEIVER}]}}\nsmtp:\n"
                    f"{_smtp('out', relay, ', verify_every: 1d, watch_bounces: true')}"
                    f"imap:\n{boxes}watchers: []\n")
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    text = str(caught.value)
    assert "smtp.out.verify_every: needs to know which mailbox receives the probe" in text
    assert f"smtp.out.watch_bounces: needs an imap: account that logs in as {SENDER}" in text


def test_each_check_runs_one_period_after_its_last_run(tmp_path: Path, dovecot: Dovecot,
                                                       relay: DeliveringSmtpServer) -> None:
    path = _config(tmp_path, dovecot, _smtp("out", relay, ", verify_with: box, verify_every: 1d, "
                                            "watch_bounces: true"))
    cfg, store = _open(path)
    try:
        now = 1_800_000_000.0
        assert {(s.key, s.every, s.first) for s in mailwatch.scheduled(cfg, store, now)} == {
            ("verify:out", 86400.0, now), ("bounces:out", 300.0, now)}
        store.record_mail_check(MailCheck("out", "verify", now - 3600, "inbox", 0.4, "fine"))
        first = {s.key: s.first for s in mailwatch.scheduled(cfg, store, now)}
        assert first == {"verify:out": now - 3600 + 86400, "bounces:out": now}
    finally:
        store.close()


def test_bounces_the_database_refused_are_seen_again_at_the_next_scan(
        tmp_path: Path, dovecot: Dovecot, relay: DeliveringSmtpServer) -> None:
    """The scan position moves on only once the bounces are recorded."""
    path = _config(tmp_path, dovecot, _smtp("out", relay, ", watch_bounces: true"))
    cfg, store = _open(path)
    _send(cfg, store, mailwatch.DetourAlerts(cfg).error_about(None, "x", time.time(), None,
                                                              Recipients((GONE,)), "change"))
    store.close()  # the database refuses what the scan found
    with pytest.raises(StateError):
        mailwatch.watch_bounces(cfg, store, "out")
    assert not (cfg.state_dir / mailwatch.POSITIONS).exists()
    cfg, store = _open(path)
    try:
        mailwatch.watch_bounces(cfg, store, "out")
        (bounce,) = store.bounces(0)
        assert bounce.recipient == GONE
        assert (cfg.state_dir / mailwatch.POSITIONS).exists()
    finally:
        store.close()


def test_a_bounced_relayed_message_says_where_its_address_came_from(
        tmp_path: Path, dovecot: Dovecot, relay: DeliveringSmtpServer) -> None:
    """watchers.yaml did not name the recipient of cron's mail: the alert must not send the
    admin there."""
    path = _config(tmp_path, dovecot, _smtp("out", relay, ", watch_bounces: true"), to="admin@example.com")
    cfg, store = _open(path)
    try:
        mailwatch.watch_bounces(cfg, store, "out")  # the mailbox as it is
        relayed = Relayed("local", "<cron.1@host1>", "out", SENDER, (GONE,),
                          f"From: {SENDER}\r\nSubject: Cron <root@host1> backup\r\n"
                          "Message-ID: <cron.1@host1>\r\n\r\ndone\r\n".encode())
        assert store.relay_accept([relayed], time.time()) == [None]
        assert Sender(cfg, store).deliver().sent == 1
        assert mailwatch.watch_bounces(cfg, store, "out") == 1
        (alert,) = store.outbox()
        message = email.message_from_bytes(alert.body, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        plain = message.get_body(("plain",))
        assert plain is not None
        text = " ".join(str(plain.get_content()).split())
    finally:
        store.close()
    assert 'the relayed message "Cron <root@host1> backup"' in text
    assert "the program that sent it through the relay" in text
    assert "watchers.yaml" not in text
