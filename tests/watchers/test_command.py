"""The command watcher running real processes: shell vs argv, exit status, limits, cleanup."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from notifier.errors import WatchError
from notifier.options import parse_options
from notifier.watchers.command import Command


def watcher(command: str | list[str], **raw: Any) -> Command:
    """Build a watcher the way the config loader does: parse, fill defaults, construct."""
    values, problems = parse_options({"command": command, **raw}, Command.options,
                                     "watchers.yaml", "w")
    assert not problems, problems
    return Command("w", values)


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


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    w = watcher(f"sleep 30 & echo $! > {pidfile}; wait", timeout="0.3s")
    started = time.monotonic()
    with pytest.raises(WatchError, match=r"did not finish within 0\.3 seconds"):
        w.fetch({})
    assert time.monotonic() - started < 5
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not alive(pid), "the backgrounded grandchild survived the timeout"


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
