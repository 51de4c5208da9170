"""`imap:` and `pop3:` accounts in watchers.yaml: presets, explicit servers, `verify_with:`."""

from __future__ import annotations

from pathlib import Path

import pytest

from notifier import config
from notifier.errors import ConfigError


def _load(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "watchers.yaml"
    path.write_text(text + "watchers: []\n")
    return config.load(path, environ={})


def test_presets_fill_host_port_and_security(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "imap:\n  a: {provider: '163', username: me@163.com, password_env: X}\n"
                          "  b: {provider: qq}\npop3:\n  c: {provider: qq}\n  d: {provider: '163'}\n")
    got = {n: (b.protocol, b.host, b.port, b.security) for n, b in cfg.mailboxes.items()}
    assert got == {"a": ("imap", "imap.163.com", 993, "ssl"), "b": ("imap", "imap.qq.com", 993, "ssl"),
                   "c": ("pop3", "pop.qq.com", 995, "ssl"), "d": ("pop3", "pop.163.com", 995, "ssl")}
    assert str(cfg.mailboxes["a"].password) == "****"


def test_explicit_server_and_ports_by_security(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "imap:\n  a: {host: mail.example.com, security: starttls, ca_file: /ca.pem}\n"
                          "pop3:\n  b: {host: mail.example.com, security: none}\n")
    assert (cfg.mailboxes["a"].port, cfg.mailboxes["a"].ca_file) == (143, "/ca.pem")
    assert cfg.mailboxes["b"].port == 110


def test_verify_with_must_name_a_mailbox(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, "smtp:\n  s: {provider: qq, verify_with: inbox}\nimap:\n  box: {provider: qq}\n")
    assert "smtp.s.verify_with: names no account under imap or pop3; known: box" in str(info.value)
    cfg = _load(tmp_path, "smtp:\n  s: {provider: qq, verify_with: box}\nimap:\n  box: {provider: qq}\n")
    assert cfg.accounts["s"].verify_with == "box"


def test_mistakes_are_reported_with_key_paths(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, "imap:\n  a: {hots: x}\n  b: {security: tls, host: h}\n  c: {provider: qq}\n"
                        "pop3:\n  c: {provider: qq}\n")
    text = str(info.value)
    assert "imap.a.hots: unknown key; did you mean 'host'?" in text
    assert "imap.b.security" in text
    assert "pop3.c: is also the name of an imap account" in text
