"""Looking back at scale: 1,000 watchers x 100 kept versions and 100,000 send log entries.

Issue 11's targets: `notifier stats` and `notifier log --since 30d` each under 0.5 s; the state
database under 200 MB with 13 KB pages; housekeeping prunes 100,000 expired entries without
delaying any check by more than a second.

1. How to store versions: on a sample of watchers, the bytes per version kept as they are, as
   zlib, and as notifier.snapshots stores them (the newest whole, older ones as reverse line
   deltas), with the time each takes, extrapolated to the whole state.
2. The state: every version written through Store.record_success, as checks write them; send
   log entries through notifier.ledger.log and 90 days of check counts, in bulk transactions.
   Its size on disk, after a checkpoint.
3. The commands, as users run them (a fresh `python -m notifier.cli` each time, output read
   through a pipe): first run and best of --repeat.
4. `notifier run` on a copy of the state with all 100,000 entries expired and every watcher
   due every 10 s: how long the prune takes and the slowest check meanwhile (a check's time in
   the log includes its wait for the database, which is what a prune could hold up), beside a
   run as long on the same state without anything to prune.

Pages are 13 KB of prose-like lines with prices; each version changes one to five lines.
Nothing is asserted; the figures are printed side by side with the targets.

    .venv/bin/python bench/history.py [--watchers 1000] [--versions 100] [--entries 100000]
                                      [--repeat 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout, too
from notifier import ledger, snapshots  # noqa: E402 - the code under test
from notifier.ledger import DURATION_BUCKETS, Attempt  # noqa: E402
from notifier.statedir import StateDir  # noqa: E402

DAY = 86400.0
_WORDS = [word for line in (
    "the of and to in a is that for it as was with be by on not this are or from at which have an",
    "they you were there been one all we their has would when if so no will can more about up out",
    "some could time these two may then first any now such like our over even most made after also",
    "many before must through back years where much way well down price update release version",
    "report service account order payment delivery security") for word in line.split()]


def page(rng: random.Random, size: int) -> list[str]:
    """About `size` bytes of lines like a filtered web page: sentences, some with a price."""
    lines, total = [], 0
    while total < size:
        line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14))).capitalize()
        if rng.random() < 0.3:
            line += f" ¥{rng.randint(1, 999)}.{rng.randint(0, 99):02d}"
        lines.append(line)
        total += len(line.encode()) + 1
    return lines


def versions_of(seed: int, count: int, size: int) -> list[str]:
    """`count` successive versions of one page, oldest first, one to five lines changed each."""
    rng = random.Random(seed)
    lines = page(rng, size)
    out = []
    for _ in range(count):
        lines = list(lines)
        for _ in range(rng.randint(1, 5)):
            at = rng.randrange(len(lines))
            lines[at] = lines[at].rsplit(" ", 1)[0] + f" ¥{rng.randint(1, 999)}.{rng.randint(0, 99):02d}"
        out.append("\n".join(lines) + "\n")
    return out


def compare_storage(sample: int, count: int, size: int, watchers: int) -> None:
    raw = packed = kept = 0
    t_zlib = t_delta = 0.0
    for seed in range(sample):
        texts = versions_of(seed, count, size)
        raw += sum(len(t.encode()) for t in texts)
        started = time.perf_counter()
        packed += sum(len(zlib.compress(t.encode(), 6)) for t in texts)
        t_zlib += time.perf_counter() - started
        started = time.perf_counter()
        kept += len(snapshots.whole(texts[-1]))
        kept += sum(len(snapshots.delta(old, new)) for old, new in itertools.pairwise(texts))
        t_delta += time.perf_counter() - started
    n = sample * count
    print(f"storing versions ({sample} watchers x {count} versions of {size / 1000:.0f} KB, "
          f"extrapolated to {watchers:,} watchers):")
    print(f"  {'as text':<28} {raw / n:8,.0f} B/version  {raw / n * watchers * count / 1e6:8,.0f} MB")
    print(f"  {'zlib':<28} {packed / n:8,.0f} B/version  {packed / n * watchers * count / 1e6:8,.0f} MB"
          f"  {t_zlib / n * 1000:.2f} ms/version")
    print(f"  {'newest whole + line deltas':<28} {kept / n:8,.0f} B/version  "
          f"{kept / n * watchers * count / 1e6:8,.0f} MB  {t_delta / n * 1000:.2f} ms/version (chosen)")


def write_config(directory: Path, watchers: int, every: str) -> Path:
    lines = ["timezone: UTC", "mail: {to: [me@example.com]}", f"defaults: {{every: {every}, history: 100}}",
             "watchers:"]
    lines += [f"  - {{name: w{n:04d}, kind: file, path: {directory / 'pages' / f'w{n:04d}.txt'}}}"
              for n in range(watchers)]
    path = directory / "watchers.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def build(directory: Path, watchers: int, count: int, size: int, entries: int) -> Path:
    (directory / "pages").mkdir(parents=True, exist_ok=True)
    config = write_config(directory, watchers, "10m")
    store = StateDir(directory / "state").open_store()
    store._db.execute("PRAGMA synchronous = OFF")  # building only: the layout is the same, fsyncs are not
    now = time.time()
    started = time.perf_counter()
    try:
        for n in range(watchers):
            texts = versions_of(1000 + n, count, size)
            for v, text in enumerate(texts):
                store.record_success(f"w{n:04d}", now - (count - v) * 3600, {}, text, history=count)
            (directory / "pages" / f"w{n:04d}.txt").write_text(texts[-1])
            if n % 100 == 99:
                rate = (n + 1) * count / (time.perf_counter() - started)
                print(f"  {n + 1:,} watchers written, {rate:,.0f} versions/s", flush=True)
    finally:
        store.close()
    print(f"  versions: {watchers * count:,} through Store.record_success in "
          f"{time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    fill_ledger(directory / "state" / "state.db", watchers, entries, now)
    print(f"  {entries:,} send log entries and {watchers * 90:,} day counts in "
          f"{time.perf_counter() - started:.0f} s")
    return config


def fill_ledger(path: Path, watchers: int, entries: int, now: float) -> None:
    """Send log entries over the last 90 days (a quarter of them deferred once, one in fifty
    dead), and 90 days of check counts for every watcher, written by notifier.ledger itself."""
    rng = random.Random(5)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN")
    times = sorted((finished, created) for created in (now - rng.random() * 90 * DAY for _ in range(entries))
                   for finished in [created + rng.expovariate(1 / 3.0)])
    for n, (finished, created) in enumerate(times):  # in the order they finish, as the outbox writes them
        name = f"w{rng.randrange(watchers):04d}"
        row = {"message_id": f"<{n}.{int(created)}@bench.example.com>", "watcher": name, "kind": "change",
               "account": rng.choice(["qq", "qq", "gmail"]), "sender": "robot@example.com",
               "created": created,
               "body": f"Subject: [notifier] {name} changed: 2 added\r\n\r\n".encode() + b"x" * 9000}
        dead = rng.random() < 0.02
        deferrals = {"451": 1} if rng.random() < 0.25 else {}
        reply = "550 5.1.1 Mailbox unavailable" if dead else "250 2.0.0 Ok: queued as 4Zx7"
        ledger.log(db, row, ["me@example.com"], {}, deferrals, 1 + sum(deferrals.values()),  # type: ignore[arg-type]
                   Attempt(finished, reply), "dead" if dead else "sent")
    fill_days(db, watchers, now, rng)
    db.execute("COMMIT")
    db.close()


def fill_days(db: sqlite3.Connection, watchers: int, now: float, rng: random.Random) -> None:
    """91 days of check counts for every watcher: 144 checks a day (every 10 minutes), a few
    changes, now and then a failure, durations around 50 ms."""
    today = ledger.day_of(now)
    columns = ", ".join(f"d{i}" for i in range(len(DURATION_BUCKETS)))
    marks = ", ".join("?" * len(DURATION_BUCKETS))
    for n in range(watchers):
        for day in range(today - 90, today + 1):
            counts = [0] * len(DURATION_BUCKETS)
            for _ in range(144):
                counts[ledger.bucket_of(rng.lognormvariate(-3, 1))] += 1
            db.execute(f"INSERT OR REPLACE INTO check_day (watcher, day, checks, changes, failures, "
                       f"{columns}) VALUES (?, ?, 144, ?, ?, {marks})",
                       (f"w{n:04d}", day, rng.randint(0, 3), int(rng.random() < 0.05), *counts))


def size_report(path: Path) -> float:
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size, pages, free = (db.execute(f"PRAGMA {p}").fetchone()[0]
                              for p in ("page_size", "page_count", "freelist_count"))
    tables = {}
    try:
        for name, size in db.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC"):
            tables[name] = size
    except sqlite3.OperationalError:  # SQLite built without dbstat
        pass
    db.close()
    total = path.stat().st_size
    print(f"state database: {total / 1e6:.1f} MB ({pages:,} pages of {page_size} B, {free:,} free)")
    for name, size in list(tables.items())[:6]:
        print(f"  {name:<24} {size / 1e6:8.1f} MB")
    return total / 1e6


def timed(config: Path, args: list[str], repeat: int) -> tuple[float, float, float, int]:
    """(first, best) wall seconds of `notifier ARGS` in a fresh interpreter, its least CPU
    seconds (user + system: what contention for the CPU does not inflate), and output bytes."""
    times, cpu, size = [], [], 0
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "notifier.cli", "-c", str(config), *args],
                                capture_output=True, check=True, cwd=ROOT)
        times.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        size = len(result.stdout)
    return times[0], min(times), min(cpu), size


def commands(config: Path, repeat: int) -> dict[str, float]:
    print(f"\n{'command':<36} {'first s':>8} {'best s':>8} {'CPU s':>8} {'output':>10}")
    best = {}
    for args in (["stats"], ["stats", "--json"], ["log", "--since", "30d"],
                 ["log", "--since", "30d", "--json"], ["history", "w0001"], ["diff", "w0001", "1", "0"],
                 ["show", "w0001", "1"]):
        first, fastest, cpu, size = timed(config, args, repeat)
        best[" ".join(args)] = fastest
        print(f"notifier {' '.join(args):<27} {first:8.3f} {fastest:8.3f} {cpu:8.3f} {size / 1000:8.0f} KB")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import notifier.cli"], check=True, cwd=ROOT)
    print(f"(of which starting Python and importing notifier.cli: {time.perf_counter() - started:.3f} s)")
    return best


def run_daemon(directory: Path, watchers: int, expire: bool, seconds: float = 0.0,
               timeout: float = 300.0) -> tuple[float, list[float], str]:
    """`notifier run` on a copy of the state, every watcher due every 10 s. With `expire`, every
    send log entry is made older than log_retention first and the run lasts until the prune is
    done; otherwise it lasts `seconds`. Returns how long it ran, the time of each check logged
    meanwhile, and the daemon's line about the prune."""
    state = directory / "run-state"  # a copy: the built state stays as it was, for --keep
    shutil.rmtree(state, ignore_errors=True)
    shutil.copytree(directory / "state", state)
    if expire:
        db = sqlite3.connect(state / "state.db", isolation_level=None)
        db.execute("UPDATE send_log SET finished = finished - 91 * 86400, created = created - 91 * 86400")
        db.close()
    config = write_config(directory, watchers, "10s")
    log_path = directory / "daemon.log"
    with log_path.open("wb") as out:
        command = [sys.executable, "-m", "notifier.cli", "-c", str(config), "-s", str(state), "--log-level",
                   "info", "run"]
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    started = time.monotonic()
    try:
        while time.monotonic() - started < (timeout if expire else seconds):
            if expire and "pruned " in log_path.read_text(errors="replace"):
                break
            time.sleep(0.05)
    finally:
        ran = time.monotonic() - started
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        shutil.rmtree(state, ignore_errors=True)
    text = log_path.read_text(errors="replace")
    during = text.partition(" pruned ")[0] if expire else text  # checks before the prune was done
    pruned = re.search(r"pruned .*", text)
    times = [float(t) for t in re.findall(r"watcher=\S+ kind=file outcome=\w+ ([\d.]+)s", during)]
    return ran, times, pruned.group(0) if pruned else "nothing pruned"


