"""The `command` kind: watch what a command prints.

Commands are the riskiest thing notifier runs: they can hang, fork helpers, print without
end, or show what they were given. So each one runs in its own process group with a clean
environment, its output is read incrementally into a bounded buffer, and on timeout or
overflow every process it started is killed (see `_procs`), not just the shell.
"""

from __future__ import annotations

import os
import pwd
import selectors
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from notifier.errors import WatchError
from notifier.kinds import Fetched, Watcher
from notifier.options import REQUIRED, Bool, Duration, Int, MapOf, MiB, Option, Str, StrOrList
from notifier.watchers._procs import MARK, kill_tree, new_mark

_CHUNK = 64 * 1024
_SHELL_ERRORS = {126: "was found but is not executable", 127: "was not found"}
# All a command inherits from notifier's environment, which may hold SMTP passwords and tokens.
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")


class Command(Watcher, kind="command"):
    """Run a command and watch its output.

    A string runs through /bin/sh (pipes, globs, $VARS work); a list runs the program directly
    with those arguments, with no shell quoting to get wrong. A non-zero exit status is part of
    the result, as a last line like ``[exit status 3]``, not an error: monit-style checks
    alert precisely on a status changing. Exit status 127/126 from the shell means the command
    was not found or not executable, which fails the check. A command running longer than
    `timeout` or printing more than `max_bytes` is killed with every process it started, even
    those that left its process group with setsid, and the check fails; output is never
    silently truncated, since a cut-off text would be compared as if it were the whole output.
    A helper left running in the background with the output still open counts as running.

    The environment is clean: only PATH, HOME, LANG, and LC_ALL and TZ when set, are passed
    on from notifier's own (which may hold secrets such as NOTIFIER_SMTP_PASSWORD), plus
    what `env` sets, plus NOTIFIER_CHECK_ID, a token that differs on every run and marks the
    command's processes for the kill. Give a command anything else it needs through `env`.
    """

    options: ClassVar[tuple[Option, ...]] = (
        Option("command", StrOrList(), REQUIRED,
               "A shell command line, or a list of program and arguments run without a shell."),
        Option("timeout", Duration(), 60.0, "Seconds before the command and its children are killed."),
        Option("stderr", Bool(), False, "Include standard error in the result, interleaved."),
        Option("cwd", Str(), None, "Working directory to run in; ~ is expanded."),
        Option("env", MapOf(Str()), None, "Environment variables added for the command."),
        Option("max_bytes", Int(minimum=1), MiB, "Most output accepted before the command is killed."),
    )

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        command: str | tuple[str, ...] = options["command"]
        self.shell = isinstance(command, str)
        self.args: str | list[str] = command if isinstance(command, str) else list(command)
        if not (command.strip() if isinstance(command, str) else command):
            raise ValueError("command is empty; give a command line or a list of arguments")
        self.timeout: float = options["timeout"]
        self.stderr: bool = options["stderr"]
        cwd = options["cwd"]
        self.cwd = os.path.expanduser(cwd) if cwd else None
        self.env: dict[str, str] = dict(options["env"] or {})
        self.max_bytes: int = options["max_bytes"]

    def source(self) -> str:
        return self.args if isinstance(self.args, str) else shlex.join(self.args)

    def fetch(self, previous: Mapping[str, str]) -> Fetched:
        mark = new_mark()
        env = self._environment(mark)
        try:
            process = subprocess.Popen(
                self.args, shell=self.shell, cwd=self.cwd, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT if self.stderr else subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # its own process group, so a kill reaches its children
            )
        except OSError as exc:
            raise self._start_error(exc, env["PATH"]) from exc
        with process:
            try:
                output = self._collect(process)
            finally:
                if process.returncode is None:  # not reaped: its pid cannot have been reused
                    kill_tree(process.pid, mark)
                    process.wait()
        return Fetched(text=self._result(output.decode("utf-8", errors="replace"), process.returncode))

    def _environment(self, mark: str) -> dict[str, str]:
        env = {name: os.environ[name] for name in _INHERITED if name in os.environ}
        env.setdefault("PATH", os.defpath)
        if "HOME" not in env:  # e.g. a systemd unit without User=: HOME is the user's anyway
            try:
                env["HOME"] = pwd.getpwuid(os.getuid()).pw_dir
            except KeyError:
                env["HOME"] = "/"
        return {**env, **self.env, MARK: mark}

    def _collect(self, process: subprocess.Popen[bytes]) -> bytes:
        """Read output until EOF and exit, within the deadline and the size cap."""
        assert process.stdout is not None
        deadline = time.monotonic() + self.timeout
        chunks: list[bytes] = []
        size = 0
        fd = process.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._timed_out()
                if not selector.select(remaining):
                    continue
                chunk = os.read(fd, _CHUNK)
                if not chunk:
                    break  # EOF: every process holding the pipe has closed it
                size += len(chunk)
                if size > self.max_bytes:
                    raise WatchError(f"command `{self.source()}` printed more than "
                                     f"{self.max_bytes:,} bytes and was stopped; filter its output "
                                     f"(e.g. `| head -n 100`) or raise max_bytes.")
                chunks.append(chunk)
        try:
            process.wait(max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            raise self._timed_out() from None
        return b"".join(chunks)

    def _result(self, text: str, status: int) -> str:
        if self.shell and status in _SHELL_ERRORS:
            raise WatchError(f"command `{self.source()}` failed with exit status {status}: the "
                             f"shell says the program {_SHELL_ERRORS[status]}; check the spelling, "
                             f"PATH, or use a full path.")
        if status == 0:
            return text
        if status < 0:
            try:
                ending = f"[killed by signal {signal.Signals(-status).name}]"
            except ValueError:
                ending = f"[killed by signal {-status}]"
        else:
            ending = f"[exit status {status}]"
        return f"{text}\n{ending}" if text and not text.endswith("\n") else f"{text}{ending}"

    def _timed_out(self) -> WatchError:
        seconds = f"{self.timeout:g} second{'' if self.timeout == 1 else 's'}"
        return WatchError(f"command `{self.source()}` did not finish within {seconds} and was "
                          f"killed with every process it started; make it faster or raise timeout.")

    def _start_error(self, exc: OSError, path: str) -> WatchError:
        if self.cwd and exc.filename == self.cwd:
            return WatchError(f"cannot run `{self.source()}` in {self.cwd}: {exc.strerror}; "
                              f"fix the watcher's cwd.")
        program = self.args if isinstance(self.args, str) else self.args[0]
        if isinstance(exc, FileNotFoundError):
            return WatchError(f"command {program!r} was not found; check the spelling, or give its "
                              f"full path (PATH is {path}).")
        if isinstance(exc, PermissionError):
            return WatchError(f"command {program!r} cannot be run: permission denied; make it "
                              f"executable (chmod +x) or check its directories.")
        return WatchError(f"cannot run `{self.source()}`: {exc.strerror or exc}.")
