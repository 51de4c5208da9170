"""A watcher's kept versions, as `notifier history`, `show` and `diff` name and compare them.

A version is named by its number (the one `notifier history` lists; numbers count every
version ever recorded, so they stay put as old ones are trimmed), by a number relative to the
newest (`0` the newest, `-1` the one before it), or by a time (`2026-11-30T10:00`, in the
config's time zone): the version in effect then, the newest taken at or before it.

Two versions are compared exactly as an alert compares them: `notifier.diff.compute` with the
watcher's `context_lines`, `additions_only` and `deletions_only`; the HTML is the change
alert's own, rendered by notifier.render with the watcher's templates.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo

from notifier.config import Config, WatcherConfig
from notifier.diff import Diff, compute, opcodes
from notifier.errors import UsageError
from notifier.store import Version

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True)
class Listed:
    """One line of `notifier history`: a version, its size, and lines added and removed
    since the version before it (None for the oldest kept)."""

    version: Version
    size: int
    added: int | None
    removed: int | None


def check_name(name: str, cfg: Config, stored: Iterable[str]) -> WatcherConfig | None:
    """The watcher's configuration (None for one removed from the file whose state is still
    kept); a usage error with a did-you-mean for a name nothing knows."""
    wc = cfg.watcher(name)
    known = sorted({w.name for w in cfg.watchers} | set(stored))
    if wc is None and name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known) or 'none'}."
        raise UsageError(f"no watcher named {name!r} in {cfg.path} or the state; {hint}")
    return wc


def need(name: str, versions: Sequence[Version], count: int = 1) -> None:
    if len(versions) < count:
        have = "no version" if not versions else "only one version"
        raise UsageError(f"{have} of {name!r} is kept yet"
                         + ("; the first successful check records one." if not versions else
                            "; a diff needs two (the next change records another)."))


def resolve(name: str, versions: Sequence[Version], spec: str, zone: tzinfo | None) -> Version:
    """The version `spec` names among `versions` (newest first); a usage error otherwise."""
    need(name, versions)
    kept = f"kept: {versions[-1].number} to {versions[0].number}, or 0 to -{len(versions) - 1}"
    try:
        number = int(spec)
    except ValueError:
        when = parse_time(spec, zone)
        found = next((v for v in versions if v.taken_at <= when.timestamp()), None)
        if found is None:
            oldest = show_time(versions[-1].taken_at, zone)
            raise UsageError(f"no version of {name!r} at or before {spec} is kept; the oldest is "
                             f"#{versions[-1].number} from {oldest}.") from None
        return found
    if number <= 0 and -number < len(versions):
        return versions[-number]
    found = next((v for v in versions if v.number == number), None) if number > 0 else None
    if found is None:
        raise UsageError(f"version {spec} of {name!r} is out of range ({kept}).")
    return found


def parse_time(text: str, zone: tzinfo | None) -> datetime:
    """A version's time; a usage error when `text` is not a time either."""
    when = local_time(text, zone)
    if when is None:
        raise UsageError(f"{text!r} is neither a version number nor a time; write a number from "
                         f"`notifier history`, -1 for the previous version, or a time like "
                         f"2026-11-30T10:00.")
    return when


def local_time(text: str, zone: tzinfo | None) -> datetime | None:
    """A date or a date and time like 2026-11-30T10:00 or "2026-11-30 10:00", in `zone` (local
    time when None) unless it names its own offset; None when `text` is neither."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=zone) if zone else when.astimezone()


def listing(versions: Sequence[Version]) -> list[Listed]:
    """`versions` (newest first) with sizes and line counts against the version before each."""
    out = []
    for index, version in enumerate(versions):
        older = versions[index + 1] if index + 1 < len(versions) else None
        added = removed = None
        if older is not None:
            a, b = older.text.splitlines(), version.text.splitlines()
            added = removed = 0
            for tag, i1, i2, j1, j2 in opcodes(a, b):
                if tag != "equal":
                    removed, added = removed + i2 - i1, added + j2 - j1
        out.append(Listed(version, len(version.text.encode("utf-8", "surrogatepass")), added, removed))
    return out


def compare(wc: WatcherConfig | None, older: Version, newer: Version) -> Diff:
    """The diff an alert would show between two versions, with the watcher's own options."""
    if wc is None:
        return compute(older.text, newer.text)
    return compute(older.text, newer.text, wc.context_lines, wc.additions_only, wc.deletions_only)


def label(name: str, version: Version, zone: tzinfo | None) -> str:
    """How a diff's ---/+++ lines name a version: "prices #12 (2026-11-30 10:00:03)"."""
    return f"{name} #{version.number} ({show_time(version.taken_at, zone)})"


def show_time(ts: float, zone: tzinfo | None) -> str:
    return datetime.fromtimestamp(ts, zone).strftime(TIME_FORMAT)


def html(cfg: Config, name: str, wc: WatcherConfig | None, older: Version, newer: Version,
         diff: Diff) -> str:
    """A page with the diff block a change alert for `older` → `newer` carries (the watcher's
    templates, words marked), to open in a browser."""
    from notifier.render import diff_html  # noqa: PLC0415 - jinja2 only for --html

    zone = (wc.timezone if wc else None) or cfg.timezone
    dirs = tuple(cfg.path.parent / d for d in ((wc.templates if wc else None), cfg.templates) if d)
    title = f"{label(name, older, zone)} → {label(name, newer, zone)}"
    return diff_html(diff, title, dirs)


def _aware(ts: float, zone: tzinfo | None) -> datetime:
    return datetime.fromtimestamp(ts, zone).astimezone(zone)
