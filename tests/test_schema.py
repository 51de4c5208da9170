"""notifier.schema: the published JSON Schema is generated from the validator's declarations."""

from __future__ import annotations

import json
from pathlib import Path

from notifier import schema
from notifier.kinds import filter_kinds, watcher_kinds
from notifier.sections import WATCHER_OPTIONS

ROOT = Path(__file__).resolve().parent.parent


def test_readme_option_tables_are_up_to_date() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index(schema.MARKDOWN_BEGIN)
    end = readme.index(schema.MARKDOWN_END) + len(schema.MARKDOWN_END) + 1
    assert readme[start:end] == schema.markdown(), (
        "README's option reference is stale; replace it with `notifier kinds --markdown`")


def test_published_schema_is_up_to_date() -> None:
    published = (ROOT / "watchers.schema.json").read_text()
    assert published == schema.render(), (
        "watchers.schema.json is stale; regenerate it with `notifier schema > watchers.schema.json`")


def test_schema_covers_every_kind_and_option() -> None:
    doc = schema.generate()
    variants = doc["properties"]["watchers"]["items"]["oneOf"]
    assert {v["properties"]["kind"]["const"] for v in variants} == set(watcher_kinds())
    for variant in variants:
        cls = watcher_kinds()[variant["properties"]["kind"]["const"]]
        names = {o.name for o in WATCHER_OPTIONS + cls.options}
        assert set(variant["properties"]) == names
        assert variant["additionalProperties"] is False
    filters = variants[0]["properties"]["filters"]["items"]["anyOf"]
    named = {next(iter(v["properties"])) for v in filters if "properties" in v}
    assert named == set(filter_kinds())


def test_schema_is_json_serializable_and_rejects_unknown_top_keys() -> None:
    doc = json.loads(schema.render())
    assert doc["additionalProperties"] is False
    assert "watchers" in doc["required"]
