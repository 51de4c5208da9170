"""Load `watchers.yaml` into frozen, typed objects, reporting every problem at once.

Each problem names the file, the line, the key path and what to do. Nothing after this
module reads raw YAML: watchers and filters are built (and so validated) here, from the
options their classes declare.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import ipaddress
import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import InitVar, dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Generic, TypeVar
from zoneinfo import ZoneInfo

from notifier.errors import ConfigError, Problem
from notifier.kinds import Filter, Shared, Watcher, filter_kinds, watcher_kinds
from notifier.options import Option, line_of, parse_options, unknown_key_hint, with_defaults
from notifier.schedule import Schedule, Window
from notifier.secrets import Secret, SecretRef
from notifier.sections import (
    DEFAULT_PORTS,
    DEFAULTS_OPTIONS,
    IMAP_OPTIONS,
    MAIL_OPTIONS,
    MAILBOX_PORTS,
    MAILBOX_PROVIDERS,
    POP3_OPTIONS,
    PROVIDERS,
    RELAY_CLIENT_OPTIONS,
    RELAY_OPTIONS,
    SCREEN_OPTIONS,
    SMTP_OPTIONS,
    TOP_OPTIONS,
    WATCHER_OPTIONS,
)
from notifier.yamlload import LineDict, LineList, load_yaml

_COMMON_KEYS = frozenset(o.name for o in WATCHER_OPTIONS)
_T = TypeVar("_T")


@dataclass(frozen=True)
class SmtpAccount:
    """One way to send mail. `password` prints as ****; a SecretRef is read only to log in."""

    name: str
    host: str
    port: int
    security: str
    username: str | None
    password: Secret | SecretRef
    sender: str | None
    timeout: float
    ca_file: str | None
    from_must_match: bool = False
    verify_with: str | None = None  # the Mailbox that receives this account's alerts
    verify_every: float | None = None  # the daemon probes delivery this often (seconds)
    verify_timeout: float = 180.0
    watch_bounces: bool = False  # the daemon scans the login's own mailbox for bounces...
    bounce_every: float = 300.0  # ...this often (seconds)
    connections: int = 1  # delivering a backlog over this many connections at once


@dataclass(frozen=True)
class Mailbox:
    """One receiving account, under `imap:` or `pop3:`; the password is read only to log in."""

    name: str
    protocol: str  # "imap" or "pop3"
    host: str
    port: int
    security: str
    username: str | None
    password: Secret | SecretRef
    timeout: float
    ca_file: str | None


@dataclass(frozen=True)
class Screen:
    """The rules of `relay.screen:`; notifier.screen applies them. A field per option."""

    max_size: int | None = None
    max_recipients: int = 100
    allowed_recipients: tuple[str, ...] = ()
    blocked_attachments: tuple[str, ...] = ()
    subject_patterns: tuple[re.Pattern[str], ...] = ()
    body_patterns: tuple[re.Pattern[str], ...] = ()
    presets: tuple[str, ...] = ()
    rate_per_minute: int | None = None
    rate_per_hour: int | None = None
    quarantine: bool = False


@dataclass(frozen=True)
class RelayClient:
    """A named client of the relay, known by its SMTP AUTH login; the name is what statistics
    show. The password is read only to check a login."""

    name: str
    username: str
    password: Secret | SecretRef


@dataclass(frozen=True)
class RelayConfig:
    """`relay:` — the local mail relay the daemon serves (notifier.relay)."""

    host: str
    port: int
    account: str | None
    max_message_size: int
    max_clients: int
    timeout: float
    certificate: str | None
    key: str | None
    rewrite_from: bool
    clients: Mapping[str, RelayClient]
    screen: Screen
    loopback: bool = True  # listening on a loopback address only


@dataclass(frozen=True)
class Recipients:
    """Who gets an alert. Bcc goes only into the SMTP envelope."""

    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()

    def envelope(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.to + self.cc + self.bcc))


@dataclass(frozen=True, slots=True)
class WatcherSettings:
    """Everything about a watcher but its name, its built watcher and where it is written:
    what it shares with most others. Equal ones are one object (`_Collector.same`), since
    20,000 watchers usually hold a handful; a WatcherConfig reads them as its own attributes.

    A field named like an option in `sections.WATCHER_OPTIONS` is filled from it by name, so a
    new plain option is one declaration there and one field here; the derived fields
    (`schedule`, `recipients`, the built `filters`) are made in `_watcher`.
    """

    kind: str
    filters: tuple[Filter, ...]
    schedule: Schedule
    timezone: ZoneInfo | None
    quiet_hours: Window | None
    history: int
    context_lines: int
    additions_only: bool
    deletions_only: bool
    compared_versions: int
    trigger: tuple[re.Pattern[str], ...]
    trigger_invert: tuple[re.Pattern[str], ...]
    recipients: Recipients
    account: str | None
    templates: str | None
    error_after: int
    remind_every: float | None
    digest: float | None
    attach_snapshot: bool
    # The filters as written, digested: it keys the digest of a fetched text that lets the same
    # text again skip the filters (pipeline), so other filters filter it anew.
    filters_key: bytes = b""


class _Setting(Generic[_T]):
    """A WatcherConfig attribute read from its shared WatcherSettings."""

    __slots__ = ("name",)

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: _SettingsView | None, owner: type | None = None) -> _T:
        if obj is None:
            raise AttributeError(self.name)
        value: _T = getattr(obj.settings, self.name)
        return value


class _SettingsView:
    """WatcherSettings' fields as attributes of the WatcherConfig that holds them."""

    __slots__ = ()
    settings: WatcherSettings

    kind = _Setting[str]()
    filters = _Setting[tuple[Filter, ...]]()
    schedule = _Setting[Schedule]()
    timezone = _Setting[ZoneInfo | None]()
    quiet_hours = _Setting[Window | None]()
    history = _Setting[int]()
    context_lines = _Setting[int]()
    additions_only = _Setting[bool]()
    deletions_only = _Setting[bool]()
    compared_versions = _Setting[int]()
    trigger = _Setting[tuple[re.Pattern[str], ...]]()
    trigger_invert = _Setting[tuple[re.Pattern[str], ...]]()
    recipients = _Setting[Recipients]()
    account = _Setting[str | None]()
    templates = _Setting[str | None]()
    error_after = _Setting[int]()
    remind_every = _Setting[float | None]()
    digest = _Setting[float | None]()
    attach_snapshot = _Setting[bool]()


