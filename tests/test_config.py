"""notifier.config: every problem at once, each with file, line, key path and a hint."""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path

import pytest

from notifier import config
from notifier.errors import ConfigError, HeldDeliveryError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "watchers.yaml"
    path.write_text(text)
    return path


def problems(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.load(path, environ or {})
    return [str(p) for p in info.value.problems]


def test_shipped_watchers_yaml_is_valid() -> None:
    cfg = config.load(ROOT / "watchers.yaml", {})
    assert {w.kind for w in cfg.watchers} == {"url", "file", "command"}
    assert cfg.accounts == {}


def readme_yaml_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "watchers:" in b]


def test_readme_has_yaml_examples() -> None:
    assert readme_yaml_blocks()


@pytest.mark.parametrize("block", readme_yaml_blocks())
def test_readme_yaml_examples_validate(tmp_path: Path, block: str) -> None:
    config.load(write(tmp_path, block), {"NOTIFIER_SMTP_PASSWORD": "readme-example-code"})


def test_all_problems_reported_with_lines_and_hints(tmp_path: Path) -> None:
    path = write(tmp_path, """\
timezon: UTC
defaults:
  evry: 10m
watchers:
  - name: a
    kind: url
    urll: http://example.com
  - name: a
    kind: file
    path: /x
  - name: b
    kind: fil
  - name: c
    kind: file
    every: soon
    to: not-an-address
    filters:
      - regex: "("
      - csss: "p"
  - kind: file
    path: /y
""")
    found = problems(path)
    text = "\n".join(found)
    assert f"{path}:1: timezon: unknown key; did you mean 'timezone'?" in found
    assert f"{path}:3: defaults.evry: unknown key; did you mean 'every'?" in found
    assert "watchers.a.urll: unknown key; did you mean 'url'?" in text
    assert f"{path}:8: watchers.a.name: 'a' is already used on line 5" in text
    assert "watchers.b.kind: unknown kind 'fil'; known kinds are browser, command, file, url." in text
    assert f"{path}:15: watchers.c.every: expected a duration" in text
    assert f"{path}:16: watchers.c.to: 'not-an-address' is not an email address" in text
    assert f"{path}:18: watchers.c.filters[0].pattern: is not a valid regular expression" in text
    assert "watchers.c.filters[1]: unknown filter; did you mean 'css'?" in text
    assert "watchers[4].name: is required" in text
    # the url watcher is missing its url as well: still reported alongside the rest
    assert "watchers.a.url: is required" in text


def test_malformed_yaml_names_line_and_column(tmp_path: Path) -> None:
    found = problems(write(tmp_path, "watchers:\n  - name: [unclosed\n"))
    assert len(found) == 1
    assert re.search(r"watchers.yaml:\d+: is not valid YAML, column \d+", found[0])


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    found = problems(write(tmp_path, "watchers: []\nwatchers: []\n"))
    assert any(":2: watchers: appears twice" in p for p in found)


def test_missing_file(tmp_path: Path) -> None:
    assert "file not found" in problems(tmp_path / "nope.yaml")[0]


def test_environment_expansion(tmp_path: Path) -> None:
    path = write(tmp_path, """\
watchers:
  - name: a
    kind: file
    path: ${WATCH_DIR}/x.txt
    every: ${EVERY:-5m}
""")
    cfg = config.load(path, {"WATCH_DIR": "/srv"})
    assert cfg.watchers[0].schedule.every == 300
    assert cfg.watchers[0].watcher.source().startswith("/srv/x.txt")
    found = problems(path, {})
    assert found == [f"{path}:4: ${{WATCH_DIR}}: environment variable WATCH_DIR is not set; "
                     f"set it or write ${{WATCH_DIR:-default}}."]


def test_defaults_apply_and_watcher_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, """\
defaults: {every: 1h, history: 3}
watchers:
  - {name: a, kind: file, path: /a}
  - {name: b, kind: file, path: /b, every: 30s, enabled: true}
  - {name: c, kind: file, path: /c, enabled: false}
""")
    cfg = config.load(path, {})
    assert [(w.name, w.schedule.every, w.history) for w in cfg.watchers] == [("a", 3600, 3), ("b", 30, 3)]


