"""Alert mail throughput and change-to-inbox latency against a real implicit-TLS SMTP server.

Issue target: render + enqueue + deliver 1,000 change alerts to a local aiosmtpd over one SSL
connection per batch, reporting alerts per second, and the change-to-accepted latency of a
single alert under the real daemon (target: under 1 s).

Why it is built this way:

* The SMTP server is the project's own test server (tests/servers/smtp.py: aiosmtpd, implicit
  TLS with a trustme CA, AUTH), not a mock, so the client pays for real TLS, real AUTH and real
  reply parsing. It runs in a child process of this script: in-process, the asyncio server
  would fight the client for the GIL and both figures would mostly measure the server. The
  child stamps every accepted message with time.monotonic(), which on Linux is one clock for
  every process, so acceptance times are exact, not rounded to a polling interval.
* Each stage is timed on its own (diff, render + build, enqueue, deliver), so a slow figure
  points at its stage. Enqueueing uses one transaction per alert, as a check does.
* The floor is smtplib.SMTP_SSL sending the same pre-built bytes over one connection with no
  outbox, no claims and no logging: what the network path costs with nothing of notifier in
  it. notifier's deliver figure is printed beside it.
* Latency runs `notifier run` itself with a file watcher `every: 1s`: the file is replaced
  atomically and the time to the server's 250 is measured. The check interval puts a floor
  under it (a change waits up to 1 s for its check), so "check-to-accepted" is also given:
  from the moment the daemon's `outcome=changed` line appears in its log (polled every 2 ms;
  log timestamps have only second resolution) to acceptance, i.e. what notifier adds.

Nothing is asserted; the figures are printed side by side for a person to judge.

    .venv/bin/python bench/mail_throughput.py                  # 1,000 alerts, batches of 200
    .venv/bin/python bench/mail_throughput.py --batch 1000 --repeats 10
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import smtplib
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # the project's own test SMTP server lives in tests/servers
sys.path.insert(1, str(BENCH))  # bench scripts run as files, not as a package

import trustme  # noqa: E402 - the test CA, for the server child
from loopback import render_page  # noqa: E402 - realistic ~13 KB pages whose versions differ a little

from notifier import config as configmod  # noqa: E402
from notifier.alerts import Alerter  # noqa: E402
from notifier.config import Config  # noqa: E402
from notifier.diff import Diff, compute  # noqa: E402
from notifier.outbox import Sender  # noqa: E402
from notifier.store import Queued, Store, WatcherState  # noqa: E402
from tests.servers.smtp import SmtpServer  # noqa: E402 - the project's real test server

VENV_BIN = Path(sys.executable).parent
POLL = 0.002  # seconds between looks at the daemon's log and the server's count
WATCHER = "doc"


# --- the SMTP server, in a child process ---------------------------------------------------


class TimedSmtpServer(SmtpServer):
    """The test server, also recording when each message was accepted, so latency is timed by
    the server's own clock rather than by how often the parent polls."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.accepted_at: list[float] = []

    def _store(self, message: Any) -> None:
        self.accepted_at.append(time.monotonic())  # just before the 250 goes out
        super()._store(message)


def serve_smtp(directory: Path) -> int:
    """Child mode: run the test server and answer one-line commands on stdin with JSON.

    Commands: `stats` (received and login counts), `times` (monotonic acceptance times),
    `reset` (forget what was received), `quit`. The loop ends at `quit` or when the parent
    closes stdin, so the child cannot outlive the benchmark.
    """
    # aiosmtpd logs a deprecation warning about its own Session API on every login; not ours.
    logging.getLogger("mail.log").setLevel(logging.ERROR)

    ca = trustme.CA()
    ca_file = directory / "bench-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = TimedSmtpServer("ssl", ca=ca, ca_file=str(ca_file))
    server.start()
    _reply({"port": server.port, "ca_file": str(ca_file), "username": server.username,
            "password": server.password})
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "stats":
                _reply({"received": len(server.received), "logins": len(server.logins)})
            elif command == "times":
                _reply(list(server.accepted_at))
            elif command == "reset":
                server.received.clear()  # keeps the child's memory flat between phases
                server.accepted_at.clear()  # so index i of both lists is the same message
                _reply({})
            else:
                break
    finally:
        server.stop()
    return 0


def _reply(value: object) -> None:
    """One JSON line to the parent, flushed at once: the parent blocks reading it."""
    print(json.dumps(value), flush=True)


