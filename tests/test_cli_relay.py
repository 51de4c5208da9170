"""notifier.cli_relay and notifier.sendmail: sendmail's command lines as programs write them,
-t and -bs, and the quarantine commands; messages end up in a real state database (no daemon runs here)."""

from __future__ import annotations

import io
import re
import smtplib
import socket
import time
from pathlib import Path

import pytest

from notifier import cli
from notifier import config as configmod
from notifier.cli_relay import Invocation, sendmail_argv
from notifier.pgstore import PgStore
from notifier.relay import Intake, RelayServer
from notifier.relaylog import Quarantined, Relayed
from notifier.secrets import Secret
from notifier.sendmail import sendmail_main
from notifier.statedir import StateDir
from notifier.store import OutboxRow, Store
from tests.servers.smtp import DROP, LocalCA, SilentServer, SmtpServer


@pytest.mark.parametrize(("argv", "program", "expected"), [
    (["sendmail", "-i", "-FCronDaemon", "-B8BITMIME", "-oem", "user"], "notifier",
     Invocation(fullname="CronDaemon", dot_ends=False, recipients=["user"])),
    (["-t", "-oi", "-f", "backup@host1", "-F", "Backup Job"], "/usr/sbin/sendmail",
     Invocation(sender="backup@host1", fullname="Backup Job", extract=True, dot_ends=False)),
    (["-c", "w.yaml", "sendmail", "-bs", "-oee", "-odb", "--", "-odd@x.example"], "notifier",
     Invocation(smtp=True, config=Path("w.yaml"), recipients=["-odd@x.example"])),
    (["-C/etc/n.yaml", "-ti", "-rme@x.example", "a@x.example", "b@x.example"], "sendmail",
     Invocation(config=Path("/etc/n.yaml"), extract=True, dot_ends=False, sender="me@x.example",
                recipients=["a@x.example", "b@x.example"])),
])
def test_sendmail_command_lines(argv: list[str], program: str, expected: Invocation) -> None:
    assert sendmail_argv(argv, program) == expected


def test_other_commands_are_not_sendmail() -> None:
    assert sendmail_argv(["-c", "w.yaml", "status"], "notifier") is None
    assert sendmail_argv(["run"], "/usr/bin/notifier") is None
    found = sendmail_argv(["sendmail", "-bp"], "notifier")
    assert found is not None
    assert found.problem is not None


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A relay that nothing serves (so sendmail queues itself), mail for local users to admin."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nobody listens there
    path = tmp_path / "watchers.yaml"
    path.write_text(f"mail: {{to: [admin@example.com]}}\nrelay: {{listen: '127.0.0.1:{port}', "
                    f"screen: {{body_patterns: ['(?i)forbidden'], quarantine: true}}}}\nwatchers: []\n")
    StateDir(tmp_path / "state").open_store().close()  # as a daemon that ran once leaves it
    return path


def run(config: Path, *args: str, stdin: bytes) -> int:
    found = sendmail_argv(["-c", str(config), "sendmail", *args], "notifier")
    assert found is not None
    return sendmail_main(found, io.BytesIO(stdin), io.StringIO())


def queued(config: Path) -> list[OutboxRow]:
    store = StateDir(config.parent / "state").open_store()
    try:
        return store.outbox()
    finally:
        store.close()


def test_a_lone_dot_ends_the_message_unless_i(config: Path) -> None:
    assert run(config, "ops@corp.example", stdin=b"Subject: a\n\nline\n.\nafter\n") == 0
    assert run(config, "-i", "ops@corp.example", stdin=b"Subject: b\n\nline\n.\nafter\n") == 0
    first, second = (row.body for row in queued(config))
    assert b"after" not in first
    assert first.endswith(b"\r\n\r\nline\r\n")
    assert second.endswith(b"\r\n\r\nline\r\n.\r\nafter\r\n")


def test_t_reads_recipients_and_bcc_never_reaches_the_header(config: Path) -> None:
    message = b"To: a@x.example, B <b@x.example>\nCc: c@x.example\nBcc: hidden@x.example\nSubject: t\n\nx\n"
    assert run(config, "-t", "-i", stdin=message) == 0
    (row,) = queued(config)
    assert row.recipients == ("a@x.example", "b@x.example", "c@x.example", "hidden@x.example")
    assert b"hidden@x.example" not in row.body


