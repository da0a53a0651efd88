"""The console route on a real pseudo-terminal: a question that timed out leaves nothing reading stdin (#17.4)."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(900)
ROOT = Path(__file__).resolve().parents[3]

SCRIPT = """
import asyncio, time
from aether_prefect import open_session
from aether_prefect.blocks import AetherConfig, AetherObjectStore
from aether_prefect.errors import ChannelTimeout
cfg = AetherConfig(store=AetherObjectStore(backend='local', root={root!r}))
async def main():
    async with open_session(config=cfg) as c:
        try:
            await c.channel().ask_text('First?', timeout_s=1)
        except ChannelTimeout:
            print('TIMEOUT', flush=True)
        a = await c.channel().ask_text('Second?', timeout_s=60)  # the first line typed now is its answer
        try:
            await c.channel().ask_text('Third?', timeout_s=1)
        except ChannelTimeout:
            print('TIMEOUT2', flush=True)
        time.sleep(1.5)  # a late answer to 'Third?' is typed meanwhile: nobody must take it
        r = await c.channel('console').ask_choices('Regions?', ['eu', {{'id': 'us', 'label': 'United States'}}],
                                                   multiple=True)
        print('RESULT', repr(a), r.choices, flush=True)
asyncio.run(main())
"""


def test_a_timed_out_console_question_does_not_eat_the_next_answer(tmp_path: Any) -> None:
    import pty

    script = tmp_path / "ask.py"
    script.write_text(SCRIPT.format(root=str(tmp_path / "store")))
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, str(script)], stdin=slave, stdout=slave, stderr=slave, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    os.close(slave)
    buf = b""

    def read_until(marker: bytes, timeout: float = 90) -> None:
        nonlocal buf
        deadline = time.monotonic() + timeout
        while marker not in buf and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    buf += os.read(master, 4096)
                except OSError:
                    break
        assert marker in buf, buf.decode(errors="replace")[-2000:]

    try:
        read_until(b"Second?")  # asked right after 'First?' timed out (before #17.4 an input() thread was left behind)
        os.write(master, b"Ada\n")
        read_until(b"TIMEOUT2")
        os.write(master, b"late answer\n")
        read_until(b"Regions?")
        os.write(master, b"2, EU\n")
        read_until(b"RESULT")
        read_until(b")\r\n", 10)
    finally:
        proc.wait(timeout=30)
        os.close(master)
    assert b"RESULT 'Ada' ('us', 'eu')" in buf, buf.decode(errors="replace")[-2000:]