def test_smtp_provider_preset_and_secret_sources(tmp_path: Path) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text("file-secret\n")
    path = write(tmp_path, f"""\
smtp:
  qq: {{provider: qq, username: 1@qq.com, password_env: PW, from: "Bot <2@qq.com>"}}
  relay: {{host: localhost, security: none, password_file: {secret_file}}}
mail: {{to: [a@example.com], account: qq}}
watchers: []
""")
    cfg = config.load(path, {"PW": "env-secret"})
    qq, relay = cfg.accounts["qq"], cfg.accounts["relay"]
    assert (qq.host, qq.port, qq.security) == ("smtp.qq.com", 465, "ssl")
    assert (relay.port, relay.password.reveal()) == (25, "file-secret")
    assert "env-secret" not in repr(cfg)
    assert "file-secret" not in repr(cfg)
    assert any("qq rejects mail whose From is not the login" in str(w) for w in cfg.warnings)


def test_unreadable_password_is_only_a_warning_until_something_is_sent(tmp_path: Path) -> None:
    """Read-only commands (validate, status, outbox) run from shells without the secret."""
    path = write(tmp_path, "smtp:\n  main: {provider: 163, password_env: NOPE}\nwatchers: []\n")
    cfg = config.load(path, {})
    assert any("password cannot be read here: environment variable NOPE is not set" in str(w)
               for w in cfg.warnings)
    with pytest.raises(HeldDeliveryError, match="environment variable NOPE is not set"):
        cfg.accounts["main"].password.reveal()


def test_systemd_credential(tmp_path: Path) -> None:
    (tmp_path / "smtp").write_text("cred")
    path = write(tmp_path, "smtp:\n  main: {provider: 163, password_credential: smtp}\nwatchers: []\n")
    assert any("CREDENTIALS_DIRECTORY is not set; use LoadCredential=" in str(w)
               for w in config.load(path, {}).warnings)
    cfg = config.load(path, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert cfg.accounts["main"].password.reveal() == "cred"
    (tmp_path / "smtp").write_text("rotated")
    assert cfg.accounts["main"].password.reveal() == "rotated"


def test_command_watchers_refused_in_world_writable_dir(tmp_path: Path) -> None:
    path = write(tmp_path, "watchers:\n  - {name: c, kind: command, command: ['true']}\n")
    config.load(path, {})
    tmp_path.chmod(0o777)
    try:
        assert any("writable by other users" in p for p in problems(path))
    finally:
        tmp_path.chmod(0o700)


def test_state_dir_relative_to_config(tmp_path: Path) -> None:
    path = write(tmp_path, "state_dir: st\nwatchers: []\n")
    assert config.load(path, {}).state_dir == tmp_path / "st"
    path.write_text("watchers: []\n")
    assert config.load(path, {"STATE_DIRECTORY": "/var/lib/notifier"}).state_dir == Path("/var/lib/notifier")


def test_a_reload_sees_the_watchers_written_otherwise_or_under_other_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "watchers:\n  - {name: a, kind: file, path: /a}\n"
                 "  - {name: b, kind: file, path: /b}\n")
    first = config.load(path, {})
    assert first.changed_since(first) == []
    watchers = "watchers:\n  - {name: b, kind: file, path: /b}\n  - {name: a, kind: file, path: /a2}\n" \
        "  - {name: c, kind: file, path: /c}\n"
    path.write_text(watchers)
    second = config.load(path, {})
    assert [w.name for w in second.changed_since(first)] == ["a", "c"]  # b only moved
    path.write_text("defaults: {every: 1h}\n" + watchers)
    third = config.load(path, {})
    assert [w.name for w in third.changed_since(second)] == ["b", "a", "c"]
    path.write_text("timezone: Asia/Shanghai\ndefaults: {every: 1h}\n" + watchers)  # the default's default
    assert [w.name for w in config.load(path, {}).changed_since(third)] == ["b", "a", "c"]