def test_a_full_name_cannot_add_a_header(config: Path) -> None:
    assert run(config, "-F", "Eve\nBcc: victim@x.example", "-t", stdin=b"To: a@x.example\n\nx\n") == 0
    (row,) = queued(config)
    assert row.recipients == ("a@x.example",)
    assert b"\r\nBcc:" not in row.body
    assert b"Eve Bcc: victim@x.example" in row.body  # kept as the name's text, on its own line


def test_smtp_on_stdin(config: Path) -> None:
    dialogue = (b"EHLO me\r\nMAIL FROM:<job@host1>\r\nRCPT TO:<ops@corp.example>\r\nDATA\r\n"
                b"Subject: bs\r\n\r\n..dot stuffed\r\n.\r\nQUIT\r\n")
    out = io.StringIO()
    found = sendmail_argv(["-c", str(config), "sendmail", "-bs"], "notifier")
    assert found is not None
    assert sendmail_main(found, io.BytesIO(dialogue), out) == 0
    replies = [line[:3] for line in out.getvalue().splitlines()]
    assert replies == ["220", "250", "250", "250", "354", "250", "221"]
    (row,) = queued(config)
    assert row.body.endswith(b"\r\n\r\n.dot stuffed\r\n")


def test_refused_mail_is_quarantined_and_released_by_command(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, "ops@corp.example", stdin=b"Subject: q\n\nforbidden words\n") == 65
    assert queued(config) == []
    assert cli.main(["-c", str(config), "relay", "quarantine"]) == 0
    listing = capsys.readouterr().out
    assert "body_patterns" in listing
    assert "ops@corp.example" in listing
    number = listing.split()[0]
    assert cli.main(["-c", str(config), "relay", "quarantine", "show", number]) == 0
    shown = capsys.readouterr().out
    assert "forbidden words" in shown
    assert "refused by rule body_patterns: the text matches a pattern" in shown
    assert "→ ops@corp.example" in shown  # the envelope
    for action in ("show", "release", "delete"):
        assert cli.main(["-c", str(config), "relay", "quarantine", action, "999"]) != 0
        assert "holds no message 999" in capsys.readouterr().err
    assert cli.main(["-c", str(config), "relay", "quarantine", "release", number]) == 0
    assert [row.recipients for row in queued(config)] == [("ops@corp.example",)]
    assert cli.main(["-c", str(config), "relay", "quarantine", "delete"]) == 64  # which ones?


