"""The file watcher on real files: text, binary summaries, modes, missing files and errors."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from notifier.errors import WatchError
from notifier.options import parse_options
from notifier.watchers.file import File
from tests.servers.http import CHINESE_PROSE


def watcher(path: Path, **raw: Any) -> File:
    """Build a watcher the way the config loader does: parse, fill defaults, construct."""
    values, problems = parse_options({"path": str(path), **raw}, File.options, "watchers.yaml", "w")
    assert not problems, problems
    return File(values)


def test_text_changes_are_seen(tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("price: 10 元\n", encoding="utf-8")
    w = watcher(target)
    assert w.fetch({}).text == "price: 10 元\n"
    target.write_text("price: 12 元\n", encoding="utf-8")
    assert w.fetch({}).text == "price: 12 元\n"
    assert w.source() == str(target)


def test_gbk_text_file_is_detected(tmp_path: Path) -> None:
    text = CHINESE_PROSE + "\n"
    target = tmp_path / "gbk.txt"
    target.write_bytes(text.encode("gbk"))
    assert watcher(target).fetch({}).text == text


def test_utf8_with_a_stray_byte_stays_text(tmp_path: Path) -> None:
    target = tmp_path / "app.log"
    target.write_bytes("启动 ok, résumé\n".encode() + b"bad \xff byte\n")
    assert watcher(target).fetch({}).text == "启动 ok, résumé\nbad \ufffd byte\n"


def test_binary_without_nul_bytes_is_summarised(tmp_path: Path) -> None:
    target = tmp_path / "noise.bin"
    target.write_bytes(bytes(range(1, 256)) * 20)
    assert watcher(target).fetch({}).text.startswith("binary file, 5100 bytes, sha256 ")


def test_binary_file_is_summarised_and_changes_with_content(tmp_path: Path) -> None:
    target = tmp_path / "blob.bin"
    data = b"\x89PNG\0\0" + bytes(range(256)) * 10
    target.write_bytes(data)
    w = watcher(target)
    first = w.fetch({}).text
    assert first == f"binary file, {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}"
    target.write_bytes(data[:-1] + b"!")
    second = w.fetch({}).text
    assert second != first
    assert second.startswith(f"binary file, {len(data)} bytes, sha256 ")


def test_binary_file_larger_than_max_bytes_is_still_hashed(tmp_path: Path) -> None:
    target = tmp_path / "big.bin"
    data = b"\0" * 5000
    target.write_bytes(data)
    text = watcher(target, max_bytes=1000).fetch({}).text
    assert text == f"binary file, 5000 bytes, sha256 {hashlib.sha256(data).hexdigest()}"


def test_text_larger_than_max_bytes_suggests_checksum(tmp_path: Path) -> None:
    target = tmp_path / "big.log"
    target.write_text("line\n" * 1000)
    with pytest.raises(WatchError, match=r"larger than 1,000 bytes; use `mode: checksum`"):
        watcher(target, max_bytes=1000).fetch({})


def test_checksum_size_and_mtime_modes(tmp_path: Path) -> None:
    target = tmp_path / "data.txt"
    target.write_bytes(b"abc")
    os.utime(target, (1_600_000_000, 1_600_000_000.5))
    assert watcher(target, mode="checksum").fetch({}).text == (
        f"sha256 {hashlib.sha256(b'abc').hexdigest()}, 3 bytes")
    assert watcher(target, mode="size").fetch({}).text == "3 bytes"
    assert watcher(target, mode="mtime").fetch({}).text == (
        "modified 2020-09-13T12:26:40.500000+00:00")


def test_missing_file_is_a_state_not_an_error(tmp_path: Path) -> None:
    target = tmp_path / "later.txt"
    w = watcher(target)
    assert w.fetch({}).text == f"file {target} does not exist"
    target.write_text("here now")
    assert w.fetch({}).text == "here now"
    assert watcher(target / "below-a-file").fetch({}).text.endswith("does not exist")


def test_file_vanishing_between_stat_and_read_is_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "racy.txt"
    target.write_text("soon gone")
    real_stat = os.stat

    def stat_then_delete(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        result = real_stat(path, *args, **kwargs)
        os.unlink(path)
        return result

    with monkeypatch.context() as patch:
        patch.setattr(os, "stat", stat_then_delete)
        fetched = watcher(target).fetch({})
    assert fetched.text == f"file {target} does not exist"


def test_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(WatchError, match=r"is a directory, so it cannot be watched"):
        watcher(tmp_path).fetch({})


def test_fifo_is_refused_instead_of_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(WatchError, match=r"not a regular file"):
        watcher(fifo).fetch({})


def test_unreadable_file_is_an_error(tmp_path: Path) -> None:
    """Root reads any file, so under root (as in CI) the check runs as nobody, in a child."""
    target = tmp_path / "secret.txt"
    target.write_text("x")
    target.chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(WatchError, match=r"permission denied"):
            watcher(target).fetch({})
        return
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become nobody, try, report, and leave without pytest's cleanup
        os.close(read)
        message = b"no error"
        try:
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            watcher(target).fetch({})
        except WatchError as exc:
            message = str(exc).encode()
        finally:
            os.write(write, message)
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        reported = pipe.read().decode()
    os.waitpid(pid, 0)
    assert "permission denied" in reported, reported
