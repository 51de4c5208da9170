"""Secrets that cannot leak by accident: they print as ``****`` and logs redact their value.

A password is read from the environment, a file, or a systemd credential
(``$CREDENTIALS_DIRECTORY``), never required in `watchers.yaml` itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from notifier.errors import HeldDeliveryError

MASK = "****"


class Secret:
    """A string that only `reveal()` gives out; repr, str and f-strings show ``****``."""

    __slots__ = ("_value",)
    _known: set[str] = set()  # noqa: RUF012 - process-wide on purpose: the log filter reads it

    def __init__(self, value: str) -> None:
        self._value = value
        if len(value) >= 4:  # masking every "x" in every log line would make logs unreadable
            Secret._known.add(value)

    def reveal(self) -> str:
        """The real value, for the one place that needs it (SMTP login)."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK})"

    def __str__(self) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def redact(text: str) -> str:
    """Replace every known secret value in `text` by the mask."""
    for value in Secret._known:
        if value in text:
            text = text.replace(value, MASK)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that masks known secret values in every record, arguments included."""

    def filter(self, record: logging.LogRecord) -> bool:
        if Secret._known:
            record.msg = redact(record.getMessage())
            record.args = None
            if record.exc_text:
                record.exc_text = redact(record.exc_text)
        return True


class SecretRef:
    """Where a secret is kept, read only when it is needed (an SMTP login).

    Commands that only read the state (`validate`, `status`, `outbox`) run from an admin shell
    that has no $CREDENTIALS_DIRECTORY or password variable; they must not need the secret.
    A rotated password file is picked up at the next login without a reload.
    """

    __slots__ = ("credential", "env", "environ", "file")

    def __init__(self, *, env: str | None = None, file: str | None = None,
                 credential: str | None = None, environ: Mapping[str, str] | None = None) -> None:
        self.env, self.file, self.credential = env, file, credential
        self.environ = os.environ if environ is None else environ

    def reveal(self) -> str:
        """The secret's value; HeldDeliveryError (retrying cannot help) when it cannot be read."""
        try:
            return self.read().reveal()
        except ValueError as exc:
            raise HeldDeliveryError(f"The SMTP password cannot be read: {exc}.") from None

    def read(self) -> Secret:
        """The secret, or ValueError with a hint."""
        return read_secret(env=self.env, file=self.file, credential=self.credential,
                           environ=self.environ)

    def __repr__(self) -> str:
        return f"SecretRef({MASK})"

    def __str__(self) -> str:
        return MASK


def read_secret(*, env: str | None, file: str | None, credential: str | None,
                environ: Mapping[str, str] | None = None) -> Secret:
    """Read a secret from the first source given. Raises ValueError with a hint on failure."""
    environ = os.environ if environ is None else environ
    if env:
        value = environ.get(env)
        if value is None:
            raise ValueError(f"environment variable {env} is not set; export it before starting")
        return Secret(value)
    if credential:
        directory = environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ValueError("CREDENTIALS_DIRECTORY is not set; use LoadCredential= in the unit")
        file = str(Path(directory) / credential)
    if file:
        try:
            return Secret(Path(file).read_text(encoding="utf-8").strip())
        except OSError as exc:
            raise ValueError(f"cannot read {file} ({exc.strerror}); check the path and permissions") from None
    return Secret("")
