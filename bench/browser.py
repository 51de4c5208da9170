"""Browser watchers at scale: N `kind: browser` watchers on one shared Chromium.

Runs the real check pipeline (fetch in Chromium, filters, diff, SQLite state, change alerts
with screenshots into the outbox) over N watchers against loopback pages, `browser_workers`
pages at a time, for R rounds with 10 % of pages changing between rounds. Prints the time per
check, the peak RSS of notifier plus its Chromium processes after the first round and after the
last (the growth should stay within 10 %), and whether any Chromium process is left after the
kind is shut down, as the daemon does at SIGTERM.

    .venv/bin/python bench/browser.py [--watchers 20] [--rounds 10] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loopback import PageServer  # bench scripts run as files, not as a package

from notifier import config
from notifier.alerts import Alerter
from notifier.kinds import configure_kinds, watcher_kinds
from notifier.pipeline import check
from notifier.store import Store

MiB = 1024 * 1024


def tree(root: int) -> list[int]:
    """`root` and every process descended from it."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def rss(pids: list[int]) -> int:
    """Memory of `pids` together: the sum of their PSS (each shared page divided among the
    processes sharing it). Chromium's processes share most of their pages, so a sum of RSS
    would count the same memory up to ten times."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def by_process(root: int) -> str:
    """PSS of this tree by program: python (notifier), node (Playwright's driver), chromium."""
    groups: dict[str, list[int]] = {}
    for pid in tree(root):
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        key = "chromium" if "chrom" in name else "node" if "node" in name else "notifier"
        groups.setdefault(key, []).append(pid)
    return ", ".join(f"{key} {rss(pids) / MiB:.0f} MB" for key, pids in sorted(groups.items()))


def chromium(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if "chrom" in Path(f"/proc/{pid}/comm").read_text():
                out.append(pid)
        except OSError:
            continue
    return out


class Peak:
    """Samples the RSS of this process tree every 50 ms; `take()` returns and resets the peak."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss(tree(os.getpid())))

    def take(self) -> int:
        peak, self.peak = self.peak, 0
        return peak

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--watchers", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="browser_workers")
    parser.add_argument("--screenshot", default="page", choices=["page", "none"])
    args = parser.parse_args()

    with PageServer(args.watchers) as server, tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "watchers.yaml"
        watchers = "".join(
            f"  - {{name: page{i}, kind: browser, url: '{server.url(i)}', screenshot: {args.screenshot},"
            f" filters: [html2text]}}\n" for i in range(args.watchers))
        path.write_text(f"browser_workers: {args.workers}\nwatchers:\n{watchers}")
        cfg = config.load(path)
        configure_kinds([w.watcher for w in cfg.watchers], cfg.shared)
        store = Store(Path(tmp) / "state.db")
        alerter = Alerter(cfg)
        peak = Peak()
        times: list[float] = []
        peaks: list[int] = []
        split: list[str] = []
        failed = changed = 0
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            for round_ in range(args.rounds):
                if round_:
                    server.mutate(0.1)
                outcomes = list(pool.map(lambda wc: check(wc, store, alerter), cfg.watchers))
                times += [o.seconds for o in outcomes]
                failed += sum(o.status == "failed" for o in outcomes)
                changed += sum(o.status == "changed" for o in outcomes)
                peaks.append(peak.take())
                if round_ in (0, args.rounds - 1):
                    split.append(by_process(os.getpid()))
        wall = time.monotonic() - started
        running = chromium(tree(os.getpid()))
        for kind in watcher_kinds().values():
            kind.shut_down()
        deadline = time.monotonic() + 10
        while (left := [p for p in running if Path(f"/proc/{p}").exists()]) and time.monotonic() < deadline:
            time.sleep(0.05)
        peak.stop()
        queued = store.outbox_counts()["pending"]
        store.close()

    checks = len(times)
    print(f"{args.watchers} browser watchers, browser_workers {args.workers}, screenshot {args.screenshot},"
          f" {args.rounds} rounds = {checks} checks in {wall:.1f} s ({checks / wall:.1f} checks/s)")
    print(f"time per check: median {statistics.median(times):.2f} s, "
          f"p95 {sorted(times)[int(0.95 * (checks - 1))]:.2f} s (includes waiting for a page)")
    print(f"outcomes: {failed} failed, {changed} changed; {queued} alerts queued")
    print(f"peak memory (PSS), notifier + {len(running)} Chromium processes: after round 1 "
          f"{peaks[0] / MiB:.0f} MB, after round {args.rounds} {peaks[-1] / MiB:.0f} MB "
          f"({(peaks[-1] / peaks[0] - 1) * 100:+.1f} %); highest {max(peaks) / MiB:.0f} MB")
    print(f"at the end of round 1: {split[0]}; of round {args.rounds}: {split[-1]}")
    print(f"Chromium processes left after shut_down: {len(left)}")
    return 1 if left or failed else 0


if __name__ == "__main__":
    sys.exit(main())
