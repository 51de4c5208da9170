"""The bases every watcher and filter kind derives from, and how kinds are found by name.

These live below `config`, so the config holds typed `Watcher` and `Filter` objects, while
the kinds themselves (notifier.watchers.*, notifier.filters.*) are plugins: `watcher_kinds()`
and `filter_kinds()` import their package by name on first use, and each class registers
itself with ``class Url(Watcher, kind="url")``. Adding a kind is one new module.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from notifier.attachments import Attachment
from notifier.options import Option


class Kind:
    """Base of every registrable class. Subclass with ``class X(Base, kind="name")``.

    Each direct subclass of `Kind` (Watcher, Filter) gets its own registry; classes further
    down register themselves in it by the `kind` name users write in `watchers.yaml`.
    """

    __slots__ = ()  # a subclass may keep its instances lean (20,000 url watchers stay loaded)

    kind: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()
    option_names: ClassVar[frozenset[str]] = frozenset()  # of `options`, for membership tests
    registry: ClassVar[dict[str, type[Any]]]

    def __init_subclass__(cls, kind: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.option_names = frozenset(o.name for o in cls.options)
        if Kind in cls.__bases__:
            cls.registry = {}
        if kind:
            if kind in cls.registry:
                raise TypeError(f"kind {kind!r} is registered twice")
            cls.kind = kind
            cls.registry[kind] = cls

    @classmethod
    def summary(cls) -> str:
        """The first line of the class docstring: what `notifier kinds` shows."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


@dataclass(frozen=True)
class Fetched:
    """What one watcher run produced.

    `text` is the content handed to the filters. `unchanged` means the source itself said
    nothing changed (an HTTP 304), so filters and diff are skipped. `meta` is kept in the
    state and handed back on the next run (ETag, Last-Modified). `attachments` go with a
    change alert of this run (a browser watcher's screenshots), never into the state.
    """

    text: str
    unchanged: bool = False
    meta: Mapping[str, str] = field(default_factory=dict)
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True, slots=True)
class Received:
    """What `Watcher.receive` got: `finish()` does the rest of the fetch (decoding) and gives
    what `fetch` would, or raises as it would; `size` (bytes received) tells a pass whether
    that and the filters are quick enough to run on the event loop itself."""

    finish: Callable[[], Fetched]
    size: int


@dataclass(frozen=True)
class Shared:
    """Top-level settings for what a kind shares between its watchers (one browser)."""

    browser_workers: int = 2  # pages the one Chromium renders at once
    browser_path: str | None = None  # None: look for chromium and its kin on PATH
    per_host: int = 8  # url fetches in flight to one site at a time


class Watcher(Kind):
    """Base of all watcher kinds. Subclasses parse their options in `__init__`."""

    __slots__ = ()  # the name is its WatcherConfig's: a slot here held it twice
    registry: ClassVar[dict[str, type[Watcher]]]

    def __init__(self, options: Mapping[str, Any]) -> None:
        """`options` holds this kind's options, validated, with every default filled in."""

    def source(self) -> str:
        """What is watched, for logs and alerts: a URL, a path or a command line."""
        raise NotImplementedError

    def link(self) -> str | None:
        """A link a person can open to see the thing, if there is one."""
        return None

    def queue(self) -> Hashable | None:
        """What its fetches take turns at, if anything (a url's site, which serves `per_host`
        at once): the daemon starts no more of one queue's checks than that at once, so the
        rest wait without holding any of the `workers` (see schedule.Timetable)."""
        return None

    def fetch(self, previous: Mapping[str, str]) -> Fetched:
        """Fetch once. `previous` is the `meta` of the last successful run.

        Raises WatchError with a user-facing message for anything expected to go wrong.
        """
        raise NotImplementedError

    # Whether `receive` works: the kind waits on the network, and a pass runs its fetches on
    # one event loop (notifier.passes) instead of a thread each.
    asynchronous: ClassVar[bool] = False

    async def receive(self, previous: Mapping[str, str]) -> Received:
        """The waiting part of `fetch`, run on the event loop; the rest is `Received.finish`."""
        raise NotImplementedError

    @classmethod
    def shut_down(cls) -> None:
        """Release what the kind shares between its watchers (pooled connections); the daemon
        calls it once per kind when it stops."""

    @classmethod
    def configured(cls, watchers: Sequence[Watcher], shared: Shared) -> None:
        """A configuration takes effect (start, reload, `notifier check`) with `watchers` of this
        kind: a kind that shares something between them adjusts it, and releases it when
        none is left (the browser kind stops Chromium)."""

    @classmethod
    def warnings(cls, watchers: Sequence[Watcher], shared: Shared) -> list[str]:
        """What `notifier validate` should warn about these watchers of the kind: things the
        config is valid without, but a check will fail on (no browser installed)."""
        return []


class Filter(Kind):
    """Base of all filter kinds. Compile everything in `__init__` so bad specs fail at load."""

    registry: ClassVar[dict[str, type[Filter]]]
    shorthand: ClassVar[str | None] = None  # option that ``- kind: value`` sets

    def __init__(self, options: Mapping[str, Any]) -> None:
        """`options` holds this kind's options, validated; raise ValueError if unusable."""

    def apply(self, text: str) -> str:
        """Return the filtered text. Raise FilterError when the filter matched nothing."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for `notifier test-filter`: the kind and its main option."""
        return self.kind


def import_package(name: str, path: list[str]) -> None:
    """Import every module of a kinds package, so that its classes register themselves."""
    for module in pkgutil.iter_modules(path):
        importlib.import_module(f"{name}.{module.name}")


def watcher_kinds() -> dict[str, type[Watcher]]:
    """Every watcher kind by name, loading notifier.watchers on first use."""
    _load("notifier.watchers")
    return Watcher.registry


def filter_kinds() -> dict[str, type[Filter]]:
    """Every filter kind by name, loading notifier.filters on first use."""
    _load("notifier.filters")
    return Filter.registry


def _load(package: str) -> None:
    """Import a kinds package once; asking importlib again on every lookup cost a tenth of
    loading 20,000 watchers."""
    if package not in sys.modules:
        importlib.import_module(package)


def configure_kinds(watchers: Sequence[Watcher], shared: Shared) -> None:
    """Hand each watcher kind its watchers of the configuration taking effect (`configured`)."""
    for kind, cls in watcher_kinds().items():
        cls.configured([w for w in watchers if w.kind == kind], shared)