_GIVEN: Any = object()  # a setting not passed to WatcherConfig(...)


@dataclass(frozen=True, slots=True)
class WatcherConfig(_SettingsView):
    """A watcher with everything needed to run, schedule and alert on it.

    Two slots of its own and its `settings`, shared with the watchers that have the same
    (20,000 url watchers: 150 bytes less each than a slot per setting). The settings read as
    its own attributes (`wc.schedule`), and `WatcherConfig(...)` and `dataclasses.replace`
    take them one by one too: each is an init-only field here, so that `replace(wc,
    history=5)` makes new settings.
    """

    name: str
    watcher: Watcher
    settings: WatcherSettings = _GIVEN  # else made from the settings passed one by one
    kind: InitVar[str] = _GIVEN
    filters: InitVar[tuple[Filter, ...]] = _GIVEN
    schedule: InitVar[Schedule] = _GIVEN
    timezone: InitVar[ZoneInfo | None] = _GIVEN
    quiet_hours: InitVar[Window | None] = _GIVEN
    history: InitVar[int] = _GIVEN
    context_lines: InitVar[int] = _GIVEN
    additions_only: InitVar[bool] = _GIVEN
    deletions_only: InitVar[bool] = _GIVEN
    compared_versions: InitVar[int] = _GIVEN
    trigger: InitVar[tuple[re.Pattern[str], ...]] = _GIVEN
    trigger_invert: InitVar[tuple[re.Pattern[str], ...]] = _GIVEN
    recipients: InitVar[Recipients] = _GIVEN
    account: InitVar[str | None] = _GIVEN
    templates: InitVar[str | None] = _GIVEN
    error_after: InitVar[int] = _GIVEN
    remind_every: InitVar[float | None] = _GIVEN
    digest: InitVar[float | None] = _GIVEN
    attach_snapshot: InitVar[bool] = _GIVEN

    def __post_init__(self, *each: Any) -> None:
        if each.count(_GIVEN) == len(each):  # as config builds them: settings whole
            return
        given = {name: value for name, value in zip(_SETTING_NAMES, each, strict=True)
                 if value is not _GIVEN}
        if "filters" in given:  # a chain made in code is its own (see filters_key)
            given["filters_key"] = _key_of_filters(given["filters"])
        if self.settings is _GIVEN:
            object.__setattr__(self, "settings", WatcherSettings(**given))
        elif given:
            object.__setattr__(self, "settings", replace(self.settings, **given))


# The init-only fields, in the order __post_init__ is given them.
_SETTING_NAMES = tuple(name for name in WatcherConfig.__dataclass_fields__
                       if name not in {f.name for f in fields(WatcherConfig)})
for _name in _SETTING_NAMES:  # the class attribute the dataclass left for each init-only field
    delattr(WatcherConfig, _name)  # hid the base's reader of it


def _key_of_filters(filters: object) -> bytes:
    """WatcherSettings.filters_key of filters as written in the config, or of a chain made in
    code (whose repr names its objects: it is its own)."""
    return hashlib.blake2b(repr(filters).encode(), digest_size=16).digest()


# WatcherSettings fields filled straight from the option of the same name.
_OPTION_FIELDS = tuple(f.name for f in fields(WatcherSettings) if f.name in {o.name for o in WATCHER_OPTIONS})
# The options WatcherSettings are made from (with the kind and the filters).
_SETTINGS_OPTIONS = (*(n for n in _OPTION_FIELDS if n not in ("kind", "filters")),
                     "every", "cron", "to", "cc", "bcc")


@dataclass(frozen=True)
class StoreConfig:
    """A PostgreSQL store (notifier.pgstore, notifier.fleet). `url` holds the password: a Secret
    when written in the YAML, else a SecretRef read when the store is opened."""

    url: Secret | SecretRef
    lease: float = 30.0
    strict_fleet: bool = False


@dataclass(frozen=True)
class Config:
    """Everything in one `watchers.yaml`, validated."""

    path: Path
    state_dir: Path
    watchers: tuple[WatcherConfig, ...]
    accounts: Mapping[str, SmtpAccount]
    default_account: str | None
    sender: str | None
    recipients: Recipients
    subject_prefix: str
    templates: str | None
    timezone: ZoneInfo | None
    workers: int
    log_level: str
    warnings: tuple[Problem, ...] = ()
    shared: Shared = field(default_factory=Shared)  # what kinds share between their watchers (one browser)
    mailboxes: Mapping[str, Mailbox] = field(default_factory=dict)
    log_retention: float = 90 * 86400.0  # send log entries and check counts older than this go
    keep_sent: bool = False  # keep message bytes in the send log after delivery
    relay: RelayConfig | None = None  # the local mail relay, when `relay:` is configured
    store: StoreConfig | None = None  # a PostgreSQL store shared by a fleet; None: SQLite in state_dir
    # A digest of each watcher as written (with the defaults), FINGERPRINT bytes each in the
    # order of `watchers`: what a reload compares. In one string, not on each watcher: 20,000
    # bytes objects were 48 bytes a watcher.
    fingerprints: bytes = b""

    def changed_since(self, old: Config) -> list[WatcherConfig]:
        """The watchers that are new, or written otherwise than in `old`."""
        before = dict(zip((w.name for w in old.watchers), _each_print(old), strict=False))
        mine = list(_each_print(self))  # each watcher's, unless made without (then all are new)
        return [w for at, w in enumerate(self.watchers) if at >= len(mine) or before.get(w.name) != mine[at]]

    def watcher(self, name: str) -> WatcherConfig | None:
        at = bisect.bisect_left(self._by_name, name, key=_watcher_name)
        found = self._by_name[at] if at < len(self._by_name) else None
        return found if found is not None and found.name == name else None

    @cached_property
    def _by_name(self) -> tuple[WatcherConfig, ...]:
        """The watchers in the order of their names. The daemon looks one up for every check: a
        scan of 20,000 took 0.5 ms, a bisection takes 3 µs and 8 bytes a watcher (a dict: 32)."""
        return tuple(sorted(self.watchers, key=_watcher_name))

    @property
    def maildir(self) -> Path:
        """Where alerts go when no smtp account is configured."""
        return self.state_dir / "maildir"


