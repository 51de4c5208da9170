"""The keys of each section of `watchers.yaml`: types, defaults and one line of docs each.

This is the single source the validator (notifier.config), `notifier kinds` and the published
JSON Schema (notifier.schema) are built from. Watcher and filter kinds declare their own
options in their classes.
"""

from __future__ import annotations

from typing import Any

from notifier.options import (
    REQUIRED,
    Address,
    AnyValue,
    Bool,
    Choice,
    Cron,
    DailyWindow,
    Duration,
    Int,
    ListOf,
    Name,
    Option,
    Regex,
    Str,
    TimeZone,
)

PROVIDERS: dict[str, dict[str, Any]] = {
    "163": {"host": "smtp.163.com", "port": 465, "security": "ssl", "from_must_match": True},
    "qq": {"host": "smtp.qq.com", "port": 465, "security": "ssl", "from_must_match": True},
    "gmail": {"host": "smtp.gmail.com", "port": 587, "security": "starttls"},
    "outlook": {"host": "smtp-mail.outlook.com", "port": 587, "security": "starttls"},
}
DEFAULT_PORTS = {"ssl": 465, "starttls": 587, "none": 25}


# Options every watcher has, whatever its kind; all but name/kind/filters may go in `defaults:`.
WATCHER_OPTIONS: tuple[Option, ...] = (
    Option("name", Name(), REQUIRED, "Unique, stable identity of the watcher; its history follows it."),
    Option("kind", Str(), REQUIRED, "What to watch: url, browser, file or command."),
    Option("filters", AnyValue(), (), "Filter chain applied in order to the fetched text."),
    Option("enabled", Bool(), True, "Set to false to keep a watcher in the file without running it."),
    Option("every", Duration(), 600.0, "Check interval, like 30s, 10m or 1h."),
    Option("cron", Cron(), None, "Cron schedule instead of `every`, like '*/15 9-18 * * mon-fri'."),
    Option("timezone", TimeZone(), None, "Time zone for cron, quiet hours and mail dates."),
    Option("quiet_hours", DailyWindow(), None, "Hold alerts inside this daily window, like 22:00-07:00."),
    Option("history", Int(minimum=1), 10, "How many past versions to keep in the state."),
    Option("context_lines", Int(minimum=0), 3, "Unchanged lines shown around each change."),
    Option("additions_only", Bool(), False, "Alert only on added lines."),
    Option("deletions_only", Bool(), False, "Alert only on removed lines."),
    Option("compared_versions", Int(minimum=1), 1, "Alert only on content unlike each of the last N "
           "versions (at most `history`), so A→B→A flapping alerts once."),
    Option("trigger", ListOf(Regex()), (), "Alert only when an added or removed line matches one of "
           "these regular expressions."),
    Option("trigger_invert", ListOf(Regex()), (), "Added or removed lines matching these do not "
           "alert: a change made only of such lines is recorded silently."),
    Option("to", ListOf(Address()), (), "Recipients of this watcher's alerts."),
    Option("cc", ListOf(Address()), (), "Copy recipients."),
    Option("bcc", ListOf(Address()), (), "Blind-copy recipients: in the envelope, never a header."),
    Option("account", Str(), None, "Name of the smtp account to send with."),
    Option("templates", Str(), None, "Directory with templates that override the shipped ones."),
    Option("error_after", Int(minimum=1), 3, "Consecutive failures before an error alert."),
    Option("remind_every", Duration(), None, "Repeat the error alert this often while failing."),
    Option("digest", Duration(), None, "Batch changes into one mail per this period."),
    Option("attach_snapshot", Bool(), False, "Attach the full new content to change alerts."),
)
_NOT_DEFAULTABLE = {"name", "kind", "filters"}
DEFAULTS_OPTIONS = tuple(o for o in WATCHER_OPTIONS if o.name not in _NOT_DEFAULTABLE)

SMTP_OPTIONS: tuple[Option, ...] = (
    Option("provider", Choice(*PROVIDERS), None, "Preset host/port/security: 163, qq, gmail, outlook."),
    Option("host", Str(), None, "SMTP server host name."),
    Option("port", Int(minimum=1), None, "SMTP port; defaults by security: 465, 587 or 25."),
    Option("security", Choice("ssl", "starttls", "none"), None,
           "ssl = implicit TLS (465), starttls (587), none (25, local relays only)."),
    Option("username", Str(), None, "Login name, usually the full mail address."),
    Option("password_env", Str(), None, "Environment variable holding the password/authorization code."),
    Option("password_file", Str(), None, "File holding the password/authorization code."),
    Option("password_credential", Str(), None, "systemd credential name (LoadCredential=) holding it."),
    Option("from", Address(), None, "From address; 163 and QQ require it to equal username."),
    Option("timeout", Duration(), 30.0, "Seconds to wait for the server before retrying later."),
    Option("ca_file", Str(), None, "Extra CA bundle to trust; certificates are always verified."),
    Option("verify_with", Str(), None, "Name of the imap/pop3 account that receives this account's "
           "alerts, for `notifier verify-delivery`."),
    Option("verify_every", Duration(), None, "Run `notifier verify-delivery` from the daemon this often "
           "(like 1d) and alert through another path when the probe is junked, lost or bounced."),
    Option("verify_timeout", Duration(), 180.0, "How long the daemon's probe is looked for after the "
           "server accepted it."),
    Option("watch_bounces", Bool(), False, "Scan this account's own mailbox (the imap account with the "
           "same username) for bounces of notifier's mail from the daemon."),
    Option("connections", Int(minimum=1, maximum=20), 1, "Connections that deliver a backlog of this "
           "account's mail at the same time (a busy relay); 163 and QQ allow a few."),
    Option("bounce_every", Duration(), 300.0, "How often `watch_bounces` scans; a scan fetches only "
           "new messages."),
)

