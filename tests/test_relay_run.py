"""The mail relay end to end: smtplib and `notifier sendmail` (fed as cron feeds it) → the relay
in a real `notifier run` process → the test provider standing in for 163 (implicit TLS, AUTH,
From must equal the login). Crashes are real kill -9s; what counts is what the provider got.
"""

from __future__ import annotations

import email
import email.policy
import os
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from notifier.statedir import StateDir
from tests.servers.smtp import USERNAME, Received, SmtpServer, smtp_yaml
from tests.test_daemon import DEADLINE, StartDaemon, daemons, poll  # noqa: F401 - daemons is a fixture

CRON_MAIL = (b"From: root (Cron Daemon)\nTo: user\nSubject: Cron <user@host1> /usr/local/bin/backup\n"
             b"MIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit\n"
             b"X-Cron-Env: <SHELL=/bin/sh>\n\nbackup finished: 12 GB \xe2\x9c\x93\n")


@pytest.fixture
def provider(smtp_163: SmtpServer) -> SmtpServer:
    """The provider of these tests: 163-like (see tests.servers.smtp.smtp_163)."""
    return smtp_163


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def relay_config(tmp_path: Path, provider: SmtpServer) -> Path:
    """watchers.yaml: the provider's account, a relay on a free port, no watchers; the state
    database a daemon that ran once leaves behind."""
    path = tmp_path / "watchers.yaml"
    path.write_text(f"{smtp_yaml(provider)}mail: {{to: [admin@example.com]}}\n"
                    f"relay: {{listen: '127.0.0.1:{free_port()}'}}\nwatchers: []\n")
    StateDir(tmp_path / "state").open_store().close()  # as the daemon leaves it: sendmail needs it
    return path


def relay_port(config: Path) -> int:
    return int(config.read_text().split("127.0.0.1:")[1].split("'")[0])


def sendmail(config: Path, *args: str, stdin: bytes = CRON_MAIL) -> subprocess.CompletedProcess[bytes]:
    """`notifier sendmail ARGS` as cron runs it: the config found through the environment."""
    return subprocess.run([sys.executable, "-m", "notifier.cli", "sendmail", *args], input=stdin,
                          capture_output=True, timeout=DEADLINE, check=False,
                          env={**os.environ, "NOTIFIER_CONFIG": str(config)})


def header(received: Received, name: str) -> str:
    return str(email.message_from_bytes(received.content, policy=email.policy.default)[name])


def writer(received: Received) -> tuple[str, str]:
    """(display name, address) of the From header that arrived."""
    message = email.message_from_bytes(received.content, policy=email.policy.default)
    address = message["From"].addresses[0]
    return address.display_name, address.addr_spec


def test_cron_and_smtplib_mail_reach_the_provider_from_the_login(
        relay_config: Path, provider: SmtpServer, daemons: StartDaemon) -> None:  # noqa: F811
    daemon = daemons(relay_config)
    daemon.wait_log(r"relay: listening on 127\.0\.0\.1")
    with smtplib.SMTP("127.0.0.1", relay_port(relay_config), timeout=DEADLINE) as client:
        client.sendmail("backup@db1.example", ["ops@corp.example"],
                        b"From: Backup <backup@db1.example>\r\nSubject: nightly\r\n\r\ndone\r\n")
    cron = sendmail(relay_config, "-i", "-FCronDaemon", "-B8BITMIME", "-oem", "user")
    assert cron.returncode == 0, cron.stderr
    first, second = sorted(provider.wait_for(2, timeout=DEADLINE), key=lambda r: header(r, "Subject"))
    assert {first.mail_from, second.mail_from} == {USERNAME}
    assert first.rcpt_tos == ("admin@example.com",)  # cron's local user goes to mail.to
    assert writer(first) == (f"Cron Daemon on {socket.gethostname()} via notifier", USERNAME)
    assert header(first, "Reply-To") == f"Cron Daemon <root@{socket.gethostname()}>"
    assert "backup finished: 12 GB ✓".encode() in first.content
    assert header(second, "Reply-To") == "Backup <backup@db1.example>"
    assert writer(second) == ("Backup on db1.example via notifier", USERNAME)

    def stats() -> str:
        out = subprocess.run([sys.executable, "-m", "notifier.cli", "-c", str(relay_config), "stats"],
                             capture_output=True, text=True, timeout=DEADLINE, check=True)
        return out.stdout

    poll(lambda: any(line.split()[:4] == ["local", "2", "0", "2"] for line in stats().splitlines()),
         "both messages counted as sent for the client 'local' in `notifier stats`")