def prune_under_load(directory: Path, watchers: int) -> tuple[float, float, float, int]:
    """The prune of 100,000 expired entries under `notifier run`, beside a run as long without
    one: (prune seconds, slowest check during it, slowest check without it, checks during it)."""
    ran, during, line = run_daemon(directory, watchers, expire=True)
    _, alone, _ = run_daemon(directory, watchers, expire=False, seconds=ran)

    def summary(times: list[float]) -> str:
        ordered = sorted(times) or [0.0]
        return (f"{len(times):,} checks, slowest {ordered[-1]:.2f} s, p99 "
                f"{ordered[int(0.99 * (len(ordered) - 1))]:.2f} s, median {ordered[len(ordered) // 2]:.3f} s")

    print(f"\nnotifier run, {watchers:,} watchers due every 10 s (a check's time includes its wait for "
          f"the database):")
    print(f"  pruning all entries ({line}) took {ran:.1f} s; meanwhile {summary(during)}")
    print(f"  the same {ran:.1f} s without a prune: {summary(alone)}")
    return ran, max(during, default=0.0), max(alone, default=0.0), len(during)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--versions", type=int, default=100)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--page-kb", type=float, default=13.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="build the state here and keep it (default: a temp "
                        "dir); one built there before is used again")
    args = parser.parse_args()
    size = int(args.page_kb * 1000)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPU(s); "
          f"SQLite {sqlite3.sqlite_version}\n")
    compare_storage(10, args.versions, size, args.watchers)
    directory = args.keep or Path(tempfile.mkdtemp(prefix="notifier-history-"))
    try:
        if (directory / "state" / "state.db").exists():
            print(f"\nreusing the state built in {directory} before")
            config = write_config(directory, args.watchers, "10m")
        else:
            print(f"\nbuilding the state in {directory}:")
            config = build(directory, args.watchers, args.versions, size, args.entries)
        megabytes = size_report(directory / "state" / "state.db")
        best = commands(config, args.repeat)
        pruned, slowest, unloaded, checks = prune_under_load(directory, args.watchers)
    finally:
        if args.keep is None:
            shutil.rmtree(directory, ignore_errors=True)
    print("\ntargets (issue 11)                        measured")
    print(f"  notifier stats              < 0.5 s       {best['stats']:.3f} s")
    print(f"  notifier log --since 30d    < 0.5 s       {best['log --since 30d']:.3f} s")
    print(f"  state database              < 200 MB      {megabytes:.0f} MB")
    print(f"  slowest check during prune  < 1 s         {slowest:.2f} s ({checks:,} checks; prune took "
          f"{pruned:.1f} s; {unloaded:.2f} s without a prune)")
    print(json.dumps({"stats_s": best["stats"], "log_30d_s": best["log --since 30d"], "db_mb": megabytes,
                      "prune_s": pruned, "slowest_check_s": slowest, "slowest_without_prune_s": unloaded}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
