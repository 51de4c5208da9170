"""The JSON Schema of `watchers.yaml`, generated from the same option declarations the
validator uses, so editors can complete and check the file without a second source of truth.
"""

from __future__ import annotations

import json
from typing import Any

from notifier.kinds import filter_kinds, watcher_kinds
from notifier.options import schema_for
from notifier.sections import DEFAULTS_OPTIONS, MAIL_OPTIONS, SMTP_OPTIONS, TOP_OPTIONS, WATCHER_OPTIONS


def _filter_schema() -> dict[str, Any]:
    variants: list[dict[str, Any]] = []
    for name, cls in sorted(filter_kinds().items()):
        options = schema_for(cls.options)
        value: dict[str, Any] = options
        if cls.shorthand:
            value = {"anyOf": [options, options["properties"][cls.shorthand], {"type": "null"}]}
        variants.append({"type": "object", "properties": {name: value}, "required": [name],
                         "additionalProperties": False, "description": cls.summary()})
    variants.append({"enum": sorted(filter_kinds()), "description": "A filter without options."})
    return {"type": "array", "items": {"anyOf": variants}}


def _watcher_schema() -> dict[str, Any]:
    variants = []
    for name, cls in sorted(watcher_kinds().items()):
        body = schema_for(WATCHER_OPTIONS + cls.options)
        body["properties"]["kind"] = {"const": name, "description": cls.summary()}
        body["properties"]["filters"] = _filter_schema()
        variants.append(body)
    return {"type": "array", "items": {"oneOf": variants}}


def generate() -> dict[str, Any]:
    """The whole schema as a dict (draft 2020-12)."""
    top = schema_for(TOP_OPTIONS)
    top["properties"].update({
        "mail": schema_for(MAIL_OPTIONS),
        "smtp": {"type": "object", "additionalProperties": schema_for(SMTP_OPTIONS)},
        "defaults": schema_for(DEFAULTS_OPTIONS),
        "watchers": _watcher_schema(),
    })
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "notifier watchers.yaml", **top}


def render() -> str:
    """The schema as the text published in the repository."""
    return json.dumps(generate(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