def test_sendmail_queues_into_the_outbox_when_no_daemon_runs(
        relay_config: Path, provider: SmtpServer, daemons: StartDaemon) -> None:  # noqa: F811
    queued = sendmail(relay_config, "-t", stdin=b"To: ops@corp.example\nSubject: no daemon\n\nqueued\n")
    assert queued.returncode == 0, queued.stderr
    assert provider.received == []
    daemons(relay_config)
    (got,) = provider.wait_for(1, timeout=DEADLINE)
    assert got.rcpt_tos == ("ops@corp.example",)
    assert header(got, "Subject") == "no daemon"


def test_sendmail_exits_nonzero_only_when_the_message_is_not_queued(relay_config: Path) -> None:
    relay_config.write_text(relay_config.read_text().replace("relay: {", "relay: {screen: {max_size: 100}, "))
    refused = sendmail(relay_config, "ops@corp.example", stdin=b"Subject: big\n\n" + b"x" * 500)
    assert refused.returncode == 65
    assert b"max_size" in refused.stderr
    unreadable = sendmail(relay_config, "-bp")
    assert unreadable.returncode == 64
    assert b"not supported" in unreadable.stderr


def _send_numbered(config: Path, count: int) -> list[str]:
    """Hand `count` messages to the relay in one session; the Message-IDs that got a 250."""
    accepted = []
    try:
        with smtplib.SMTP("127.0.0.1", relay_port(config), timeout=DEADLINE) as client:
            for n in range(count):
                message_id = f"<crash-{n}@host1>"
                client.sendmail("job@host1", ["ops@corp.example"],
                                f"Message-ID: {message_id}\r\nSubject: {n}\r\n\r\nx\r\n".encode())
                accepted.append(message_id)
    except (smtplib.SMTPException, OSError):
        pass  # the daemon died under this session: what got no 250 is the client's to resend
    return accepted


@pytest.mark.parametrize("stored", [False, True], ids=["before-the-provider-stores", "at-its-250"])
def test_kill_9_between_accepting_and_delivering(
        stored: bool, relay_config: Path, provider: SmtpServer, daemons: StartDaemon) -> None:  # noqa: F811
    daemon = daemons(relay_config)
    daemon.wait_log(r"relay: listening")
    crashed: list[bool] = []

    def crash() -> None:
        if not crashed:
            crashed.append(True)
            assert daemon.proc is not None
            os.kill(daemon.proc.pid, signal.SIGKILL)

    if stored:
        provider.after_store = crash
    else:
        provider.fail("DATA", "451 4.3.0 Try later", times=None)
    accepted = _send_numbered(relay_config, 5)
    assert accepted, "the relay accepted nothing"
    if not stored:
        poll(lambda: daemon.count("outcome=retry") >= 1, "a failed delivery attempt")
        crash()
        provider.clear_faults()
    assert daemon.proc is not None
    daemon.proc.wait(timeout=DEADLINE)
    daemon.proc = None
    provider.after_store = None
    _release_backoff(relay_config)
    daemons(relay_config)
    provider.wait_for(len(accepted) + (1 if stored else 0), timeout=DEADLINE)
    got = Counter(header(r, "Message-ID") for r in provider.received)
    assert set(got) == set(accepted)
    twice = [m for m, n in got.items() if n > 1]
    assert len(twice) <= (1 if stored else 0), got
    assert all(n <= 2 for n in got.values())


def _release_backoff(config: Path) -> None:
    """Messages that met a 451 wait out their backoff; make them due now, as `notifier outbox
    retry` does for held ones (the test's provider is fixed)."""
    db = sqlite3.connect(config.parent / "state" / "state.db")
    with db:
        db.execute("UPDATE outbox SET not_before = 0")
    db.close()


def _status(config: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "notifier.cli", "-c", str(config), "status"],
                          capture_output=True, text=True, timeout=DEADLINE, check=False)
    return done.stdout + done.stderr


def test_status_says_whether_the_relay_listens(relay_config: Path, daemons: StartDaemon) -> None:  # noqa: F811
    port = relay_port(relay_config)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        daemon = daemons(relay_config)
        daemon.wait_log("relay cannot listen|cannot listen")
        poll(lambda: "relay: NOT LISTENING" in _status(relay_config), "status names the relay's problem")
        assert f"cannot listen on 127.0.0.1:{port}" in _status(relay_config)
    daemon.stop()
    daemons(relay_config).wait_log(r"relay: listening on 127\.0\.0\.1")
    poll(lambda: f"relay: listening on 127.0.0.1:{port}" in _status(relay_config),
         "status says where the relay listens")
