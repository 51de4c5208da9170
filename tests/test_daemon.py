"""notifier.daemon, as users run it: `notifier run` in a real process, real files, HTTP and SMTP.

Intervals are one second; every wait is a poll of the log or the SMTP server with a deadline.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from tests.messages import parse, plain_text
from tests.servers.http import LocalHTTPServer
from tests.servers.smtp import PASSWORD, SmtpServer, smtp_yaml

DEADLINE = 20.0


def poll(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Wait until `condition()` holds, checking often; fail naming `what` after `timeout`."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Daemon:
    """One `notifier run` subprocess with its log in a file the test can poll."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = config.parent / "daemon.log"
        self.env = {**os.environ, "PW": PASSWORD, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "notifier.cli", "-c", str(self.config), "--log-level", "info", "run"],
                stdout=log, stderr=subprocess.STDOUT, env=self.env)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.log()))

    def wait_log(self, pattern: str, count: int = 1, timeout: float = DEADLINE) -> None:
        poll(lambda: self.count(pattern) >= count, f"{count} x {pattern!r} in the log", timeout)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        self.proc = None
        return code

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class StartDaemon(Protocol):
    """The `daemons` fixture: start `notifier run` on `config`, with extra environment."""

    def __call__(self, config: Path, env: dict[str, str] | None = None) -> Daemon: ...


@pytest.fixture
def daemons() -> Iterator[StartDaemon]:
    """Start daemons with `daemons(config)`; any still running are killed after the test."""
    started: list[Daemon] = []

    def start(config: Path, env: dict[str, str] | None = None) -> Daemon:
        daemon = Daemon(config, env).start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.close()


def write_config(path: Path, smtp: SmtpServer, watchers: str, extra: str = "") -> Path:
    path.write_text(f"""\
{smtp_yaml(smtp)}mail: {{to: [me@example.com]}}
defaults: {{every: 1s}}
{extra}
watchers:
{watchers}
""")
    return path


def file_watcher(name: str, path: Path) -> str:
    return f"  - {{name: {name}, kind: file, path: {path}}}\n"


Doc = tuple[Path, Path]
"""What a `doc` fixture gives: (config, watched file)."""


@pytest.fixture
def doc(tmp_path: Path, smtp_server: SmtpServer) -> Doc:
    """(config, watched file): one file watcher "doc" checked every second, mail to the server."""
    watched = tmp_path / "watched.txt"
    watched.write_text("v1\n")
    return write_config(tmp_path / "watchers.yaml", smtp_server, file_watcher("doc", watched)), watched


def subjects(smtp: SmtpServer) -> list[str]:
    return [str(email.message_from_bytes(r.content, policy=email.policy.default)["Subject"])
            for r in smtp.received]


def test_file_change_sends_exactly_one_mail(doc: Doc, smtp_server: SmtpServer, daemons: StartDaemon) -> None:
    config, watched = doc
    daemon = daemons(config)
    daemon.wait_log(r"watcher=doc kind=file outcome=baseline")
    watched.write_text("v2\n")
    smtp_server.wait_for(1, timeout=DEADLINE)
    checks = daemon.count(r"watcher=doc .*outcome=unchanged")
    daemon.wait_log(r"watcher=doc .*outcome=unchanged", checks + 3)
    assert subjects(smtp_server) == ["[notifier] doc changed: 1 added, 1 removed"]
    assert daemon.stop() == 0
    assert "outcome=sent" in daemon.log()