def test_watchers_share_a_filter_key_only_when_their_filters_are_written_alike(tmp_path: Path) -> None:
    path = write(tmp_path, "watchers:\n  - {name: a, kind: file, path: /a, filters: [strip, sort]}\n"
                 "  - {name: b, kind: file, path: /b, filters: [strip, sort], every: 1h}\n"
                 "  - {name: c, kind: file, path: /c, filters: [sort, strip]}\n")
    a, b, c = (w.settings.filters_key for w in config.load(path, {}).watchers)
    assert a == b != c
    assert len(a) == 16


@pytest.mark.parametrize(("line", "expected"), [
    ("every: 10", "watchers.a.every: 10 has no unit; write 10s, 10m or 10h."),
    ("every: 0s", "watchers.a.every: a duration must be greater than zero."),
    ("every: 400d", "watchers.a.every: '400d' is longer than a year"),
    ("history: ten", "watchers.a.history: expected a whole number, got str 'ten'."),
    ("error_after: -1", "watchers.a.error_after: must be at least 1, got -1."),
    ("to: [not-an-email]", "watchers.a.to: 'not-an-email' is not an email address"),
    ("quiet_hours: 25:00-07:00", "watchers.a.quiet_hours: '25:00-07:00' is not a time window"),
    ("cron: '* * *'", "watchers.a.cron: '* * *' is not a cron expression"),
    ("timezone: Mars/Base", "watchers.a.timezone: 'Mars/Base' is not a known time zone"),
    ("enabled: maybe", "watchers.a.enabled: expected true or false"),
    ("templates: [a]", "watchers.a.templates: expected a string, got a list"),
    ("account: no", "watchers.a.account: expected a string, got bool False; put it in quotes"),
    ("compared_versions: 0", "watchers.a.compared_versions: must be at least 1, got 0."),
    ("compared_versions: 11", "watchers.a.compared_versions: is 11 but only 10 versions are kept; "
                              "set history to at least 11, or compare fewer."),
    ("trigger: '(sold out'", "watchers.a.trigger: is not a valid regular expression: missing )"),
    ("trigger_invert: [ok, '[a-']", "watchers.a.trigger_invert: is not a valid regular expression"),
    ("trigger: {a: b}", "watchers.a.trigger: expected a string, got a mapping"),
])
def test_every_bad_value_is_a_located_problem(tmp_path: Path, line: str, expected: str) -> None:
    path = write(tmp_path, f"watchers:\n  - name: a\n    kind: file\n    path: /x\n    {line}\n")
    assert any(p.startswith(f"{path}:5: {expected}") for p in problems(path)), problems(path)


def test_noise_options_come_from_defaults_and_are_checked_against_history(tmp_path: Path) -> None:
    path = write(tmp_path, """\
defaults: {compared_versions: 3, trigger: price, trigger_invert: ['^Updated', '^Visitors']}
watchers:
  - {name: a, kind: file, path: /a}
  - {name: b, kind: file, path: /b, trigger: [], compared_versions: 1}
""")
    a, b = config.load(path, {}).watchers
    assert (a.compared_versions, [p.pattern for p in a.trigger], len(a.trigger_invert)) == (3, ["price"], 2)
    assert (b.compared_versions, b.trigger, len(b.trigger_invert)) == (1, (), 2)
    path = write(tmp_path, "defaults: {compared_versions: 5}\nwatchers:\n"
                           "  - name: a\n    kind: file\n    path: /a\n    history: 3\n")
    assert problems(path) == [f"{path}:6: watchers.a.compared_versions: is 5 but only 3 versions are "
                              "kept; set history to at least 5, or compare fewer."]


def test_a_yaml_boolean_is_not_a_command_argument(tmp_path: Path) -> None:
    path = write(tmp_path, "watchers:\n  - {name: a, kind: command, command: [false]}\n")
    assert "put in quotes" not in problems(path)[0]
    assert "like 'false' or 'on'" in problems(path)[0]


