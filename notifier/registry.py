"""Kinds that register themselves by name, so adding a watcher or filter is one new file."""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

from notifier.options import Option


class Kind:
    """Base of every registrable class. Subclass with ``class X(Base, kind="name")``.

    Each direct subclass of `Kind` (Watcher, Filter) gets its own registry; classes further
    down register themselves in it by the `kind` name users write in `watchers.yaml`.
    """

    kind: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()
    registry: ClassVar[dict[str, type[Any]]]

    def __init_subclass__(cls, kind: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
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


def kinds(family: str) -> dict[str, type[Any]]:
    """The registered kinds of a family ("watchers" or "filters"), loading them on first use.

    Looked up by name so that the config loader, which comes first in the pipeline, does not
    import the stages after it; the kinds are plugins it discovers.
    """
    package = importlib.import_module(f"notifier.{family}")
    base_name = {"watchers": "Watcher", "filters": "Filter"}[family]
    registry: dict[str, type[Any]] = getattr(package, base_name).registry
    return registry
