"""Time one `notifier check` pass over many url watchers beside a minimal fetch-and-hash client.

Issue target: a loopback server with 1,000 pages (~13 KB each, 10 % changing between passes,
optional per-request latency); at 50 ms per request a `notifier check` pass should take at
most 1.5x the time of a minimal pooled client that only fetches and hashes the same pages (the
"floor"), and peak RSS should stay at or under 60 MB for 1,000 watchers and 80 MB for 5,000:
memory must not grow with the total size of all pages.

Both clients run as fresh subprocesses, so their wall time includes interpreter start-up and
imports exactly as a cron-driven `notifier check` pays them, and their peak RSS is the kernel's
ru_maxrss of that one child, taken by a tiny wrapper process (see `_WRAPPER` for why). Pass 1 is
the baseline (every watcher stores its first snapshot); before each later pass ~10 % of the
pages change, so later passes mix "unchanged" with real diffs. Nothing is asserted: the
figures are printed side by side for a person to judge.

    .venv/bin/python bench/check_pass.py                 # 1,000 pages, 50 ms latency
    .venv/bin/python bench/check_pass.py --pages 5000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loopback import PageServer  # bench scripts run as files, not as a package

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
# Filter chains for the watchers: "strip" is the cheap representative one; "css" adds an lxml
# parse and re-serialisation per page, the cost of the commonest real-world watcher.
VARIANTS: dict[str, str] = {
    "none": "[]",
    "strip": "[strip]",
    "css": '[{css: "main article"}, strip]',
    "html2text": "[html2text, strip]",
}


@dataclass
class Run:
    """One measured subprocess: wall seconds, exit code, peak RSS and what it printed."""

    seconds: float
    returncode: int
    maxrss_mb: float
    stdout: str = ""
    extra: dict[str, object] = field(default_factory=dict)


# Runs the measured command as its own child and reports that child's wall time, exit code and
# ru_maxrss. It exists because Linux folds the RSS of the process that *forked* a child into
# the child's ru_maxrss (exec records the old mm's high-water mark): measured straight from
# this process, which holds every page body of the server, the floor client "used" 90 MB at
# 5,000 pages. Forked from this ~10 MB interpreter instead, the inherited share is negligible.
_WRAPPER = """
import os, subprocess, sys, time
started = time.perf_counter()
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
seconds = time.perf_counter() - started
child.returncode = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as out:
    out.write(f"{seconds} {child.returncode} {usage.ru_maxrss} {os.getpid()}")
"""


def measure(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> Run:
    """Run `cmd`, returning its wall time and the peak RSS of that very child.

    The command runs under `_WRAPPER` (see there why), in its own process group so that a
    timer can kill the wrapper and the command together after `timeout` seconds: the
    benchmark always ends.
    """
    with tempfile.TemporaryDirectory(prefix="notifier-measure-") as tmp:
        report = Path(tmp) / "rusage"
        with (Path(tmp) / "out").open("w+", encoding="utf-8") as out:
            proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _WRAPPER, str(report), *cmd],
                                    stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                    start_new_session=True)
            killer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
            killer.start()
            try:
                proc.wait()
            finally:
                killer.cancel()
            out.seek(0)
            text = out.read()
        try:
            seconds, code, maxrss_kib, _ = report.read_text().split()
        except (OSError, ValueError):  # killed before it could report
            return Run(float(timeout), proc.returncode or -9, 0.0, text)
    return Run(float(seconds), int(code), int(maxrss_kib) / 1024, text)  # ru_maxrss is KiB on Linux


def floor_client(base_url: str, pages: int, workers: int) -> None:
    """The floor: a pooled requests.Session on `workers` threads that fetches and hashes.

    It keeps nothing but a digest per page, so its time and memory are what fetching alone
    costs; notifier cannot do less than this. Prints one JSON line for the parent.
    """
    started = time.perf_counter()
    import requests  # noqa: PLC0415 - imported here so the parent's import cost is not counted
    from requests.adapters import HTTPAdapter  # noqa: PLC0415

    session = requests.Session()
    session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=workers, max_retries=0))
    imported = time.perf_counter()

    def fetch(i: int) -> str:
        response = session.get(f"{base_url}/page/{i}", timeout=30)
        response.raise_for_status()
        return hashlib.sha256(response.content).hexdigest()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = list(pool.map(fetch, range(pages)))
    done = time.perf_counter()
    print(json.dumps({"pages": len(digests), "import_s": imported - started,
                      "fetch_s": done - imported}))


def write_config(path: Path, state_dir: Path, server: PageServer, pages: int, workers: int,
                 filters: str) -> None:
    """A watchers.yaml with one url watcher per page, all with the same filter chain."""
    lines = [f"state_dir: {json.dumps(str(state_dir))}", f"workers: {workers}", "watchers:"]
    for i in range(pages):
        lines += [f"  - name: page-{i:05d}", "    kind: url", f"    url: {server.url(i)}",
                  f"    filters: {filters}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def outcomes(stdout: str) -> str:
    """'changed=100 unchanged=900'-style summary of a check's per-watcher lines."""
    counts = Counter(word.split("=", 1)[1] for line in stdout.splitlines()
                     for word in line.split() if word.startswith("outcome="))
    return " ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "no outcome lines"


def tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--pages", type=int, default=1000, help="pages = url watchers (1000)")
    parser.add_argument("--latency", type=float, default=0.05,
                        help="seconds the server sleeps per request (0.05)")
    parser.add_argument("--workers", type=int, default=32,
                        help="notifier `workers:` and the floor's threads and pool size (32)")
    parser.add_argument("--passes", type=int, default=3, help="passes; pass 1 is the baseline (3)")
    parser.add_argument("--change", type=float, default=0.10,
                        help="fraction of pages changed before each later pass (0.10)")
    parser.add_argument("--variants", default="strip,css",
                        help=f"filter chains to run, comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="kill any one measured subprocess after this many seconds (600)")
    parser.add_argument("--floor-url", help=argparse.SUPPRESS)  # internal: run as the floor client
    args = parser.parse_args()
    if args.floor_url:
        floor_client(args.floor_url, args.pages, args.workers)
        return 0

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    env = {k: v for k, v in os.environ.items() if k not in ("STATE_DIRECTORY", "NOTIFIER_CONFIG")}
    notifier = str(VENV_BIN / "notifier")

    setup_started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="notifier-bench-") as tmp, \
            PageServer(args.pages, args.latency) as server:
        print(f"server {server.base_url}: {args.pages} pages, {server.total_bytes / 1e6:.1f} MB in "
              f"total ({server.total_bytes / args.pages / 1024:.1f} KiB each), latency "
              f"{args.latency * 1000:g} ms, {args.change:.0%} change per pass; workers {args.workers}; "
              f"{os.cpu_count()} CPUs (shared with the server); setup "
              f"{time.perf_counter() - setup_started:.1f}s")
        configs = {}
        for variant in variants:
            cfg = Path(tmp) / f"{variant}.yaml"
            write_config(cfg, Path(tmp) / f"state-{variant}", server, args.pages, args.workers,
                         VARIANTS[variant])
            configs[variant] = cfg
            # Start-up plus config load, no fetching: also warms the OS file cache for imports.
            run = measure([notifier, "-c", str(cfg), "validate"], args.timeout, env)
            print(f"  {variant:9} `notifier validate`: {run.seconds:.2f}s, peak RSS "
                  f"{run.maxrss_mb:.1f} MB (start-up + loading {args.pages} watchers), "
                  f"exit {run.returncode}")
            if run.returncode:
                print(tail(run.stdout))
        floor_cmd = [sys.executable, __file__, "--floor-url", server.base_url,
                     "--pages", str(args.pages), "--workers", str(args.workers)]
        rows: list[tuple[str, ...]] = []
        for n in range(1, args.passes + 1):
            changed = len(server.mutate(args.change)) if n > 1 else 0
            server.reset_counts()
            floor = measure(floor_cmd, args.timeout, env)
            f_req, f_conn = server.reset_counts()
            try:
                floor.extra = json.loads(floor.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                print(f"floor failed (exit {floor.returncode}):\n{tail(floor.stdout)}")
            for variant in variants:
                run = measure([notifier, "-c", str(configs[variant]), "check"], args.timeout, env)
                n_req, n_conn = server.reset_counts()
                if run.returncode not in (0, 1):  # 1 = changes found, which is expected
                    print(f"notifier check ({variant}, pass {n}) exit {run.returncode}:\n{tail(run.stdout)}")
                db = configs[variant].parent / f"state-{variant}" / "state.db"
                db_mb = sum(p.stat().st_size for p in db.parent.glob("state.db*")) / 1e6 if db.exists() else 0
                rows.append((
                    f"{n}{' (baseline)' if n == 1 else f' ({changed} changed)'}", variant,
                    f"{run.seconds:.2f}", f"{floor.seconds:.2f}", f"{run.seconds / floor.seconds:.2f}",
                    f"{run.maxrss_mb:.1f}", f"{floor.maxrss_mb:.1f}",
                    f"{n_req}/{n_conn}", f"{f_req}/{f_conn}", f"{db_mb:.1f}",
                    f"exit {run.returncode}: {outcomes(run.stdout)}",
                ))
            print(f"  pass {n} done (floor: import {floor.extra.get('import_s', 0):.2f}s + fetch "
                  f"{floor.extra.get('fetch_s', 0):.2f}s inside its {floor.seconds:.2f}s)", flush=True)

    header = ("pass", "filters", "notifier s", "floor s", "ratio", "notifier RSS MB", "floor RSS MB",
              "notifier req/conn", "floor req/conn", "state.db MB", "notifier outcomes")
    widths = [max(len(header[c]), *(len(r[c]) for r in rows)) for c in range(len(header))]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    print(f"\ntargets (issue): ratio <= 1.5 at 50 ms latency; notifier peak RSS <= 60 MB at 1,000 "
          f"watchers, <= 80 MB at 5,000. Ideal pass time here ~ pages/workers x latency = "
          f"{args.pages / args.workers * args.latency:.2f}s. req/conn = requests and new TCP "
          f"connections the server saw.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
