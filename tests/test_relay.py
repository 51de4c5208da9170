"""notifier.relay in this process: a real aiosmtpd server, real smtplib clients, a real store.

What the relay promised is asserted on the store (what is queued) and on the replies: a 250
only for a message that is in the outbox, refusals by rule with nothing queued, and the
bad input of issue 13 (8-bit headers, bare LF, long lines, oversize, 1,000 recipients,
strangers beyond loopback, injection, slow and many clients).
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import logging
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP

from notifier import config as configmod
from notifier.config import Config
from notifier.errors import ConfigError, StateError
from notifier.outbox import BACKOFF_CAP, Sender
from notifier.relay import GroupCommit, Intake, RelayServer, RelayService, _RelaySMTP
from notifier.relaylog import Relayed
from notifier.store import Store
from tests.servers.smtp import DROP, GARBAGE, PASSWORD, USERNAME, LocalCA, SmtpServer, smtp_yaml

LOGIN = "robot@example.com"
ACCOUNT = (f"smtp: {{main: {{host: 127.0.0.1, port: 1, security: ssl, username: {LOGIN}, "
           "password_env: PW}}\n")
DEADLINE = 10.0


@dataclass
class Relay:
    """A relay serving `cfg` on `port`, queueing into `store`."""

    cfg: Config
    store: Store
    server: RelayServer
    host: str = "127.0.0.1"

    @property
    def port(self) -> int:
        return self.server.port

    def client(self, host: str | None = None) -> smtplib.SMTP:
        return smtplib.SMTP(host or self.host, self.port, timeout=DEADLINE)

    def queued(self) -> list[bytes]:
        return [row.body for row in self.store.outbox()]


MakeRelay = Callable[..., Relay]


@pytest.fixture
def relays(tmp_path: Path) -> Iterator[MakeRelay]:
    """`relays(relay_yaml, extra_yaml)` starts a relay from a watchers.yaml with that `relay:`
    mapping (listening on a free loopback port unless it says otherwise)."""
    started: list[Relay] = []

    def make(relay: str = "{}", extra: str = ACCOUNT, env: dict[str, str] | None = None) -> Relay:
        path = tmp_path / "watchers.yaml"
        path.write_text(f"{extra}mail: {{to: [admin@example.com]}}\nrelay: {relay}\nwatchers: []\n")
        raw = configmod.load(path, environ={"PW": "x", **(env or {})})
        cfg = raw if "listen" in relay else _on_free_port(raw)
        store = Store(tmp_path / "state.db")
        server = RelayServer(Intake(lambda: cfg, store, host="host1"))
        server.start()
        started.append(Relay(cfg, store, server))
        return started[-1]

    yield make
    for relay in started:
        relay.server.stop()
        relay.store.close()


def _on_free_port(cfg: Config) -> Config:
    assert cfg.relay is not None
    return replace(cfg, relay=replace(cfg.relay, port=0))


def test_an_accepted_message_is_queued_before_its_250_and_rewritten(relays: MakeRelay) -> None:
    relay = relays()
    with relay.client() as client:
        client.sendmail("backup@host1", ["ops@corp.example"],
                        b"From: backup@host1\r\nSubject: nightly\r\n\r\nall good\r\n")
    (body,) = relay.queued()
    row = relay.store.outbox()[0]
    assert row.kind == "relay"
    assert row.sender == LOGIN
    assert row.recipients == ("ops@corp.example",)
    assert b"From: backup on host1 via notifier <robot@example.com>\r\n" in body
    assert b"Reply-To: backup@host1\r\n" in body
    assert body.endswith(b"\r\n\r\nall good\r\n")
    figures = relay.store.relay_figures(0)
    assert [(f.client, f.accepted) for f in figures] == [("local", 1)]


def test_no_250_when_the_message_cannot_be_stored(relays: MakeRelay) -> None:
    relay = relays()
    relay.store.path.unlink()  # every write is refused from now on
    with relay.client() as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail("a@host1", ["ops@corp.example"], b"Subject: x\r\n\r\nbody\r\n")
    assert refused.value.smtp_code == 451


def test_8bit_headers_bare_lf_and_long_lines_are_carried(relays: MakeRelay) -> None:
    relay = relays()
    long_line = b"x" * 5000
    message = "Subject: 备份完成 ✓\nX-Note: ünïcödé\n\nline one\n".encode() + long_line + b"\nend\n"
    with relay.client() as client:
        client.sendmail("a@host1", ["ops@corp.example"], message)
    (body,) = relay.queued()
    assert "Subject: 备份完成 ✓\r\nX-Note: ünïcödé\r\n".encode() in body
    assert b"Content-Transfer-Encoding: quoted-printable\r\n" in body  # the long line, made sendable
    assert b"\r\n" + long_line[:75] + b"=\r\n" in body
    assert b"\n" not in body.replace(b"\r\n", b"")


def test_an_oversize_message_is_refused_during_data_and_nothing_is_stored(relays: MakeRelay) -> None:
    relay = relays("{max_message_size: 2048}")
    with relay.client() as client:
        client.ehlo()
        assert client.esmtp_features["size"] == "2048"
        del client.esmtp_features["size"]  # a client that does not announce the size
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("a@host1", ["ops@corp.example"], b"Subject: big\r\n\r\n" + b"y" * 10_000)
        assert refused.value.smtp_code == 552
        assert b"max_message_size" in refused.value.smtp_error
        client.ehlo()
        with pytest.raises(smtplib.SMTPSenderRefused) as announced:  # one that announces it
            client.sendmail("a@host1", ["ops@corp.example"], b"Subject: big\r\n\r\n" + b"y" * 10_000)
        assert announced.value.smtp_code == 552
        client.sendmail("a@host1", ["ops@corp.example"], b"Subject: small\r\n\r\nfits\r\n")
    assert len(relay.queued()) == 1
    assert relay.store.relay_figures(0)[0].rejected == {"max_message_size": 2}


def test_a_thousand_recipients_are_refused_by_rule(relays: MakeRelay) -> None:
    relay = relays()
    with relay.client() as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail("a@host1", [f"u{i}@corp.example" for i in range(1000)], b"Subject: x\r\n\r\nx\r\n")
    assert refused.value.smtp_code == 550
    assert b"max_recipients" in refused.value.smtp_error
    assert relay.queued() == []


def test_envelope_addresses_cannot_carry_header_text(relays: MakeRelay) -> None:
    relay = relays()
    with relay.client() as client:
        client.ehlo()
        assert client.mail('"eve\\ Bcc:victim"@x.example')[0] == 501
        assert client.mail("eve@x.example")[0] == 250
        client.rcpt("victim@x.example,other@x.example")
        client.rcpt("<victim2@x.example> <other2@x.example>")
        client.rcpt("ops@corp.example")
        assert client.data(b"Subject: x\r\n\r\nx\r\n")[0] == 250
    (row,) = relay.store.outbox()
    assert row.recipients
    assert all(re.fullmatch(r"[\w.]+@[\w.]+", r) for r in row.recipients)
    assert not any(name.lower().startswith(b"bcc") for name in row.body.split(b"\r\n"))


def test_local_users_go_to_mail_to(relays: MakeRelay) -> None:
    relay = relays()
    with relay.client() as client:
        client.sendmail("root", ["root"], b"Subject: cron\r\n\r\nout\r\n")
    assert relay.store.outbox()[0].recipients == ("admin@example.com",)


def test_rate_limit_per_client_and_the_quarantine(relays: MakeRelay) -> None:
    relay = relays("{screen: {rate_per_minute: 2, subject_patterns: ['(?i)secret'], quarantine: true}}")
    with relay.client() as client:
        with pytest.raises(smtplib.SMTPDataError) as screened:
            client.sendmail("a@host1", ["ops@corp.example"], b"Subject: top SECRET\r\n\r\nx\r\n")
        assert b"subject_patterns" in screened.value.smtp_error
        for n in range(2):
            client.sendmail("a@host1", ["ops@corp.example"], f"Subject: {n}\r\n\r\nx\r\n".encode())
        with pytest.raises(smtplib.SMTPDataError) as limited:
            client.sendmail("a@host1", ["ops@corp.example"], b"Subject: 3\r\n\r\nx\r\n")
    assert limited.value.smtp_code == 451  # temporary: the same message is welcome later
    assert b"4.7.1 Deferred by screening rule" in limited.value.smtp_error
    assert b"rate_per_minute" in limited.value.smtp_error
    assert len(relay.queued()) == 2
    kept, limited_kept = relay.store.quarantined()
    assert kept.rule == "subject_patterns"
    assert b"top SECRET" in kept.message.body
    assert limited_kept.rule == "rate_per_minute"  # kept too: cron through sendmail does not retry
    assert b"Subject: 3\r\n" in limited_kept.message.body
    assert relay.store.quarantine_release([kept.id], time.time()) == [kept.id]
    assert len(relay.queued()) == 3
    assert relay.store.quarantined() == [limited_kept]
    (figures,) = relay.store.relay_figures(0)
    assert figures.accepted == 3
    assert figures.rejected == {"subject_patterns": 1, "rate_per_minute": 1}


def test_one_message_id_is_one_message(relays: MakeRelay) -> None:
    relay = relays()
    message = b"Message-ID: <once@host1>\r\nSubject: x\r\n\r\nx\r\n"
    with relay.client() as client:
        client.sendmail("a@host1", ["ops@corp.example"], message)
        client.sendmail("a@host1", ["ops@corp.example"], message)  # a retry after a lost 250
        with pytest.raises(smtplib.SMTPDataError) as other:
            client.sendmail("a@host1", ["ops@corp.example"], message + b"changed\r\n")
    assert b"Message-ID" in other.value.smtp_error
    assert len(relay.queued()) == 1


def test_a_slow_client_is_disconnected_and_frees_its_slot(relays: MakeRelay) -> None:
    relay = relays("{max_clients: 2, timeout: 1s}")
    idle = [socket.create_connection((relay.host, relay.port)) for _ in range(2)]
    try:
        for sock in idle:
            assert sock.recv(100).startswith(b"220")
        with socket.create_connection((relay.host, relay.port)) as third:
            assert third.recv(100).startswith(b"421")
        for sock in idle:  # the relay hangs up on them after its timeout
            sock.settimeout(DEADLINE)
            while sock.recv(100):
                pass
        deadline = time.monotonic() + DEADLINE
        while True:  # the slots are given back as the connections close
            with relay.client() as client:
                if client.noop()[0] == 250:
                    break
            assert time.monotonic() < deadline, "no slot came free"
    finally:
        for sock in idle:
            sock.close()


def test_a_hundred_clients_at_once(relays: MakeRelay) -> None:
    relay = relays()

    def send(n: int) -> None:
        with relay.client() as client:
            client.sendmail(f"job{n}@host1", ["ops@corp.example"], f"Subject: {n}\r\n\r\nx\r\n".encode())

    with ThreadPoolExecutor(100) as pool:
        list(pool.map(send, range(100)))
    assert len(relay.queued()) == 100


def _outside_address() -> str | None:
    """An address of this machine that is not loopback (no packet is sent to find it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe, contextlib.suppress(OSError):
        probe.connect(("192.0.2.1", 9))
        address = str(probe.getsockname()[0])
        return None if address.startswith("127.") or address == "0.0.0.0" else address
    return None


def test_beyond_loopback_only_clients_that_log_in_over_tls(relays: MakeRelay, tls_ca: LocalCA,
                                                           tmp_path: Path) -> None:
    outside = _outside_address()
    if outside is None:
        pytest.skip("this machine has no address but loopback")
    cert = tls_ca.issue_cert("localhost", "127.0.0.1", outside)
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "relay.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "relay.key"))
    relay = relays(f"{{listen: '{outside}:0', certificate: relay.pem, key: relay.key, "
                   f"clients: {{backup: {{username: backup, password_env: BACKUP_PW}}}}}}",
                   env={"BACKUP_PW": "s3cret"})
    with relay.client(outside) as stranger:
        stranger.ehlo()
        assert stranger.mail("a@x.example")[0] == 530
        assert stranger.docmd("AUTH", "PLAIN AGJhY2t1cABzM2NyZXQ=")[0] == 538  # not over TLS
    context = ssl.create_default_context(cafile=tls_ca.ca_file)
    with relay.client(outside) as client:
        client.starttls(context=context)
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("backup", "wrong")
        client.login("backup", "s3cret")
        client.sendmail("backup@host2", ["ops@corp.example"], b"Subject: via tls\r\n\r\nx\r\n")
    assert [(f.client, f.accepted) for f in relay.store.relay_figures(0)] == [("backup", 1)]


@pytest.mark.parametrize(("command", "reply", "status"), [
    ("MAIL", "421 4.7.0 Too busy, try later", "sent"),
    ("DATA", "451 4.3.0 Try later", "sent"),
    ("DATA", DROP, "sent"),
    ("QUIT", GARBAGE, "sent"),
    ("DATA", "554 5.7.1 Message refused as spam", "dead"),
])
def test_relayed_mail_meets_the_outbox_faults_like_alerts(
        command: str, reply: str, status: str, tmp_path: Path, smtp_163: SmtpServer) -> None:
    path = tmp_path / "watchers.yaml"
    path.write_text(f"{smtp_yaml(smtp_163)}mail: {{to: [admin@example.com]}}\nrelay: {{}}\nwatchers: []\n")
    cfg = configmod.load(path, environ={"PW": PASSWORD})
    store = Store(tmp_path / "state.db")
    intake = Intake(lambda: cfg, store, host="host1")
    queued = intake.submit("local", "job@host1", ["ops@corp.example"], b"Subject: x\r\n\r\nbody\r\n")
    assert queued.startswith("250")
    smtp_163.fail(command, reply)
    now = [time.time()]
    sender = Sender(cfg, store, clock=lambda: now[0])
    sender.deliver()
    now[0] += 2 * BACKOFF_CAP  # past any backoff: the next round retries what waits
    sender.deliver()
    (entry,) = store.log_entries()
    assert entry.status == status
    assert entry.kind == "relay"
    assert len(smtp_163.received) == (status == "sent")
    assert all(r.mail_from == USERNAME for r in smtp_163.received)
    assert [row.state for row in store.outbox()] == ([] if status == "sent" else ["dead"])  # no bounce
    (figures,) = store.relay_figures(0)
    assert (figures.delivered, figures.dead) == ((1, 0) if status == "sent" else (0, 1))
    intake.commits.close()
    store.close()


def _three_connections(tmp_path: Path, smtp_163: SmtpServer) -> tuple[Config, Store, Intake]:
    """A relay whose one account may open 3 connections at once: its config, store and intake."""
    path = tmp_path / "watchers.yaml"
    account = smtp_yaml(smtp_163).replace("password_env: PW", "password_env: PW, connections: 3")
    path.write_text(f"{account}mail: {{to: [admin@example.com]}}\nrelay: {{}}\nwatchers: []\n")
    cfg = configmod.load(path, environ={"PW": PASSWORD})
    store = Store(tmp_path / "state.db")
    return cfg, store, Intake(lambda: cfg, store, host="host1")


def test_a_backlog_goes_out_over_the_accounts_connections(tmp_path: Path, smtp_163: SmtpServer) -> None:
    cfg, store, intake = _three_connections(tmp_path, smtp_163)
    for n in range(30):
        intake.submit("local", "job@host1", ["ops@corp.example"], f"Subject: {n}\r\n\r\nx\r\n".encode())
    report = Sender(cfg, store).deliver()
    assert report.sent == 30
    assert len(smtp_163.logins) == 3  # one login per connection
    subjects = sorted(int(r.content.split(b"Subject: ")[1].split(b"\r\n")[0]) for r in smtp_163.received)
    assert subjects == list(range(30))
    intake.commits.close()
    store.close()


def test_rounds_over_several_lanes_reuse_each_lanes_connection(tmp_path: Path, smtp_163: SmtpServer) -> None:
    cfg, store, intake = _three_connections(tmp_path, smtp_163)
    sender = Sender(cfg, store)
    for round_ in range(3):
        for n in range(30):
            message = f"Subject: {round_}.{n}\r\n\r\nx\r\n".encode()
            intake.submit("local", "job@host1", ["ops@corp.example"], message)
        assert sender.deliver(keep_open=True).sent == 30
    sender.close_kept()
    assert len(smtp_163.received) == 90
    assert len(smtp_163.logins) == 3  # each lane's connection served every round
    intake.commits.close()
    store.close()


def test_rounds_reuse_one_connection_while_mail_keeps_coming(tmp_path: Path, smtp_163: SmtpServer) -> None:
    path = tmp_path / "watchers.yaml"
    path.write_text(f"{smtp_yaml(smtp_163)}mail: {{to: [admin@example.com]}}\nrelay: {{}}\nwatchers: []\n")
    cfg = configmod.load(path, environ={"PW": PASSWORD})
    store = Store(tmp_path / "state.db")
    intake = Intake(lambda: cfg, store, host="host1")
    sender = Sender(cfg, store)
    for n in range(3):
        intake.submit("local", "job@host1", ["ops@corp.example"], f"Subject: {n}\r\n\r\nx\r\n".encode())
        assert sender.deliver(keep_open=True).sent == 1
    sender.close_kept()
    assert len(smtp_163.received) == 3
    assert len(smtp_163.logins) == 1
    intake.commits.close()
    store.close()


def test_a_relay_that_cannot_listen_is_a_status_line_and_tries_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "watchers.yaml"
        path.write_text(f"relay: {{listen: '127.0.0.1:{port}'}}\nwatchers: []\n")
        cfg = configmod.load(path)
        store = Store(tmp_path / "state.db")
        service = RelayService(lambda: cfg, store, lambda: None)
        service.apply()
        assert service.server is None
        assert "NOT LISTENING" in service.status()
        assert service.problem is not None
        assert f"127.0.0.1:{port}" in service.problem
        service._next_try = 0.0  # a minute later, still taken: no second error line
        service.retry()
        assert len([r for r in caplog.records if "cannot listen" in r.getMessage()]) == 1
    service._next_try = 0.0  # the minute has passed
    service.retry()
    try:
        assert service.status() == f", relay on 127.0.0.1:{port}"
    finally:
        service.stop()
        store.close()


def test_relay_config_errors_name_file_line_key_and_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "watchers.yaml"
    path.write_text("relay:\n  listen: 0.0.0.0:25\n  account: nosuch\n  certificate: missing.pem\n"
                    "  screen: {max_recipient: 5, presets: [passport]}\n  clients: {a: {username: a}}\n"
                    "watchers: []\n")
    with pytest.raises(ConfigError) as error:
        configmod.load(path)
    problems = {p.key: (p.line, p.message) for p in error.value.problems}
    assert problems["relay.listen"][0] == 2
    assert "needs `clients:` with logins and a TLS `certificate`" in problems["relay.listen"][1]
    assert "names no account under smtp" in problems["relay.account"][1]
    assert "missing.pem cannot be read" in problems["relay.certificate"][1]
    assert "did you mean 'max_recipients'" in problems["relay.screen.max_recipient"][1]
    assert "must be one of credit_card" in problems["relay.screen.presets"][1]
    assert "needs a password source" in problems["relay.clients.a"][1]


PATHS = ["<a@b>", "<a@b> SIZE=100", "<a.b+c@d-e.f.example> BODY=8BITMIME SIZE=5", "<a..b@c>",
         "<.a@b>", "<a@b..c>", "<a@-b>", '<"q"@b>', "<a@[1.2.3.4]>", "<>", " <a@b>", "<a@b>x",
         "<a b@c>", "<root>", "<a@b.>", "<a@b>  SIZE=1", "<a@b@c>", "<@x:a@b>", "<a@b> (c) SIZE=1",
         "<a@b>\tSIZE=1", "<a@b>  ", "<a@b>(c)", "<A!#$%&'*+/=?^_`{|}~-@Z9.example>", "<abcd@e>"]


@pytest.mark.parametrize("local_part_limit", [0, 3])
def test_plain_paths_are_read_as_aiosmtpd_reads_them(local_part_limit: int) -> None:
    """The relay's shortcut for <local@domain> gives what aiosmtpd's own parser gives."""
    loop = asyncio.new_event_loop()
    try:
        ours = _RelaySMTP(None, data_size_limit=1000, loop=loop)  # type: ignore[arg-type]
        theirs = SMTP(None, loop=loop)
        ours.local_part_limit = theirs.local_part_limit = local_part_limit
        assert [ours._getaddr(p) for p in PATHS] == [theirs._getaddr(p) for p in PATHS]
    finally:
        loop.close()


def test_a_client_password_the_daemon_cannot_read_is_a_454_and_one_log_line(
        relays: MakeRelay, caplog: pytest.LogCaptureFixture) -> None:
    relay = relays("{clients: {backup: {username: backup, password_env: BACKUP_PW_UNSET}}}")
    with relay.client() as client:
        client.ehlo()
        code, reply = client.docmd("AUTH", "PLAIN AGJhY2t1cABhbnl0aGluZw==")  # backup / anything
    assert code == 454
    assert b"BACKUP_PW_UNSET" not in reply  # the client learns nothing of the config
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.exc_info for r in errors] == [None]
    assert "BACKUP_PW_UNSET" in errors[0].getMessage()


