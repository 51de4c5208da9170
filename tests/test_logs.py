"""notifier.logs: one line per record whatever the record holds, secrets masked."""

from __future__ import annotations

import logging

import pytest

from notifier import logs
from notifier.secrets import Secret


def test_no_field_can_start_a_new_log_line(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("info")
    title = "Prices\nINFO notifier.daemon: watcher=bank outcome=unchanged\x1b[2K\u2028"
    logging.getLogger("notifier.test").warning("watcher=%s failed: %s", title, "bad\r\nreply")
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "\x1b" not in err
    assert "Prices\\nINFO notifier.daemon: watcher=bank outcome=unchanged\\x1b[2K\\u2028" in err
    assert "bad\\r\\nreply" in err


def test_secrets_stay_masked_in_one_line_records(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("info")
    secret = Secret("Auth-Code-1234")
    logging.getLogger("notifier.test").error("login with %s\nfailed", secret.reveal())
    err = capsys.readouterr().err
    assert "Auth-Code-1234" not in err
    assert "login with ****\\nfailed" in err