FINGERPRINT = 8  # bytes of a watcher's fingerprint


def _each_print(cfg: Config) -> Iterator[bytes]:
    prints = cfg.fingerprints
    return (prints[at:at + FINGERPRINT] for at in range(0, len(prints), FINGERPRINT))


def _watcher_name(wc: WatcherConfig) -> str:
    return wc.name


class _Collector:
    """Gathers problems for one file so every error is reported in one go."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.filters: dict[str, Filter] = {}  # built filters by spec: identical ones are shared
        self.chains: dict[str, tuple[Filter, ...]] = {}  # built filter lists, likewise
        self.values: dict[Any, Any] = {}  # equal frozen values, kept once (see `same`)
        self.settings: dict[tuple[Any, ...], WatcherSettings] = {}  # by the options they are made of

    def same(self, value: _T) -> _T:
        """One object for equal frozen values (schedules, recipients, filter chains): 20,000
        watchers usually hold a handful of distinct ones."""
        kept: _T = self.values.setdefault(value, value)
        return kept

    def options(self, raw: object, options: tuple[Option, ...], path: str, line: int | None = None,
                **kw: Any) -> dict[str, Any]:
        """Parse a mapping's options; `line` locates it when it is a bare scalar (no line of its own)."""
        if not isinstance(raw, dict):
            self.add(line_of(raw) or line, path, "must be a mapping of keys to values.")
            raw = LineDict()
        values, problems = parse_options(raw, options, self.file, path, **kw)
        self.problems.extend(problems)
        return values

    def add(self, line: int | None, key: str, message: str) -> None:
        self.problems.append(Problem(self.file, line, key, message))


def load(path: str | Path, environ: Mapping[str, str] | None = None,
         state_dir: str | Path | None = None) -> Config:
    """Load and validate a config file. Raises ConfigError listing every problem.

    `state_dir` (the command line's --state-dir) wins over everything the file or the
    environment says; see `_state_dir` for the order.
    """
    path = Path(path)
    env = os.environ if environ is None else environ
    try:
        return _load(path, env, state_dir, stream=True)
    except _Restart:  # a key after `watchers:` changes how they read: build them from the whole file
        return _load(path, env, state_dir, stream=False)


def _load(path: Path, env: Mapping[str, str], state_dir: str | Path | None, stream: bool) -> Config:
    col = _Collector(str(path))
    built = _Watchers(col)
    raw, problems = load_yaml(path, env, built if stream else None)
    col.problems[:0] = problems  # ahead of those found while the watchers streamed by, as ever
    if raw is None:
        col.add(None, "", "is empty; add a `watchers:` list (the shipped watchers.yaml is an example).")
        raise ConfigError(col.problems)
    if not isinstance(raw, dict):
        col.add(line_of(raw) or 1, "", "must be a mapping with a `watchers:` list at the top level, "
                "like the shipped watchers.yaml.")
        raise ConfigError(col.problems)
    top = col.options(raw, TOP_OPTIONS, "")
    top["templates"] = _beside(path, top["templates"])
    raw_mail = _section(col, raw, "mail")
    mail = col.options(raw_mail, MAIL_OPTIONS, "mail")
    if not built.streamed:
        built.prepare(raw)
    accounts = _accounts(col, top["smtp"], env, line_of(raw, "smtp"))
    mailboxes = _mailboxes(col, raw, top, env)
    for account in accounts.values():
        if account.verify_with and account.verify_with not in mailboxes:
            col.add(line_of(raw.get("smtp"), account.name), f"smtp.{account.name}.verify_with",
                    f"names no account under imap or pop3; known: {', '.join(mailboxes) or 'none'}.")
        _check_receiving(col, raw.get("smtp"), account, mailboxes)
    watchers = built.out if built.streamed else built.all(top["watchers"], line_of(raw, "watchers"))
    default_account = mail["account"] or next(iter(accounts), None)
    if default_account and default_account not in accounts:
        col.add(line_of(raw_mail, "account"), "mail.account",
                f"names no account under smtp; known accounts: {', '.join(accounts) or 'none'}.")
    for w in watchers:
        if w.settings.account and w.settings.account not in accounts:
            col.add(built.seen[w.name], f"watchers.{w.name}.account", "names no account under smtp.")
    _check_mail_from(col, raw_mail, mail["from"], accounts)
    relay = _relay(col, raw, top["relay"], default_account, accounts, env)
    store = _store(col, raw, top, env)
    _check_templates(col, path, top["templates"], raw, watchers, built.seen)
    _check_command_permissions(col, path, watchers)
    shared = Shared(browser_workers=top["browser_workers"], browser_path=top["browser_path"],
                    per_host=top["per_host"])
    _check_kinds(col, watchers, built.seen, shared)
    if col.problems:
        raise ConfigError(sorted(col.problems, key=lambda p: p.line or 0))
    return Config(
        path=path,
        state_dir=_state_dir(path, state_dir, top["state_dir"], env),
        watchers=tuple(watchers),
        fingerprints=bytes(built.prints),
        accounts=accounts,
        default_account=default_account,
        sender=mail["from"],
        recipients=Recipients(mail["to"], mail["cc"], mail["bcc"]),
        subject_prefix=mail["subject_prefix"],
        templates=top["templates"],
        timezone=top["timezone"],
        workers=top["workers"],
        log_level=top["log_level"],
        warnings=tuple(col.warnings),
        log_retention=top["log_retention"],
        keep_sent=top["keep_sent"],
        shared=shared,
        mailboxes=mailboxes,
        relay=relay,
        store=store,
    )