def test_validate_warns_about_a_relay_client_password_it_cannot_read(tmp_path: Path) -> None:
    path = tmp_path / "watchers.yaml"
    path.write_text("relay: {clients: {backup: {username: backup, password_env: BACKUP_PW_UNSET}}}\n"
                    "watchers: []\n")
    (warning,) = [str(w) for w in configmod.load(path, environ={}).warnings if "relay" in str(w)]
    assert "relay.clients.backup" in warning
    assert "BACKUP_PW_UNSET is not set" in warning


def test_a_message_id_that_cannot_be_echoed_is_still_a_250(relays: MakeRelay) -> None:
    relay = relays()
    with relay.client() as client:
        client.ehlo()
        client.mail("a@host1")
        client.rcpt("ops@corp.example")
        code, reply = client.data("Message-ID: <ünïcödé@host1>\r\nSubject: x\r\n\r\nbody\r\n".encode())
    assert (code, reply) == (250, b"2.0.0 Queued")
    assert len(relay.queued()) == 1


def test_a_line_over_998_characters_arrives_at_the_provider(tmp_path: Path, smtp_163: SmtpServer) -> None:
    """The provider refuses a line that long ("500 Line too long"): it would be a dead letter."""
    path = tmp_path / "watchers.yaml"
    path.write_text(f"{smtp_yaml(smtp_163)}mail: {{to: [admin@example.com]}}\n"
                    "relay: {listen: '127.0.0.1:0'}\nwatchers: []\n")
    cfg = configmod.load(path, environ={"PW": PASSWORD})
    store = Store(tmp_path / "state.db")
    server = RelayServer(Intake(lambda: cfg, store, host="host1"))
    server.start()
    line = "z" * 1500
    try:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=DEADLINE) as client:
            client.sendmail("job@host1", ["ops@corp.example"], f"Subject: long\n\n{line}\nend\n".encode())
        assert Sender(cfg, store).deliver().sent == 1
    finally:
        server.stop()
        store.close()
    (got,) = smtp_163.received
    arrived = email.message_from_bytes(got.content, policy=email.policy.default)
    assert isinstance(arrived, EmailMessage)
    assert arrived.get_content().replace("\r\n", "\n").startswith(f"{line}\nend\n")


