"""Build filters from specs written as in watchers.yaml, and load the golden cases.

Specs go through the config loader's own resolver (``- kind``, ``- kind: shorthand-value``,
``- kind: {option: value}``), so the tests exercise exactly what users write.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from notifier.config import build_filter
from notifier.errors import FilterError
from notifier.kinds import Filter, filter_kinds

GOLDEN = Path(__file__).parent.parent / "data" / "filter_tests.yaml"


def filter_class(spec: Any) -> type[Filter]:
    """The kind a spec names: the string itself or the single key of a mapping."""
    kind = spec if isinstance(spec, str) else next(iter(spec))
    return filter_kinds()[kind]


def make_filter(spec: Any) -> Filter:
    """A filter from one spec, through the config loader's own resolver; ValueError if bad."""
    flt: Filter = build_filter(spec, file="test")
    return flt


def run(specs: Any, text: str) -> str:
    """Apply one spec or a list of them in order, as a watcher's filter chain does."""
    for spec in specs if isinstance(specs, list) else [specs]:
        text = make_filter(spec).apply(text)
    return text


def golden_cases(module: str) -> list[Any]:
    """The golden cases whose (first) filter is defined in `module`, as pytest params."""
    cases = yaml.safe_load(GOLDEN.read_text(encoding="utf-8"))
    out = []
    for case in cases:
        first = case["filter"][0] if isinstance(case["filter"], list) else case["filter"]
        if filter_class(first).__module__ == module:
            out.append(pytest.param(case, id=case["name"]))
    return out


def check_golden(case: dict[str, Any]) -> None:
    """Run one golden case: `expected` output, or a FilterError containing `error`."""
    if "error" in case:
        with pytest.raises(FilterError, match=re.escape(case["error"])):
            run(case["filter"], case["input"])
    else:
        assert run(case["filter"], case["input"]) == case["expected"]


def check_module_kinds(module: str) -> None:
    """Every kind in `module` is documented and has at least one golden case."""
    cases = yaml.safe_load(GOLDEN.read_text(encoding="utf-8"))
    used = set()
    for case in cases:
        for spec in case["filter"] if isinstance(case["filter"], list) else [case["filter"]]:
            used.add(filter_class(spec).kind)
    kinds = [cls for cls in filter_kinds().values() if cls.__module__ == module]
    assert kinds
    for cls in kinds:
        assert cls.summary(), f"{cls.kind} needs a docstring"
        assert all(opt.doc for opt in cls.options), f"{cls.kind} has an undocumented option"
        assert cls.shorthand is None or cls.shorthand in {o.name for o in cls.options}
        assert cls.kind in used, f"{cls.kind} has no golden case"