def test_config_edits_are_picked_up_and_bad_ones_refused(
        tmp_path: Path, smtp_server: SmtpServer, daemons: StartDaemon) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("a\n")
    b.write_text("b\n")
    config = tmp_path / "watchers.yaml"
    daemon = daemons(write_config(config, smtp_server, file_watcher("a", a)))
    daemon.wait_log(r"watcher=a .*outcome=baseline")
    write_config(config, smtp_server, file_watcher("a", a) + file_watcher("b", b))
    daemon.wait_log(r"watcher=b .*outcome=baseline")
    write_config(config, smtp_server, file_watcher("b", b))
    daemon.wait_log(r"reloaded .*1 watcher\(s\), 0 added or changed, 1 removed")
    after_removal = daemon.count(r"watcher=a ")
    daemon.wait_log(r"watcher=b ", daemon.count(r"watcher=b ") + 3)
    assert daemon.count(r"watcher=a ") <= after_removal + 1  # one check may have been running
    config.write_text(config.read_text().replace("kind: file", "kind: fiel"))
    daemon.wait_log(r"reload refused: .*unknown kind 'fiel'")
    daemon.wait_log(r"watcher=b ", daemon.count(r"watcher=b ") + 2)  # the old config runs on
    assert daemon.stop() == 0


def test_failing_url_alerts_once_then_recovers_once(
        tmp_path: Path, smtp_server: SmtpServer, http_server: LocalHTTPServer, daemons: StartDaemon) -> None:
    http_server.set("/flaky", "down", status=500)
    watchers = f"  - {{name: site, kind: url, url: '{http_server.url('/flaky')}', error_after: 3}}\n"
    daemon = daemons(write_config(tmp_path / "watchers.yaml", smtp_server, watchers))
    smtp_server.wait_for(1, timeout=DEADLINE)
    daemon.wait_log(r"watcher=site .*outcome=failed", daemon.count(r"watcher=site .*outcome=failed") + 2)
    assert len(smtp_server.received) == 1
    assert subjects(smtp_server)[0].startswith("[notifier] site is failing (3 in a row)")
    http_server.set("/flaky", "up again")
    smtp_server.wait_for(2, timeout=DEADLINE)
    daemon.wait_log(r"watcher=site .*outcome=unchanged", 2)
    assert len(smtp_server.received) == 2
    assert re.fullmatch(r"\[notifier\] site is back to normal after \d+ failures", subjects(smtp_server)[1])
    assert daemon.stop() == 0


def test_restart_resumes_without_baseline_or_duplicate(doc: Doc, smtp_server: SmtpServer,
                                                       daemons: StartDaemon) -> None:
    config, _ = doc
    first = daemons(config)
    first.wait_log(r"watcher=doc .*outcome=baseline")
    assert first.stop(signal.SIGTERM) == 0
    second = daemons(config)
    second.wait_log(r"watcher=doc .*outcome=unchanged", first.count(r"outcome=unchanged") + 2)
    assert first.count(r"outcome=baseline") == 1
    assert smtp_server.received == []
    assert second.stop(signal.SIGINT) == 0


def test_kill_9_loses_no_alert(doc: Doc, smtp_server: SmtpServer, daemons: StartDaemon) -> None:
    """Kill -9 right after a change is committed, and right after the server accepted it.

    Every edit must reach the inbox. A second copy may only happen when the kill falls
    between the server's 250 and the outbox commit, and then carries the same Message-ID.
    """
    config, watched = doc
    rounds = 6
    for i in range(rounds):
        checks = Daemon(config).count(r"watcher=doc ")
        daemon = daemons(config)
        daemon.wait_log(r"watcher=doc ", checks + 1)  # running, and has seen the last edit
        with watched.open("a") as handle:
            handle.write(f"edit {i}\n")
        if i % 2:
            smtp_server.wait_for(len(smtp_server.received) + 1, timeout=DEADLINE)
        else:
            daemon.wait_log(r"watcher=doc .*outcome=changed", daemon.count(r"outcome=changed") + 1)
        daemon.stop(signal.SIGKILL)
    started = Daemon(config).count("started:")
    final = daemons(config)
    final.wait_log("started:", started + 1)
    poll(lambda: all(f"edit {i}" in _all_added(smtp_server) for i in range(rounds)),
         f"every edit in some mail; got {_all_added(smtp_server)}")
    assert final.stop() == 0
    by_id: dict[str, list[str]] = {}
    for received in smtp_server.received:
        msg = email.message_from_bytes(received.content, policy=email.policy.default)
        by_id.setdefault(str(msg["Message-ID"]), []).append(_added(received.content))
    for copies in by_id.values():
        assert len(set(copies)) == 1  # a duplicate is the very same message
    distinct = [copies[0] for copies in by_id.values()]
    for i in range(rounds):
        assert sum(f"edit {i}" in added for added in distinct) == 1, distinct
    duplicates = len(smtp_server.received) - len(by_id)
    print(f"kill -9 loop: {rounds} rounds, {len(by_id)} alerts, {duplicates} duplicate copies")