def locate_state_dir(path: str | Path, flag: str | Path | None = None,
                     environ: Mapping[str, str] | None = None) -> Path:
    """The state directory for a config file that may not validate (for `notifier status`
    while a running daemon refused the file on disk): `state_dir:` is taken if readable."""
    path, env = Path(path), os.environ if environ is None else environ
    try:
        raw, _ = load_yaml(path, env)
    except ConfigError:
        raw = None
    configured = raw.get("state_dir") if isinstance(raw, dict) else None
    return _state_dir(path, flag, configured if isinstance(configured, str) else None, env)


def _beside(config: Path, value: str | None) -> str | None:
    """A path from the config, relative to the config file's directory (not the working
    directory, which is / under systemd)."""
    return str((config.parent / Path(value).expanduser()).resolve()) if value else None


def _section(col: _Collector, top: Mapping[str, Any], name: str) -> LineDict:
    """A top-level mapping such as `mail:`, or an empty one (with a problem) when it is not one."""
    raw = top.get(name)
    if raw is None:
        return LineDict()
    if not isinstance(raw, LineDict):
        col.add(line_of(top, name), name,
                f"must be a mapping of keys to values, like `{name}: {{key: value}}`.")
        return LineDict()
    return raw


def _state_dir(path: Path, flag: str | Path | None, configured: str | None,
               env: Mapping[str, str]) -> Path:
    """Where state lives: the --state-dir flag, systemd's $STATE_DIRECTORY, `state_dir:` in
    the file (relative to it), or ./state beside the config — in that order.

    systemd's directory wins over the file so that the shipped unit, whose file system is
    read-only outside StateDirectory=, works whatever a copied watchers.yaml says.
    """
    if flag:
        return Path(flag).expanduser().resolve()
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    if configured:
        return Path(str(_beside(path, configured)))
    return (path.parent / "state").resolve()


def _accounts(col: _Collector, raw: object, env: Mapping[str, str],
              line: int | None) -> dict[str, SmtpAccount]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        col.add(line, "smtp",
                "must map account names to settings, like `smtp: {main: {provider: qq, ...}}`.")
        return {}
    accounts = {}
    for name, spec in raw.items():
        path = f"smtp.{name}"
        values = col.options(spec, SMTP_OPTIONS, path, line_of(raw, name))
        preset = PROVIDERS.get(values["provider"] or "", {})
        host = values["host"] or preset.get("host")
        security = values["security"] or preset.get("security") or "ssl"
        if not host:
            col.add(line_of(raw, name), path, "needs a host or a provider (163, qq, gmail, outlook).")
            continue
        password = SecretRef(env=values["password_env"], file=values["password_file"],
                             credential=values["password_credential"], environ=env)
        _warn_unreadable(col, password, line_of(raw, name), path,
                         "Sending will be held until it can; other commands do not need it.")
        account = SmtpAccount(
            name=str(name), host=host, port=values["port"] or DEFAULT_PORTS[security],
            security=security, username=values["username"], password=password,
            sender=values["from"], timeout=values["timeout"], ca_file=values["ca_file"],
            from_must_match=bool(preset.get("from_must_match")), verify_with=values["verify_with"],
            verify_every=values["verify_every"], verify_timeout=values["verify_timeout"],
            watch_bounces=values["watch_bounces"], bounce_every=values["bounce_every"],
            connections=values["connections"],
        )
        if account.from_must_match and account.sender and account.username and \
                account.username.lower() not in account.sender.lower():
            col.warnings.append(Problem(col.file, line_of(spec, "from"), f"{path}.from",
                                        f"differs from username; {values['provider']} rejects mail "
                                        f"whose From is not the login. Use {account.username}."))
        accounts[str(name)] = account
    return accounts


def _mailboxes(col: _Collector, raw: Mapping[str, Any], top: dict[str, Any],
               env: Mapping[str, str]) -> dict[str, Mailbox]:
    """The receiving accounts of `imap:` and `pop3:`; one name space, since `verify_with:` and
    the commands name them without saying which protocol."""
    found: dict[str, Mailbox] = {}
    for protocol, options in (("imap", IMAP_OPTIONS), ("pop3", POP3_OPTIONS)):
        section = top[protocol]
        if section is None:
            continue
        if not isinstance(section, dict):
            col.add(line_of(raw, protocol), protocol, f"must map account names to settings, like "
                    f"`{protocol}: {{main: {{provider: qq, ...}}}}`.")
            continue
        for name, spec in section.items():
            path = f"{protocol}.{name}"
            values = col.options(spec, options, path, line_of(section, name))
            preset = MAILBOX_PROVIDERS.get(values["provider"] or "")
            host = values["host"] or (preset[0 if protocol == "imap" else 1] if preset else None)
            security = values["security"] or "ssl"
            if not host:
                col.add(line_of(section, name), path, "needs a host or a provider (163, qq, gmail, outlook).")
                continue
            if str(name) in found:
                col.add(line_of(section, name), path, "is also the name of an imap account; "
                        "give each mailbox its own name.")
                continue
            found[str(name)] = Mailbox(
                name=str(name), protocol=protocol, host=host,
                port=values["port"] or MAILBOX_PORTS[protocol][security], security=security,
                username=values["username"],
                password=SecretRef(env=values["password_env"], file=values["password_file"],
                                   credential=values["password_credential"], environ=env),
                timeout=values["timeout"], ca_file=values["ca_file"])
    return found


