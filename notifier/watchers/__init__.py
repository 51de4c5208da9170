"""Watcher kinds: each fetches one thing (a URL, a file, a command's output) as text.

A kind is one module in this package with one class ``class X(Watcher, kind="name")``;
importing the package imports every module, which registers the kinds.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from notifier.registry import Kind


@dataclass(frozen=True)
class Fetched:
    """What one watcher run produced.

    `text` is the content handed to the filters. `unchanged` means the source itself said
    nothing changed (an HTTP 304), so filters and diff are skipped. `meta` is kept in the
    state and handed back on the next run (ETag, Last-Modified).
    """

    text: str
    unchanged: bool = False
    meta: Mapping[str, str] = field(default_factory=dict)


class Watcher(Kind):
    """Base of all watcher kinds. Subclasses parse their options in `__init__`."""

    registry: ClassVar[dict[str, type[Watcher]]]

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        """`options` holds this kind's options, already validated against `options`."""
        self.name = name

    def source(self) -> str:
        """What is watched, for logs and alerts: a URL, a path or a command line."""
        raise NotImplementedError

    def link(self) -> str | None:
        """A link a person can open to see the thing, if there is one."""
        return None

    def fetch(self, previous: Mapping[str, str]) -> Fetched:
        """Fetch once. `previous` is the `meta` of the last successful run.

        Raises WatchError with a user-facing message for anything expected to go wrong.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release pooled resources (HTTP sessions); called when the config is replaced."""


def _import_kinds() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_import_kinds()
