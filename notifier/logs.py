"""Logging for people and for journald: one line per event, secrets redacted.

Under systemd (``$JOURNAL_STREAM`` set) lines carry no timestamp, since the journal adds its
own; elsewhere they do.
"""

from __future__ import annotations

import logging
import os
import sys

from notifier.secrets import RedactingFilter


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time, so a replaced stderr is followed."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup(level: str = "info", smtp_dialogue: bool = False) -> None:
    """Route all notifier logging to stderr at `level`, with secrets masked.

    `smtp_dialogue` shows the SMTP conversation (credentials are masked by notifier.mail).
    """
    handler = _StderrHandler()
    handler.addFilter(RedactingFilter())
    if os.environ.get("JOURNAL_STREAM"):
        fmt = "%(levelname)s %(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt, datefmt="%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Library chatter (connection pools, scheduler internals) only when asked for.
    for noisy in ("urllib3", "apscheduler"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    logging.getLogger("notifier.smtp").setLevel(logging.DEBUG if smtp_dialogue else logging.NOTSET)
