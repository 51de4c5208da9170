"""`notifier inbox` against a real Dovecot: listing with decoded headers and filters, `show`
with the MIME tree, the text and attachments saved under safe names; IMAP and POP3."""

from __future__ import annotations

from pathlib import Path

import pytest

from notifier.cli import main
from tests.servers.dovecot import RECEIVER_PASSWORD, SENDER, Dovecot

MAIL = Path(__file__).parent / "data" / "mail"


@pytest.fixture(scope="module")
def filled(dovecot: Dovecot) -> Dovecot:
    """The sender's mailbox (nobody else's tests write there) holding three corpus messages."""
    for name in ("gbk_subject_b.eml", "gb2312_subject_q.eml", "rfc2231_filenames.eml"):
        dovecot.deliver(SENDER, (MAIL / name).read_bytes())
    return dovecot


def _config(tmp_path: Path, dovecot: Dovecot, protocol: str) -> str:
    port = dovecot.imaps if protocol == "imap" else dovecot.pop3s
    path = tmp_path / "watchers.yaml"
    path.write_text(f"{protocol}:\n  mine: {{host: localhost, port: {port}, username: {SENDER}, "
                    f"password_env: IMAP_PW, ca_file: {dovecot.ca.ca_file}}}\nwatchers: []\n")
    return str(path)


@pytest.fixture(autouse=True)
def _password(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.servers.dovecot import SENDER_PASSWORD  # noqa: PLC0415

    monkeypatch.setenv("IMAP_PW", SENDER_PASSWORD)
    assert SENDER_PASSWORD != RECEIVER_PASSWORD


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_inbox_lists_decoded_headers(filled: Dovecot, tmp_path: Path, protocol: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inbox", "-c", _config(tmp_path, filled, protocol)]) == 0
    out = capsys.readouterr().out
    assert "价格变动通知\N{FULLWIDTH COLON}商品降价了" in out
    assert "系统通知 测试" in out
    assert "附件测试" in out
    assert "价格监控 <monitor@163.com>" in out


def test_inbox_filters_by_subject_sender_and_limit(filled: Dovecot, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, filled, "imap")
    assert main(["inbox", "-c", config, "--subject", "系统通知"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    assert "系统通知 测试" in out[0]
    assert main(["inbox", "-c", config, "--from", "sales@example.com", "--since", "2026-01-01"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    assert "附件测试" in out[0]
    assert main(["inbox", "-c", config, "--limit", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_inbox_show_prints_tree_text_and_saves_attachments(filled: Dovecot, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, filled, "imap")
    assert main(["inbox", "-c", config, "--subject", "附件测试"]) == 0
    uid = capsys.readouterr().out.split()[0]
    target = tmp_path / "saved"
    assert main(["inbox", "show", uid, "-c", config, "--save-attachments", str(target)]) == 0
    out = capsys.readouterr().out
    assert "Subject: 附件测试" in out
    assert "multipart/mixed" in out
    assert "See attached." in out
    assert 'attachment "报价单 2026.xlsx"' in out
    assert sorted(p.name for p in target.iterdir()) == ["passwd", "合同.pdf", "报价单 2026.xlsx"]


def test_inbox_show_needs_a_uid(filled: Dovecot, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inbox", "show", "-c", _config(tmp_path, filled, "imap")]) == 64
    assert "needs the UID" in capsys.readouterr().err