def test_the_tls_key_can_come_from_a_systemd_credential(relays: MakeRelay, tls_ca: LocalCA,
                                                        tmp_path: Path) -> None:
    """With DynamicUser the key cannot be a file only notifier reads, except through LoadCredential=."""
    cert = tls_ca.issue_cert("localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "relay.pem"))
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    cert.private_key_pem.write_to_path(str(credentials / "relay.key"))
    (credentials / "relay.key").chmod(0o600)
    relay = relays("{certificate: relay.pem, key_credential: relay.key}",
                   env={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert relay.cfg.relay is not None
    assert relay.cfg.relay.key == str(credentials / "relay.key")
    assert not relay.cfg.warnings
    with relay.client() as client:
        client.starttls(context=ssl.create_default_context(cafile=tls_ca.ca_file))
        client.sendmail("a@host1", ["ops@corp.example"], b"Subject: tls\r\n\r\nx\r\n")
    assert len(relay.queued()) == 1


def test_a_key_others_can_read_is_a_warning(tmp_path: Path, tls_ca: LocalCA) -> None:
    cert = tls_ca.issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "relay.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "relay.key"))
    (tmp_path / "relay.key").chmod(0o644)
    path = tmp_path / "watchers.yaml"
    path.write_text("relay: {certificate: relay.pem, key: relay.key}\nwatchers: []\n")
    (warning,) = [str(w) for w in configmod.load(path, environ={}).warnings]
    assert "relay.key" in warning
    assert "can be read by others" in warning
    assert "key_credential" in warning
    path.write_text("relay: {certificate: relay.pem, key_credential: relay.key}\nwatchers: []\n")
    (outside_the_unit,) = [str(w) for w in configmod.load(path, environ={}).warnings]
    assert "CREDENTIALS_DIRECTORY is not set here" in outside_the_unit


def test_a_batch_that_fails_in_any_way_is_a_state_error_and_the_writer_goes_on(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    commits = GroupCommit(store)
    try:
        unstorable = Relayed("local", "<a@host1>", None, "a@host1", (object(),), b"x")  # type: ignore[arg-type]
        with pytest.raises(StateError):
            commits.queue(unstorable, ()).result(timeout=DEADLINE)
        fine = Relayed("local", "<b@host1>", None, "a@host1", ("ops@corp.example",), b"Subject: b\r\n\r\n")
        assert commits.queue(fine, ()).result(timeout=DEADLINE) is None
        assert len(store.outbox()) == 1
    finally:
        commits.close()
        store.close()
