"""A cross-process lease lock on one Prefect Variable, for KV read-modify-write operations.

Why a lock variable and not a global concurrency limit: creating a variable whose name exists fails
atomically (409), which is exactly a try-lock; the variable's server-assigned ``id`` lets a holder
release, and a breaker remove, *that* lock instance only (``DELETE /variables/{id}``), never a newer
lock taken by someone else with the same name. Measured against Prefect's global concurrency limits
in ``bench/bench_kv.py``.

- Acquire: one create of the lock variable ``{"owner", "lease_s", "pid", "host"}``. 409 = held: poll it
  with reads (reads stay off the server's write path) at jittered, growing intervals, and create again
  once it is gone.
- Lease, on the server's clock: the holder renews (PATCH by id) every ``lease_s / 3`` while it holds
  the lock; each renewal moves the variable's server-stamped ``updated``. A waiter breaks the lock
  (DELETE by id) only after it has seen the same ``(id, updated)`` for 1.5 times the holder's lease,
  timed on its own monotonic clock: no two machines' wall clocks are ever compared.
- Fencing: the holder counts its lease from the moment it *sent* the create (or its last renewal), which
  is never later than a waiter's first sight of it. :meth:`VariableLock.check` raises
  :class:`~aether_prefect.errors.KVLockLost` when less than a safety margin of the lease is left, and
  every KV write under the lock calls it just before sending: a holder that stalled (GC pause, SIGSTOP,
  a frozen VM) past its lease fails with a typed error instead of writing over a newer holder's work.
  Limit: Prefect Variables have no compare-and-set, so the write itself cannot be made conditional on
  the lock; a write sent in time must reach the server within 0.75 of a lease (the holder's unused
  quarter plus the waiters' extra half), i.e. within 22 s with the default 30 s lease.
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

from aether_prefect.errors import KVError, KVLockLost

_log = logging.getLogger("aether_prefect.kv")
_FIRST_POLL_S = 0.004  # a waiter's first re-read; then x1.5 per poll, with full jitter
_MAX_POLL_S = 0.12  # waiters re-read the lock at most this far apart (an incr run keeps it up to 1 s)
_GRACE = 1.5  # a waiter breaks a lock left unchanged for 1.5 leases; the holder stops writing at 0.75 of one
_HOST = socket.gethostname()
#: Environment variable setting the default lease of KV locks, in seconds (default 30).
LEASE_ENV = "AETHER_KV_LOCK_LEASE_S"


def default_lease_s() -> float:
    """The lease of KV locks: ``$AETHER_KV_LOCK_LEASE_S`` or 30 s."""
    raw = os.environ.get(LEASE_ENV)
    if not raw:
        return 30.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise KVError(f"{LEASE_ENV}={raw!r} is not a positive number of seconds; unset it or use e.g. 30")
    return value


def safety_margin(lease_s: float) -> float:
    """Part of the lease a holder never uses for writing: time for its last request to reach the server."""
    return min(lease_s / 4, 2.0)


class LockAPI(Protocol):
    """The few Variables calls the lock needs (implemented in the KV module on the shared Prefect client)."""

    async def create(self, name: str, value: Any) -> dict[str, Any] | None: ...

    async def read(self, name: str) -> dict[str, Any] | None: ...

    async def delete_id(self, var_id: str) -> bool: ...

    async def patch_id(self, var_id: str, value: Any) -> bool: ...


class VariableLock:
    """``async with VariableLock(api, name, lease_s=30, timeout_s=60):`` a lease lock held across processes."""

    def __init__(self, api: LockAPI, name: str, *, lease_s: float, timeout_s: float, label: str = "") -> None:
        if not lease_s > 0 or not timeout_s >= 0:
            raise KVError(f"lock lease_s must be > 0 and timeout_s >= 0, got lease_s={lease_s}, timeout_s={timeout_s}")
        self._api = api
        self.name = name
        self.lease_s = float(lease_s)
        self.timeout_s = float(timeout_s)
        self.label = label or name
        self._id: str | None = None
        self._valid_until = 0.0  # monotonic: the lease runs out here unless renewed
        self._lost = False
        self._renewer: asyncio.Task[None] | None = None
        self._released_id: str | None = None

    def _value(self) -> dict[str, Any]:
        return {"owner": uuid.uuid4().hex, "lease_s": self.lease_s, "pid": os.getpid(), "host": _HOST}

    async def acquire(self) -> None:
        """Take the lock, breaking one whose holder stopped renewing; KVError after ``timeout_s``."""
        deadline = time.monotonic() + self.timeout_s
        seen: tuple[str, Any] | None = None
        seen_at = 0.0
        poll = _FIRST_POLL_S
        try_create = True
        while True:
            if try_create:
                sent = time.monotonic()
                created = await self._api.create(self.name, self._value())
                if created is not None:
                    self._id, self._valid_until, self._lost = str(created["id"]), sent + self.lease_s, False
                    self._renewer = asyncio.create_task(self._renew())
                    return
            held = await self._api.read(self.name)
            if held is None:
                try_create = True  # released: try to take it at once
                continue
            try_create = False  # while held, poll with cheap reads, not failing creates (writes)
            value = held.get("value") if isinstance(held.get("value"), dict) else {}
            lease = value.get("lease_s")
            lease = float(lease) if isinstance(lease, (int, float)) and lease > 0 else self.lease_s
            sig = (str(held["id"]), held.get("updated"))  # server-stamped: moves at every renewal
            now = time.monotonic()
            if sig != seen:
                seen, seen_at = sig, now
            elif now - seen_at > lease * _GRACE:
                if await self._api.delete_id(sig[0]):
                    _log.warning("broke the KV lock on %r: pid %s on %s did not renew it within its %gs lease",
                                 self.label, value.get("pid"), value.get("host"), lease)
                try_create = True
                continue
            if now >= deadline:
                raise KVError(
                    f"could not lock KV key {self.label!r} within {self.timeout_s:g}s: held by pid "
                    f"{value.get('pid')} on {value.get('host')} (lease {lease:g}s, renewed while it works); "
                    "retry later or raise lock_timeout_s"
                )
            await asyncio.sleep(min(random.uniform(0.2, 1.0) * poll, max(0.0, deadline - now) + 0.001))
            poll = min(poll * 1.5, _MAX_POLL_S)

    def try_acquire_blocking(self) -> bool:
        """One try on the calling thread: create the lock variable; False when it is held (:meth:`acquire` waits).

        No renewer runs: a blocking holder makes a few requests and releases (:meth:`release_blocking`), and
        :meth:`check` before its write fences a holder that stalled past the lease, as for any holder. A killed
        holder's lock is broken by waiters after 1.5 leases, as always.
        Example: ``if lock.try_acquire_blocking(): ...; lock.release_blocking()``
        """
        sent = time.monotonic()
        created = self._api.create_sync(self.name, self._value())  # type: ignore[attr-defined]
        if created is None:
            return False
        self._id, self._valid_until, self._lost = str(created["id"]), sent + self.lease_s, False
        return True

    def release_blocking(self) -> bool:
        """Blocking :meth:`release` of a lock taken by :meth:`try_acquire_blocking` (one DELETE by id).

        Example: ``lock.release_blocking()``
        """
        var_id, self._id = self._id, None
        self._released_id = var_id
        if var_id is None:
            return False
        return bool(self._api.delete_id_sync(var_id))  # type: ignore[attr-defined]

    @property
    def lost(self) -> bool:
        """True once a renewal found the lock broken by a waiter."""
        return self._lost

    def usable(self) -> bool:
        """True while held with well over the safety margin of the lease left (worth starting another write)."""
        return (self._id is not None and not self._lost
                and time.monotonic() < self._valid_until - 2 * safety_margin(self.lease_s))

    def check(self) -> None:
        """Raise KVLockLost unless this holder may still write: call it just before every write under the lock."""
        if self._id is None or self._lost or time.monotonic() > self._valid_until - safety_margin(self.lease_s):
            raise KVLockLost(
                f"the lock on KV key {self.label!r} ran out before the write ({self.lease_s:g}s lease; the "
                "process stalled or the API was too slow): nothing was written, so another holder's work "
                "stays intact. Retry the operation (a longer lock_lease_s tolerates longer stalls)"
            )

    async def _renew(self) -> None:
        """Renew every lease/3 while held (moves the server's ``updated``); mark the lock lost if it was broken."""
        try:
            while self._id is not None:
                await asyncio.sleep(self.lease_s / 3)
                var_id = self._id
                if var_id is None:
                    return
                sent = time.monotonic()
                if not await self._api.patch_id(var_id, self._value()):
                    self._lost = True
                    _log.warning("KV lock on %r was broken while held (held longer than its lease?)", self.label)
                    return
                if self._id == var_id:
                    self._valid_until = sent + self.lease_s
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # noqa: BLE001 - a failed renewal only shortens the lease; check() enforces it
            _log.warning("renewing the KV lock on %r failed: %s", self.label, exc)

    async def release(self) -> bool:
        """Delete this lock instance (by id); False when it had already been broken by a waiter."""
        var_id, self._id = self._id, None
        self._released_id = var_id
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()
        if var_id is None:
            return False
        return await self._api.delete_id(var_id)

    async def release_id(self) -> bool:
        """Like :meth:`release`, and safe to call again if a call was interrupted (DELETE by id is idempotent)."""
        if self._id is not None:
            return await self.release()
        if self._released_id is None:
            return False
        return await self._api.delete_id(self._released_id)

    async def __aenter__(self) -> "VariableLock":
        await self.acquire()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.shield(self.release())
