"""notifier.cli: the commands users type, their output and exit codes."""

from __future__ import annotations

import importlib.metadata
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import notifier
from notifier.cli import main
from tests.servers.smtp import PASSWORD, SmtpServer, smtp_yaml


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "watchers.yaml"
    path.write_text(body)
    return path


@pytest.fixture
def watched(tmp_path: Path) -> Path:
    """A config with one file watcher on tmp_path/doc.txt (grep: price)."""
    (tmp_path / "doc.txt").write_text("price 1\nnoise\n")
    return write(tmp_path, f"""\
watchers:
  - name: doc
    kind: file
    path: {tmp_path / "doc.txt"}
    filters: [{{grep: price}}]
""")


def test_validate_ok_and_errors(tmp_path: Path, watched: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-c", str(watched), "validate"]) == 0
    assert "is valid: 1 watcher(s)" in capsys.readouterr().out
    bad = write(tmp_path, "watchers:\n  - {name: a, kind: file, pth: /x}\n")
    assert main(["-c", str(bad), "validate"]) == 1
    out = capsys.readouterr().out
    assert f"error: {bad}:2: watchers.a.pth: unknown key; did you mean 'path'?" in out
    assert f"error: {bad}:2: watchers.a.path: is required" in out


def test_check_exit_codes_and_plain_output(watched: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-c", str(watched), "check", "--send"]) == 0
    assert "watcher=doc kind=file outcome=baseline" in capsys.readouterr().out
    (watched.parent / "doc.txt").write_text("price 2\n")
    assert main(["-c", str(watched), "check"]) == 1
    out = capsys.readouterr().out
    assert "-price 1\n+price 2\n" in out
    assert "\033[" not in out  # not a terminal: no color codes
    assert out.rstrip().endswith("checked 1, changed 1, failed 0, took 0.0s; preview: nothing "
                                 "recorded or sent, use --send to record and alert.")
    (watched.parent / "doc.txt").write_text("nothing\n")
    assert main(["-c", str(watched), "check"]) == 2
    assert "matched nothing" in capsys.readouterr().out


def test_a_preview_leaves_the_change_for_the_daemon(watched: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`check` without --send must not swallow the alert the daemon would send."""
    main(["-c", str(watched), "check", "--send"])
    (watched.parent / "doc.txt").write_text("price 2\n")
    for _ in range(2):
        assert main(["-c", str(watched), "check", "doc"]) == 1
    maildir = watched.parent / "state" / "maildir" / "new"
    assert not maildir.exists() or not list(maildir.iterdir())
    assert main(["-c", str(watched), "check", "--send"]) == 1
    assert "state recorded, 1 alert(s) queued" in capsys.readouterr().out
    assert len(list(maildir.iterdir())) == 1
    assert main(["-c", str(watched), "check"]) == 0


def test_check_unknown_name_is_a_usage_error(watched: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-c", str(watched), "check", "dco"]) == 64
    assert "no watcher named 'dco'" in (err := capsys.readouterr().err)
    assert "did you mean 'doc'?" in err
    assert main(["-c", str(watched), "test-filter", "zzz"]) == 64
    assert "known: doc." in capsys.readouterr().err


def test_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    lines = "".join(f"  - {{name: w{i}, kind: command, command: [echo, {i}]}}\n" for i in range(200))
    path = write(tmp_path, f"watchers:\n{lines}")
    for command in ("check", "kinds"):
        result = subprocess.run(f"{sys.executable} -m notifier.cli -c {path} {command} | head -n 1",
                                shell=True, capture_output=True, text=True, timeout=60, check=False)
        assert result.stdout.count("\n") == 1
        assert result.stderr == "", result.stderr


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"notifier {notifier.__version__}\n"
    # One home for the release: the installed distribution reads it from notifier/__init__.py.
    assert importlib.metadata.version("notifier") == notifier.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", notifier.__version__)


def test_check_send_delivers_to_maildir(watched: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["-c", str(watched), "check", "--send"])
    (watched.parent / "doc.txt").write_text("price 3\n")
    assert main(["-c", str(watched), "check", "--send"]) == 1
    assert "outbox: 1 sent, 0 to retry, 0 held, 0 dead" in capsys.readouterr().out
    assert len(list((watched.parent / "state" / "maildir" / "new").iterdir())) == 1


def test_test_filter_shows_each_step(watched: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-c", str(watched), "test-filter", "doc"]) == 0
    out = capsys.readouterr().out
    assert "=== after grep 'price'" in out
    assert out.rstrip().endswith("price 1")


def test_kinds_lists_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kinds"]) == 0
    out = capsys.readouterr().out
    for needle in ("url:", "file:", "command:", "css:", "max_bytes", "shorthand"):
        assert needle in out


def test_status_and_outbox(watched: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["-c", str(watched), "check", "--send"])
    capsys.readouterr()
    assert main(["-c", str(watched), "status"]) == 0
    out = capsys.readouterr().out
    assert "doc (file, every 10m)" in out
    assert "last check 0s ago" in out
    assert "outbox: 0 pending, 0 held, 0 dead" in out
    assert main(["-c", str(watched), "outbox"]) == 0
    assert "0 message(s) in the outbox." in capsys.readouterr().out


def test_bad_config_is_one_line_per_problem_and_exit_78(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path, "watchers: [\n")
    assert main(["-c", str(bad), "check"]) == 78
    err = capsys.readouterr().err
    assert "is not valid YAML" in err
    assert "Traceback" not in err


def test_test_mail_through_smtp_with_masked_debug(tmp_path: Path, smtp_server: SmtpServer,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, f"""\
{smtp_yaml(smtp_server)}mail: {{to: [ops@example.com]}}
watchers: []
""")
    result = subprocess.run([sys.executable, "-m", "notifier.cli", "-c", str(path), "--debug-smtp",
                             "test-mail", "--to", "me@example.com"], capture_output=True, text=True,
                            env={"PW": PASSWORD, "PATH": "/usr/bin:/bin"}, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert re.search(r"accepted the test message for me@example.com: 250 .*\n", result.stdout)
    assert smtp_server.received[0].rcpt_tos == ("me@example.com",)
    assert "AUTH" in result.stderr  # the dialogue was shown...
    assert PASSWORD not in result.stderr + result.stdout  # ...with the secret masked


def test_untrusted_certificate_is_refused(tmp_path: Path, smtp_server: SmtpServer) -> None:
    path = write(tmp_path, f"""\
{smtp_yaml(smtp_server, ca_file=False)}watchers: []
""")
    result = subprocess.run([sys.executable, "-m", "notifier.cli", "-c", str(path), "test-mail"],
                            capture_output=True, text=True, env={"PW": PASSWORD, "PATH": "/usr/bin:/bin"},
                            timeout=60, check=False)
    assert result.returncode == 2
    assert "certificate" in result.stderr
    assert "retried" not in result.stderr
    assert "run `notifier test-mail` again" in result.stderr
    assert "Traceback" not in result.stderr
    assert smtp_server.received == []


def test_global_options_work_before_and_after_the_command(watched: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["validate", "-c", str(watched)]) == 0
    assert main(["-c", str(watched), "validate"]) == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["-c", str(watched), "check", "--log-level", "error"]) == 0
    assert main(["validate"]) == 1  # ./watchers.yaml is the default, and there is none here


def test_test_mail_to_an_unreachable_server_promises_no_retry(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = write(tmp_path, f"smtp:\n  x: {{host: 127.0.0.1, port: {port}, security: none}}\n"
                           f"mail: {{to: [me@example.com], from: me@example.com}}\nwatchers: []\n")
    result = subprocess.run([sys.executable, "-m", "notifier.cli", "-c", str(path), "test-mail"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "Could not talk to 127.0.0.1" in result.stderr
    assert "retried" not in result.stderr
    assert "The test message was not sent; fix that and run `notifier test-mail` again." in result.stderr


def test_forget_drops_only_removed_watchers(watched: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-c", str(watched), "check", "--send"]) == 0
    assert main(["-c", str(watched), "forget", "doc"]) == 64
    assert "doc is still in" in capsys.readouterr().err
    watched.write_text("watchers: []\n")
    assert main(["-c", str(watched), "forget", "dco"]) == 64
    assert "did you mean 'doc'?" in capsys.readouterr().err
    assert main(["-c", str(watched), "forget", "doc"]) == 0
    assert "forgot 1 watcher(s): doc." in capsys.readouterr().out
    assert main(["-c", str(watched), "forget", "doc"]) == 64


def test_what_check_prints_cannot_drive_the_terminal(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A watched page or command may hold escape sequences; the terminal never gets them."""
    script = tmp_path / "out.sh"
    script.write_text("#!/bin/sh\nprintf 'ok\\n'\n")
    script.chmod(0o755)
    path = write(tmp_path, f"watchers:\n  - {{name: c, kind: command, command: ['{script}']}}\n")
    assert main(["-c", str(path), "check", "--send"]) == 0
    script.write_text("#!/bin/sh\nprintf 'ok \\033]0;owned\\007\\033[2J\\033[31mred\\n'\n")
    assert main(["-c", str(path), "check"]) == 1
    assert main(["-c", str(path), "test-filter", "c"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "\x07" not in out
    assert "+ok red" in out


# What a daemon or a command may never need, and what it would cost each of them at start:
# psycopg (~20 MB) is for `store:`, aiosmtpd (~12 MB) for `relay:`, APScheduler for `cron:`
# (with importlib.metadata and, through its executors, multiprocessing: 4 MiB), jinja2 for the
# first alert, smtplib and mailbox for the first message, sendmail's session for sendmail.
NOT_AT_START = ("psycopg", "aiosmtpd", "apscheduler", "importlib.metadata", "multiprocessing", "jinja2",
                "smtplib", "mailbox", "notifier.sendmail", "notifier.transport")


def test_a_single_machine_config_imports_nothing_it_may_never_use(tmp_path: Path) -> None:
    """`validate` of a config with none of those, in a fresh interpreter with the daemon's module
    loaded too, leaves them all unimported: the daemon's memory (bench/daemon_idle.py) stays
    within its 40 MiB only while they are."""
    path = write(tmp_path, "watchers:\n  - {name: a, kind: url, url: 'http://127.0.0.1:1/'}\n")
    script = ("import sys; import notifier.daemon; from notifier.cli import main; "
              "code = main(['-c', sys.argv[1], 'validate']); "
              f"print(sorted(m for m in sys.modules if m in {NOT_AT_START!r}), code)")
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True,
                            check=True, timeout=60)
    assert result.stdout.splitlines()[-1] == "[] 0"