@pytest.mark.parametrize(("name", "expected"), [
    ('""', "watchers[0].name: must not be empty"),
    ('"a\\nb"', "watchers[0].name: 'a\\nb' contains a control character"),
    ('"tab\\there"', "contains a control character"),
    ('"esc\\x1b[31m"', "contains a control character"),
])
def test_a_name_is_one_printable_line(tmp_path: Path, name: str, expected: str) -> None:
    path = write(tmp_path, f"watchers:\n  - name: {name}\n    kind: file\n    path: /x\n  - {{name: b, "
                           f"kind: file, path: /y}}\n")
    assert any(f"{path}:2: " in p and expected in p for p in problems(path)), problems(path)


def test_misspelt_name_gets_its_did_you_mean(tmp_path: Path) -> None:
    path = write(tmp_path, "watchers:\n  - nmae: a\n    kind: file\n    path: /x\n")
    found = problems(path)
    assert f"{path}:2: watchers[0].nmae: unknown key; did you mean 'name'?" in found
    assert len([p for p in found if "nmae" in p]) == 1


@pytest.mark.parametrize("where", ["defaults", "filter"])
def test_alias_bombs_are_refused_before_expansion(tmp_path: Path, where: str) -> None:
    levels = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 8))
    bomb = f"l0: &l0 [lol]\n{levels}"
    body = (f"defaults:\n  x: &top\n    {bomb.replace(chr(10), chr(10) + '    ')}\n"
            "watchers: []\n") if where == "defaults" else (
        f"watchers:\n  - name: a\n    kind: file\n    path: /x\n    filters:\n      - grep:\n"
        f"          {bomb.replace(chr(10), chr(10) + '          ')}\n")
    path = write(tmp_path, body)
    started = time.monotonic()
    found = problems(path)
    assert time.monotonic() - started < 5
    assert any("looks like an alias bomb" in p for p in found), found


@pytest.mark.parametrize(("data", "expected"), [
    (b"watchers:\n\t- name: a\n", ":2: is not valid YAML, column 1: found character that cannot "
                                  "start any token; YAML does not allow a tab there; indent with spaces."),
    (b"watchers:\n  - name: caf\xe9\n", ":2: is not UTF-8 text (byte 0xe9 at offset 23)"),
    (b"", ": is empty; add a `watchers:` list"),
    (b"- a\n", ":1: must be a mapping with a `watchers:` list"),
    (b"mail: 5\nwatchers: []\n", ":1: mail: must be a mapping of keys to values"),
])
def test_odd_files_get_a_located_hint(tmp_path: Path, data: bytes, expected: str) -> None:
    path = tmp_path / "watchers.yaml"
    path.write_bytes(data)
    assert any(p.startswith(f"{path}{expected}") for p in problems(path)), problems(path)


def test_user_templates_compile_at_load_time(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "change.txt").write_text("line one\n{% if x %}\nunclosed\n")
    path = write(tmp_path, "templates: mine\nwatchers:\n  - {name: a, kind: file, path: /x, "
                           "templates: nowhere}\n")
    found = problems(path)
    assert any(p.startswith(f"{mine / 'change.txt'}:2: template syntax error: Unexpected end of "
                            f"template") for p in found), found
    assert any(f"{tmp_path / 'nowhere'} is not a directory" in p for p in found), found


def test_mail_from_must_be_the_login_for_163_and_qq(tmp_path: Path) -> None:
    path = write(tmp_path, "mail: {from: other@example.com}\nsmtp:\n  main: {provider: qq, username: "
                           "1@qq.com, password_env: PW}\nwatchers: []\n")
    warnings = [str(w) for w in config.load(path, {"PW": "x"}).warnings]
    assert f"{path}:1: mail.from: differs from the login of smtp.main" in warnings[0]


