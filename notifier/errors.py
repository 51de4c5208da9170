"""The errors notifier knows how to explain.

Every error a user can cause or meet derives from `NotifierError`, so the CLI has one boundary
that turns them into a one-line message and an exit code; anything else is a bug and keeps its
traceback (only with ``--debug``).
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_CHANGED = 1
EXIT_FAILED = 2
EXIT_USAGE = 64  # EX_USAGE: the command line itself is wrong (an unknown watcher name, ...)
EXIT_BUG = 70  # EX_SOFTWARE: an error nobody explained; the CLI asks for a report
EXIT_BUSY = 75  # EX_TEMPFAIL: another notifier has the state directory; systemd retries later
EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h; systemd is told not to restart on it
EXIT_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a reader that went away


class NotifierError(Exception):
    """An error with a message written for the user; `exit_code` is what the CLI returns."""

    exit_code = EXIT_FAILED


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a config file, located as precisely as the YAML parser allows."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = f" {self.key}:" if self.key else ""
        return f"{where}:{key} {self.message}"


class ConfigError(NotifierError):
    """The config has one or more problems; all of them are reported together."""

    exit_code = EXIT_CONFIG

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class UsageError(NotifierError):
    """The command line names something that does not exist, or asks for something impossible."""

    exit_code = EXIT_USAGE


class WatchError(NotifierError):
    """A watcher could not produce a result this time (network, timeout, missing selector...).

    `retry_after` is how many seconds the source asked us to wait before trying again (an
    HTTP 429/503 with Retry-After), already capped; None when it did not say.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class FilterError(WatchError):
    """A filter matched nothing or could not read its input; reported per watcher."""


class StateError(NotifierError):
    """The state database cannot be used; it is never reset behind the user's back."""


class DeliveryError(NotifierError):
    """Sending a message failed. Subclasses say what the outbox should do about it.

    `refused` holds the reply to each refused recipient; `reply` the server's reply ("451 4.3.0
    Try later") when the failure was one, None when there was no answer (a dropped connection).
    """

    def __init__(self, message: str, refused: dict[str, str] | None = None, *,
                 reply: str | None = None) -> None:
        super().__init__(message)
        self.refused = refused or {}
        self.reply = reply


class TransientDeliveryError(DeliveryError):
    """Worth retrying soon with backoff: 4xx replies, dropped connections, timeouts."""


class RateLimitedError(DeliveryError):
    """The provider says we send too much (163/QQ say so with 5xx texts): retry slowly."""


class HeldDeliveryError(DeliveryError):
    """Retrying cannot help until a person acts: bad login, From/login mismatch, bad TLS."""


class PermanentDeliveryError(DeliveryError):
    """The server refused this message for good; it becomes a dead letter, never dropped."""