def _added(content: bytes) -> str:
    text = plain_text(parse(content))
    return "\n".join(ln for ln in text.splitlines() if ln.startswith("+") and not ln.startswith("+++"))


def _all_added(smtp: SmtpServer) -> str:
    return "\n".join(_added(r.content) for r in smtp.received)


def test_systemd_notify_protocol(tmp_path: Path, doc: Doc, daemons: StartDaemon) -> None:
    config, _ = doc
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify.sock"))
        sock.settimeout(DEADLINE)
        daemon = daemons(config, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                                      "WATCHDOG_USEC": "2000000"})
        seen: list[str] = []
        while not {"READY=1", "WATCHDOG=1"} <= {f for m in seen for f in m.split("\n")}:
            seen.append(sock.recv(4096).decode())
        status = [f for m in seen for f in m.split("\n") if f.startswith("STATUS=")]
        assert re.match(r"STATUS=1 watchers, next check in \d+ s, outbox \d+", status[0])
        assert daemon.stop() == 0
        assert "STOPPING=1" in sock.recv(4096).decode()


def test_invalid_config_exits_78_with_the_problems(tmp_path: Path, daemons: StartDaemon) -> None:
    config = tmp_path / "watchers.yaml"
    config.write_text("watchers:\n  - {name: x, kind: nope}\n")
    daemon = daemons(config)
    assert daemon.proc is not None
    assert daemon.proc.wait(timeout=30) == 78
    daemon.proc = None
    assert "watchers.yaml:2: watchers.x.kind: unknown kind 'nope'" in daemon.log()
    assert "Traceback" not in daemon.log()


def test_notifier_reload_signals_the_running_daemon(doc: Doc, daemons: StartDaemon) -> None:
    config, _ = doc
    daemon = daemons(config)
    daemon.wait_log(r"watcher=doc .*outcome=baseline")
    result = subprocess.run([sys.executable, "-m", "notifier.cli", "-c", str(config), "reload"],
                            capture_output=True, text=True, env=daemon.env, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "asked notifier (pid" in result.stdout
    daemon.wait_log(r"reloaded .*1 watcher\(s\), 0 added or changed, 0 removed")
    assert daemon.stop() == 0
    result = subprocess.run([sys.executable, "-m", "notifier.cli", "-c", str(config), "reload"],
                            capture_output=True, text=True, env=daemon.env, timeout=60, check=False)
    assert result.returncode == 2
    assert "no running notifier found" in result.stderr


def _status(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "notifier.cli", "-c", str(config), "status"],
                          capture_output=True, text=True, timeout=60, check=False)


