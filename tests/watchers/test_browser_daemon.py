"""The daemon's one Chromium: started only when a browser watcher exists, stopped when a reload
removes the last one, and gone after SIGTERM — no browser process is ever left behind."""

from __future__ import annotations

import os
from pathlib import Path

from tests.servers.http import LocalHTTPServer
from tests.servers.smtp import SmtpServer
from tests.test_daemon import StartDaemon, daemons, file_watcher, poll, write_config  # noqa: F401
from tests.watchers.test_browser import chromium_pids


def _alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()
            and "(Z)" not in Path(f"/proc/{pid}/stat").read_text().replace(") Z", "(Z)")]


def test_chromium_lives_exactly_as_long_as_a_browser_watcher(
        tmp_path: Path, smtp_server: SmtpServer, http_server: LocalHTTPServer,
        daemons: StartDaemon) -> None:  # noqa: F811 - the fixture imported above
    watched = tmp_path / "a.txt"
    watched.write_text("a\n")
    http_server.set("/js", "<p id=p></p><script>document.getElementById('p').textContent = 6 * 7</script>")
    plain = file_watcher("a", watched)
    browser = f"  - {{name: page, kind: browser, url: '{http_server.url('/js')}', timeout: 10s}}\n"
    config = write_config(tmp_path / "watchers.yaml", smtp_server, plain, "browser_workers: 1")
    daemon = daemons(config)
    daemon.wait_log(r"watcher=a ", 2)
    assert daemon.proc is not None
    pid = daemon.proc.pid
    assert chromium_pids(pid) == []  # no browser watcher, no browser

    write_config(config, smtp_server, plain + browser, "browser_workers: 1")
    daemon.wait_log(r"watcher=page .*outcome=baseline")
    running = chromium_pids(pid)
    assert running
    daemon.wait_log(r"watcher=page ", 2)
    assert daemon.count(r"watcher=page .*outcome=failed") == 0

    write_config(config, smtp_server, plain, "browser_workers: 1")
    daemon.wait_log(r"reloaded .*1 removed")
    poll(lambda: not _alive(running), "chromium to stop after the last browser watcher went", 15)

    write_config(config, smtp_server, plain + browser, "browser_workers: 1")
    daemon.wait_log(r"watcher=page ", daemon.count(r"watcher=page ") + 1)
    again = chromium_pids(pid)
    assert again
    assert daemon.stop() == 0
    poll(lambda: not _alive(again), "chromium to stop with the daemon", 10)
    assert os.path.exists(config)