def test_quarantine_delete(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    kept = Quarantined(0, "local", "body_patterns", "no", Relayed("local", "<q@h>", None, "a@h",
                                                                  ("b@x.example",), b"x"), 0.0)
    store.relay_refuse("local", "body_patterns", time.time(), kept)
    (item,) = store.quarantined()
    assert store.quarantine_delete([item.id]) == 1
    assert store.quarantined() == []
    store.close()


def test_without_the_daemons_database_nothing_is_queued_and_nothing_created(
        config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """cron's sendmail has no $STATE_DIRECTORY: a new state.db of its own would never be sent."""
    elsewhere = config.with_name("cron.yaml")
    elsewhere.write_text(config.read_text() + f"state_dir: {tmp_path / 'empty'}\n")
    assert run(elsewhere, "ops@corp.example", stdin=b"Subject: lost?\n\nx\n") == 75
    problem = capsys.readouterr().err
    assert f"{tmp_path / 'empty'} holds no state database" in problem
    assert "state_dir:" in problem
    assert "/var/lib/notifier" in problem
    assert not (tmp_path / "empty" / "state.db").exists()
    assert cli.main(["-c", str(elsewhere), "relay", "quarantine"]) != 0
    assert not (tmp_path / "empty" / "state.db").exists()


def test_with_a_postgresql_store_sendmail_queues_there(
        config: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fleet's store is where the daemons look, not a local SQLite file."""
    config.write_text(config.read_text() + "store_url_env: NOTIFIER_STORE\n")
    for stdin, status in ((b"Subject: fleet\n\nx\n", 0), (b"Subject: q\n\nforbidden\n", 65)):
        monkeypatch.setenv("NOTIFIER_STORE", pg_url)  # each run reads it, and takes it out of the environment
        assert run(config, "ops@corp.example", stdin=stdin) == status
    store = PgStore(Secret(pg_url))
    try:
        assert [row.recipients for row in store.outbox()] == [("ops@corp.example",)]
    finally:
        store.close()
    assert queued(config) == []  # nothing went into the local SQLite
    monkeypatch.setenv("NOTIFIER_STORE", pg_url)
    assert cli.main(["-c", str(config), "relay", "quarantine", "show", "1"]) == 0


def _relay_at(config: Path, port: int, extra: str = "") -> None:
    """Point the config's relay at `port` (a server the test runs there)."""
    text = config.read_text()
    old = text.split("listen: '127.0.0.1:")[1].split("'")[0]
    config.write_text(text.replace(f"127.0.0.1:{old}'", f"127.0.0.1:{port}'{extra}"))


def test_a_relay_that_wants_a_login_leaves_the_message_to_the_local_queue(
        config: Path, plain_server: SmtpServer) -> None:
    """A relay listening beyond loopback answers MAIL from this machine with 530 (log in)."""
    _relay_at(config, plain_server.port)
    assert run(config, "ops@corp.example", stdin=b"Subject: cron\n\nx\n") == 0
    assert [row.recipients for row in queued(config)] == [("ops@corp.example",)]
    assert plain_server.received == []


def test_a_busy_relay_leaves_the_message_to_the_local_queue(config: Path) -> None:
    _relay_at(config, 0, ", max_clients: 1")
    cfg = configmod.load(config)
    store = StateDir(cfg.state_dir).open_store()
    server = RelayServer(Intake(lambda: cfg, store))
    server.start()
    try:
        _relay_at(config, server.port, "")
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as holder:
            holder.ehlo()  # the one slot, taken: the next connection is told 421
            assert run(config, "ops@corp.example", stdin=b"Subject: busy\n\nx\n") == 0
    finally:
        server.stop()
        store.close()
    assert [row.recipients for row in queued(config)] == [("ops@corp.example",)]


def test_a_relay_that_never_greets_is_given_up_quickly(config: Path, silent_server: SilentServer) -> None:
    _relay_at(config, silent_server.port)
    started = time.monotonic()
    assert run(config, "ops@corp.example", stdin=b"Subject: silent\n\nx\n") == 0
    assert time.monotonic() - started < 10
    assert len(queued(config)) == 1


def test_after_data_was_sent_the_message_is_never_queued_here_too(config: Path, tls_ca: LocalCA) -> None:
    """The relay may hold it already: a second copy here would send it twice."""
    with SmtpServer("none", ca=tls_ca, require_auth=False) as relay:
        relay.fail("DATA", DROP)
        _relay_at(config, relay.port)
        assert run(config, "ops@corp.example", stdin=b"Subject: once\n\nx\n") == 75
    assert queued(config) == []


def test_without_a_config_sendmail_says_how_sendmail_finds_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    found = sendmail_argv(["-C", str(tmp_path / "missing.yaml"), "root"], "/usr/sbin/sendmail")
    assert found is not None
    assert sendmail_main(found, io.BytesIO(b"Subject: x\n\nx\n"), io.StringIO()) == 75
    problem = capsys.readouterr().err
    assert "-C FILE" in problem
    assert "$NOTIFIER_CONFIG" in problem
    assert "/etc/notifier/watchers.yaml" in problem
    assert "-c PATH" not in problem  # sendmail's own -c is not notifier's


def _bs(config: Path, dialogue: bytes) -> list[str]:
    out = io.StringIO()
    found = sendmail_argv(["-c", str(config), "sendmail", "-bs"], "notifier")
    assert found is not None
    assert sendmail_main(found, io.BytesIO(dialogue), out) == 0
    return out.getvalue().splitlines()


def test_smtp_on_stdin_answers_valid_replies_whatever_happens(config: Path, tls_ca: LocalCA) -> None:
    """A refused recipient at the relay, or nowhere to queue: still one code-first line each."""
    one = b"MAIL FROM:<job@host1>\r\nRCPT TO:<ops@corp.example>\r\nDATA\r\nSubject: x\r\n\r\nx\r\n.\r\n"
    with SmtpServer("none", ca=tls_ca, require_auth=False) as relay:
        relay.refuse_recipient("ops@corp.example")
        _relay_at(config, relay.port)
        replies = _bs(config, b"EHLO me\r\n" + one + b"QUIT\r\n")
    assert replies[-2].startswith("550 ops@corp.example: 550")
    config.write_text(config.read_text() + f"state_dir: {config.parent / 'nowhere'}\n")
    replies = _bs(config, b"EHLO me\r\n" + one + b"QUIT\r\n")
    assert replies[-2].startswith("451 4.3.0 ")
    assert "holds no state database" in replies[-2]
    assert replies[-1].startswith("221")
    assert all(re.match(r"^[2-5]\d\d ", line) for line in replies)