def _atomic(path: Path, text: str) -> None:
    """What editors such as vim and VS Code do: write a temporary file, rename it over."""
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_a_running_daemon_survives_every_bad_edit(doc: Doc, daemons: StartDaemon) -> None:
    """Each class of bad edit is refused with one line naming file:line; the daemon keeps
    checking on its last good configuration, `status` says why, and a good edit is taken."""
    config, watched = doc
    good = config.read_text()
    daemon = daemons(config)
    daemon.wait_log(r"watcher=doc .*outcome=baseline")
    edits: list[tuple[str, Callable[[], object], str]] = [
        ("bad value", lambda: config.write_text(good.replace("every: 1s", "every: soon")),
         r"defaults.every: expected a duration"),
        ("unknown key", lambda: config.write_text(good + "bogus: 1\n"), r"bogus: unknown key"),
        ("empty file", lambda: config.write_text(""), r"is empty"),
        ("truncated mid-write", lambda: config.write_text(good[: good.index("watchers:") + 14]),
         r"watchers"),
        ("non-UTF-8", lambda: config.write_bytes(good.encode() + b"# caf\xe9\n"), r"is not UTF-8"),
        ("atomic rename", lambda: _atomic(config, good.replace("kind: file", "kind: fiel")),
         r"unknown kind 'fiel'"),
    ]
    for number, (what, edit, reason) in enumerate(edits, start=1):
        edit()
        daemon.wait_log(r"reload refused: ", number)
        refusal = re.findall(r"reload refused: .*", daemon.log())[-1]
        assert re.search(reason, refusal), (what, refusal)
        assert re.search(rf"{re.escape(str(config))}(:\d+)?: ", refusal), (what, refusal)
        checks = daemon.count(r"watcher=doc ")
        daemon.wait_log(r"watcher=doc ", checks + 1)  # still checking, on the old config
        status = _status(config)
        assert status.returncode == 78, (what, status.stdout, status.stderr)
        assert "REFUSED" in status.stdout, (what, status.stdout)
        assert re.search(reason, status.stdout), (what, status.stdout)
    config.unlink()  # deleted, then recreated: nothing to load meanwhile, then the new file
    checks = daemon.count(r"watcher=doc ")
    daemon.wait_log(r"watcher=doc ", checks + 2)
    config.write_text(good + file_watcher("second", watched))
    daemon.wait_log(r"reloaded .*2 watcher\(s\), 1 added or changed")
    daemon.wait_log(r"watcher=second .*outcome=baseline")
    assert "the daemon runs" in _status(config).stdout
    assert daemon.count(r"Traceback") == 0
    assert daemon.stop() == 0


def test_retry_after_moves_the_next_check(tmp_path: Path, smtp_server: SmtpServer,
                                          http_server: LocalHTTPServer, daemons: StartDaemon) -> None:
    """A 429 with Retry-After: 120 is not asked again every second; other watchers go on."""
    http_server.set("/limited", "slow down", status=429, headers={"Retry-After": "120"})
    watched = tmp_path / "watched.txt"
    watched.write_text("v1\n")
    watchers = (f"  - {{name: limited, kind: url, url: '{http_server.url('/limited')}'}}\n"
                + file_watcher("control", watched))
    daemon = daemons(write_config(tmp_path / "watchers.yaml", smtp_server, watchers))
    daemon.wait_log(r"watcher=limited: the site asked to come back in 120 s; next check at ")
    checks = daemon.count(r"watcher=control ")
    daemon.wait_log(r"watcher=control ", checks + 3)  # three more seconds of schedule
    assert http_server.count("/limited") == 1
    assert daemon.stop() == 0


def test_a_hung_sites_checks_take_their_turns_without_holding_up_the_others(
        tmp_path: Path, smtp_server: SmtpServer, http_server: LocalHTTPServer, daemons: StartDaemon) -> None:
    """`workers: 2`, `per_host: 1`: of four watchers of a site that never answers, one waits for
    it at a time and the other three hold no room, so a file watcher is still checked every
    second (the hung checks had taken both runs' room until their timeout)."""
    watched = tmp_path / "watched.txt"
    watched.write_text("v1\n")
    hung = "".join(f"  - {{name: hung-{i}, kind: url, url: '{http_server.url('/hang')}', timeout: 15s}}\n"
                   for i in range(4))
    daemon = daemons(write_config(tmp_path / "watchers.yaml", smtp_server,
                                  hung + file_watcher("control", watched), "workers: 2\nper_host: 1"))
    poll(lambda: http_server.count("/hang") >= 1, "the first request to the hung site")
    checks = daemon.count(r"watcher=control ")
    daemon.wait_log(r"watcher=control ", checks + 3, timeout=10)
    assert http_server.count("/hang") == 1  # its other watchers wait for their turn
    http_server.release()
    assert daemon.stop() == 0
