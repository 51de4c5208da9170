"""Kill -9 torture: does every change reach the inbox exactly once, whenever the daemon dies?

Each cycle starts `notifier run` (a file watcher checked every second, alerts to a real SMTP
server), appends one line "edit N" to the watched file, waits a random time and kills the
daemon with SIGKILL: during start-up, in the middle of a check's transaction, between the
server's 250 and the outbox commit, anywhere. After the last cycle one more daemon runs until
the outbox is empty, and then the mail that arrived is compared with the edits made:

* lost: an edit that is in no mail;
* duplicated: an edit in two different alerts (two Message-IDs: a real duplicate), and copies
  of one message delivered twice (the same Message-ID: the kill fell after the server accepted
  it and before the outbox forgot it, which a mail client shows as one message);
* spurious: a mail that carries no edit at all (a re-baseline, an empty diff, a health alert);
* `PRAGMA integrity_check` of the state database at the end.

The SMTP server is the project's own test server (tests/servers/smtp.py: aiosmtpd, implicit
TLS with a throwaway CA, AUTH) in this process; nothing is mocked. Nothing is asserted: the
counts are printed for a person to judge.

    .venv/bin/python bench/torture.py                  # 200 cycles, kill 0-3 s after each edit
    .venv/bin/python bench/torture.py --cycles 20 --seed 7
"""

from __future__ import annotations

import argparse
import email
import email.policy
import logging
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the project's own test SMTP server lives in tests/servers

import trustme  # noqa: E402 - the test CA

from tests.servers.smtp import PASSWORD, SmtpServer, smtp_yaml, write_ca_file  # noqa: E402

EDIT = re.compile(r"^\+edit (\d+)\s*$", re.MULTILINE)
DRAIN_TIMEOUT = 120.0  # seconds the last daemon gets to deliver everything


@dataclass
class Mail:
    message_id: str
    subject: str
    edits: set[int]


def parse(content: bytes) -> Mail:
    msg = email.message_from_bytes(content, policy=email.policy.default)
    body = msg.get_body(("plain",))
    text = body.get_content() if body is not None else ""
    return Mail(str(msg["Message-ID"]), str(msg["Subject"]), {int(n) for n in EDIT.findall(text)})


class Run:
    """`notifier run` as a child process, logging into one file for all cycles."""

    def __init__(self, config: Path, log: Path) -> None:
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "notifier.cli", "-c", str(config), "--log-level", "info", "run"],
                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "PW": PASSWORD})

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def pending(db: Path) -> int:
    """Messages still in the outbox, read as `notifier status` would (read-only)."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(con.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return -1


def integrity(db: Path) -> str:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return "; ".join(str(r[0]) for r in con.execute("PRAGMA integrity_check"))
    finally:
        con.close()


def wait_for(condition: object, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def torture(cycles: int, max_delay: float, seed: int, work: Path) -> None:
    rng = random.Random(seed)
    ca = trustme.CA()
    ca_file = write_ca_file(ca, work)
    logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd's own chatter
    with SmtpServer("ssl", ca=ca, ca_file=ca_file) as smtp:
        watched = work / "watched.txt"
        watched.write_text("start\n")
        config = work / "watchers.yaml"
        config.write_text(f"{smtp_yaml(smtp)}mail: {{to: [me@example.com]}}\ndefaults: {{every: 1s}}\n"
                          f"watchers:\n  - {{name: doc, kind: file, path: {watched}}}\n")
        log = work / "daemon.log"
        db = work / "state" / "state.db"

        first = Run(config, log)  # the baseline, so that edit 0 is a change
        if not wait_for(lambda: "outcome=baseline" in log.read_text(errors="replace"), 60):
            raise SystemExit(f"no baseline within 60 s; see {log}")
        first.stop()

        started = time.monotonic()
        delays = []
        for i in range(cycles):
            run = Run(config, log)
            with watched.open("a") as out:
                out.write(f"edit {i}\n")
            delays.append(rng.uniform(0, max_delay))
            time.sleep(delays[-1])
            run.kill()
            if (i + 1) % 20 == 0:
                print(f"  {i + 1}/{cycles} cycles, {len(smtp.received)} deliveries so far", flush=True)
        cycles_took = time.monotonic() - started

        last = Run(config, log)
        edits = set(range(cycles))

        def drained() -> bool:
            seen = set().union(*(parse(r.content).edits for r in smtp.received))
            return edits <= seen and pending(db) == 0

        drained_in_time = wait_for(drained, DRAIN_TIMEOUT)
        code = last.stop()
        for n, received in enumerate(smtp.received):  # for a look at what arrived (--keep)
            (work / f"mail-{n:04d}.eml").write_bytes(received.content)
        report(cycles, max_delay, seed, cycles_took, [parse(r.content) for r in smtp.received],
               log.read_text(errors="replace"), integrity(db), pending(db), drained_in_time, code)


def report(cycles: int, max_delay: float, seed: int, took: float, mails: list[Mail], log: str,
           check: str, left: int, drained: bool, code: int) -> None:
    by_id: dict[str, list[Mail]] = defaultdict(list)
    for mail in mails:
        by_id[mail.message_id].append(mail)
    distinct = [copies[0] for copies in by_id.values()]
    alerts_for: dict[int, set[str]] = defaultdict(set)
    for mail in distinct:
        for edit in mail.edits:
            alerts_for[edit].add(mail.message_id)
    lost = sorted(set(range(cycles)) - alerts_for.keys())
    twice = sorted(e for e, ids in alerts_for.items() if len(ids) > 1)
    spurious = [m for m in distinct if not m.edits]
    same_id = len(mails) - len(by_id)
    baselines = log.count("outcome=baseline")
    shown = [m.subject for m in spurious][:5]
    rows = [
        ("cycles (start, edit, kill -9)",
         f"{cycles} in {took:.0f} s, kill 0-{max_delay:g} s after the edit, seed {seed}"),
        ("edits made = alerts expected", f"{cycles} (each edit in exactly one alert)"),
        ("deliveries / distinct alerts", f"{len(mails)} / {len(by_id)} (several edits may share one alert)"),
        ("lost edits", f"{len(lost)}" + (f": {lost[:20]}" if lost else "")),
        ("edits in 2+ different alerts", f"{len(twice)}" + (f": {twice[:20]}" if twice else "")
         + " (different Message-IDs: real duplicates)"),
        ("copies sharing a Message-ID", f"{same_id} (kill between the server's 250 and the outbox commit)"),
        ("spurious mails (no edit)", f"{len(spurious)}" + (f": {shown}" if spurious else "")),
        ("baselines in the log", f"{baselines} (1 expected: the first start)"),
        ("left in the outbox", f"{left}" + ("" if drained else f" (not all in after {DRAIN_TIMEOUT:.0f} s)")),
        ("last daemon's exit code", str(code)),
        ("PRAGMA integrity_check", check),
        ("tracebacks in the log", str(log.count("Traceback"))),
    ]
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--cycles", type=int, default=200, help="start/edit/kill cycles (default 200)")
    parser.add_argument("--max-delay", type=float, default=3.0,
                        help="the kill comes 0 to this many seconds after the edit (default 3)")
    parser.add_argument("--seed", type=int, default=None, help="for a repeatable run")
    parser.add_argument("--keep", type=Path, default=None, help="work in this directory and keep it")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        torture(args.cycles, args.max_delay, seed, args.keep.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="notifier-torture-") as tmp:
            torture(args.cycles, args.max_delay, seed, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
