"""Filter kinds: each turns a watcher's text into the part the user cares about.

A kind is one class ``class X(Filter, kind="name")`` in a module of this package, grouped
by family (text, html, json). In `watchers.yaml` a filter is written as
``- strip``, ``- css: "div.price"`` (the value goes to the kind's `shorthand` option) or
``- regex: {pattern: ..., replace: ...}``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any, ClassVar

from notifier.errors import WatchError
from notifier.registry import Kind


class Filter(Kind):
    """Base of all filter kinds. Compile everything in `__init__` so bad specs fail at load."""

    registry: ClassVar[dict[str, type[Filter]]]
    shorthand: ClassVar[str | None] = None  # option that ``- kind: value`` sets

    def __init__(self, options: Mapping[str, Any]) -> None:
        """`options` holds this kind's options, already validated; raise ValueError if unusable."""

    def apply(self, text: str) -> str:
        """Return the filtered text. Raise FilterError when the filter matched nothing."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for `notifier test-filter`: the kind and its main option."""
        return self.kind


class FilterError(WatchError):
    """A filter matched nothing or could not read its input; reported per watcher."""


def _import_kinds() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_import_kinds()