# Receiving servers by provider: (imap host, pop3 host); both implicit TLS on 993 / 995.
MAILBOX_PROVIDERS: dict[str, tuple[str, str]] = {
    "163": ("imap.163.com", "pop.163.com"),
    "qq": ("imap.qq.com", "pop.qq.com"),
    "gmail": ("imap.gmail.com", "pop.gmail.com"),
    "outlook": ("outlook.office365.com", "outlook.office365.com"),
}
MAILBOX_PORTS = {"imap": {"ssl": 993, "starttls": 143, "none": 143},
                 "pop3": {"ssl": 995, "starttls": 110, "none": 110}}


def mailbox_options(protocol: str) -> tuple[Option, ...]:
    """The keys of one account under `imap:` or `pop3:`; the two differ only in their ports."""
    ssl, plain = MAILBOX_PORTS[protocol]["ssl"], MAILBOX_PORTS[protocol]["none"]
    return (
        Option("provider", Choice(*MAILBOX_PROVIDERS), None,
               "Preset host/port/security: 163, qq, gmail, outlook."),
        Option("host", Str(), None, f"{protocol.upper()} server host name."),
        Option("port", Int(minimum=1), None, f"Port; defaults by security: {ssl} (ssl) or {plain}."),
        Option("security", Choice("ssl", "starttls", "none"), None,
               f"ssl = implicit TLS ({ssl}), starttls ({plain}), none (local servers only)."),
        Option("username", Str(), None, "Login name, usually the full mail address."),
        Option("password_env", Str(), None, "Environment variable holding the password/authorization code."),
        Option("password_file", Str(), None, "File holding the password/authorization code."),
        Option("password_credential", Str(), None, "systemd credential name (LoadCredential=) holding it."),
        Option("timeout", Duration(), 30.0, "Seconds to wait for the server."),
        Option("ca_file", Str(), None, "Extra CA bundle to trust; certificates are always verified."),
    )


IMAP_OPTIONS = mailbox_options("imap")
POP3_OPTIONS = mailbox_options("pop3")

MAIL_OPTIONS: tuple[Option, ...] = (
    Option("from", Address(), None, "Default From address; defaults to the account's login."),
    Option("to", ListOf(Address()), (), "Default recipients of every alert."),
    Option("cc", ListOf(Address()), (), "Default copy recipients."),
    Option("bcc", ListOf(Address()), (), "Default blind-copy recipients."),
    Option("account", Str(), None, "Default smtp account name; the first one if not set."),
    Option("subject_prefix", Str(), "[notifier]", "Put in front of every subject."),
)

TOP_OPTIONS: tuple[Option, ...] = (
    Option("state_dir", Str(), None, "Where the SQLite state and the local Maildir live."),
    Option("timezone", TimeZone(), None, "Default time zone."),
    Option("workers", Int(minimum=1), 100, "How many checks run at the same time; a check mostly "
           "waits for the network, so this is requests in flight, not CPUs."),
    Option("per_host", Int(minimum=1), 8, "At most this many requests in flight to one site (scheme, "
           "host and port), so one slow site is not hammered; its other checks wait their turn "
           "without taking any of `workers`."),
    Option("browser_workers", Int(minimum=1), 2, "Pages the one shared Chromium renders at the same time."),
    Option("browser_path", Str(), None, "Chromium to run for browser watchers; default: chromium on PATH."),
    Option("log_level", Choice("debug", "info", "warning", "error"), "info", "Log verbosity."),
    Option("templates", Str(), None, "Directory with templates that override the shipped ones."),
    Option("log_retention", Duration(), 90 * 86400.0, "How long the send log and check counts are kept."),
    Option("keep_sent", Bool(), False, "Keep each message's bytes in the send log after delivery."),
    Option("store", Str(), None, "A postgresql://user@host/dbname URL: several daemons share this "
           "database (and the watchers); default: SQLite in state_dir."),
    Option("store_url_env", Str(), None, "Environment variable holding the store URL (with its password)."),
    Option("store_url_file", Str(), None, "File holding the store URL (with its password)."),
    Option("store_url_credential", Str(), None, "systemd credential name (LoadCredential=) holding "
           "the store URL."),
    Option("fleet_lease", Duration(), 30.0, "PostgreSQL store: how long a daemon's claim on a check "
           "or a message lasts; a dead daemon's work is taken over after this."),
    Option("strict_fleet", Bool(), False, "PostgreSQL store: run no checks while another daemon's "
           "config differs from this one (instead of only warning)."),
    Option("mail", AnyValue(), None, "Sender and default recipients (see mail options)."),
    Option("smtp", AnyValue(), None, "Named SMTP accounts (see smtp options)."),
    Option("relay", AnyValue(), None, "A local mail relay for the machine's other programs "
           "(see relay options)."),
    Option("imap", AnyValue(), None, "Named IMAP mailboxes that receive alerts (see imap options)."),
    Option("pop3", AnyValue(), None, "Named POP3 mailboxes, when IMAP is not offered (see pop3 options)."),
    Option("defaults", AnyValue(), None, "Defaults for every watcher (any watcher option)."),
    Option("watchers", AnyValue(), REQUIRED, "The list of watchers."),
)

