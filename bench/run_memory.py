"""The memory of `notifier run` by the number of url watchers: peak RSS after the first pass.

Issue 10's target: peak RSS at most 50 MiB at 1,000 and 60 MiB at 20,000 watchers, nearly flat
in N (at most 0.5 KB per watcher beyond a fixed base), for `run` as for `check` and `validate`.
bench/daemon_idle.py follows one daemon for minutes; this one starts a daemon per size and
stops it once its first pass is over, since that pass (every watcher new, so due at once) is
what a daemon's peak is made of: the watchers as loaded, their timetable, and the checks in
flight.

How: a bench/loopback.py PageServer serves `--pages` pages (13 KB each) over `--hosts` loopback
sites; watcher i fetches page i % pages, with the `--variant` filter chain, every hour (so the
pass is the only one). The daemon is the real `notifier -c FILE run` with a Maildir and its
state in a temporary directory. The script waits until the daemon has logged an outcome for
every watcher, then `--settle` seconds more, and reads the daemon's VmHWM (peak) and VmRSS
from /proc. The per-watcher cost is the slope of the peak from each size to the next.

The connections the server saw (new TCP connections) and the most any site had open at once
are printed beside: a larger pass has more of each site's checks and connections under way at
once (here 8 a site, against at most 5 for 1,000 watchers), whose buffers stay in the peak
and in the allocator's pools. That cost is bounded by `per_host` a site and `workers` in all,
not by the number of watchers: with `--hosts 1` (at most 8 under way at every size) it does
not show in the slope. Nothing is asserted; the figures are printed for a person to judge.

    .venv/bin/python bench/run_memory.py                        # 1,000 and 20,000 watchers
    .venv/bin/python bench/run_memory.py --sizes 1000,5000,20000 --variant css
"""

from __future__ import annotations

import argparse
import itertools
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_pass import VARIANTS, size_options  # bench scripts run as files, not as a package
from loopback import PageServer

VENV_BIN = Path(sys.executable).parent
PASS_TIMEOUT = 600.0  # seconds the first pass may take before the bench gives up


def write_config(path: Path, state_dir: Path, server: PageServer, watchers: int, filters: str) -> None:
    """One hourly url watcher per line of the pass, spread over the server's pages."""
    lines = [f"state_dir: {state_dir}", "watchers:"]
    for i in range(watchers):
        lines += [f"  - name: page-{i:05d}", "    kind: url", f"    url: {server.url(i % server.pages)}",
                  "    every: 1h", f"    filters: {filters}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def memory(pid: int) -> tuple[float, float]:
    """(VmHWM, VmRSS) of `pid`, in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024


def first_pass(config: Path, log: Path, watchers: int, settle: float) -> tuple[float, float, float]:
    """(seconds to the last outcome, peak MiB, RSS MiB) of a daemon's first pass."""
    started = time.monotonic()
    with log.open("w", encoding="utf-8") as out:
        daemon = subprocess.Popen([str(VENV_BIN / "notifier"), "-c", str(config), "run"],
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        while (done := log.read_text(encoding="utf-8").count("outcome=")) < watchers:
            if daemon.poll() is not None or time.monotonic() - started > PASS_TIMEOUT:
                raise SystemExit(f"the daemon ended or stalled after {done} of {watchers} checks:\n"
                                 + "\n".join(log.read_text(encoding="utf-8").splitlines()[-8:]))
            time.sleep(0.2)
        seconds = time.monotonic() - started
        time.sleep(settle)
        peak, rss = memory(daemon.pid)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    return seconds, peak, rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    size_options(parser, "1000,20000", hosts=50)
    parser.add_argument("--pages", type=int, default=100, help="distinct pages served (100)")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds to wait after the last outcome before reading memory (5)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    peaks: dict[int, float] = {}
    with PageServer(args.pages, hosts=args.hosts) as server, tempfile.TemporaryDirectory() as tmp:
        print(f"notifier run, first pass, filters {VARIANTS[args.variant]}, {args.hosts} sites")
        print(f"{'watchers':>9} {'pass':>7} {'peak':>9} {'rss':>9} {'connections':>11} {'per site':>8}")
        for n in sizes:
            config = Path(tmp) / f"watchers-{n}.yaml"
            write_config(config, Path(tmp) / f"state-{n}", server, n, VARIANTS[args.variant])
            server.reset_counts()
            seconds, peaks[n], rss = first_pass(config, Path(tmp) / f"run-{n}.log", n, args.settle)
            most = server.peak_per_site()
            print(f"{n:>9,} {seconds:>6.1f}s {peaks[n]:>6.1f}MiB {rss:>6.1f}MiB "
                  f"{server.reset_counts()[1]:>11,} {most:>8}")
    for low, high in itertools.pairwise(sorted(sizes)):
        slope = (peaks[high] - peaks[low]) * 1024 * 1024 / (high - low)
        print(f"peak RSS per watcher between {low:,} and {high:,}: {slope:,.0f} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
