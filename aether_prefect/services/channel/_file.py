"""AetherGraph's file channel (``file:<path>``): messages appended as lines to a file, e.g. a run's log file.

A relative path is relative to the working directory (AetherGraph puts it under its workspace; there is no
such workspace here). A file cannot answer, so questions on a file channel raise ChannelError.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import anyio

PREFIX = "file:"


def is_file_key(key: str | None) -> bool:
    """True for ``file:<path>`` keys."""
    return bool(key) and str(key).startswith(PREFIX)


def path_of(key: str) -> Path:
    """The file a ``file:<path>`` key writes to."""
    return Path(key[len(PREFIX):]).expanduser()


async def append(key: str, text: str) -> Path:
    """Append ``text`` (one timestamped line per line of text) to the key's file, creating its folder."""
    path = path_of(key)
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    lines = "".join(f"[{stamp}] {line}\n" for line in (text.splitlines() or [""]))

    def write() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(lines)

    await anyio.to_thread.run_sync(write)
    return path
