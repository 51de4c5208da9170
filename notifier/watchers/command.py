"""The `command` kind: watch what a command prints.

Commands are the riskiest thing notifier runs: they can hang, fork helpers, or print without
end. So each one runs in its own process group, its output is read incrementally into a
bounded buffer, and on timeout or overflow the whole group is killed, not just the shell.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from notifier.errors import WatchError
from notifier.options import REQUIRED, Bool, Duration, Int, MapOf, Option, Str, StrOrList
from notifier.watchers import Fetched, Watcher

MiB = 1024 * 1024
_CHUNK = 64 * 1024
_SHELL_ERRORS = {126: "was found but is not executable", 127: "was not found"}


class Command(Watcher, kind="command"):
    """Run a command and watch its output.

    A string runs through /bin/sh (pipes, globs, $VARS work); a list runs the program directly
    with those arguments, with no shell quoting to get wrong. A non-zero exit status is part of
    the result, as a last line like ``[exit status 3]``, not an error: monit-style checks
    alert precisely on a status changing. Exit status 127/126 from the shell means the command
    was not found or not executable, which fails the check. A command running longer than
    `timeout` or printing more than `max_bytes` is killed with every process it started and
    the check fails; output is never silently truncated, since a cut-off text would be
    compared as if it were the whole output.
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

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        command: str | tuple[str, ...] = options["command"]
        self.shell = isinstance(command, str)
        self.args: str | list[str] = command if isinstance(command, str) else list(command)
        if not (command.strip() if isinstance(command, str) else command):
            raise ValueError("command is empty; give a command line or a list of arguments")
        self.timeout: float = options.get("timeout") or 60.0
        self.stderr = bool(options.get("stderr"))
        cwd = options.get("cwd")
        self.cwd = os.path.expanduser(cwd) if cwd else None
        self.env: dict[str, str] = dict(options.get("env") or {})
        self.max_bytes: int = options.get("max_bytes") or MiB

    def source(self) -> str:
        return self.args if isinstance(self.args, str) else shlex.join(self.args)

    def fetch(self, previous: Mapping[str, str]) -> Fetched:
        try:
            process = subprocess.Popen(
                self.args, shell=self.shell, cwd=self.cwd, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT if self.stderr else subprocess.DEVNULL,
                env={**os.environ, **self.env} if self.env else None,
                start_new_session=True,  # its own process group, so a kill reaches its children
            )
        except OSError as exc:
            raise self._start_error(exc) from exc
        with process:
            try:
                output = self._collect(process)
            finally:
                if process.returncode is None:
                    _kill_group(process)
        return Fetched(text=self._result(output.decode("utf-8", errors="replace"), process.returncode))

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
        return WatchError(f"command `{self.source()}` did not finish within {self.timeout:g} "
                          f"seconds and was killed with its child processes; make it faster or "
                          f"raise timeout.")

    def _start_error(self, exc: OSError) -> WatchError:
        if self.cwd and exc.filename == self.cwd:
            return WatchError(f"cannot run `{self.source()}` in {self.cwd}: {exc.strerror}; "
                              f"fix the watcher's cwd.")
        program = self.args if isinstance(self.args, str) else self.args[0]
        if isinstance(exc, FileNotFoundError):
            return WatchError(f"command {program!r} was not found; check the spelling, or give its "
                              f"full path (PATH is {os.environ.get('PATH', '')}).")
        if isinstance(exc, PermissionError):
            return WatchError(f"command {program!r} cannot be run: permission denied; make it "
                              f"executable (chmod +x) or check its directories.")
        return WatchError(f"cannot run `{self.source()}`: {exc.strerror or exc}.")


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the command's whole process group, then reap the command itself.

    The leader is not reaped yet, so its group id cannot have been reused by anyone else.
    """
    with contextlib.suppress(ProcessLookupError):  # the group has already gone
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
