"""Several `notifier run` daemons on one PostgreSQL (issue 15), beside one daemon on SQLite.

The issue's run: 3 daemons sharing 9,000 url watchers every 60 s against a loopback page server
for 10 minutes, one daemon killed (-9) at minute 5; then the same watchers on one daemon with
SQLite. It prints, per run:

* checks per period: every watcher's requests are mapped to the due time (its grid point) they
  served, so a due time served twice is a duplicate and a due time of a complete period without
  a request is a miss (the periods around the kill are shown apart: a check the killed daemon
  had claimed runs once its lease expires);
* the database's cost: CPU seconds of the PostgreSQL server processes (postmaster and every
  backend, from /proc) per check, which is the claim, the fenced result and the heartbeats;
  and the daemons' own CPU per check;
* the takeover: for the checks the killed daemon held a claim on, the time from the kill until
  another daemon fetched each of them.

From the measured database cost per check it works out, on paper, how many checks a second one
PostgreSQL core sustains, and what 100,000 watchers every 10 minutes over 10 hosts need.

Why it is built this way: the daemons are the real `notifier run`, each in its own process and
state directory, the store URL in their environment as a credential would give it; the server is
tests/servers/postgres.py's throwaway cluster (fsync off: the figures are CPU, not disk); the page
server is bench/daemon_idle.py's, whose request log is the log of check starts.

    .venv/bin/python bench/fleet.py                                # the issue's 10 minutes
    .venv/bin/python bench/fleet.py --minutes 4 --kill-at 2 --sqlite-minutes 2   # shorter
    .venv/bin/python bench/fleet.py --minutes 0 --sqlite-minutes 3               # SQLite only
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import psycopg

from notifier import config as configmod
from notifier.config import WatcherConfig

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(ROOT))
from daemon_idle import TimedPageServer, sample, watcher_name  # noqa: E402 - bench scripts run as files

from tests.servers.postgres import Postgres  # noqa: E402 - the tests' throwaway cluster

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def write_config(path: Path, server: TimedPageServer, watchers: int, every: int, fleet: bool) -> None:
    lines = ["store_url_env: NOTIFIER_STORE"] if fleet else []
    lines += ["watchers:"]
    lines += [f"  - {{name: {watcher_name(i)}, kind: url, url: '{server.url(i)}', every: {every}s, "
              f"filters: [strip]}}" for i in range(watchers)]
    path.write_text("\n".join(lines) + "\n")


def start_daemon(config: Path, home: Path, url: str | None) -> subprocess.Popen[bytes]:
    home.mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ["PATH"], "STATE_DIRECTORY": str(home / "state")}
    if url:
        env["NOTIFIER_STORE"] = url
    with (home / "daemon.log").open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "notifier.cli", "-c", str(config), "--log-level",
                                 "warning", "run"], stdout=log, stderr=subprocess.STDOUT, env=env)


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) used so far by `pid`; 0 once it is gone."""
    s = sample(pid)
    return s.cpu_s if s else 0.0


