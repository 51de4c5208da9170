"""The steady-state cost of `notifier run` with 1,000 url watchers on a 60 s interval.

Issue targets: 1,000 watchers every 60 s against a loopback server; daemon RSS after 10
minutes at most 40 MiB and its average CPU at most 2 % (issue 10), an idle second (no check
starting) under 1 %, and check start times spread over each cycle (the per-name phase
works: no thundering herd).

Why it is built this way:

* The daemon is the real `notifier run` in a subprocess with a Maildir (no smtp account) and
  its state in a temporary directory, so the figures include everything a user's daemon
  carries: the checks' timetable and workers, the outbox and housekeeping lanes, the HTTP
  event loop, SQLite, lxml.
* The pages come from bench/loopback.py's PageServer (~13 KB each), whose handler is
  subclassed only to note each request's time and page. Each check makes exactly one
  request, so the request log *is* the log of check start times, at sub-millisecond
  resolution and without parsing the daemon's second-resolution log. Knowing the page (the
  watcher) also shows whether each check starts at its watcher's own interval phase
  (schedule.Schedule.at_or_after: a stable per-name offset within the interval).
* Once a second the script reads /proc/<pid>/status (VmRSS, VmHWM, Threads) and
  /proc/<pid>/stat (utime + stime of all threads). A second in which no check started is an
  "idle" second; with 1,000 checks a minute spread evenly there may be none at all, so the
  idle cost is also estimated as the intercept of a least-squares fit of CPU per second
  against checks started in that second (the slope is the CPU cost of one check).
* The spread is judged per 60 s cycle after the first full pass: checks per second (max and
  median) and the share of seconds with any check, beside the uniform ideal of 1000/60 ≈ 17
  per second in every second. The first pass after start-up is shown apart, since it is
  spread by the start-up rule, not by the interval phase.

Nothing is asserted; the figures are printed side by side for a person to judge. The bench
process (the page server) shares the machine's cores with the daemon, but its own CPU time is
not counted in the daemon's figures.

    .venv/bin/python bench/daemon_idle.py                  # 10 minutes, 1,000 watchers
    .venv/bin/python bench/daemon_idle.py --minutes 3      # a quicker look
"""

from __future__ import annotations

import argparse
import bisect
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loopback import PageServer, _Handler  # bench scripts run as files, not as a package

from notifier.schedule import stable_fraction

VENV_BIN = Path(sys.executable).parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = re.compile(r"/page/(\d+)\Z")
ANCHOR = datetime(2020, 1, 1, tzinfo=UTC).timestamp()  # schedule.Schedule.at_or_after's grid anchor
# Filter chains, as in the other benchmarks: "css" (an lxml parse per check) is the commonest
# real-world watcher and the one that loads the most code into the daemon.
FILTERS: dict[str, str] = {
    "none": "[]",
    "strip": "[strip]",
    "css": '[{css: "main article"}, strip]',
    "html2text": "[html2text, strip]",
}


class _TimedHandler(_Handler):
    """loopback's handler, first noting when the request came and which page it asked for."""

    server: TimedPageServer

    def do_GET(self) -> None:
        match = _PAGE.match(self.path)
        self.server.note(int(match.group(1)) if match else -1)
        super().do_GET()


class TimedPageServer(PageServer):
    """PageServer that remembers when every request arrived (one request = one check start),
    on the monotonic clock (for spread and CPU) and the wall clock (for the interval phase)."""

    def __init__(self, pages: int, hosts: int = 1) -> None:
        super().__init__(pages, hosts=hosts)
        self.RequestHandlerClass = _TimedHandler
        self.requests_log: list[tuple[float, float, int]] = []  # (monotonic, wall, page)
        self._log_lock = threading.Lock()

    def note(self, page: int) -> None:
        entry = (time.monotonic(), time.time(), page)
        with self._log_lock:
            self.requests_log.append(entry)

    def log(self) -> list[tuple[float, float, int]]:
        with self._log_lock:
            return sorted(self.requests_log)


@dataclass(frozen=True)
class Sample:
    """One look at the daemon: when, resident memory, CPU time used so far, thread count."""

    at: float
    rss_kib: int
    hwm_kib: int
    cpu_s: float
    threads: int


