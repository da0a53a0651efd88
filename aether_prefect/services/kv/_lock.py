"""A cross-process lease lock on one Prefect Variable, for KV read-modify-write operations.

Why a lock variable and not a global concurrency limit: creating a variable whose
name exists fails atomically (409), which is exactly a try-lock; the variable's
server-assigned ``id`` lets a holder release, and a breaker remove, *that*
lock instance only (``DELETE /variables/{id}``), never a newer lock taken by
someone else with the same name; and it needs no server-side lease service.

- Acquire: create the lock variable ``{"owner", "exp", "lease_s", "pid", "host"}``.
  409 = held: poll it with reads (jittered, growing up to 50 ms) and create again
  once it is gone; reads keep the waiters off the server's write path.
- Lease: the holder renews ``exp`` every ``lease_s / 3`` while it holds the lock,
  so a long critical section keeps it; a crashed holder stops renewing.
- Breaking: a waiter deletes the lock by id when its ``exp`` has passed on the
  waiter's clock, or when the waiter has seen the same (id, exp) unchanged for
  longer than the lease on its own monotonic clock (this second rule does not
  depend on clocks agreeing between machines).
- Giving up: after ``timeout_s`` of waiting, ``KVError`` saying who holds it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
import uuid
from types import TracebackType
from typing import Any, Protocol

from aether_prefect.errors import KVError

_log = logging.getLogger("aether_prefect.kv")
_MAX_POLL_S = 0.05  # a waiter re-reads the lock at most this far apart (reads are cheap; holds last ~10-50 ms)


class LockAPI(Protocol):
    """The few Variables calls the lock needs (implemented in ``kv.py`` on the shared Prefect client)."""

    async def create(self, name: str, value: Any) -> dict[str, Any] | None: ...

    async def read(self, name: str) -> dict[str, Any] | None: ...

    async def delete_id(self, var_id: str) -> bool: ...

    async def patch_id(self, var_id: str, value: Any) -> bool: ...


class VariableLock:
    """``async with VariableLock(api, name, lease_s=30, timeout_s=60):`` a lease lock held across processes."""

    def __init__(self, api: LockAPI, name: str, *, lease_s: float, timeout_s: float, label: str = "") -> None:
        if lease_s <= 0 or timeout_s < 0:
            raise KVError(f"lock lease_s must be > 0 and timeout_s >= 0, got lease_s={lease_s}, timeout_s={timeout_s}")
        self._api = api
        self.name = name
        self.lease_s = float(lease_s)
        self.timeout_s = float(timeout_s)
        self.label = label or name
        self._id: str | None = None
        self._owner = ""
        self._renewer: asyncio.Task[None] | None = None

    def _value(self) -> dict[str, Any]:
        return {
            "owner": self._owner,
            "exp": time.time() + self.lease_s,
            "lease_s": self.lease_s,
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }

    async def acquire(self) -> None:
        """Take the lock, breaking an expired one; KVError after ``timeout_s``."""
        deadline = time.monotonic() + self.timeout_s
        seen: tuple[str, Any] | None = None
        seen_at = 0.0
        attempt = 0
        try_create = True
        while True:
            if try_create:
                self._owner = uuid.uuid4().hex
                created = await self._api.create(self.name, self._value())
                if created is not None:
                    self._id = str(created["id"])
                    self._renewer = asyncio.create_task(self._renew())
                    return
            held = await self._api.read(self.name)
            if held is None:
                try_create = True  # released: try to take it at once
                continue
            try_create = False  # while held, poll with cheap reads, not failing creates (writes)
            value = held.get("value") if isinstance(held.get("value"), dict) else {}
            exp = value.get("exp")
            lease = value.get("lease_s") if isinstance(value.get("lease_s"), (int, float)) else self.lease_s
            sig = (str(held["id"]), exp)
            now = time.monotonic()
            if sig != seen:
                seen, seen_at = sig, now
            expired = not isinstance(exp, (int, float)) or time.time() > exp
            if expired or now - seen_at > lease:
                if await self._api.delete_id(sig[0]):
                    _log.warning("broke the expired KV lock on %r held by pid %s on %s",
                                 self.label, value.get("pid"), value.get("host"))
                try_create = True
                continue
            if now >= deadline:
                raise KVError(
                    f"could not lock KV key {self.label!r} within {self.timeout_s:g}s: held by pid "
                    f"{value.get('pid')} on {value.get('host')} until its lease ends in "
                    f"{max(0.0, float(exp) - time.time()):.1f}s; retry later or raise lock_timeout_s"
                )
            delay = min(_MAX_POLL_S, 0.004 * 1.3**attempt) * random.uniform(0.5, 1.5)
            attempt += 1
            await asyncio.sleep(min(delay, max(0.0, deadline - now) + 0.001))

    async def _renew(self) -> None:
        """Push ``exp`` forward every lease/3 while held; stop if the lock was broken."""
        try:
            while self._id is not None:
                await asyncio.sleep(self.lease_s / 3)
                if self._id is None or not await self._api.patch_id(self._id, self._value()):
                    _log.warning("KV lock on %r was broken while held (held longer than its lease?)", self.label)
                    return
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # noqa: BLE001 - renewal failing must not kill the holder's work
            _log.warning("renewing the KV lock on %r failed: %s", self.label, exc)

    async def release(self) -> None:
        """Delete this lock instance (by id); a lock already broken by a waiter is left alone."""
        var_id, self._id = self._id, None
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()
        if var_id is not None:
            await self._api.delete_id(var_id)

    async def __aenter__(self) -> "VariableLock":
        await self.acquire()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.shield(self.release())