# The local mail relay (notifier.relay): `relay:`, its `clients:` and its `screen:` rules.
RELAY_OPTIONS: tuple[Option, ...] = (
    Option("listen", Str(), "127.0.0.1:8025", "HOST:PORT the relay listens on; anything but "
           "loopback needs `clients` and a TLS `certificate`."),
    Option("account", Str(), None, "Name of the smtp account that relays; default: mail.account."),
    Option("max_message_size", Int(minimum=1024), 10 * 1024 * 1024, "Largest message in bytes, "
           "advertised in EHLO SIZE and enforced while it is received."),
    Option("max_clients", Int(minimum=1), 100, "Connections served at the same time; more wait "
           "for a 421 and try again."),
    Option("timeout", Duration(), 60.0, "A client silent this long is disconnected, freeing its slot."),
    Option("certificate", Str(), None, "PEM certificate (chain) for STARTTLS."),
    Option("key", Str(), None, "PEM private key of the certificate (readable by notifier alone)."),
    Option("key_credential", Str(), None, "systemd credential name (LoadCredential=) holding the "
           "key, instead of `key`: the unit's dynamic user can read it, nobody else."),
    Option("rewrite_from", Bool(), True, "Make the envelope sender and From the account's login "
           "(163 and QQ refuse anything else), keeping the original From as Reply-To."),
    Option("clients", AnyValue(), None, "Named clients with their own login (see relay client options)."),
    Option("screen", AnyValue(), None, "Rules a message must pass to be accepted (see screen options)."),
)

RELAY_CLIENT_OPTIONS: tuple[Option, ...] = (
    Option("username", Str(), REQUIRED, "Login the client gives with SMTP AUTH."),
    Option("password_env", Str(), None, "Environment variable holding its password."),
    Option("password_file", Str(), None, "File holding its password."),
    Option("password_credential", Str(), None, "systemd credential name (LoadCredential=) holding it."),
)

# Attachment types refused unless `blocked_attachments` says otherwise: programs, scripts and
# documents that carry macros.
BLOCKED_ATTACHMENTS = ("exe", "com", "scr", "pif", "bat", "cmd", "js", "jse", "vbs", "vbe",
                       "wsf", "hta", "jar", "msi", "ps1", "lnk", "docm", "xlsm", "pptm", "dotm")
SCREEN_PRESETS = ("credit_card", "cn_id_card", "private_key")

SCREEN_OPTIONS: tuple[Option, ...] = (
    Option("max_size", Int(minimum=1), None, "Refuse messages larger than this many bytes."),
    Option("max_recipients", Int(minimum=1), 100, "Refuse messages to more recipients than this."),
    Option("allowed_recipients", ListOf(Str()), (), "Recipient domains (example.com) or addresses "
           "allowed; any recipient when empty."),
    Option("blocked_attachments", ListOf(Str()), BLOCKED_ATTACHMENTS, "Attachment types refused, "
           "by file extension and by sniffed content (programs, macro documents)."),
    Option("subject_patterns", ListOf(Regex()), (), "Refuse messages whose subject matches one of "
           "these regular expressions."),
    Option("body_patterns", ListOf(Regex()), (), "Refuse messages whose text matches one of these "
           "regular expressions."),
    Option("presets", ListOf(Choice(*SCREEN_PRESETS)), (), "Shipped content rules to switch on: "
           "credit_card, cn_id_card, private_key."),
    Option("rate_per_minute", Int(minimum=1), None, "Messages one client may send per minute."),
    Option("rate_per_hour", Int(minimum=1), None, "Messages one client may send per hour."),
    Option("quarantine", Bool(), False, "Keep refused messages for `notifier relay quarantine`."),
)