class SmtpChild:
    """The parent's handle on the server child: start it, ask it, stop it."""

    def __init__(self, directory: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve-smtp", str(directory)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=ROOT)
        info = self._read()
        self.port: int = info["port"]
        self.ca_file: str = info["ca_file"]
        self.username: str = info["username"]
        self.password: str = info["password"]

    def _read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the SMTP server child exited; see its output above")
        return json.loads(line)

    def ask(self, command: str) -> Any:
        """Send one command and wait for its one-line answer (the child answers in order)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def stats(self) -> tuple[int, int]:
        """(messages received, successful logins) since the server started."""
        data = self.ask("stats")
        return data["received"], data["logins"]

    def accepted_at(self) -> list[float]:
        """Monotonic time of each acceptance since the last reset, in arrival order."""
        return [float(t) for t in self.ask("times")]

    def close(self) -> None:
        """Ask the child to stop; kill it only if it does not within 10 s."""
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def __enter__(self) -> SmtpChild:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- config --------------------------------------------------------------------------------


def write_config(directory: Path, smtp: SmtpChild, watched: Path) -> Path:
    """A watchers.yaml as a user would write it: one ssl account (password from $PW, the
    bench CA as ca_file) and one file watcher checked every second."""
    path = directory / "watchers.yaml"
    path.write_text(
        "state_dir: state\n"
        "mail:\n"
        "  to: [alerts@example.com]\n"
        "smtp:\n"
        f"  bench: {{host: 127.0.0.1, port: {smtp.port}, security: ssl, username: {smtp.username},"
        f" password_env: PW, ca_file: {smtp.ca_file}}}\n"
        "watchers:\n"
        f"  - {{name: {WATCHER}, kind: file, path: {watched}, every: 1s}}\n"
    )
    return path


# --- throughput ----------------------------------------------------------------------------


@dataclass
class Throughput:
    """Seconds per stage for `alerts` messages, and what the server saw."""

    alerts: int
    body_bytes: int
    diff_s: float
    build_s: float
    enqueue_s: float
    deliver_s: float
    deliver_rounds: int
    logins: int
    received: int
    floor_s: float
    floor_logins: int
    floor_received: int


def page_pairs(count: int) -> list[tuple[str, str]]:
    """`count` (old, new) text pairs of ~13 KB that differ in a few lines, as a page update does."""
    return [(render_page(i, 0).decode(), render_page(i, 1).decode()) for i in range(count)]


def measure_throughput(cfg: Config, smtp: SmtpChild, directory: Path, alerts: int, batch: int,
                       pages: int) -> tuple[Throughput, list[Queued]]:
    """Time diff, render + build, enqueue and deliver for `alerts` change alerts, then the floor."""
    wc = cfg.watcher(WATCHER)
    assert wc is not None  # written by write_config; only a broken config could lose it
    pairs = page_pairs(pages)
    now = time.time()
    alerter = Alerter(cfg)

    started = time.perf_counter()
    diffs: list[Diff] = [compute(old, new, wc.context_lines) for old, new in
                         (pairs[i % pages] for i in range(alerts))]
    diff_s = time.perf_counter() - started

    started = time.perf_counter()
    queued: list[Queued] = []
    for i, diff in enumerate(diffs):
        old, new = pairs[i % pages]
        state = WatcherState(WATCHER, content=old, last_check=now - 60, last_change=now - 3600)
        for alert in alerter.change(wc, diff, old, new, state, now).alerts:
            assert isinstance(alert, Queued)  # not a digest watcher
            queued.append(alert)
    build_s = time.perf_counter() - started

    store = Store(directory / "throughput.db")
    started = time.perf_counter()
    for alert in queued:
        store.enqueue([alert])  # one transaction per alert, as each check commits its own
    enqueue_s = time.perf_counter() - started

    received0, logins0 = smtp.stats()
    sender = Sender(cfg, store)
    rounds = 0
    started = time.perf_counter()
    for _ in range(alerts):  # bounded: each round sends at least one message or we stop
        report = sender.deliver(limit=batch)
        if report.sent:
            rounds += 1
        else:
            if report.errors:
                print(f"deliver failed: {report.errors[0]}", file=sys.stderr)
            break
    deliver_s = time.perf_counter() - started
    received1, logins1 = smtp.stats()
    store.close()
    smtp.ask("reset")

    floor_s = smtplib_floor(smtp, queued)
    received2, logins2 = smtp.stats()
    smtp.ask("reset")
    return Throughput(
        alerts=len(queued), body_bytes=sum(len(q.body) for q in queued), diff_s=diff_s,
        build_s=build_s, enqueue_s=enqueue_s, deliver_s=deliver_s, deliver_rounds=rounds,
        logins=logins1 - logins0, received=received1 - received0, floor_s=floor_s,
        floor_logins=logins2 - logins1, floor_received=received2,
    ), queued


def smtplib_floor(smtp: SmtpChild, queued: Sequence[Queued]) -> float:
    """The same bytes over one verified SMTP_SSL connection and nothing else: the floor."""
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=smtp.ca_file)
    started = time.perf_counter()
    with smtplib.SMTP_SSL("127.0.0.1", smtp.port, context=context, timeout=30) as client:
        client.login(smtp.username, smtp.password)
        for q in queued:
            client.sendmail(q.sender, list(q.recipients), q.body)
    return time.perf_counter() - started


# --- latency -------------------------------------------------------------------------------


class LogTail:
    """Reads the lines a process appends to its log file, from where it last stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.lines: list[str] = []

    def poll(self) -> list[str]:
        """New complete lines since the last call; a half-written last line waits."""
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        self._offset += len(data)
        chunks = (self._partial + data).split(b"\n")
        self._partial = chunks.pop()
        new = [c.decode("utf-8", "replace") for c in chunks]
        self.lines += new
        return new

    def wait_for(self, pattern: str, timeout: float) -> bool:
        """Poll until a line matching `pattern` has appeared (ever); False after `timeout`."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            if any(regex.search(line) for line in self.lines):
                return True
            time.sleep(0.02)
        return False


@dataclass
class Latency:
    """Seconds per change: file write → accepted, and changed-log-line → accepted."""

    write_to_accepted: list[float]
    check_to_accepted: list[float]
    write_to_check: list[float]
    missed: int
    exit_code: int | None
    log_problems: list[str]


def replace_file(path: Path, text: str) -> float:
    """Write `text` beside `path` and rename it over: the check never reads half a file.
    Returns the monotonic time of the rename, when the change becomes visible."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    moment = time.monotonic()
    os.replace(tmp, path)
    return moment


def measure_latency(cfg_path: Path, watched: Path, smtp: SmtpChild, repeats: int,
                    timeout: float) -> Latency:
    """Run `notifier run`, change the watched file `repeats` times, time each alert's arrival."""
    log_path = cfg_path.parent / "daemon.log"
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"} | {"PW": smtp.password}
    result = Latency([], [], [], 0, None, [])
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([str(VENV_BIN / "notifier"), "-c", str(cfg_path), "run"],
                                stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=cfg_path.parent)
    tail = LogTail(log_path)
    try:
        if not tail.wait_for(rf"watcher={WATCHER} .*outcome=baseline", 30):
            print(f"the daemon never logged its baseline check:\n{log_path.read_text()}", file=sys.stderr)
            return result
        changed = re.compile(rf"watcher={WATCHER} .*outcome=changed")
        for n in range(repeats):
            # Vary the moment of the write against the 1 s check timer, so the samples cover
            # every phase of it instead of hitting the same spot each time.
            time.sleep(1.2 + (n * 0.37) % 1.0)
            tail.poll()
            seen_changes = sum(1 for line in tail.lines if changed.search(line))
            received0, _ = smtp.stats()
            wrote = replace_file(watched, render_page(0, n + 1).decode())
            logged: float | None = None
            accepted = False
            deadline = wrote + timeout
            while time.monotonic() < deadline:
                if logged is None and any(changed.search(line) for line in tail.poll()):
                    logged = time.monotonic()
                if smtp.stats()[0] > received0:
                    accepted = True
                    break
                time.sleep(POLL)
            if not accepted:
                result.missed += 1
                continue
            acc = smtp.accepted_at()[received0]
            if logged is None:  # the line and the 250 landed within one poll
                tail.poll()
                logged = acc if sum(1 for ln in tail.lines if changed.search(ln)) > seen_changes else None
            result.write_to_accepted.append(acc - wrote)
            if logged is not None:
                result.check_to_accepted.append(max(0.0, acc - logged))
                result.write_to_check.append(logged - wrote)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            result.exit_code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        tail.poll()
        result.log_problems = [ln for ln in tail.lines if " WARNING " in ln or " ERROR " in ln]
    return result


# --- report --------------------------------------------------------------------------------


def rate(count: int, seconds: float) -> str:
    """Per-second figure for the table; a stage too fast to time prints n/a, not infinity."""
    return f"{count / seconds:9.0f}/s" if seconds > 0 else "      n/a"


def spread(values: Sequence[float]) -> str:
    """min/median/max in ms: five samples are too few for a mean to mean much."""
    if not values:
        return "no samples"
    ms = [v * 1000 for v in values]
    return (f"min {min(ms):7.1f} ms   median {statistics.median(ms):7.1f} ms   "
            f"max {max(ms):7.1f} ms   (n={len(ms)})")


def report(t: Throughput, batch: int, lat: Latency | None, out: IO[str]) -> None:
    """Print every figure of this run side by side, floor next to notifier."""
    pipeline_s = t.build_s + t.enqueue_s + t.deliver_s
    print(f"\n{t.alerts} change alerts, {t.body_bytes / t.alerts / 1024:.1f} KiB per message on "
          f"average, batches of {batch} (Sender.deliver(limit={batch}))", file=out)
    print(f"  {'stage':42} {'seconds':>8} {'alerts/s':>11}", file=out)
    rows = [
        ("diff (notifier.diff.compute, not in total)", t.diff_s),
        ("render + build (Alerter.change)", t.build_s),
        ("enqueue (Store.enqueue, 1 tx per alert)", t.enqueue_s),
        ("deliver (Sender.deliver over SSL)", t.deliver_s),
        ("total: render + enqueue + deliver", pipeline_s),
        ("total including diff", pipeline_s + t.diff_s),
    ]
    for label, seconds in rows:
        print(f"  {label:42} {seconds:8.3f} {rate(t.alerts, seconds)}", file=out)
    print(f"  deliver: {t.received} accepted by the server in {t.deliver_rounds} deliver() round(s), "
          f"{t.logins} SMTP login(s) = connection(s)", file=out)
    print("\nSending the same pre-built messages, side by side:", file=out)
    print(f"  {'notifier Sender.deliver':42} {t.deliver_s:8.3f} {rate(t.received, t.deliver_s)}"
          f"   {t.logins} connection(s), outbox bookkeeping per message", file=out)
    print(f"  {'floor: smtplib.SMTP_SSL, one connection':42} {t.floor_s:8.3f} "
          f"{rate(t.floor_received, t.floor_s)}   {t.floor_logins} connection(s), nothing else", file=out)
    if t.floor_s > 0:
        print(f"  notifier / floor: {t.deliver_s / t.floor_s:.2f}x the time", file=out)
    if lat is None:
        return
    print("\nLatency under `notifier run` (file watcher every: 1s, target < 1 s):", file=out)
    print(f"  change-to-accepted (file replaced → server 250):  {spread(lat.write_to_accepted)}", file=out)
    print(f"  write-to-check (file replaced → outcome=changed): {spread(lat.write_to_check)}", file=out)
    print(f"  check-to-accepted (outcome=changed → server 250): {spread(lat.check_to_accepted)}", file=out)
    print("  (change-to-accepted includes waiting for the next 1 s check; check-to-accepted is "
          "what notifier adds after noticing)", file=out)
    if lat.missed:
        print(f"  {lat.missed} change(s) not accepted within the timeout", file=out)
    print(f"  daemon exit code after SIGTERM: {lat.exit_code}", file=out)
    for line in lat.log_problems[:10]:
        print(f"  daemon log: {line}", file=out)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; the hidden --serve-smtp runs this file as the server child."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--alerts", type=int, default=1000, help="change alerts to send (1000)")
    parser.add_argument("--batch", type=int, default=200,
                        help="Sender.deliver(limit=...) per round, the daemon's default (200)")
    parser.add_argument("--pages", type=int, default=50, help="distinct page pairs to diff (50)")
    parser.add_argument("--repeats", type=int, default=5, help="latency samples (5)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds to wait per latency sample")
    parser.add_argument("--no-latency", action="store_true", help="skip the daemon latency part")
    parser.add_argument("--serve-smtp", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_smtp:
        return serve_smtp(args.serve_smtp)
    if args.alerts < 1 or args.batch < 1 or args.pages < 1:
        parser.error("--alerts, --batch and --pages must be at least 1")

    with tempfile.TemporaryDirectory(prefix="bench-mail-") as tmp, SmtpChild(Path(tmp)) as smtp:
        directory = Path(tmp)
        watched = directory / "watched.html"
        watched.write_text(render_page(0, 0).decode())
        cfg_path = write_config(directory, smtp, watched)
        cfg = configmod.load(cfg_path, {"PW": smtp.password})
        print(f"SMTP: aiosmtpd (tests/servers/smtp.py) on 127.0.0.1:{smtp.port}, implicit TLS, "
              f"AUTH, in a child process; {os.cpu_count()} CPU(s)", flush=True)
        throughput, _ = measure_throughput(cfg, smtp, directory, args.alerts, args.batch, args.pages)
        latency = None
        if not args.no_latency:
            print("throughput measured; now timing single alerts under `notifier run` ...", flush=True)
            latency = measure_latency(cfg_path, watched, smtp, args.repeats, args.timeout)
        report(throughput, args.batch, latency, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
