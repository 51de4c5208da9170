"""The `file` kind: watch a local file's text, checksum, size or modification time."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any, ClassVar

from notifier.binary import SNIFF_BYTES, summary
from notifier.charset import guess_encoding
from notifier.errors import WatchError
from notifier.kinds import Fetched, Watcher
from notifier.options import REQUIRED, Choice, Int, MiB, Option, Str


class File(Watcher, kind="file"):
    """Watch a local file: its text, or its checksum, size or modification time.

    A missing file is a state, not an error: the text says the file does not exist, so its
    appearing and disappearing are reported as changes. In `content` mode text is decoded as
    UTF-8 (or a detected legacy charset such as GBK); a binary file becomes one line with its
    size and SHA-256, so any change to it is still noticed. Text larger than `max_bytes` fails
    with a hint to use `mode: checksum`, which hashes files of any size in chunks.
    """

    options: ClassVar[tuple[Option, ...]] = (
        Option("path", Str(), REQUIRED, "The file to watch; ~ is expanded."),
        Option("mode", Choice("content", "checksum", "size", "mtime"), "content",
               "What to compare: the text, a SHA-256, the size or the modification time."),
        Option("max_bytes", Int(minimum=1), 10 * MiB, "Largest text file read in content mode."),
    )

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self.path: str = os.path.expanduser(options["path"])
        self.mode: str = options["mode"]
        self.max_bytes: int = options["max_bytes"]

    def source(self) -> str:
        return self.path

    def fetch(self, previous: Mapping[str, str]) -> Fetched:
        missing = Fetched(text=f"file {self.path} does not exist")
        try:
            info = os.stat(self.path)
            self._check_regular(info)
            if self.mode == "size":
                return Fetched(text=f"{info.st_size} bytes")
            if self.mode == "mtime":
                when = datetime.fromtimestamp(info.st_mtime_ns / 1e9, tz=UTC)
                return Fetched(text=f"modified {when.isoformat()}")
            with open(self.path, "rb") as handle:  # may vanish after stat: same as missing
                if self.mode == "checksum":
                    digest, size = _sha256(handle)
                    return Fetched(text=f"sha256 {digest}, {size} bytes")
                return Fetched(text=self._content(handle))
        except (FileNotFoundError, NotADirectoryError):
            return missing
        except PermissionError:
            raise WatchError(f"cannot read {self.path}: permission denied; give the user notifier "
                             f"runs as read access to it (and its directories).") from None
        except IsADirectoryError:
            raise self._not_regular("a directory") from None
        except OSError as exc:
            raise WatchError(f"cannot read {self.path}: {exc.strerror or exc}; check the "
                             f"file and the disk.") from exc

    def _check_regular(self, info: os.stat_result) -> None:
        """Refuse what open() would block on (FIFOs) or misread (directories, devices)."""
        if stat.S_ISDIR(info.st_mode):
            raise self._not_regular("a directory")
        if not stat.S_ISREG(info.st_mode):
            raise self._not_regular("not a regular file (a pipe, socket or device)")

    def _not_regular(self, what: str) -> WatchError:
        return WatchError(f"{self.path} is {what}, so it cannot be watched as a file; watch a "
                          f"file inside it, or use a command watcher such as `ls -l {self.path}`.")

    def _content(self, handle: IO[bytes]) -> str:
        data = handle.read(self.max_bytes + 1)
        if b"\0" not in data[:SNIFF_BYTES]:
            if len(data) > self.max_bytes:
                raise WatchError(f"{self.path} is larger than {self.max_bytes:,} bytes; use "
                                 f"`mode: checksum` to watch it, or raise max_bytes.")
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                codec = guess_encoding(data)  # GBK and Latin-1 text files are common too
                if codec:
                    return data.decode(codec, errors="replace")
        digest, size = _sha256(handle, data)
        return summary("binary file", size, digest)


def _sha256(handle: IO[bytes], head: bytes = b"") -> tuple[str, int]:
    """Hash `head` and the rest of the file in 1 MiB chunks: any size, bounded memory."""
    digest = hashlib.sha256(head)
    size = len(head)
    while chunk := handle.read(MiB):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size
