"""The commands that look back: `notifier history`, `show`, `diff`, `log`, `stats` and `rename`.

Each test writes a real state database, through the store's own API at known times or through
`notifier check --send`, and reads it back through `notifier.cli.main` as a user would.
"""

from __future__ import annotations

import json
import random
import re
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from notifier.cli import main
from notifier.errors import EXIT_USAGE
from notifier.ledger import Attempt
from notifier.lookback import _Clock, histogram_percentile, spark
from notifier.store import Queued, Store
from notifier.versions import show_time
from tests.messages import html_text, parse

T = datetime(2026, 11, 30, 10, 0, tzinfo=UTC).timestamp()  # the config's zone is UTC
OK = "250 2.0.0 Ok: queued"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config in UTC with one file watcher, doc, on tmp_path/doc.txt; alerts to the Maildir."""
    (tmp_path / "doc.txt").write_text("price 3.00 USD\nshipping free\n")
    path = tmp_path / "watchers.yaml"
    path.write_text(f"timezone: UTC\nmail: {{to: [me@example.com]}}\nwatchers:\n"
                    f"  - {{name: doc, kind: file, path: {tmp_path / 'doc.txt'}}}\n")
    return path


def store_of(config: Path) -> Store:
    return Store(config.parent / "state" / "state.db")


def run(config: Path, *args: str) -> int:
    return main(["-c", str(config), *args])


@pytest.fixture
def versions(config: Path) -> Path:
    """doc with versions 1, 2, 3 taken at 10:00, 11:00 and 12:00 UTC on 2026-11-30."""
    store = store_of(config)
    try:
        for hour, text in enumerate(["price 3.00 USD\nshipping free\n", "price 3.75 USD\nshipping free\n",
                                     "price 3.75 USD\nshipping 5 USD\nnew line\n"]):
            store.record_success("doc", T + 3600 * hour, {}, text, history=10)
    finally:
        store.close()
    assert run(config, "status") == 0  # gives the directory its state.id, as a real run does
    return config


def test_history_lists_numbers_times_sizes_and_line_counts(versions: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert run(versions, "history", "doc") == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.split(r"\s+", lines[1].strip()) == ["#3", "2026-11-30", "12:00:00", "39", "+2", "-1"]
    assert re.split(r"\s+", lines[2].strip()) == ["#2", "2026-11-30", "11:00:00", "29", "+1", "-1"]
    assert re.split(r"\s+", lines[3].strip()) == ["#1", "2026-11-30", "10:00:00", "29", "-", "-"]
    assert lines[4].startswith("3 version(s) of doc kept (history: 10)")


@pytest.mark.parametrize(("spec", "text"), [
    (None, "price 3.75 USD\nshipping 5 USD\nnew line\n"),
    ("0", "price 3.75 USD\nshipping 5 USD\nnew line\n"),
    ("-1", "price 3.75 USD\nshipping free\n"),
    ("1", "price 3.00 USD\nshipping free\n"),
    ("2026-11-30T11:59", "price 3.75 USD\nshipping free\n"),  # in effect then: taken at 11:00
    ("2026-11-30 10:00", "price 3.00 USD\nshipping free\n"),
])
def test_show_names_a_version_by_number_or_time(versions: Path, capsys: pytest.CaptureFixture[str],
                                                spec: str | None, text: str) -> None:
    capsys.readouterr()
    assert run(versions, "show", "doc", *([spec] if spec else [])) == 0
    assert capsys.readouterr().out == text


def test_diff_defaults_to_the_last_change_and_takes_any_two(versions: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert run(versions, "diff", "doc") == 0
    assert capsys.readouterr().out == (
        "--- doc #2 (2026-11-30 11:00:00)\n+++ doc #3 (2026-11-30 12:00:00)\n@@ -1,2 +1,3 @@\n"
        " price 3.75 USD\n-shipping free\n+shipping 5 USD\n+new line\n")
    assert run(versions, "diff", "doc", "1", "-1") == 0
    out = capsys.readouterr().out
    assert out.startswith("--- doc #1 (2026-11-30 10:00:00)\n+++ doc #2 (2026-11-30 11:00:00)\n")
    assert "-price 3.00 USD\n+price 3.75 USD\n" in out
    assert run(versions, "diff", "doc", "1") == 0  # one version: against the newest
    assert "+++ doc #3 " in capsys.readouterr().out


def test_diff_uses_the_watchers_own_options(versions: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = versions.read_text().replace("kind: file,", "kind: file, additions_only: true,")
    versions.write_text(text)
    capsys.readouterr()
    assert run(versions, "diff", "doc") == 0
    out = capsys.readouterr().out
    assert "+shipping 5 USD\n+new line\n" in out
    assert "-shipping free" not in out
    assert " price 3.75 USD" not in out  # no context with additions_only, as in the alert


def test_diff_html_is_the_block_the_change_alert_carries(config: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, "check", "--send") == 0
    (config.parent / "doc.txt").write_text("price 3.75 USD\nshipping free\n<script>x</script>\n")
    assert run(config, "check", "--send") == 1
    page = config.parent / "diff.html"
    assert run(config, "diff", "doc", "--html", str(page)) == 0
    html = page.read_text(encoding="utf-8")
    block = html[html.index("<body"):].split(">", 1)[1].rsplit("</body>", 1)[0]
    assert "&lt;script&gt;" in block
    assert "<script>" not in html
    (mail,) = (config.parent / "state" / "maildir" / "new").iterdir()
    assert block.strip() in html_text(parse(mail.read_bytes()))


@pytest.mark.parametrize(("args", "message"), [
    (["history", "dco"], "no watcher named 'dco'.*did you mean 'doc'"),
    (["show", "doc", "9"], r"version 9 of 'doc' is out of range \(kept: 1 to 3, or 0 to -2\)"),
    (["show", "doc", "-3"], "version -3 of 'doc' is out of range"),
    (["diff", "doc", "2020-01-01T00:00"], "no version of 'doc' at or before 2020-01-01T00:00 is kept"),
    (["show", "doc", "2026-11-30T11:00+08:00"], "at or before"),  # 03:00 UTC: before the oldest
    (["diff", "doc", "yesterday"], "'yesterday' is neither a version number nor a time"),
    (["stats", "--since", "a while"], "--since 'a while' is neither a duration"),
    (["log", "--since", "10"], "--since '10' is neither a duration"),
    (["log", "--watcher", "dco"], "did you mean 'doc'"),
    (["log", "<nobody@example.com>"], "the send log has no entry for <nobody@example.com>"),
    (["rename", "dco", "new"], "no state is kept for a watcher named 'dco'; did you mean 'doc'"),
])
def test_bad_input_is_one_line_and_exit_64(versions: Path, capsys: pytest.CaptureFixture[str],
                                           args: list[str], message: str) -> None:
    capsys.readouterr()
    assert run(versions, *args) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert re.search(message, err), err


def test_a_watcher_with_one_version_has_nothing_to_diff(config: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, "check", "--send") == 0
    capsys.readouterr()
    assert run(config, "diff", "doc") == EXIT_USAGE
    assert "only one version of 'doc' is kept yet" in capsys.readouterr().err


def _logged(store: Store, n: int, *, watcher: str | None, account: str | None, at: float,
            state: str = "sent", deferral: str | None = None) -> str:
    """One message through the store as the outbox moves it: queued, maybe deferred, then
    delivered or dead-lettered at `at`."""
    message_id = f"<{watcher}.{n}@example.com>"
    store.enqueue([Queued(message_id=message_id, kind="change", watcher=watcher, account=account,
                          sender="robot@example.com", recipients=("me@example.com",),
                          body=f"Subject: {watcher} changed\r\n\r\nbody {n}\r\n".encode())])
    row = next(r for r in store.outbox() if r.message_id == message_id)
    if deferral:
        store.reschedule(row.id, "pending", "later", 0.0, attempt=Attempt(at - 30, "451 4.3.0 later",
                                                                         deferral=deferral))
    if state == "sent":
        store.delivered(row.id, Attempt(at, OK, keep_body=True))
    else:
        store.reschedule(row.id, state, "554 5.7.1 no", at, attempt=Attempt(at, "554 5.7.1 no"))
    return message_id


def test_log_lists_filters_and_shows_one_entry_whole(versions: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    now = datetime.now(UTC).timestamp()
    store = store_of(versions)
    try:
        old = _logged(store, 1, watcher="doc", account=None, at=now - 10 * 86400)
        deferred = _logged(store, 2, watcher="doc", account=None, at=now - 3600, deferral="451")
        dead = _logged(store, 3, watcher="other", account="qq", at=now - 60, state="dead")
    finally:
        store.close()
    capsys.readouterr()
    assert run(versions, "log") == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in out[1:-1]] == ["sent", "sent", "dead"]
    assert out[-1] == "3 entries."
    assert run(versions, "log", "--since", "2d") == 0
    assert [old in line for line in capsys.readouterr().out.splitlines()].count(True) == 0
    assert run(versions, "log", "--status", "dead") == 0
    assert dead in capsys.readouterr().out
    assert run(versions, "log", "--watcher", "doc", "--json") == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["message_id"] for e in entries] == [old, deferred]
    assert entries[1]["deferrals"] == {"451": 1}
    assert entries[1]["attempts"] == 2
    assert entries[1]["recipients"][0]["status"] == "sent"
    assert run(versions, "log", deferred.strip("<>")) == 0
    whole = capsys.readouterr().out
    for expected in (f"Message-ID: {deferred}", "status:     sent", "subject:    doc changed",
                     "attempts:   2 (deferred: 451 x1)", f"reply:      {OK}", "me@example.com  sent",
                     "message:    kept"):
        assert expected in whole
    assert run(versions, "log", deferred, "--raw") == 0
    assert capsys.readouterr().out == "Subject: doc changed\r\n\r\nbody 2\r\n"


def test_stats_counts_checks_and_deliveries(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = datetime.now(UTC).timestamp()
    versions = config
    store = store_of(versions)
    try:
        for n in range(10):
            store.record_success("doc", now - n, {}, f"v{n}" if n < 3 else None, history=10,
                                 seconds=0.1 if n < 9 else 10.0)
        store.record_failure("doc", now, "boom")
        _logged(store, 1, watcher="doc", account="qq", at=now, deferral="451")
        _logged(store, 2, watcher="doc", account="qq", at=now)
        _logged(store, 3, watcher="doc", account=None, at=now, state="dead")
        store.enqueue([Queued(message_id="<held@x>", kind="error", watcher="doc", account="qq",
                              sender="a@x", recipients=("b@x",), body=b"Subject: h\r\n\r\nx")])
        (held,) = [r for r in store.outbox() if r.message_id == "<held@x>"]
        store.reschedule(held.id, "held", "535 login failed", now)
    finally:
        store.close()
    capsys.readouterr()
    assert run(versions, "stats", "--since", "1d", "--json") == 0
    figures = json.loads(capsys.readouterr().out)
    (doc,) = figures["watchers"]
    assert (doc["checks"], doc["changes"], doc["failures"], doc["alerts"]) == (11, 2, 1, 2)  # v0: baseline
    assert doc["failure_rate"] == pytest.approx(1 / 11)
    assert 0.075 < doc["duration_median"] <= 0.1
    assert 7.5 < doc["duration_p95"] <= 10.0
    assert sum(d["changes"] for d in doc["days"]) == 2
    accounts = {a["name"]: a for a in figures["accounts"]}
    assert (accounts["qq"]["sent"], accounts["qq"]["held"], accounts["qq"]["dead"]) == (2, 1, 0)
    assert accounts["qq"]["deferred_by"] == {"451": 1}
    assert accounts["maildir"]["dead"] == 1
    assert figures["totals"]["sent"] == 2
    assert run(versions, "stats") == 0
    out = capsys.readouterr().out
    assert re.search(r"^doc\s+11\s+2\s+1\s+9\.1%", out, re.M), out
    assert "▁" not in out  # sparklines only on a terminal


def test_histogram_percentiles_and_sparklines() -> None:
    counts = [0] * 29
    counts[6] = 9  # (0.075, 0.1]
    counts[18] = 1  # (7.5, 10]
    median = histogram_percentile(counts, 0.5)
    assert median is not None
    assert 0.075 < median <= 0.1
    assert histogram_percentile([0] * 29, 0.5) is None
    assert spark([0, 1, 4, 8]) == "▁▂▅█"


def test_rename_moves_the_history_and_refuses_a_taken_name(versions: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    store = store_of(versions)
    try:
        store.record_success("taken", T, {}, "x\n", history=10)
    finally:
        store.close()
    capsys.readouterr()
    assert run(versions, "rename", "doc", "taken") == EXIT_USAGE
    assert "'taken' already has state of its own" in capsys.readouterr().err
    assert run(versions, "rename", "doc", "prices") == 0
    out = capsys.readouterr().out
    assert "renamed 'doc' to 'prices'" in out
    assert f"Now rename it in {versions}" in out
    versions.write_text(versions.read_text().replace("name: doc", "name: prices"))
    assert run(versions, "history", "prices") == 0
    assert "3 version(s) of prices kept" in capsys.readouterr().out


@pytest.mark.parametrize("zone", [None, "UTC", "Asia/Shanghai", "Europe/Berlin", "Asia/Kathmandu",
                                  "America/St_Johns", "Australia/Lord_Howe"])
def test_the_log_clock_writes_what_show_time_writes(zone: str | None) -> None:
    """The fast clock of `notifier log` across offsets of 30 and 45 minutes and DST changes."""
    tz = ZoneInfo(zone) if zone else None
    rng = random.Random(11)
    clock = _Clock(tz)
    for ts in sorted([rng.uniform(1.6e9, 1.8e9) for _ in range(2000)]
                     + [1711846799.5, 1711846800.0, 1729990799.9, 1729990800.0]):
        assert clock(ts) == show_time(ts, tz)
