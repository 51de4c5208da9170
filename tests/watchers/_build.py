"""A url watcher built the way the config loader builds one, for the url kind's tests."""

from __future__ import annotations

from typing import Any

from notifier.options import parse_options
from notifier.watchers.url import Url


def url_watcher(url: str, **raw: Any) -> Url:
    """Parse `url` and the options in `raw`, fill the defaults, construct."""
    values, problems = parse_options({"url": url, **raw}, Url.options, "watchers.yaml", "watchers.w")
    assert not problems, problems
    return Url(values)