_STORE_SOURCES = ("store", "store_url_env", "store_url_file", "store_url_credential")
_STORE_SCHEMES = ("postgresql://", "postgres://")


def _store(col: _Collector, raw: Mapping[str, Any], top: Mapping[str, Any],
           env: Mapping[str, str]) -> StoreConfig | None:
    """`store:` or one of its secret sources; a password written in the YAML is a warning, as
    anyone who can read the file can then read the database."""
    given = [key for key in _STORE_SOURCES if top[key] is not None]
    if not given:
        return None
    if len(given) > 1:
        col.add(line_of(raw, given[1]), given[1], f"conflicts with {given[0]}; give the store URL "
                f"one way only.")
        return None
    url: Secret | SecretRef
    if top["store"] is not None:
        text = str(top["store"])
        if not text.startswith(_STORE_SCHEMES):
            col.add(line_of(raw, "store"), "store", "must be a postgresql://user@host/dbname URL; "
                    "leave it out to keep the state in SQLite under state_dir.")
            return None
        url = Secret(text)
        if _has_password(text):
            col.warnings.append(Problem(col.file, line_of(raw, "store"), "store",
                                        "holds the database password in the config file; put the URL "
                                        "in store_url_env or store_url_credential instead."))
    else:
        url = SecretRef(env=top["store_url_env"], file=top["store_url_file"],
                        credential=top["store_url_credential"], environ=env)
    return StoreConfig(url, top["fleet_lease"], top["strict_fleet"])


def _has_password(url: str) -> bool:
    """Whether a postgresql:// URL carries a password (user:password@ or ?password=)."""
    authority = url.split("://", 1)[1].split("/", 1)[0]
    return ":" in authority.rpartition("@")[0] or "password=" in url


def _relay(col: _Collector, raw: Mapping[str, Any], spec: object, default_account: str | None,
           accounts: Mapping[str, SmtpAccount], env: Mapping[str, str]) -> RelayConfig | None:
    """`relay:`; listening beyond loopback is refused without logins and TLS, since the relay
    would otherwise send anyone's mail through the company account."""
    if spec is None:
        if "relay" in raw:  # `relay:` with nothing under it: YAML's null, not the defaults
            col.warnings.append(Problem(col.file, line_of(raw, "relay"), "relay", "is empty, so no relay "
                                        "runs; write `relay: {}` for the defaults (127.0.0.1:8025), or "
                                        "remove the line."))
        return None
    line = line_of(raw, "relay")
    values = col.options(spec, RELAY_OPTIONS, "relay", line)
    host, port = _listen(col, spec, values["listen"])
    account = values["account"] or default_account
    if values["account"] and values["account"] not in accounts:
        col.add(line_of(spec, "account"), "relay.account",
                f"names no account under smtp; known accounts: {', '.join(accounts) or 'none'}.")
    clients = _relay_clients(col, values["clients"], line_of(spec, "clients") or line, env)
    certificate = _beside(Path(col.file), values["certificate"])
    key = _relay_key(col, spec, values, env)
    if bool(certificate) != bool(key):
        col.add(line_of(spec, "certificate" if certificate else "key"), "relay",
                "needs both `certificate` and `key` (or `key_credential`) for TLS; add the missing one.")
    if certificate and not os.access(certificate, os.R_OK):
        col.add(line_of(spec, "certificate"), "relay.certificate", f"{certificate} cannot be read; "
                f"check the path (relative to {Path(col.file).parent}) and its permissions.")
    loopback = _is_loopback_host(host)
    if not loopback and not (clients and certificate):
        col.add(line_of(spec, "listen") or line, "relay.listen", f"{host} is not a loopback address, "
                "so the relay needs `clients:` with logins and a TLS `certificate` and `key`; add "
                "them or listen on 127.0.0.1.")
    screen = col.options(values["screen"] or LineDict(), SCREEN_OPTIONS, "relay.screen",
                         line_of(spec, "screen") or line)
    return RelayConfig(
        host=host, port=port, account=account, max_message_size=values["max_message_size"],
        max_clients=values["max_clients"], timeout=values["timeout"], certificate=certificate,
        key=key, rewrite_from=values["rewrite_from"], clients=clients,
        screen=Screen(**{**screen, "blocked_attachments": tuple(
            ext.lower().lstrip(".") for ext in screen["blocked_attachments"])}),
        loopback=loopback)


def _relay_key(col: _Collector, spec: object, values: Mapping[str, Any],
               env: Mapping[str, str]) -> str | None:
    """The TLS key's path: `key` (relative to the config), or the file systemd puts in
    $CREDENTIALS_DIRECTORY for `key_credential` — the one way a DynamicUser service reads a key
    that nobody else can. A key file others can read is a warning: it is the server's identity."""
    line = line_of(spec, "key_credential") or line_of(spec, "key")
    if values["key"] and values["key_credential"]:
        col.add(line, "relay", "has both `key` and `key_credential`; keep one.")
    if values["key_credential"]:
        directory = env.get("CREDENTIALS_DIRECTORY")
        if not directory:
            col.warnings.append(Problem(col.file, line, "relay.key_credential", "CREDENTIALS_DIRECTORY "
                                        "is not set here, so the key cannot be checked; under the "
                                        "unit, LoadCredential= provides it to the daemon."))
            return str(Path("$CREDENTIALS_DIRECTORY") / values["key_credential"])
        key: str | None = str(Path(directory) / values["key_credential"])
    else:
        key = _beside(Path(col.file), values["key"])
    if key is None:
        return None
    try:
        mode = os.stat(key).st_mode
    except OSError:
        col.add(line, "relay.key", f"{key} cannot be read; check the path (relative to "
                f"{Path(col.file).parent}) and its permissions.")
        return key
    if not os.access(key, os.R_OK):
        col.add(line, "relay.key", f"{key} cannot be read by notifier; check its permissions.")
    elif mode & 0o077:
        col.warnings.append(Problem(col.file, line, "relay.key", f"{key} can be read by others "
                                    f"(mode {stat.filemode(mode)}); `chmod 600` it, or load it with "
                                    "LoadCredential= and `key_credential`."))
    return key


