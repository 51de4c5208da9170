"""Logging for people and for journald: one line per event, secrets redacted.

Under systemd (``$JOURNAL_STREAM`` set) lines carry no timestamp, since the journal adds its
own; elsewhere they do.
"""

from __future__ import annotations

import logging
import os
import re
import sys

from notifier.secrets import RedactingFilter

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators some viewers honour.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    """`text` with every control character escaped (a newline becomes \\n), so a watcher name,
    a server reply or a page title can never start a forged log line or move the cursor."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class _OneLineFormatter(logging.Formatter):
    """Every record is one line, whatever its arguments hold; only tracebacks span lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return super().formatMessage(record)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time, so a replaced stderr is followed."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup(level: str = "info", smtp_dialogue: bool = False) -> None:
    """Route all notifier logging to stderr at `level`, with secrets masked.

    `smtp_dialogue` shows the SMTP conversation (credentials are masked by notifier.transport).
    """
    handler = _StderrHandler()
    handler.addFilter(RedactingFilter())
    if os.environ.get("JOURNAL_STREAM"):
        fmt = "%(levelname)s %(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(_OneLineFormatter(fmt, datefmt="%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Library chatter (connection pools, scheduler internals) only when asked for.
    for noisy in ("urllib3", "apscheduler"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    logging.getLogger("notifier.smtp").setLevel(logging.DEBUG if smtp_dialogue else logging.NOTSET)