def postgres_cpu(postmaster: int, seen: dict[int, float]) -> float:
    """CPU seconds of the postmaster and its children (backends come and go: the last figure of
    each pid ever seen is kept)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        pid, ppid = int(entry.name), int(fields[1])
        if pid == postmaster or ppid == postmaster:
            seen[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return sum(seen.values())


def slot_map(watchers: Sequence[WatcherConfig], requests: list[tuple[float, float, int]],
             since: float, until: float) -> tuple[Counter[int], list[str], list[tuple[str, float]]]:
    """(checks per period index, watchers with a due time served twice, misses) over the due
    times in [since, until)."""
    by_page: dict[int, list[float]] = defaultdict(list)
    for _mono, wall, page in requests:
        by_page[page].append(wall)
    per_period: Counter[int] = Counter()
    duplicates: list[str] = []
    missed = []
    every = watchers[0].schedule.every if watchers else 60.0
    until = since + every * int((until - since) // every)  # whole periods only
    for i, wc in enumerate(watchers):
        served = [_slot(wc, t, every) for t in by_page.get(i, [])]
        inside = [s for s in served if since <= s < until]
        duplicates += [wc.name] * (len(inside) - len(set(inside)))
        due = _slot(wc, since + every, every)
        while due < until - every:
            if due not in inside:
                missed.append((wc.name, due))
            due += every
        for s in set(inside):
            per_period[int((s - since) // every)] += 1
    return per_period, duplicates, missed


def _slot(wc: WatcherConfig, at: float, every: float) -> float:
    """The due time a request at `at` served: the latest grid point at or before it."""
    fire = wc.schedule.at_or_after(wc.name, at - every)
    assert fire is not None  # an interval grid never ends
    return fire


def fleet_run(args: argparse.Namespace, tmp: Path) -> None:
    pg = Postgres().init().start()
    try:
        name = pg.create_database()
        url = pg.url(name)
        postmaster = pg.proc.pid if pg.proc else 0
        server = TimedPageServer(args.watchers, hosts=args.hosts)
        with server:
            server.latency = args.latency
            config = tmp / "fleet.yaml"
            write_config(config, server, args.watchers, args.every, fleet=True)
            watchers = configmod.load(config, environ={"NOTIFIER_STORE": url}).watchers
            seen: dict[int, float] = {}
            daemons = [start_daemon(config, tmp / f"fleet-{k}", url) for k in range(args.daemons)]
            started = time.time()
            pg_cpu0 = postgres_cpu(postmaster, seen)
            kill_at = started + args.kill_at * 60
            killed_claims: list[str] = []
            killed_time = 0.0
            daemon_cpu: dict[int, float] = {}
            while time.time() < started + args.minutes * 60:
                time.sleep(1.0)
                for d in daemons:
                    daemon_cpu[d.pid] = max(daemon_cpu.get(d.pid, 0.0), cpu_of(d.pid))
                postgres_cpu(postmaster, seen)
                if not killed_time and args.kill_at and time.time() >= kill_at:
                    victim = _busiest(url, daemons)
                    victim.send_signal(signal.SIGKILL)
                    killed_time = time.time()
                    victim.wait()
                    killed_claims = _claims_of(url, victim.pid)  # a dead daemon's claims stay
                    daemons.remove(victim)
            pg_cpu = postgres_cpu(postmaster, seen) - pg_cpu0
            for d in daemons:
                d.send_signal(signal.SIGTERM)
            for d in daemons:
                d.wait(60)
            requests = server.log()
        first_full = started + args.every  # the first pass is spread by the start-up rule
        per_period, dups, missed = slot_map(watchers, requests, first_full, time.time() - args.every)
        checks = len(requests)
        print(f"== {args.daemons} daemons, PostgreSQL, {args.watchers} url watchers every {args.every} s, "
              f"{args.minutes:g} min")
        _print_periods(per_period, args.watchers)
        near = [m for m in missed if killed_time and killed_time - args.every <= m[1] <= killed_time + 30]
        rerun = sum(1 for name in dups if name in killed_claims)
        print(f"duplicates: {len(dups)} ({rerun} of them checks the killed daemon had claimed: its "
              f"request made, its result never recorded, run again after the lease); missed due "
              f"times: {len(missed) - len(near)} (+{len(near)} due between one period before the "
              f"kill and one lease after it)")
        print(f"PostgreSQL CPU: {pg_cpu:.1f} s = {100 * pg_cpu / (args.minutes * 60):.1f} % of one core; "
              f"{1000 * pg_cpu / max(checks, 1):.3f} ms per check")
        print(f"daemons' CPU: {sum(daemon_cpu.values()):.1f} s = "
              f"{1000 * sum(daemon_cpu.values()) / max(checks, 1):.2f} ms per check")
        if killed_time:
            _print_takeover(killed_claims, requests, killed_time)
        _print_paper(pg_cpu, checks)
    finally:
        pg.cleanup()


def _claims_of(url: str, pid: int) -> list[str]:
    """The checks daemon `pid` holds a claim on (its id is host:pid:random)."""
    with psycopg.connect(url) as db:
        rows = db.execute("SELECT name, claimed_by FROM fleet_check WHERE claimed_by IS NOT NULL").fetchall()
    return [r[0] for r in rows if r[1].split(":")[1] == str(pid)]


def _busiest(url: str, daemons: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """The daemon holding the most claims, looked for over up to 10 s: killing one that is
    between rounds would show no takeover at all."""
    deadline, best = time.monotonic() + 10, daemons[0]
    while time.monotonic() < deadline:
        held = {d.pid: len(_claims_of(url, d.pid)) for d in daemons}
        best = max(daemons, key=lambda d: held[d.pid])
        if held[best.pid]:
            break
        time.sleep(0.05)
    return best


def _print_periods(per_period: Counter[int], watchers: int) -> None:
    full = [per_period[k] for k in sorted(per_period)]
    print(f"checks per period (each must be {watchers}): {full}")


def _print_takeover(claims: list[str], requests: list[tuple[float, float, int]], killed: float) -> None:
    pages = {int(n.rsplit("-", 1)[1]) for n in claims}
    after: dict[int, float] = {}
    for _mono, wall, page in requests:
        if page in pages and wall > killed and page not in after:
            after[page] = wall - killed
    if not pages:
        print("kill: the killed daemon held no claim at that moment")
        return
    print(f"kill: {len(pages)} check(s) claimed by the killed daemon; all fetched again after "
          f"{max(after.values(), default=float('nan')):.1f} s (the first after "
          f"{min(after.values(), default=0):.1f} s); {len(pages) - len(after)} never")


def _print_paper(pg_cpu: float, checks: int) -> None:
    per_check = pg_cpu / max(checks, 1)
    rate = 1 / per_check if per_check else float("inf")
    need = 100_000 / 600
    print(f"on paper: one PostgreSQL core serves ~{rate:.0f} checks/s at this cost; 100,000 watchers "
          f"every 10 min over 10 hosts = {need:.0f} checks/s = {100 * need * per_check:.0f} % of one core "
          f"(plus 10 heartbeats every 5 s)")


def sqlite_run(args: argparse.Namespace, tmp: Path) -> None:
    server = TimedPageServer(args.watchers, hosts=args.hosts)
    with server:
        server.latency = args.latency
        config = tmp / "single.yaml"
        write_config(config, server, args.watchers, args.every, fleet=False)
        watchers = configmod.load(config).watchers
        daemon = start_daemon(config, tmp / "single", None)
        started = time.time()
        cpu = 0.0
        while time.time() < started + args.sqlite_minutes * 60:
            time.sleep(1.0)
            cpu = max(cpu, cpu_of(daemon.pid))
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
        requests = server.log()
    per_period, dups, missed = slot_map(watchers, requests, started + args.every, time.time() - args.every)
    print(f"== 1 daemon, SQLite, {args.watchers} url watchers every {args.every} s, "
          f"{args.sqlite_minutes:g} min")
    _print_periods(per_period, args.watchers)
    print(f"duplicates: {len(dups)}; missed due times: {len(missed)}")
    print(f"daemon CPU: {cpu:.1f} s = {1000 * cpu / max(len(requests), 1):.2f} ms per check")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=10.0, help="fleet run length (10); 0: skip")
    parser.add_argument("--kill-at", type=float, default=5.0, help="minute to kill -9 one daemon; 0: none")
    parser.add_argument("--sqlite-minutes", type=float, default=10.0, help="single-daemon run; 0: skip")
    parser.add_argument("--watchers", type=int, default=9000, help="url watchers in all (9000)")
    parser.add_argument("--daemons", type=int, default=3, help="daemons sharing them (3)")
    parser.add_argument("--every", type=int, default=60, help="check interval in seconds (60)")
    parser.add_argument("--hosts", type=int, default=4, help="loopback sites the pages are spread over")
    parser.add_argument("--latency", type=float, default=0.2,
                        help="seconds each page takes to answer, like a remote site (0.2)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="notifier-fleet-bench-") as tmp:
        if args.minutes:
            fleet_run(args, Path(tmp))
        if args.sqlite_minutes:
            sqlite_run(args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