def _listen(col: _Collector, spec: object, listen: str) -> tuple[str, int]:
    """`listen: HOST:PORT` (IPv6 in brackets) as (host, port)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        col.add(line_of(spec, "listen"), "relay.listen", f"expected HOST:PORT such as "
                f"127.0.0.1:8025, got {listen!r}.")
        return "127.0.0.1", 8025
    return host, int(port)


def _is_loopback_host(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _relay_clients(col: _Collector, raw: object, line: int | None,
                   env: Mapping[str, str]) -> dict[str, RelayClient]:
    """`relay.clients:`, name → login; two clients with one username would make the statistics
    lie about who sent what, so that is refused."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        col.add(line, "relay.clients", "must map client names to logins, like "
                "`clients: {backup: {username: backup, password_env: BACKUP_PW}}`.")
        return {}
    clients: dict[str, RelayClient] = {}
    for name, spec in raw.items():
        path = f"relay.clients.{name}"
        values = col.options(spec, RELAY_CLIENT_OPTIONS, path, line_of(raw, name))
        if values["username"] in {c.username for c in clients.values()}:
            col.add(line_of(raw, name), f"{path}.username", "is already another client's login; "
                    "give each client its own.")
            continue
        if not any(values[k] for k in ("password_env", "password_file", "password_credential")):
            col.add(line_of(raw, name), path, "needs a password source: password_env, "
                    "password_file or password_credential.")
            continue
        password = SecretRef(env=values["password_env"], file=values["password_file"],
                             credential=values["password_credential"], environ=env)
        _warn_unreadable(col, password, line_of(raw, name), path, "This client cannot log in "
                         "to the relay (it is told 454) until the daemon can read it.")
        clients[str(name)] = RelayClient(str(name), values["username"] or "", password)
    return clients


def _warn_unreadable(col: _Collector, password: SecretRef, line: int | None, path: str,
                     consequence: str) -> None:
    """A password the config names but this process cannot read is a warning, not an error:
    the daemon may have it (its environment, its credentials) where `validate` does not."""
    try:
        password.read()
    except ValueError as exc:
        col.warnings.append(Problem(col.file, line, path, f"password cannot be read here: {exc}. "
                                    f"{consequence}"))


def own_mailbox(account: SmtpAccount, mailboxes: Mapping[str, Mailbox]) -> Mailbox | None:
    """The imap account that logs in as `account` does: where its bounces come back (163 and
    QQ require the envelope sender to be the login, so reports go to the login's mailbox)."""
    login = (account.username or "").lower()
    return next((b for b in mailboxes.values() if login and b.protocol == "imap"
                 and (b.username or "").lower() == login), None)


def _check_receiving(col: _Collector, raw: object, account: SmtpAccount,
                     mailboxes: Mapping[str, Mailbox]) -> None:
    """`verify_every` needs a mailbox the probe goes to, `watch_bounces` the login's own one:
    said at load time, not months later when the daemon first tries."""
    path, line = f"smtp.{account.name}", line_of(raw, account.name)
    if account.verify_every and not account.verify_with and len(mailboxes) != 1:
        col.add(line, f"{path}.verify_every", "needs to know which mailbox receives the probe; name "
                "the imap or pop3 account with `verify_with:`.")
    if account.watch_bounces and own_mailbox(account, mailboxes) is None:
        col.add(line, f"{path}.watch_bounces", f"needs an imap: account that logs in as "
                f"{account.username or 'this account'} (bounces come back to the sender's own "
                f"mailbox); add one with the same username and password source.")
    spec = raw.get(account.name) if isinstance(raw, dict) else None
    if isinstance(spec, dict) and "bounce_every" in spec and not account.watch_bounces:
        col.warnings.append(Problem(col.file, line_of(spec, "bounce_every") or line,
                                    f"{path}.bounce_every", "does nothing without `watch_bounces: "
                                    "true`; add that to scan for bounces, or remove bounce_every."))


class _Restart(Exception):
    """The watchers were streamed, but a key after them changes how they read."""


# Top-level keys that change how a watcher reads (`<<` may bring either).
_SETTINGS_KEYS = frozenset({"defaults", "timezone", "watchers", "<<"})


