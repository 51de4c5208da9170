"""JSON filters: pick values out of API responses, or normalise them so key order is no change."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from notifier.errors import FilterError
from notifier.filters.text import matched_nothing
from notifier.kinds import Filter
from notifier.options import REQUIRED, Option, Str


def load_json(text: str, what: str) -> Any:
    """The document in `text`, or a FilterError that says where the JSON is broken."""
    try:
        return json.loads(text.removeprefix("\ufeff"))  # a BOM the fetcher did not strip
    except json.JSONDecodeError as exc:
        raise FilterError(f"{what} needs JSON, but the input is not valid JSON ({exc.msg} at "
                          f"line {exc.lineno} column {exc.colno}).") from None


def dump_json(value: Any) -> str:
    """Stable, readable JSON: sorted keys and fixed indentation, so only real changes differ."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


class JsonPath(Filter, kind="jsonpath"):
    """Keep the values a JSONPath expression selects, one per line (strings as plain text).

    Uses jsonpath-ng's extended syntax, so filters such as ``$.items[?(@.price > 10)].name``
    and ``len``/``sorted`` work. Other values are printed as JSON with sorted keys.
    """

    options: ClassVar[tuple[Option, ...]] = (
        Option("path", Str(), REQUIRED, doc="JSONPath expression, e.g. $.data.items[*].price."),
    )
    shorthand = "path"

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.path: str = options["path"]
        # Imported by the first jsonpath filter, not by every process that loads the kinds.
        from jsonpath_ng.exceptions import JSONPathError  # noqa: PLC0415
        from jsonpath_ng.ext.parser import parse as parse_jsonpath  # noqa: PLC0415

        try:
            self._expression = parse_jsonpath(self.path)
        except (JSONPathError, ValueError, TypeError) as exc:  # the ext parser raises all three
            raise ValueError(f"jsonpath {self.path!r} is not valid: {exc}.") from None

    def apply(self, text: str) -> str:
        from jsonpath_ng.exceptions import JSONPathError  # noqa: PLC0415 - loaded by __init__

        data = load_json(text, self.describe())
        try:
            values = [match.value for match in self._expression.find(data)]
        except (JSONPathError, ValueError, TypeError, LookupError, NotImplementedError) as exc:
            raise FilterError(f"jsonpath {self.path!r} failed on this JSON: {exc}.") from None
        if not values:
            raise matched_nothing(f"jsonpath {self.path!r}", "in the JSON", "path")
        return "\n".join(v if isinstance(v, str) else dump_json(v) for v in values)

    def describe(self) -> str:
        return f"jsonpath {self.path}"


class JsonFormat(Filter, kind="json_format"):
    """Pretty-print JSON with sorted keys, so a reordered response does not look like a change."""

    def apply(self, text: str) -> str:
        return dump_json(load_json(text, self.kind))
