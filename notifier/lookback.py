"""What `notifier log` and `notifier stats` print: the send log, and figures from it and from the
per-day check counts (notifier.ledger). Nothing is counted twice: checks, changes and failures
come from the counts the checks bumped in their own transactions, messages from the send log,
and what is still queued from the outbox itself.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo
from typing import Any

from notifier.errors import UsageError
from notifier.ledger import DURATION_BUCKETS, LogEntry, day_of
from notifier.options import Duration
from notifier.relaylog import ClientFigures
from notifier.store import Store
from notifier.versions import local_time, show_time

SPARKS = "▁▂▃▄▅▆▇█"
MAILDIR = "maildir"  # how figures name "no smtp account"


def parse_since(text: str, now: float, zone: tzinfo | None = None) -> float:
    """`--since`: a duration back from now (7d, 12h) or a date or time (2026-11-30T10:00, in
    `zone`); a usage error for anything else."""
    try:
        return now - float(Duration().parse(text))
    except ValueError:
        when = local_time(text, zone)
    if when is None:
        raise UsageError(f"--since {text!r} is neither a duration like 7d or 12h nor a time like "
                         f"2026-11-30T10:00.")
    return when.timestamp()


def seconds(value: float | None) -> str:
    """0.42s, 12s, 3.5m, 2.0h: short enough for a column."""
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f}s"
    if value < 120:
        return f"{value:.0f}s"
    return f"{value / 60:.1f}m" if value < 7200 else f"{value / 3600:.1f}h"


# -- the send log ------------------------------------------------------------------------------

# One line of `notifier log` after its time: SQLite's printf fills these (notifier.ledger.listing;
# "!" counts characters, as Python does, so Chinese names line up too), then the latency goes
# between them.
LOG_HEAD = "  %-7s  %-8s  %-!16s  %-!10s  %5d  "
LOG_TAIL = "  %s%s  %s  %s"
LOG_HEADER = (f"{'finished':19}  {'status':7}  {'kind':8}  {'watcher':16}  {'account':10}  tries  "
              f"latency  recipients  message-id  subject")


def log_lines(store: Store, since: float | None, watcher: str | None, status: str | None,
              zone: tzinfo | None) -> list[str]:
    """The send log one line per entry, oldest first, under a header."""
    when = _Clock(zone)
    rows = store.log_listing(since, watcher, status, LOG_HEAD, LOG_TAIL, MAILDIR)
    return [LOG_HEADER, *[f"{when(finished)}{head}{seconds(latency):>7}{tail}"
                          for finished, latency, head, tail in rows]]


_MINUTES_SECONDS = [f"{m:02d}:{s:02d}" for m in range(60) for s in range(60)]


class _Clock:
    """`show_time` for many times in order, a few times faster: the date and hour are written
    once per quarter of an hour (zones change their offset only at such times, in UTC too),
    minutes and seconds come from a table."""

    def __init__(self, zone: tzinfo | None) -> None:
        self.zone = zone
        self.low = self.high = self.hour = 0.0
        self.prefix = ""

    def __call__(self, ts: float) -> str:
        if not self.low <= ts < self.high:
            self.low = ts - ts % 900
            self.high = self.low + 900
            local = datetime.fromtimestamp(self.low, self.zone)
            self.prefix = local.strftime("%Y-%m-%d %H:")
            self.hour = self.low - local.minute * 60 - local.second  # when the local hour began
        return self.prefix + _MINUTES_SECONDS[int(ts - self.hour)]


def log_entry_lines(e: LogEntry, zone: tzinfo | None) -> list[str]:
    """Everything one entry knows, a field a line."""
    waited = counted(e.deferrals)
    kept = (f"kept ({len(e.body):,} bytes): `notifier log {e.message_id} --raw` prints it" if e.body
            else "not kept (keep_sent: true keeps it)")
    out = [f"Message-ID: {e.message_id}", f"status:     {e.status}", f"kind:       {e.kind}",
           f"watcher:    {e.watcher or '-'}", f"account:    {e.account or MAILDIR}",
           f"from:       {e.sender}", f"subject:    {e.subject}", f"size:       {e.size:,} bytes",
           f"attempts:   {e.attempts}" + (f" (deferred: {waited})" if waited else ""),
           f"reply:      {e.reply}", f"queued:     {show_time(e.created, zone)}",
           f"finished:   {show_time(e.finished, zone)}",
           f"latency:    {seconds(e.latency)}" + (" (queued to accepted)" if e.latency is not None else ""),
           "recipients:"]
    out += [f"  {r.address}  {r.status}  {show_time(r.at, zone)}  {r.reply}" for r in e.recipients]
    return [*out, f"message:    {kept}"]


def log_json(entries: Iterable[LogEntry], zone: tzinfo | None) -> str:
    """The entries as a JSON array; times in ISO 8601 with their offset, the bytes left out."""
    def iso(ts: float) -> str:
        return datetime.fromtimestamp(ts, zone).astimezone(zone).isoformat(timespec="seconds")

    out = []
    for e in entries:
        item: dict[str, Any] = e._asdict()
        item.pop("body")
        item["recipients"] = [{**r._asdict(), "at": iso(r.at)} for r in e.recipients]
        item["created"], item["finished"] = iso(e.created), iso(e.finished)
        out.append(item)
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"))  # compact: the C encoder


# -- statistics --------------------------------------------------------------------------------

@dataclass
class WatcherFigures:
    name: str
    checks: int = 0
    changes: int = 0
    failures: int = 0
    alerts: int = 0
    bounced: int = 0  # alerts that a server accepted and a bounce later said did not arrive
    durations: tuple[int, ...] = ()  # checks per DURATION_BUCKETS bucket
    by_day: dict[int, tuple[int, int]] = field(default_factory=dict)  # day: (changes, failures)

    @property
    def failure_rate(self) -> float | None:
        return self.failures / self.checks if self.checks else None


@dataclass
class AccountFigures:
    name: str
    sent: int = 0
    held: int = 0
    dead: int = 0
    deferred: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # sorted


@dataclass(frozen=True)
class Stats:
    since: float
    until: float
    watchers: list[WatcherFigures]
    accounts: list[AccountFigures]
    clients: list[ClientFigures] = field(default_factory=list)  # of the mail relay


def gather(store: Store, names: Iterable[str], since: float, now: float, days: bool = True) -> Stats:
    """Figures from `since` to `now`, for the configured watchers `names` and any other that
    was checked meanwhile; accounts as the send log and the outbox name them. Days count whole:
    checks are counted per day, so `since` starts at the beginning of its day for them. With
    `days`, each watcher's changes and failures day by day too (for sparklines and JSON)."""
    watchers = {name: WatcherFigures(name) for name in names}

    def watcher(name: str) -> WatcherFigures:
        return watchers.get(name) or watchers.setdefault(name, WatcherFigures(name))

    for total in store.check_totals(since):
        w = watcher(total.watcher)
        w.checks, w.changes, w.failures, w.durations = (total.checks, total.changes, total.failures,
                                                        total.durations)
    for name, day, changes, failures in store.busy_days(since) if days else ():
        watcher(name).by_day[day] = (changes, failures)
    accounts: dict[str, AccountFigures] = {}

    def account(name: str | None) -> AccountFigures:
        return accounts.get(name or MAILDIR) or accounts.setdefault(name or MAILDIR,
                                                                     AccountFigures(name or MAILDIR))

    delivered = store.deliveries(since)
    for acct, status, n in delivered.by_status:
        if status in ("sent", "partial"):
            account(acct).sent += n
        if status != "sent":  # partial: some recipients are dead letters too
            account(acct).dead += n
    for name, n in delivered.alerts.items():
        watcher(name).alerts = n
    for name, n in store.bounce_counts(since).items():
        watcher(name).bounced = n
    for acct, latencies in delivered.latencies.items():
        account(acct).latencies = latencies
    for acct, why, n in delivered.deferrals:
        account(acct).deferred[why] += n
    for acct, state, deferrals in store.queued():
        account(acct).held += state == "held"
        if state != "dead":  # a dead letter's deferrals are in its log entry already
            account(acct).deferred.update(deferrals)
    return Stats(since, now, sorted(watchers.values(), key=lambda w: w.name),
                 sorted(accounts.values(), key=lambda a: a.name), store.relay_figures(since))