class _Watchers:
    """Builds the watchers one by one. As a yamlload.Stream it is handed each one's mapping as
    soon as the parser has finished it, so each mapping is let go once its watcher is built
    and the raw file and the built watchers are never in memory together (20,000 watchers:
    the 20 MB of parsed mappings were the peak)."""

    def __init__(self, col: _Collector) -> None:
        self.col = col
        self.out: list[WatcherConfig] = []
        # Each name and the line it is written on: problems found after the watchers are built
        # point there (a built watcher does not keep its line: 20,000 ints).
        self.seen: dict[str, int | None] = {}
        self.prints = bytearray()  # Config.fingerprints
        self.index = 0
        self.streamed = False
        self.defaults_key = ""
        self.start: dict[str, Any] = {}  # each watcher option's value unless written: defaults merged

    def prepare(self, top: Mapping[str, Any]) -> None:
        """Read `defaults:` (and the top-level timezone, the default's default) from `top`."""
        col = self.col
        raw_defaults = _section(col, top, "defaults")
        defaults = col.options(raw_defaults, DEFAULTS_OPTIONS, "defaults")
        if "timezone" not in raw_defaults and top.get("timezone") is not None:
            timezone = next(o for o in TOP_OPTIONS if o.name == "timezone")
            with contextlib.suppress(ValueError):  # reported when the top level is read
                defaults["timezone"] = timezone.type.parse(top["timezone"])
        self.defaults_key = repr((raw_defaults, top.get("timezone")))
        self.start = with_defaults(WATCHER_OPTIONS, defaults)

    def begin(self, key: object, top: LineDict) -> bool:
        if key != "watchers":
            return False
        if self.streamed:  # `watchers:` twice; the second one wins, as in a plain load
            raise _Restart
        self.prepare(top)
        self.streamed = True
        return True

    def after(self, key: object) -> None:
        if key in _SETTINGS_KEYS:
            raise _Restart

    def all(self, raw: object, line: int | None) -> list[WatcherConfig]:
        """The watchers of a list loaded whole."""
        if raw is None:  # missing: already reported as required
            return []
        if not isinstance(raw, list):
            self.col.add(line, "watchers", "must be a list of watchers, each starting with `- name:`.")
            return []
        for index, spec in enumerate(raw):
            raw[index] = None  # let each spec go once its watcher is built, as a stream does
            self.item(spec, raw.lines[index] if isinstance(raw, LineList) else None)
        return self.out

    def item(self, spec: Any, line: int | None) -> None:
        """Build the next watcher of the list, from its mapping and the line it starts on."""
        col, index = self.col, self.index
        self.index += 1
        name = spec.get("name") if isinstance(spec, dict) else None
        clean = isinstance(name, str) and name.isprintable() and name.strip() == name != ""
        path = f"watchers.{name}" if clean else f"watchers[{index}]"
        if isinstance(name, str) and name in self.seen:
            col.add(line_of(spec, "name"), f"{path}.name",
                    f"{name!r} is already used on line {self.seen[name]}; names must be unique.")
            return
        built = _watcher(col, spec, path, self.start, line)
        if isinstance(name, str):
            self.seen[name] = line_of(spec, "name")
        if built is not None:
            self.out.append(built)
            written = f"{spec!r}{self.defaults_key}".encode()
            self.prints += hashlib.blake2b(written, digest_size=FINGERPRINT).digest()


def _watcher(col: _Collector, spec: object, path: str, start: dict[str, Any],
             line: int | None) -> WatcherConfig | None:
    """Build one watcher; None (with problems recorded) when it is unusable or disabled.
    `start` holds each option's value unless the watcher writes it (`with_defaults`)."""
    if not isinstance(spec, dict):
        col.add(line_of(spec) or line, path, "must be a mapping that starts with `- name:` and `kind:`.")
        return None
    before = len(col.problems)
    registry = watcher_kinds()
    raw_kind = spec.get("kind")
    cls = registry.get(raw_kind) if isinstance(raw_kind, str) else None
    # Unknown keys are reported once, against the common keys plus the kind's own ones (when the
    # kind is known), so a misspelt `nmae:` gets its did-you-mean even though name is missing.
    values = col.options(spec, WATCHER_OPTIONS, path, start=start,
                         ignore=cls.option_names if cls else [k for k in spec if k not in _COMMON_KEYS])
    name, kind = values["name"], values["kind"]
    if kind is not None and cls is None:
        col.add(line_of(spec, "kind"), f"{path}.kind",
                f"unknown kind {kind!r}; known kinds are {', '.join(sorted(registry))}.")
    kind_values = col.options(spec, cls.options, path, ignore=spec) if cls else None
    if values["additions_only"] and values["deletions_only"]:
        col.add(line_of(spec, "deletions_only"), f"{path}.deletions_only",
                "cannot be combined with additions_only; keep one.")
    if values["compared_versions"] > values["history"]:
        col.add(line_of(spec, "compared_versions" if "compared_versions" in spec else "history"),
                f"{path}.compared_versions", f"is {values['compared_versions']} but only "
                f"{values['history']} versions are kept; set history to at least "
                f"{values['compared_versions']}, or compare fewer.")
    if spec.get("every") is not None and values["cron"]:
        col.add(line_of(spec, "cron"), f"{path}.cron", "cannot be combined with every; keep one.")
    filters = _filters(col, spec.get("filters"), path, line_of(spec, "filters"))
    if cls is None or kind_values is None or not name or len(col.problems) > before:
        return None
    try:
        watcher = cls(kind_values)
    except ValueError as exc:
        col.add(line_of(spec), path, f"{exc}.")
        return None
    if not values["enabled"]:
        return None
    return WatcherConfig(name, watcher, _settings(col, cls, values, filters, spec.get("filters")))


def _settings(col: _Collector, cls: type[Watcher], values: dict[str, Any],
              filters: tuple[Filter, ...], written: object) -> WatcherSettings:
    """The watcher's settings, made once for all the watchers whose options read the same."""
    key = (cls, *filters, None, *map(values.__getitem__, _SETTINGS_OPTIONS))
    settings: WatcherSettings | None = col.settings.get(key)
    if settings is None:
        settings = col.settings[key] = WatcherSettings(**{
            **{name: values[name] for name in _OPTION_FIELDS}, "kind": cls.kind,
            "filters": filters,  # shared already: _filters keeps one of each chain
            "filters_key": _key_of_filters(written),
            "schedule": col.same(Schedule(values["every"], values["cron"], values["timezone"])),
            "recipients": col.same(Recipients(values["to"], values["cc"], values["bcc"])),
            "templates": _beside(Path(col.file), values["templates"]) if values["templates"] else None,
        })
    return settings


