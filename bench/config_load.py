"""Time `notifier validate` (start-up plus loading the config) on url-watcher configs.

Issue 10's targets for loading: `notifier validate` of 20,000 url watchers within 1 s, and
peak RSS at most 50 MiB at 1,000 and 60 MiB at 20,000 watchers, nearly flat in N (at most
0.5 KB per watcher beyond a fixed base). The configs are the ones bench/check_pass.py
writes (its `write_config`: one url watcher per page, pages spread over 50 loopback sites,
the same filter chain on each), so the figures match that bench's `validate` line; no
server is started, since validating fetches nothing.

Each run is a fresh `notifier -c FILE validate` under check_pass's `measure`, so the figures
are the kernel's for that one process: CPU (user + system), wall time, and the peak resident set.
The per-watcher cost is the slope of peak RSS between the smallest and the largest N; the
base is the RSS of an empty config (one watcher). Nothing is asserted; the figures are
printed for a person to judge.

    .venv/bin/python bench/config_load.py                        # 1, 1,000 and 20,000; 5 runs
    .venv/bin/python bench/config_load.py --sizes 20000 --runs 9 --variant css
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_pass import (  # bench scripts run as files, not as a package
    VARIANTS,
    measure,
    size_options,
    write_config,
)

VENV_BIN = Path(sys.executable).parent
TIMEOUT = 600.0  # seconds a run may take before it is killed


class _Origins:
    """Stands in for check_pass's PageServer: only `url(i)` is asked of it."""

    def __init__(self, hosts: int) -> None:
        self.origins = [f"http://127.0.0.{k + 1}:{40000 + k}" for k in range(hosts)]

    def url(self, index: int) -> str:
        return f"{self.origins[index % len(self.origins)]}/page/{index}"


def run(config: Path, command: str) -> tuple[float, float, float]:
    """(CPU seconds, wall seconds, peak RSS MiB) of one `notifier -c config COMMAND`."""
    done = measure([str(VENV_BIN / "notifier"), "-c", str(config), command], TIMEOUT)
    if done.returncode != 0:
        raise SystemExit(f"notifier {command} failed ({done.returncode}):\n{done.stdout}")
    return done.cpu, done.seconds, done.maxrss_mib


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    size_options(parser, "1,1000,20000", hosts=50)
    parser.add_argument("--runs", type=int, default=5, help="runs per size (5)")
    parser.add_argument("--command", default="validate", help="the notifier command (validate)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    peaks: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        print(f"notifier {args.command}, filters {VARIANTS[args.variant]}, {args.runs} runs each")
        print(f"{'watchers':>9} {'cpu med':>8} {'cpu min':>8} {'wall med':>8} {'rss med':>8} {'rss max':>8}")
        for n in sizes:
            config = Path(tmp) / f"watchers-{n}.yaml"
            write_config(config, Path(tmp) / "state", _Origins(args.hosts), n, None,  # type: ignore[arg-type]
                         VARIANTS[args.variant])
            runs = [run(config, args.command) for _ in range(args.runs)]
            cpus, walls, rss = zip(*runs, strict=True)
            peaks[n] = statistics.median(rss)
            print(f"{n:>9,} {statistics.median(cpus):>7.2f}s {min(cpus):>7.2f}s "
                  f"{statistics.median(walls):>7.2f}s {peaks[n]:>5.1f}MiB {max(rss):>5.1f}MiB")
    if len(sizes) > 1:
        low, high = min(sizes), max(sizes)
        slope = (peaks[high] - peaks[low]) * 1024 * 1024 / (high - low)
        print(f"peak RSS per watcher between {low:,} and {high:,}: {slope:,.0f} bytes "
              f"(base {peaks[low]:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