def histogram_percentile(counts: Sequence[int], q: float) -> float | None:
    """The q-quantile of durations counted in DURATION_BUCKETS, interpolated within its bucket."""
    total = sum(counts)
    if not total:
        return None
    rank, seen = q * total, 0
    for index, n in enumerate(counts):
        if n and seen + n >= rank:
            low = DURATION_BUCKETS[index - 1] if index else 0.0
            high = DURATION_BUCKETS[index]
            return low if high == float("inf") else low + (high - low) * max(0.0, rank - seen) / n
        seen += n
    return None


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The q-quantile of sorted `ordered`, interpolated between the two nearest values."""
    if not ordered:
        return None
    at = q * (len(ordered) - 1)
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def spark(values: Sequence[int]) -> str:
    """One character per value, ▁ for none up to █ for the largest."""
    top = max(values, default=0)
    return "".join(SPARKS[0] if not v else SPARKS[1 + (len(SPARKS) - 2) * v // top] for v in values)


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.1f}%"


def stats_lines(stats: Stats, zone: tzinfo | None, sparklines: bool) -> list[str]:
    """The report: watchers (a check's median and p95 time), accounts (median and p95 latency
    from queued to accepted), totals; per-day changes and failures with `sparklines`."""
    days = range(day_of(stats.since), day_of(stats.until) + 1)
    first = date.fromordinal(days[0]).isoformat()
    out = [f"since {show_time(stats.since, zone)} ({len(days)} day(s) of counts, from {first})", "",
           f"{'watcher':20}  {'checks':>7}  {'changes':>7}  {'failures':>8}  {'fail%':>6}  "
           f"{'took':>7}  {'p95':>7}  {'alerts':>6}  {'bounced':>7}"]
    for w in stats.watchers:
        out.append(f"{w.name:20}  {w.checks:7}  {w.changes:7}  {w.failures:8}  "
                   f"{_percent(w.failure_rate):>6}  {seconds(histogram_percentile(w.durations, 0.5)):>7}  "
                   f"{seconds(histogram_percentile(w.durations, 0.95)):>7}  {w.alerts:6}  {w.bounced:7}")
        if sparklines:
            changes = spark([w.by_day.get(d, (0, 0))[0] for d in days])
            failures = spark([w.by_day.get(d, (0, 0))[1] for d in days])
            out.append(f"    changes {changes}  failures {failures}")
    out += ["", f"{'account':20}  {'sent':>6}  {'held':>5}  {'dead':>5}  {'latency':>7}  {'p95':>7}  "
                f"deferred"]
    for a in stats.accounts:
        why = counted(a.deferred)
        median, p95 = percentile(a.latencies, 0.5), percentile(a.latencies, 0.95)
        out.append(f"{a.name:20}  {a.sent:6}  {a.held:5}  {a.dead:5}  {seconds(median):>7}  "
                   f"{seconds(p95):>7}  {sum(a.deferred.values())}"
                   + (f" ({why})" if why else ""))
    out += _client_lines(stats.clients)
    t = totals(stats)
    out += ["", f"total: {t['watchers']} watcher(s), {t['checks']} checks, {t['changes']} changes, "
                f"{t['failures']} failures ({_percent(t['failure_rate'])}), {t['alerts']} alerts, "
                f"{t['bounced']} bounced; "
                f"{t['sent']} messages sent, {t['deferred']} deferred, {t['held']} held, {t['dead']} dead; "
                f"latency median {seconds(t['latency_median'])}, p95 {seconds(t['latency_p95'])}"]
    return out


def _client_lines(clients: Sequence[ClientFigures]) -> list[str]:
    """The mail relay's clients: what each handed over, what the rules refused (by rule), and
    what became of the accepted messages; nothing when the relay was not used."""
    if not clients:
        return []
    out = ["", f"{'relay client':20}  {'accepted':>8}  {'refused':>7}  {'sent':>6}  {'waiting':>7}  "
               f"{'dead':>5}  {'latency':>7}  {'p95':>7}  refused by"]
    for c in clients:
        out.append(f"{c.client:20}  {c.accepted:8}  {sum(c.rejected.values()):7}  {c.delivered:6}  "
                   f"{c.deferred:7}  {c.dead:5}  {seconds(percentile(c.latencies, 0.5)):>7}  "
                   f"{seconds(percentile(c.latencies, 0.95)):>7}  {counted(c.rejected) or '-'}")
    return out


def totals(stats: Stats) -> dict[str, Any]:
    checks = sum(w.checks for w in stats.watchers)
    failures = sum(w.failures for w in stats.watchers)
    latencies = sorted(x for a in stats.accounts for x in a.latencies)
    return {"watchers": len(stats.watchers), "checks": checks,
            "changes": sum(w.changes for w in stats.watchers), "failures": failures,
            "failure_rate": failures / checks if checks else None,
            "alerts": sum(w.alerts for w in stats.watchers),
            "bounced": sum(w.bounced for w in stats.watchers), "sent": sum(a.sent for a in stats.accounts),
            "deferred": sum(sum(a.deferred.values()) for a in stats.accounts),
            "held": sum(a.held for a in stats.accounts), "dead": sum(a.dead for a in stats.accounts),
            "latency_median": percentile(latencies, 0.5), "latency_p95": percentile(latencies, 0.95)}


def stats_json(stats: Stats, zone: tzinfo | None) -> str:
    days = range(day_of(stats.since), day_of(stats.until) + 1)

    def iso(ts: float) -> str:
        return datetime.fromtimestamp(ts, zone).astimezone(zone).isoformat(timespec="seconds")

    watchers = [{"name": w.name, "checks": w.checks, "changes": w.changes, "failures": w.failures,
                 "failure_rate": w.failure_rate, "alerts": w.alerts, "bounced": w.bounced,
                 "duration_median": histogram_percentile(w.durations, 0.5),
                 "duration_p95": histogram_percentile(w.durations, 0.95),
                 "days": [{"day": date.fromordinal(d).isoformat(), "changes": w.by_day.get(d, (0, 0))[0],
                           "failures": w.by_day.get(d, (0, 0))[1]} for d in days]}
                for w in stats.watchers]
    accounts = [{"name": a.name, "sent": a.sent, "held": a.held, "dead": a.dead,
                 "deferred": sum(a.deferred.values()), "deferred_by": dict(sorted(a.deferred.items())),
                 "latency_median": percentile(a.latencies, 0.5),
                 "latency_p95": percentile(a.latencies, 0.95)} for a in stats.accounts]
    clients = [{"name": c.client, "accepted": c.accepted, "refused_by": dict(sorted(c.rejected.items())),
                "sent": c.delivered, "waiting": c.deferred, "dead": c.dead,
                "latency_median": percentile(c.latencies, 0.5),
                "latency_p95": percentile(c.latencies, 0.95)} for c in stats.clients]
    figures = {"since": iso(stats.since), "until": iso(stats.until), "watchers": watchers,
               "accounts": accounts, "relay_clients": clients, "totals": totals(stats)}
    return json.dumps(figures, ensure_ascii=False, separators=(",", ":"))


def counted(items: Mapping[str, int]) -> str:
    """{"451": 2, "connection": 1} as "451 x2, connection x1"."""
    return ", ".join(f"{key} x{n}" for key, n in sorted(items.items()))


# -- the receiving side, for `notifier status` -----------------------------------------------------

RECENT_BOUNCES = 7 * 86400.0  # `notifier status` lists the bounces found this recently...
SHOWN_BOUNCES = 5  # ...at most this many


def receiving_lines(store: Store, now: float, zone: tzinfo | None) -> list[str]:
    """Each account's latest delivery check (verify_every, watch_bounces) and the recent
    bounces of notifier's mail; nothing when neither is configured or recorded."""
    out = []
    for c in store.mail_checks():
        what = "delivery probe" if c.job == "verify" else "bounce scan"
        took = f" in {seconds(c.latency)}" if c.latency is not None else ""
        verdict = c.verdict.upper() if c.verdict not in ("inbox", "ok") else c.verdict
        out.append(f"{what} of smtp.{c.account} at {show_time(c.at, zone)}: {verdict}{took}: {c.detail}")
    recent = store.bounces(now - RECENT_BOUNCES, SHOWN_BOUNCES + 1)
    if recent:
        more = f" (the {SHOWN_BOUNCES} newest)" if len(recent) > SHOWN_BOUNCES else ""
        out.append(f"bounces in the last 7 days{more}; `notifier log MESSAGE-ID` shows each message:")
        out += [f"    {show_time(b.found, zone)}  {b.watcher or '-'}  {b.kind} alert {b.message_id} to "
                f"{b.recipient}: {b.reason}" for b in recent[:SHOWN_BOUNCES]]
    return out