def _filters(col: _Collector, raw: object, path: str, line: int | None) -> tuple[Filter, ...]:
    """Build the filter chain; each entry is ``kind``, ``{kind: shorthand}`` or ``{kind: {..}}``.
    The same spec makes the same filters: a chain written alike by many watchers is built once."""
    if raw in ((), None):
        return ()
    if not isinstance(raw, list):
        col.add(line, f"{path}.filters", "must be a list, each item starting with `- `.")
        return ()
    key = repr(raw)
    chain = col.chains.get(key)
    if chain is not None:
        return chain
    built = []
    for index, item in enumerate(raw):
        line = raw.lines[index] if isinstance(raw, LineList) else None
        flt = _filter(col, item, f"{path}.filters[{index}]", line)
        if flt is not None:
            built.append(flt)
    if len(built) < len(raw):  # with problems, reported here: not to be taken as built
        return tuple(built)
    chain = col.chains[key] = col.same(tuple(built))
    return chain


def _filter(col: _Collector, item: object, where: str, line: int | None) -> Filter | None:
    """One filter from its spec, or None with the problems recorded in `col`."""
    registry = filter_kinds()
    if isinstance(item, str):
        kind, options = item, LineDict()
    elif isinstance(item, dict) and len(item) == 1:
        kind, options = next(iter(item.items()))
    else:
        col.add(line, where, "write a filter as `- name` or `- name: value`.")
        return None
    cls = registry.get(kind) if isinstance(kind, str) else None
    if cls is None:
        col.add(line, where, f"{unknown_key_hint(kind, registry).replace('key', 'filter')}")
        return None
    if not isinstance(options, dict):
        if cls.shorthand is None:
            col.add(line, where, f"filter {kind!r} takes options as a mapping, not a single value.")
            return None
        options = _with_line(LineDict({cls.shorthand: options}), line)
    key = repr(item)  # the same spec makes the same filter: build it once, share it
    if key not in col.filters:
        built = _built_filter(col, cls, options, where, line)
        if built is None:
            return None
        col.filters[key] = built
    return col.filters[key]


def _built_filter(col: _Collector, cls: type[Filter], options: LineDict, where: str,
                  line: int | None) -> Filter | None:
    before = len(col.problems)
    values = col.options(options, cls.options, where)
    if len(col.problems) > before:
        return None
    try:
        return cls(values)
    except ValueError as exc:
        col.add(line, where, f"{exc}")
        return None


def build_filter(spec: object, file: str = "<filter>") -> Filter:
    """One filter from a spec written as in watchers.yaml; ValueError listing its problems.

    For tools and tests that build a filter outside a config file.
    """
    col = _Collector(file)
    flt = _filter(col, spec, "filter", None)
    if flt is None:
        raise ValueError("; ".join(str(p) for p in col.problems))
    return flt


def _with_line(node: LineDict, line: int | None) -> LineDict:
    node.line = line
    node.lines = dict.fromkeys(node, line) if line else {}
    return node


def _check_mail_from(col: _Collector, raw_mail: LineDict, sender: str | None,
                     accounts: Mapping[str, SmtpAccount]) -> None:
    """163 and QQ refuse mail whose From is not the login: say so now, not at the first alert."""
    for account in accounts.values():
        if account.from_must_match and not account.sender and sender and account.username and \
                account.username.lower() not in sender.lower():
            col.warnings.append(Problem(
                col.file, line_of(raw_mail, "from"), "mail.from",
                f"differs from the login of smtp.{account.name}; its provider rejects mail whose "
                f"From is not the login. Use {account.username}, or set smtp.{account.name}.from."))


def _check_templates(col: _Collector, path: Path, top: str | None, raw: Mapping[str, Any],
                     watchers: list[WatcherConfig], lines: Mapping[str, int | None]) -> None:
    """Compile user templates now, so a syntax error is a config problem with its file and line
    rather than a fallback to the shipped templates when the first alert is rendered."""
    dirs: dict[str, int | None] = {}
    if top:
        dirs[top] = line_of(raw, "templates")
    for w in watchers:
        if w.settings.templates:
            dirs.setdefault(w.settings.templates, lines[w.name])
    if not dirs:
        return
    import jinja2  # noqa: PLC0415 - only configs with their own templates pay for jinja2 here

    env = jinja2.Environment(autoescape=True)
    for directory, line in dirs.items():
        folder = Path(directory)
        if not folder.is_dir():
            col.add(line, "templates", f"{folder} is not a directory; create it or fix the path "
                    f"(relative paths are relative to {path.parent}).")
            continue
        for file in sorted(folder.iterdir()):
            if file.suffix not in (".txt", ".html"):
                continue
            try:
                env.parse(file.read_text(encoding="utf-8"), file.name, str(file))
            except jinja2.TemplateSyntaxError as exc:
                col.problems.append(Problem(str(file), exc.lineno, "", f"template syntax error: "
                                            f"{exc.message}; fix the template."))
            except (OSError, UnicodeDecodeError) as exc:
                col.problems.append(Problem(str(file), None, "", f"cannot be read ({exc}); check its "
                                            f"permissions and encoding."))


def _check_kinds(col: _Collector, watchers: list[WatcherConfig], lines: Mapping[str, int | None],
                 shared: Shared) -> None:
    """Each kind's own warnings about its watchers (a browser watcher without a browser),
    placed at the first such watcher."""
    by_kind: dict[str, list[WatcherConfig]] = {}
    for w in watchers:
        by_kind.setdefault(w.settings.kind, []).append(w)
    for kind, cls in watcher_kinds().items():
        mine = by_kind.get(kind, [])
        for message in cls.warnings([w.watcher for w in mine], shared) if mine else ():
            col.warnings.append(Problem(col.file, lines[mine[0].name], f"watchers.{mine[0].name}", message))


def _check_command_permissions(col: _Collector, path: Path, watchers: list[WatcherConfig]) -> None:
    """Refuse command watchers when someone else could rewrite the commands we run."""
    if not any(w.settings.kind == "command" for w in watchers):
        return
    for target in (path, path.resolve().parent):
        try:
            mode = target.stat().st_mode
        except OSError:
            continue
        if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
            col.add(None, "watchers", f"{target} is writable by other users, so command watchers "
                    f"are refused; run `chmod o-w {target}`.")