def sample(pid: int) -> Sample | None:
    """Read /proc for `pid`; None once the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)

    def kib(key: str) -> int:
        return int(fields.get(key, "0 kB").split()[0])

    after_name = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces
    utime, stime = int(after_name[11]), int(after_name[12])  # fields 14 and 15 of proc(5)
    return Sample(time.monotonic(), kib("VmRSS"), kib("VmHWM"), (utime + stime) / CLOCK_TICKS,
                  int(fields.get("Threads", "0")))


def watcher_name(page: int) -> str:
    """The watcher of page `page`; its name fixes its phase (schedule.stable_fraction)."""
    return f"page-{page:04d}"


def write_config(path: Path, server: PageServer, watchers: int, every: int, filters: str) -> None:
    """watchers.yaml with `watchers` url watchers, no smtp account (alerts go to a Maildir)."""
    lines = ["state_dir: state", "watchers:"]
    lines += [f"  - {{name: {watcher_name(i)}, kind: url, url: '{server.url(i)}', every: {every}s, "
              f"filters: {filters}}}" for i in range(watchers)]
    path.write_text("\n".join(lines) + "\n")


@dataclass
class Interval:
    """One sampling interval: its length, CPU seconds the daemon used and checks started."""

    start: float
    seconds: float
    cpu_s: float
    checks: int

    @property
    def cpu_percent(self) -> float:
        return 100.0 * self.cpu_s / self.seconds if self.seconds > 0 else 0.0


def intervals(samples: Sequence[Sample], starts: Sequence[float]) -> list[Interval]:
    """Pair consecutive samples into intervals and count the check starts inside each."""
    out = []
    for a, b in pairwise(samples):
        checks = bisect.bisect_left(starts, b.at) - bisect.bisect_left(starts, a.at)
        out.append(Interval(a.at, b.at - a.at, b.cpu_s - a.cpu_s, checks))
    return out


def average_cpu(chosen: Sequence[Interval]) -> str:
    """CPU % over the chosen seconds, weighted by their real length (sleeps overshoot)."""
    seconds = sum(i.seconds for i in chosen)
    if seconds <= 0:
        return "  n/a  (no such seconds)"
    return f"{100.0 * sum(i.cpu_s for i in chosen) / seconds:6.2f} %  over {seconds:5.0f} s"


def fit(chosen: Sequence[Interval]) -> tuple[float, float] | None:
    """Least squares CPU% = a + b * checks; (a, b), or None when checks never vary."""
    if len(chosen) < 3:
        return None
    xs = [float(i.checks) for i in chosen]
    ys = [i.cpu_percent for i in chosen]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - b * mx, b


@dataclass
class Cycle:
    """Check starts in one window of `every` seconds, counted per second."""

    label: str
    per_second: list[int]

    @property
    def checks(self) -> int:
        return sum(self.per_second)

    def line(self, ideal: float) -> str:
        counts = self.per_second
        busy = sum(1 for c in counts if c)
        return (f"  {self.label:13} {self.checks:6d} {max(counts):8d} {statistics.median(counts):7.1f} "
                f"{statistics.median([c for c in counts if c] or [0]):10.1f} "
                f"{100.0 * busy / len(counts):8.0f} % {max(counts) / ideal:9.1f}x")


def cycles(starts: Sequence[float], first: float, every: int, end: float, label: str) -> list[Cycle]:
    """Whole windows of `every` seconds from `first` up to `end`, each as per-second counts."""
    out = []
    n = 0
    while first + (n + 1) * every <= end:
        lo = first + n * every
        counts = [0] * every
        for t in starts[bisect.bisect_left(starts, lo):bisect.bisect_left(starts, lo + every)]:
            counts[min(every - 1, int(t - lo))] += 1
        out.append(Cycle(f"{label} {n + 1}", counts))
        n += 1
    return out


def outcomes(log_text: str) -> Counter[str]:
    """How many checks ended how (baseline, unchanged, changed, failed): a failing check is
    cheaper than a real one, so the CPU figures mean little unless these are as expected."""
    return Counter(re.findall(r"outcome=(\w+)", log_text))


def run(args: argparse.Namespace) -> int:
    """Serve the pages, run the daemon for --minutes while sampling it once a second, stop it
    with SIGTERM (as systemd does) and report. Every loop is bounded by the duration."""
    duration = int(args.minutes * 60)
    ideal = args.watchers / args.every
    server = TimedPageServer(args.watchers, args.hosts)  # typed as itself: __enter__ says PageServer
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp, server:
        directory = Path(tmp)
        cfg = directory / "watchers.yaml"
        write_config(cfg, server, args.watchers, args.every, FILTERS[args.filters])
        log_path = directory / "daemon.log"
        env = {k: v for k, v in os.environ.items() if k not in {"JOURNAL_STREAM", "NOTIFY_SOCKET"}}
        print(f"{args.watchers} url watchers every {args.every} s, filters {FILTERS[args.filters]}, "
              f"against {server.base_url}; running `notifier run` for {duration} s "
              f"({os.cpu_count()} CPUs) ...", flush=True)
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen([str(VENV_BIN / "notifier"), "-c", str(cfg), "run"],
                                    stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=directory)
        started = time.monotonic()
        samples: list[Sample] = []
        mutated = 0
        try:
            for k in range(duration + 1):  # one sample a second, at fixed offsets from start
                time.sleep(max(0.0, started + k - time.monotonic()))
                got = sample(proc.pid)
                if got is None or proc.poll() is not None:
                    print(f"the daemon exited early (code {proc.poll()}):\n{log_path.read_text()[-3000:]}",
                          file=sys.stderr)
                    break
                samples.append(got)
                if args.mutate and k and k % args.every == 0:
                    mutated += len(server.mutate(args.mutate))
                if k and k % 60 == 0:
                    print(f"  {k // 60:3d} min: RSS {got.rss_kib / 1024:5.1f} MiB, "
                          f"{len(server.requests_log)} checks so far", flush=True)
        finally:
            stop_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                code: int | None = proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()  # did not stop on SIGTERM: reported as exit code None
                proc.wait(timeout=10)
                code = None
            stopped_in = time.monotonic() - stop_at
        log_text = log_path.read_text(errors="replace")
        requests = server.log()
        connections = server.connections
    if len(samples) < 3:
        return 1
    report(args, samples, requests, started, log_text, code, stopped_in, ideal, mutated, connections)
    return 0


def phase_offsets(requests: Sequence[tuple[float, float, int]], since: float, every: int) -> list[float]:
    """For each check after `since`: seconds between its start and its watcher's own interval
    phase (schedule.Schedule.at_or_after anchors watcher `name` at 2020-01-01 + stable_fraction * every),
    folded into [-every/2, every/2). Near 0 means the check ran at its phase."""
    out = []
    for mono, wall, page in requests:
        if mono < since or page < 0:
            continue
        phase = stable_fraction(watcher_name(page)) * every
        offset = (wall - ANCHOR - phase) % every
        out.append(offset - every if offset >= every / 2 else offset)
    return out


def report(args: argparse.Namespace, samples: list[Sample], requests: list[tuple[float, float, int]],
           started: float, log_text: str, code: int | None, stopped_in: float, ideal: float,
           mutated: int, connections: int) -> None:
    every = args.every
    starts = [mono for mono, _, _ in requests]
    end = samples[-1].at
    # Steady state begins once every watcher has had its first (baseline) check.
    steady = starts[args.watchers - 1] if len(starts) >= args.watchers else started + every
    spans = intervals(samples, starts)
    steady_spans = [i for i in spans if i.start >= steady]
    idle = [i for i in steady_spans if i.checks == 0]
    quiet = [b for a, b in pairwise(steady_spans) if a.checks == b.checks == 0]

    last, peak = samples[-1], max(samples, key=lambda s: s.rss_kib)
    print(f"\nMemory (target: RSS at most 40 MiB after 10 minutes) — {(end - started) / 60:.1f} min sampled")
    print(f"  RSS at the end        {last.rss_kib / 1024:6.1f} MiB  ({last.rss_kib * 1024 / 1e6:.1f} MB)")
    print(f"  RSS peak (sampled)    {peak.rss_kib / 1024:6.1f} MiB  at {peak.at - started:.0f} s")
    print(f"  VmHWM (kernel peak)   {last.hwm_kib / 1024:6.1f} MiB")
    minute_marks = [s for s in samples[1:] if round(s.at - started) % 60 == 0]
    print("  RSS by minute (MiB)   " + " ".join(f"{s.rss_kib / 1024:.1f}" for s in minute_marks))
    print(f"  threads at the end    {last.threads}")

    print("\nCPU of the daemon (utime + stime from /proc; targets: steady state at most 2 %, idle under 1 %)")
    print(f"  whole run, start-up included          {average_cpu(spans)}")
    print(f"  steady state (after the first pass)   {average_cpu(steady_spans)}")
    print(f"  idle: steady seconds with no check start          {average_cpu(idle)}")
    print(f"  quiet: no check start in it or the second before  {average_cpu(quiet)}")
    line = fit(steady_spans)
    if line:
        print(f"  fit over steady seconds: CPU% = {line[0]:.2f} % + {line[1]:.3f} % x checks started "
              f"→ idle baseline {line[0]:.2f} %, {line[1] * 10:.1f} ms CPU per check")
    print(f"  seconds with no check start: {len(idle)} of {len(steady_spans)} steady seconds")

    print(f"\nCheck start spread, per {every} s window (ideal if uniform: {ideal:.1f} per second in "
          f"every second, 100 % of seconds busy)")
    print(f"  {'window':13} {'checks':>6} {'max/s':>8} {'p50/s':>7} {'p50 busy/s':>10} "
          f"{'busy s':>10} {'max/ideal':>10}")
    first = starts[0] if starts else started
    startup = cycles(starts, first, every, end, "first pass")[:1]
    for c in startup:
        c.label = "first pass"  # there is only one; no number
    steady_cycles = cycles(starts, steady, every, end, "cycle")
    for c in startup + steady_cycles:
        print(c.line(ideal))
    if steady_cycles:
        shown = steady_cycles[-1]
        print(f"  last window, checks per second: {' '.join(map(str, shown.per_second))}")
        per_cycle = [c.checks for c in steady_cycles]
        print(f"  checks per window: min {min(per_cycle)}, max {max(per_cycle)} "
              f"(each of {args.watchers} watchers once per window = {args.watchers})")
    else:
        print("  (run longer than one pass plus one window to see steady cycles)")
    offsets = phase_offsets(requests, steady, every)
    if offsets:
        near = sum(1 for o in offsets if abs(o) <= 1.0)
        print(f"  interval phase (Schedule.at_or_after: each watcher at its own stable_fraction x {every} s):"
              f" {100.0 * near / len(offsets):.0f} % of steady checks start within 1 s of it; "
              f"median |offset| {statistics.median(abs(o) for o in offsets):.1f} s")

    counts = outcomes(log_text)
    warnings = [ln for ln in log_text.splitlines() if " WARNING " in ln or " ERROR " in ln]
    print(f"\nDaemon log: outcomes {dict(counts)}; {len(warnings)} warning/error line(s); "
          f"{len(starts)} requests served over {connections} connections (kept alive between "
          f"checks when fewer); {mutated} page changes made")
    for ln in warnings[:8]:
        print(f"  {ln[:200]}")
    print(f"SIGTERM: exit code {code} after {stopped_in:.2f} s")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; --minutes is capped so a typo cannot run the bench for a day."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to run the daemon (10)")
    parser.add_argument("--watchers", type=int, default=1000, help="url watchers (1000)")
    parser.add_argument("--hosts", type=int, default=1,
                        help="loopback sites the pages are spread over (1; see bench/loopback.py)")
    parser.add_argument("--every", type=int, default=60, help="check interval in seconds (60)")
    parser.add_argument("--filters", choices=sorted(FILTERS), default="css",
                        help="filter chain of every watcher (css)")
    parser.add_argument("--mutate", type=float, default=0.0,
                        help="share of pages changed once per interval, e.g. 0.01 (0: none)")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 120 or args.watchers < 1 or args.every < 2:
        parser.error("--minutes must be in (0, 120], --watchers at least 1, --every at least 2")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
