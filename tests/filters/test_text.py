"""Line filters (notifier/filters/text.py): golden cases plus the edges they do not show."""

# Full-width colons and en dashes are deliberate: non-ASCII text is what these tests check.
# ruff: noqa: RUF001

from __future__ import annotations

from typing import Any

import pytest

from notifier.errors import FilterError
from tests.filters._spec import check_golden, check_module_kinds, golden_cases, make_filter, run

MODULE = "notifier.filters.text"
CHINESE = "价格：１２元\n　全角缩进\n\n说明：库存充足\n"


@pytest.mark.parametrize("case", golden_cases(MODULE))
def test_golden(case: dict[str, Any]) -> None:
    check_golden(case)


def test_kinds_documented_and_covered() -> None:
    check_module_kinds(MODULE)


def test_golden_names_unique() -> None:
    names = [p.values[0]["name"] for m in ("text", "html", "json")
             for p in golden_cases(f"notifier.filters.{m}")]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("spec", ["strip", "dedupe", {"regex": "zzz"}, {"grep": "^"},
                                  {"ignore": "zzz"}, {"grep_invert": "zzz"}])
def test_gbk_text_passes_through(spec: Any) -> None:
    text = CHINESE.encode("gbk").decode("gbk")  # what a watcher hands over for a GBK page
    expected = text.rstrip("\n") if spec == "strip" else text
    assert run(spec, text) == expected


def test_grep_matches_chinese() -> None:
    assert run({"grep": "库存"}, CHINESE) == "说明：库存充足\n"


@pytest.mark.parametrize(("spec", "message"), [
    ({"regex": "("}, "not a valid regular expression"),
    ({"grep": "[a-"}, "not a valid regular expression"),
    ({"ignore": ["ok", "*x"]}, "not a valid regular expression"),
    ({"regex": {"pattern": "(a)", "replace": "\\2"}}, "is not usable with pattern"),
    ({"regex": {"pattern": "(?P<x>a)", "replace": "\\g<y>"}}, "is not usable with pattern"),
    ({"regex": {"pattern": "a", "replace": "\\q"}}, "is not usable with pattern"),
    ({"regex": {"pattern": "a", "count": -1}}, "must be at least 0"),
    ({"ignore": []}, "needs at least one pattern"),
    ({"grep": {"ignorecase": True}}, "is required"),
    ({"grep": None}, "pattern: is required"),
    ({"ignore": None}, "patterns: is required"),
    ({"regex": {"pattern": None}}, "pattern: is required"),
    ({"sort": True}, "takes options as a mapping"),
    ({"sort": {"reversed": True}}, "did you mean 'reverse'"),
])
def test_bad_specs_fail_at_construction(spec: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_filter(spec)


def test_grep_no_match_is_filter_error() -> None:
    with pytest.raises(FilterError, match="matched nothing"):
        make_filter({"grep": "price"}).apply("no such line\n")


@pytest.mark.parametrize(("spec", "description"), [
    ("strip", "strip"),
    ({"strip": {"chars": "-"}}, "strip '-'"),
    ({"sort": {"reverse": True}}, "sort reverse"),
    ("dedupe", "dedupe"),
    ({"regex": {"pattern": "\\d+", "replace": "N"}}, "regex '\\\\d+' -> 'N'"),
    ({"grep": "a"}, "grep 'a'"),
    ({"ignore": ["a", "b"]}, "ignore 'a', 'b'"),
])
def test_describe(spec: Any, description: str) -> None:
    assert make_filter(spec).describe() == description
