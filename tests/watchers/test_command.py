"""The command watcher running real processes: shell vs argv, exit status, limits, a clean
environment, and cleanup of every process a command started, setsid escapees included."""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from notifier.errors import WatchError
from notifier.options import parse_options
from notifier.watchers._procs import MARK
from notifier.watchers.command import Command


def watcher(command: str | list[str], **raw: Any) -> Command:
    """Build a watcher the way the config loader does: parse, fill defaults, construct."""
    values, problems = parse_options({"command": command, **raw}, Command.options,
                                     "watchers.yaml", "w")
    assert not problems, problems
    return Command(values)


def alive(pid: int) -> bool:
    """Whether `pid` is a running process; a zombie waiting to be reaped counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_string_runs_in_a_shell_and_list_does_not() -> None:
    assert watcher("printf 'a\\nb\\n' | wc -l").fetch({}).text.strip() == "2"
    listed = watcher(["echo", "a", "|", "wc", "$HOME"])
    assert listed.fetch({}).text == "a | wc $HOME\n"
    assert listed.source() == "echo a '|' wc '$HOME'"


def test_non_zero_exit_status_is_part_of_the_result() -> None:
    assert watcher("echo down; exit 3").fetch({}).text == "down\n[exit status 3]"
    assert watcher("printf partial; exit 2").fetch({}).text == "partial\n[exit status 2]"
    assert watcher("exit 1").fetch({}).text == "[exit status 1]"
    assert watcher("kill -9 $$").fetch({}).text == "[killed by signal SIGKILL]"


def test_stderr_is_left_out_unless_asked_for() -> None:
    command = "echo out; echo err >&2"
    assert watcher(command).fetch({}).text == "out\n"
    assert watcher(command, stderr=True).fetch({}).text == "out\nerr\n"


def test_env_and_cwd(tmp_path: Path) -> None:
    w = watcher("echo $GREETING; pwd", env={"GREETING": "你好"}, cwd=str(tmp_path))
    assert w.fetch({}).text == f"你好\n{tmp_path}\n"


def test_invalid_utf8_output_is_replaced() -> None:
    assert watcher(["printf", "ok\\377"]).fetch({}).text == "ok\ufffd"


def gone_soon(pid: int, within: float = 5.0) -> bool:
    """Poll until `pid` is gone (a SIGKILLed process still needs its exit to be processed)."""
    deadline = time.monotonic() + within
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def escapee(pidfile: Path, prefix: str = "setsid") -> str:
    """Shell code that starts `sleep 1000` under `prefix` (leaving the process group), writes
    its pid to `pidfile` atomically, and waits until the file is there."""
    return (f"{prefix} sh -c 'echo $$ > {pidfile}.tmp && mv {pidfile}.tmp {pidfile}; exec sleep 1000' & "
            f"while [ ! -s {pidfile} ]; do sleep 0.01; done")


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    w = watcher(f"sleep 30 & echo $! > {pidfile}; wait", timeout="0.3s")
    started = time.monotonic()
    with pytest.raises(WatchError, match=r"did not finish within 0\.3 seconds"):
        w.fetch({})
    assert time.monotonic() - started < 5
    assert gone_soon(int(pidfile.read_text())), "the backgrounded grandchild survived the timeout"


def test_timeout_kills_a_setsid_descendant(tmp_path: Path) -> None:
    pidfile = tmp_path / "escapee.pid"
    w = watcher(f"{escapee(pidfile)}; sleep 1000", timeout="1s")
    started = time.monotonic()
    with pytest.raises(WatchError, match=r"did not finish within 1 second and was killed"):
        w.fetch({})
    assert time.monotonic() - started < 1.5
    assert gone_soon(int(pidfile.read_text())), "the setsid grandchild survived the timeout"


def test_timeout_kills_an_orphaned_setsid_descendant(tmp_path: Path) -> None:
    """The subshell exits at once, so the escapee's parent is init: only its mark finds it."""
    pidfile = tmp_path / "orphan.pid"
    w = watcher(f"({escapee(pidfile)}); sleep 1000", timeout="1s")
    with pytest.raises(WatchError, match=r"did not finish within"):
        w.fetch({})
    pid = int(pidfile.read_text())
    assert gone_soon(pid), "the orphaned setsid grandchild survived the timeout"


