"""The console route: one reader thread owns stdin, so a question that timed out leaves nothing blocked in input().

Lines typed while no question waits (a late answer to a question that timed out) are dropped when the next
question starts, so each question reads only what was typed after its own prompt.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from typing import Any, TextIO

import anyio

from aether_prefect.errors import ChannelError, ChannelTimeout
from aether_prefect.services.channel._forms import short

_EOF = object()
_lock = threading.Lock()
_readers: dict[int, "_Reader"] = {}


class _Reader:
    """A daemon thread that reads ``stream`` line by line into a queue, for as long as the process lives."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lines: queue.Queue[Any] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="aether-console-reader", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                line = self.stream.readline()
            except (ValueError, OSError):  # closed stdin
                line = ""
            if not line:
                self.lines.put(_EOF)
                return
            self.lines.put(line.rstrip("\r\n"))

    def drain(self) -> None:
        """Drop lines nobody asked for yet (keeps the EOF mark)."""
        while True:
            try:
                item = self.lines.get_nowait()
            except queue.Empty:
                return
            if item is _EOF:
                self.lines.put(_EOF)
                return


def _reader() -> _Reader:
    stream = sys.stdin
    with _lock:
        reader = _readers.get(id(stream))
        if reader is None or reader.stream is not stream:
            reader = _readers[id(stream)] = _Reader(stream)
        return reader


def stdin_is_tty() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):  # closed or detached stdin
        return False


async def read_line(text: str, prompt: str, deadline: float, timeout_s: float, *, fresh: bool = True) -> str:
    """Print ``text`` and return the next line typed; ChannelTimeout at ``deadline`` (time.monotonic())."""
    reader = _reader()
    if fresh:
        reader.drain()
    sys.stdout.write(text)
    sys.stdout.flush()
    while True:
        try:
            item = reader.lines.get_nowait()
        except queue.Empty:
            if time.monotonic() >= deadline:
                raise ChannelTimeout(f"nobody answered {short(prompt)!r} on the console within {timeout_s:g}s") from None
            await anyio.sleep(0.05)
            continue
        if item is _EOF:
            reader.lines.put(_EOF)
            raise ChannelError(f"stdin closed before {short(prompt)!r} was answered")
        return str(item)
