"""JSON filters (notifier/filters/json.py): golden cases, bad paths, non-ASCII values."""

from __future__ import annotations

from typing import Any

import pytest

from notifier.errors import FilterError
from tests.filters._spec import check_golden, check_module_kinds, golden_cases, make_filter, run

MODULE = "notifier.filters.json"


@pytest.mark.parametrize("case", golden_cases(MODULE))
def test_golden(case: dict[str, Any]) -> None:
    check_golden(case)


def test_kinds_documented_and_covered() -> None:
    check_module_kinds(MODULE)


@pytest.mark.parametrize("path", ["$.[", "$.a[?(@.x ==", "", "foo bar", "$$"])
def test_bad_jsonpath_fails_at_construction(path: str) -> None:
    with pytest.raises(ValueError, match="is not valid"):
        make_filter({"jsonpath": path})


def test_null_path_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="path: is required"):
        make_filter({"jsonpath": None})


def test_chinese_values_stay_readable() -> None:
    text = '{"商品": {"名称": "茶", "价格": 12}}'.encode("gbk").decode("gbk")
    assert run({"jsonpath": "$['商品']['名称']"}, text) == "茶"
    assert run({"jsonpath": "$['商品']"}, text) == '{\n  "价格": 12,\n  "名称": "茶"\n}'


@pytest.mark.parametrize("text", ["", "   ", "<html></html>", "[1, 2", "NaN-ish"])
def test_non_json_is_filter_error(text: str) -> None:
    for spec in ({"jsonpath": "$"}, "json_format"):
        with pytest.raises(FilterError, match="is not valid JSON"):
            run(spec, text)


def test_empty_list_result_is_no_match() -> None:
    with pytest.raises(FilterError, match="matched nothing in the JSON"):
        run({"jsonpath": "$.items[*]"}, '{"items": []}')


def test_json_format_makes_key_order_irrelevant() -> None:
    assert run("json_format", '{"a": 1, "b": 2}') == run("json_format", '{"b":2,"a":1}')


def test_describe() -> None:
    assert make_filter({"jsonpath": "$.a"}).describe() == "jsonpath $.a"
    assert make_filter("json_format").describe() == "json_format"