def test_timeout_kills_a_descendant_that_cleared_its_environment(tmp_path: Path) -> None:
    """`env -i` drops the mark, but the process is still below the command in the tree."""
    pidfile = tmp_path / "bare.pid"
    w = watcher(f"setsid env -i sleep 1000 & echo $! > {pidfile}; sleep 1000", timeout="1s")
    with pytest.raises(WatchError, match=r"did not finish within"):
        w.fetch({})
    assert gone_soon(int(pidfile.read_text())), "the env -i grandchild survived the timeout"


def test_a_helper_holding_the_output_open_is_killed_at_the_deadline(tmp_path: Path) -> None:
    """The command exits at once, but its setsid helper keeps stdout open: EOF never comes."""
    pidfile = tmp_path / "helper.pid"
    w = watcher(f"{escapee(pidfile)}; echo done", timeout="1s")
    started = time.monotonic()
    with pytest.raises(WatchError, match=r"did not finish within 1 second and was killed"):
        w.fetch({})
    assert 0.95 <= time.monotonic() - started < 1.5
    assert gone_soon(int(pidfile.read_text())), "the helper survived the deadline"


def test_overflow_kills_a_setsid_descendant(tmp_path: Path) -> None:
    pidfile = tmp_path / "escapee.pid"
    with pytest.raises(WatchError, match=r"printed more than 100,000 bytes"):
        watcher(f"{escapee(pidfile)}; yes", max_bytes=100_000).fetch({})
    assert gone_soon(int(pidfile.read_text())), "the setsid grandchild survived the overflow"


def test_a_kill_spares_other_commands() -> None:
    """Another command's processes carry another mark and sit in another tree."""
    other = subprocess.Popen(["sleep", "30"], env={**os.environ, MARK: "another-run"},
                             start_new_session=True)
    try:
        with pytest.raises(WatchError, match=r"did not finish within"):
            watcher("sleep 1000", timeout="0.3s").fetch({})
        assert other.poll() is None, "a timeout in one command killed another"
    finally:
        other.kill()
        other.wait()


def test_the_environment_is_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFIER_SMTP_PASSWORD", "hunter2-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("TZ", "Asia/Shanghai")
    monkeypatch.delenv("LC_ALL", raising=False)
    text = watcher(["env"], env={"GREETING": "你好"}).fetch({}).text
    assert "secret" not in text
    env = dict(line.split("=", 1) for line in text.splitlines())
    assert env.pop(MARK)
    assert env == {"PATH": os.environ["PATH"], "HOME": os.environ["HOME"], "LANG": "C.UTF-8",
                   "TZ": "Asia/Shanghai", "GREETING": "你好"}


def test_path_and_home_are_always_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PATH")
    monkeypatch.delenv("HOME")
    env = dict(line.split("=", 1) for line in watcher(["/usr/bin/env"]).fetch({}).text.splitlines())
    assert env["PATH"] == os.defpath
    assert env["HOME"] == pwd.getpwuid(os.getuid()).pw_dir


def test_endless_output_is_capped() -> None:
    with pytest.raises(WatchError, match=r"printed more than 100,000 bytes"):
        watcher(["yes"], max_bytes=100_000).fetch({})


@pytest.mark.parametrize("command", [["no-such-program-xyz"], "no-such-program-xyz --flag"])
def test_command_not_found(command: str | list[str]) -> None:
    with pytest.raises(WatchError, match=r"was not found"):
        watcher(command).fetch({})


def test_missing_working_directory(tmp_path: Path) -> None:
    with pytest.raises(WatchError, match=r"fix the watcher's cwd"):
        watcher(["true"], cwd=str(tmp_path / "nowhere")).fetch({})


def test_empty_command_is_rejected() -> None:
    with pytest.raises(ValueError, match="command is empty"):
        watcher("  ")
