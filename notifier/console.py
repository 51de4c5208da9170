"""Terminal output for `notifier check`: colored diffs and a progress bar, only on a TTY."""

from __future__ import annotations

import os
import sys
from typing import TextIO

_COLORS = {"+": "\033[32m", "-": "\033[31m", "@": "\033[36m"}
_RESET = "\033[0m"


def use_color(stream: TextIO) -> bool:
    """Color only for a terminal, and never when NO_COLOR is set (no-color.org)."""
    return stream.isatty() and not os.environ.get("NO_COLOR")


def colored_diff(unified: str, color: bool) -> str:
    if not color:
        return unified
    lines = []
    for line in unified.splitlines():
        code = _COLORS.get(line[:1], "")
        if line.startswith(("+++", "---")):
            code = "\033[1m"
        lines.append(f"{code}{line}{_RESET}" if code else line)
    return "\n".join(lines) + "\n"


class Progress:
    """A one-line progress bar on stderr; silent when stderr is not a terminal."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, min_total: int = 5) -> None:
        self.total = total
        self.done = 0
        self.stream = stream
        self.active = stream.isatty() and total >= min_total

    def advance(self) -> None:
        self.done += 1
        if self.active:
            width = 30
            filled = width * self.done // self.total
            self.stream.write(f"\r[{'#' * filled}{' ' * (width - filled)}] {self.done}/{self.total}")
            self.stream.flush()

    def clear(self) -> None:
        """Erase the bar before printing a line, so output and bar don't interleave."""
        if self.active:
            self.stream.write("\r\033[K")