def test_state_dir_precedence(tmp_path: Path) -> None:
    path = write(tmp_path, "state_dir: from-file\nwatchers: []\n")
    assert config.load(path, {}).state_dir == tmp_path / "from-file"
    assert config.load(path, {"STATE_DIRECTORY": "/var/lib/n"}).state_dir == Path("/var/lib/n")
    assert config.load(path, {"STATE_DIRECTORY": "/var/lib/n"}, state_dir=tmp_path / "f").state_dir \
        == tmp_path / "f"
    assert config.load(write(tmp_path, "watchers: []\n"), {}).state_dir == tmp_path / "state"


def test_settings_that_do_nothing_as_written_are_warnings(tmp_path: Path) -> None:
    path = tmp_path / "watchers.yaml"
    path.write_text("smtp:\n  out: {host: smtp.example.com, username: me@example.com, password_env: PW,\n"
                    "        bounce_every: 10m}\nrelay:\nwatchers: []\n")
    warnings = {w.key: str(w) for w in config.load(path, environ={"PW": "x"}).warnings}
    assert "does nothing without `watch_bounces: true`" in warnings["smtp.out.bounce_every"]
    assert "write `relay: {}` for the defaults" in warnings["relay"]


@pytest.mark.parametrize("text", [
    # each watcher is built as the parser finishes it; what comes after the list reads the same
    "defaults: {every: 1h, history: 3}\ntimezone: Asia/Shanghai\nwatchers:\nLIST",
    "watchers:\nLISTdefaults: {every: 1h, history: 3}\ntimezone: Asia/Shanghai\n",
    "watchers:\nLIST<<: {defaults: {every: 1h, history: 3}, timezone: Asia/Shanghai}\n",
    "watchers: &all\nLISTdefaults: {every: 1h, history: 3}\ntimezone: Asia/Shanghai\n",
])
def test_where_defaults_are_written_does_not_matter(tmp_path: Path, text: str) -> None:
    listed = "  - {name: a, kind: file, path: /a}\n  - {name: b, kind: file, path: /b, history: 5}\n"
    cfg = config.load(write(tmp_path, text.replace("LIST", listed)), {})
    assert [(w.name, w.schedule.every, w.history, str(w.timezone)) for w in cfg.watchers] == [
        ("a", 3600, 3, "Asia/Shanghai"), ("b", 3600, 5, "Asia/Shanghai")]


def test_watchers_written_twice_is_one_problem_and_the_second_list_counts(tmp_path: Path) -> None:
    path = write(tmp_path, "watchers:\n  - {name: a, kind: file, path: /a}\n"
                           "watchers:\n  - {name: a, kind: file, path: /a}\n")
    assert problems(path) == [f"{path}:3: watchers: appears twice in one mapping (first on line 1); "
                              f"keep one."]


def test_watchers_share_equal_settings_and_replace_makes_new_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "defaults: {every: 1h}\nwatchers:\n" + "".join(
        f"  - {{name: w{i}, kind: file, path: /w{i}}}\n" for i in range(3)))
    first, second, third = config.load(path, {}).watchers
    assert first.settings is second.settings is third.settings
    assert (first.kind, first.history, first.filters) == ("file", 10, ())
    changed = replace(first, history=5)
    assert (changed.history, changed.name, changed.schedule) == (5, "w0", first.schedule)
    assert first.history == 10
    assert changed != first


def test_a_filter_chain_written_alike_is_built_once_and_its_problems_said_for_each_watcher(
        tmp_path: Path) -> None:
    good = write(tmp_path, "watchers:\n" + "".join(
        f"  - {{name: w{i}, kind: file, path: /w{i}, filters: [{{css: main}}, strip]}}\n" for i in range(2)))
    first, second = config.load(good, {}).watchers
    assert first.filters is second.filters
    assert [f.kind for f in first.filters] == ["css", "strip"]
    bad = write(tmp_path, "watchers:\n" + "".join(
        f"  - {{name: w{i}, kind: file, path: /w{i}, filters: [strip, {{css: '['}}]}}\n" for i in range(2)))
    found = problems(bad)
    assert [p.split(": ", 2)[1] for p in found] == ["watchers.w0.filters[1]", "watchers.w1.filters[1]"], found
