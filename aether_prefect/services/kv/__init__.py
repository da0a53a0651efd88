"""KV on Prefect Variables: any str key, any JSON value, TTL, large values in the object store, no lost updates.

``context.kv()`` returns a :class:`PrefectKV`; every I/O method is async and has
a blocking twin under ``.sync`` (``context.kv().sync.get("k")``).

Storage, per key (namespace ``ctx.kv_namespace``, default ``aether``):

- the Prefect Variable ``<namespace>_k_<encoded key>`` (see ``_names.py``) holds an
  envelope ``{"_aekv": 1, "k": key, "v": value, "x": expiry epoch or null}``;
- when that envelope's JSON is over Prefect's 5000-character limit, the JSON
  ``{"k", "v"}`` goes to the object store at ``kv/<namespace>/<variable name>/<sha256>.json``
  and the variable holds ``{"_aekv": 1, "k", "b": {"ref", "sha", "n"}, "x"}``;
  overwriting or deleting the key deletes the old blob;
- TTL is checked on every read; ``purge_expired`` deletes expired variables.

Consistency: ``set``/``delete`` of small values are a GET and one write, last writer
wins, and never touch the object store (only a spilled old or new value does, under
the key's lock). ``incr``, ``expire``, ``list_append_unique``,
``list_pop_all``, ``mset`` and writes of large values are read-modify-writes done
under a per-key lease lock built on Prefect Variables (``_lock.py``), so concurrent
tasks in any number of processes lose no update among themselves.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import functools
import inspect
import hashlib
import math
import random
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from aether_prefect._prefect import variables
from aether_prefect._sync import SyncView, async_cm, run_sync
from aether_prefect.errors import IntegrityError, KVError, KVLockLost, KVValidationError
from aether_prefect.services.kv import _names as names
from aether_prefect.services.base import BoundService
from aether_prefect.services.kv._lock import VariableLock, default_lease_s

if TYPE_CHECKING:
    from aether_prefect.context import NodeContext

    from aether_prefect.services.stores.base import ObjectStore

MAX_VALUE_CHARS = 5000  # prefect.types.MAX_VARIABLE_VALUE_LENGTH: orjson length of a variable's value
_MAX_INLINE_KEY = 1000  # longer keys live only in the blob (scan_prefix reads it back)
_MAX_INT = 2**63 - 1
_PAGE = 200  # Prefect returns at most 200 variables per filter call
_MARK = "_aekv"
_LINGER_TICKS = 2  # event-loop ticks an incr drain waits for the next increment before giving the lock up
_MAX_HOLD_S = 1.0  # longest an incr drain keeps a key's lock while increments keep coming
_TURN_PAUSE_S = 0.1  # after giving it up for that reason, it waits up to this long before taking it again
_MISSING = object()


# ---------------------------------------------------------------------------
# Values: validation and envelopes
# ---------------------------------------------------------------------------


def _bad(key: str, path: str, why: str) -> KVValidationError:
    where = f" at {path}" if path else ""
    return KVValidationError(
        f"cannot store KV key {key!r}: the value{where} {why}. KV values must be JSON: "
        "None, bool, int, finite float, str, list, dict with str keys (convert dates to ISO strings, "
        "sets to lists, bytes to base64 or store them with context.artifacts())"
    )


def check_value(key: str, value: Any, path: str = "") -> None:
    """Raise KVValidationError naming ``key`` (and where inside the value) unless ``value`` is plain JSON."""
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if abs(value) > _MAX_INT:
            raise _bad(key, path, f"is an int beyond 64 bits ({value})")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _bad(key, path, f"is {value!r}, which JSON cannot hold")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_value(key, item, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise _bad(key, path, f"has a {type(k).__name__} dict key {k!r} (JSON object keys are str)")
            check_value(key, item, f"{path}[{k!r}]")
        return
    raise _bad(key, path, f"is a {type(value).__name__}")


def _dumps(key: str, obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise _bad(key, "", f"cannot be serialised to JSON ({exc})") from None


def _check_ttl(key: str, ttl_s: Any) -> float | None:
    if ttl_s is None:
        return None
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not math.isfinite(ttl_s) or ttl_s <= 0:
        raise KVValidationError(
            f"ttl_s for KV key {key!r} must be a positive number of seconds or None, got {ttl_s!r} "
            "(use delete() to remove a key now)"
        )
    return float(ttl_s)


def _check_number(key: str, amount: Any) -> int | float:
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not math.isfinite(amount):
        raise KVValidationError(f"incr amount for KV key {key!r} must be a finite int or float, got {amount!r}")
    return amount


def _incremented(key: str, current: Any, amounts: list[int | float]) -> list[int | float]:
    """The values after adding each of ``amounts`` to ``current`` in turn; KVValidationError unless a number."""
    if isinstance(current, bool) or not isinstance(current, (int, float)):
        raise KVValidationError(
            f"cannot incr KV key {key!r}: it holds a {type(current).__name__}, not a number "
            "(set it to a number first, or incr another key)"
        )
    results = []
    for amount in amounts:
        current = current + amount
        results.append(current)
    return results


class _Prepared:
    """A value ready to write: the variable envelope, and the blob bytes when it does not fit."""

    __slots__ = ("key", "envelope", "blob", "blob_key")

    def __init__(self, key: str, envelope: dict[str, Any], blob: bytes | None, blob_key: str | None) -> None:
        self.key = key
        self.envelope = envelope
        self.blob = blob
        self.blob_key = blob_key


def _blob_prefix(namespace: str, var_name: str) -> str:
    return f"kv/{namespace}/{var_name}/"


def prepare(namespace: str, var_name: str, key: str, value: Any, expires_at: float | None) -> _Prepared:
    """Validate ``value`` and build what to write (inline envelope, or blob + reference)."""
    check_value(key, value)
    envelope = {_MARK: 1, "k": key, "v": value, "x": expires_at}
    if len(_dumps(key, envelope)) <= MAX_VALUE_CHARS:
        return _Prepared(key, envelope, None, None)
    blob = _dumps(key, {"k": key, "v": value})
    sha = hashlib.sha256(blob).hexdigest()
    blob_key = f"{_blob_prefix(namespace, var_name)}{sha}.json"
    inline_key = key if len(key) <= _MAX_INLINE_KEY else None
    ref = {_MARK: 1, "k": inline_key, "b": {"ref": blob_key, "sha": sha, "n": len(blob)}, "x": expires_at}
    return _Prepared(key, ref, blob, blob_key)


def _envelope(var: dict[str, Any] | None) -> dict[str, Any] | None:
    """The envelope in a variable, or a synthetic one for a variable someone wrote by hand."""
    if var is None:
        return None
    value = var.get("value")
    if isinstance(value, dict) and value.get(_MARK) == 1:
        return value
    return {_MARK: 1, "k": None, "v": value, "x": None}


def _alive(env: dict[str, Any], now: float | None = None) -> bool:
    exp = env.get("x")
    return not isinstance(exp, (int, float)) or (now or time.time()) < exp


def _blob_ref(env: dict[str, Any] | None) -> str | None:
    if env is None or not isinstance(env.get("b"), dict):
        return None
    ref = env["b"].get("ref")
    return ref if isinstance(ref, str) else None


# ---------------------------------------------------------------------------
# Prefect Variables API on the shared per-loop client
# ---------------------------------------------------------------------------


class VariablesAPI:
    """The Variables calls the KV needs, through the one door to Prefect (one kept client per loop)."""

    @staticmethod
    async def _guard(coro: Any) -> Any:
        try:
            return await coro
        except (variables.VariablesAPIError, variables.VariablesUnreachable) as exc:
            raise KVError(str(exc)) from None

    async def read(self, name: str) -> dict[str, Any] | None:
        """The variable named ``name`` (id, name, value...), or None."""
        return await self._guard(variables.read(name))  # type: ignore[no-any-return]

    async def read_many(self, names_: list[str]) -> dict[str, dict[str, Any]]:
        """Variables by name, at most 200 per request."""
        return await self._guard(variables.read_many(names_))  # type: ignore[no-any-return]

    async def scan(self, like: str, *, offset: int, limit: int = _PAGE) -> list[dict[str, Any]]:
        """One page of variables whose name contains ``like`` (SQL LIKE, ``_`` is a wildcard), by name."""
        return await self._guard(variables.scan(like, offset=offset, limit=limit))  # type: ignore[no-any-return]

    async def patch(self, name: str, value: Any) -> bool:
        """Replace the value of an existing variable; False if there is none."""
        return await self._guard(variables.patch(name, value))  # type: ignore[no-any-return]

    async def create(self, name: str, value: Any) -> dict[str, Any] | None:
        """Create a variable; None if the name is taken (409)."""
        return await self._guard(variables.create(name, value))  # type: ignore[no-any-return]

    async def put(self, name: str, value: Any, *, exists: bool = True) -> None:
        """Write ``value`` whether or not the variable exists; one request when ``exists`` is guessed right."""
        for _ in range(5):
            if exists:
                if await self.patch(name, value):
                    return
                exists = False
            if await self.create(name, value) is not None:
                return
            exists = True
        raise KVError(f"could not write variable {name!r}: it kept appearing and disappearing; retry")

    async def delete(self, name: str) -> bool:
        """Delete by name; False if there was none."""
        return await self._guard(variables.delete(name))  # type: ignore[no-any-return]

    async def delete_id(self, var_id: str) -> bool:
        """Delete one variable instance by id; False if it is gone."""
        return await self._guard(variables.delete_id(var_id))  # type: ignore[no-any-return]

    async def patch_id(self, var_id: str, value: Any) -> bool:
        """Replace the value of one variable instance by id; False if it is gone."""
        return await self._guard(variables.patch_id(var_id, value))  # type: ignore[no-any-return]

    # Blocking twins on the calling thread's client: ``kv.sync`` uses them for small values, so a sync task
    # pays the request alone, not a hop to the portal's event loop and back.

    @staticmethod
    def _guard_sync(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except (variables.VariablesAPIError, variables.VariablesUnreachable) as exc:
            raise KVError(str(exc)) from None

    def read_sync(self, name: str) -> dict[str, Any] | None:
        """Blocking :meth:`read`."""
        return self._guard_sync(variables.read_sync, name)  # type: ignore[no-any-return]

    def delete_sync(self, name: str) -> bool:
        """Blocking :meth:`delete`."""
        return self._guard_sync(variables.delete_sync, name)  # type: ignore[no-any-return]

    def create_sync(self, name: str, value: Any) -> dict[str, Any] | None:
        """Blocking :meth:`create`."""
        return self._guard_sync(variables.create_sync, name, value)  # type: ignore[no-any-return]

    def delete_id_sync(self, var_id: str) -> bool:
        """Blocking :meth:`delete_id`."""
        return self._guard_sync(variables.delete_id_sync, var_id)  # type: ignore[no-any-return]

    def put_sync(self, name: str, value: Any, *, exists: bool = True) -> None:
        """Blocking :meth:`put`."""
        for _ in range(5):
            if exists:
                if self._guard_sync(variables.patch_sync, name, value):
                    return
                exists = False
            if self._guard_sync(variables.create_sync, name, value) is not None:
                return
            exists = True
        raise KVError(f"could not write variable {name!r}: it kept appearing and disappearing; retry")

    def blocking(self) -> bool:
        """True when the blocking twins do what the async calls do (a subclass overriding an async call,
        like a test's request counter, gets every call through its async methods)."""
        cls = type(self)
        return all(getattr(cls, m) is getattr(VariablesAPI, m)
                   for m in ("read", "patch", "create", "delete", "put", "delete_id"))


# ---------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------


class PrefectKV(BoundService):
    """Key-value store on Prefect Variables (AetherGraph's ``context.kv()`` API).

    Example::

        kv = context.kv()
        await kv.set("greeting", {"text": "hi"}, ttl_s=3600)
        assert await kv.get("greeting") == {"text": "hi"}
        n = await kv.incr("runs")            # exact across processes
        n = kv.sync.incr("runs")              # from a sync task
    """

    def __init__(
        self,
        ctx: "NodeContext",
        *,
        namespace: str | None = None,
        lock_lease_s: float | None = None,
        lock_timeout_s: float = 120.0,
        api: VariablesAPI | None = None,
    ) -> None:
        super().__init__(ctx)
        self.namespace = names.check_namespace(namespace or ctx.kv_namespace)
        self.lock_lease_s = default_lease_s() if lock_lease_s is None else lock_lease_s
        self.lock_timeout_s = lock_timeout_s
        self._api = api or VariablesAPI()
        self._store: "ObjectStore | None" = None

    def __repr__(self) -> str:
        return f"PrefectKV(namespace={self.namespace!r})"

    @property
    def sync(self) -> Any:
        """Blocking twin: ``kv.sync.incr("k")`` runs ``await kv.incr("k")`` to completion.

        A blocking caller's next increment cannot come within a loop tick, so its ``incr`` gives the key's
        lock back before returning instead of keeping it for a next call.

        Example: ``n = context.kv().sync.incr("runs")``
        """
        return _KVSyncView(self)

    # -- helpers ------------------------------------------------------------

    def _name(self, key: str) -> str:
        return names.variable_name(self.namespace, key)

    def _store_(self) -> "ObjectStore":
        if self._store is None:
            self._store = self.ctx.store()
        return self._store

    def _lock(self, key: str, *, lease_s: float | None = None, timeout_s: float | None = None) -> VariableLock:
        return VariableLock(
            self._api,
            names.variable_name(self.namespace, key, names.LOCK_KIND),
            lease_s=self.lock_lease_s if lease_s is None else lease_s,
            timeout_s=self.lock_timeout_s if timeout_s is None else timeout_s,
            label=key,
        )

    async def _load(self, key: str, name: str, var: dict[str, Any] | None) -> tuple[bool, Any, dict[str, Any] | None]:
        """(alive, value, envelope) of a variable, reading the blob if needed; re-reads when a blob vanished."""
        for _ in range(4):
            env = _envelope(var)
            if env is None or not _alive(env):
                return False, None, env
            ref = _blob_ref(env)
            if ref is None:
                return True, env.get("v"), env
            from aether_prefect.services.stores.base import ObjectNotFound

            try:
                data = await anyio.to_thread.run_sync(self._store_().get_bytes, ref)
            except ObjectNotFound:
                var = await self._api.read(name)  # overwritten meanwhile: read the new value
                continue
            if hashlib.sha256(data).hexdigest() != env["b"].get("sha"):
                raise IntegrityError(f"KV key {key!r}: the stored large value {ref} does not match its sha256")
            return True, orjson.loads(data)["v"], env
        raise KVError(f"KV key {key!r} kept changing while being read; retry")

    async def _blob_keys(self, name: str) -> list[str]:
        prefix = _blob_prefix(self.namespace, name)
        return await anyio.to_thread.run_sync(lambda: list(self._store_().list_keys(prefix)))

    async def _delete_blobs(self, keys: Iterable[str]) -> None:
        store = self._store_()
        for k in keys:
            await anyio.to_thread.run_sync(store.delete, k)

    async def _write_locked(self, prep: _Prepared, name: str, old: dict[str, Any] | None, lock: VariableLock) -> None:
        """Write ``prep`` while holding the key's lock: blob first, then the variable, then old blobs go.

        ``lock.check()`` right before the variable write: a holder whose lease ran out writes nothing.
        """
        if prep.blob is not None:
            await anyio.to_thread.run_sync(self._store_().put_bytes, prep.blob_key, prep.blob)
        lock.check()
        await self._api.put(name, prep.envelope, exists=old is not None)
        if prep.blob is not None or _blob_ref(_envelope(old)) is not None:
            await self._delete_blobs(k for k in await self._blob_keys(name) if k != prep.blob_key)

    async def _delete_locked(self, name: str, old: dict[str, Any] | None, lock: VariableLock) -> None:
        lock.check()
        if old is not None:
            await self._api.delete(name)
        if _blob_ref(_envelope(old)) is not None:
            await self._delete_blobs(await self._blob_keys(name))

    # -- public API -----------------------------------------------------------

    # -- blocking fast paths (``kv.sync``): small values on the calling thread, _MISSING = take the async path --

    def _get_blocking(self, key: str, default: Any = None) -> Any:
        env = _envelope(self._api.read_sync(self._name(key)))
        if env is None or not _alive(env):
            return default
        return env.get("v") if _blob_ref(env) is None else _MISSING

    def _exists_blocking(self, key: str) -> bool:
        env = _envelope(self._api.read_sync(self._name(key)))
        return env is not None and _alive(env)

    def _set_blocking(self, key: str, value: Any, *, ttl_s: float | None = None) -> Any:
        name = self._name(key)
        ttl = _check_ttl(key, ttl_s)
        prep = prepare(self.namespace, name, key, value, time.time() + ttl if ttl else None)
        if prep.blob is not None:
            return _MISSING
        old = self._api.read_sync(name)
        if _blob_ref(_envelope(old)) is not None:
            return _MISSING
        self._api.put_sync(name, prep.envelope, exists=old is not None)
        return None

    def _delete_blocking(self, key: str) -> Any:
        name = self._name(key)
        old = self._api.read_sync(name)
        if old is None:
            return None
        if _blob_ref(_envelope(old)) is not None:
            return _MISSING
        self._api.delete_sync(name)
        return None

    def _incr_blocking(self, key: str, amount: int | float = 1) -> Any:
        """``incr`` on the calling thread when the key's lock is free: the same four requests as the async path
        (lock create, read, write, lock delete) without the hops to the portal's loop; _MISSING (take the
        async path, which waits for the lock and batches) when the lock is held or the value is in a blob."""
        name = self._name(key)
        _check_number(key, amount)
        lock = self._lock(key)
        if not lock.try_acquire_blocking():
            return _MISSING
        try:
            var = self._api.read_sync(name)
            env = _envelope(var)
            if _blob_ref(env) is not None:
                return _MISSING  # nothing written; the async path reads the blob (and reports what it holds)
            alive = env is not None and _alive(env)
            current = env.get("v") if alive and env is not None else 0
            new = _incremented(key, current, [amount])[0]
            prep = prepare(self.namespace, name, key, new, env.get("x") if alive and env is not None else None)
            if prep.blob is not None:
                return _MISSING
            lock.check()
            self._api.put_sync(name, prep.envelope, exists=var is not None)
            return new
        finally:
            try:
                lock.release_blocking()
            except Exception as exc:  # noqa: BLE001 - the lease runs out by itself; waiters break it
                import logging

                logging.getLogger("aether_prefect.kv").warning("releasing the KV lock on %r failed: %s", key, exc)

    async def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` when it is missing or expired (one GET).

        Example: ``greeting = await context.kv().get("greeting", {"text": "hello"})``
        """
        name = self._name(key)
        alive, value, _ = await self._load(key, name, await self._api.read(name))
        return value if alive else default

    async def exists(self, key: str) -> bool:
        """True if ``key`` holds a value that has not expired.

        Example: ``if not await context.kv().exists("seeded"): ...``
        """
        name = self._name(key)
        var = await self._api.read(name)
        env = _envelope(var)
        return env is not None and _alive(env)

    async def set(self, key: str, value: Any, *, ttl_s: float | None = None) -> None:
        """Store ``value`` (any JSON) at ``key``, expiring after ``ttl_s`` seconds if given.

        A GET then one PATCH (or a create for a new key); the object store is touched only when the old or the
        new value is a spilled large value (then under the key's lock). Bad values raise KVValidationError
        before anything is written.

        Example::

            await context.kv().set("greeting", {"text": "hi"}, ttl_s=3600)
        """
        name = self._name(key)
        ttl = _check_ttl(key, ttl_s)
        prep = prepare(self.namespace, name, key, value, time.time() + ttl if ttl else None)
        if prep.blob is None:
            old = await self._api.read(name)
            if _blob_ref(_envelope(old)) is None:
                # Last writer wins. A large write racing between our GET and PATCH can leave its blob
                # unreferenced; the key's next large write or blob-valued delete removes it.
                await self._api.put(name, prep.envelope, exists=old is not None)
                return
        async with self._lock(key) as lock:
            await self._write_locked(prep, name, await self._api.read(name), lock)

    async def delete(self, key: str) -> None:
        """Remove ``key`` (and its large-value blob); a missing key is not an error.

        Example::

            await context.kv().delete("greeting")
        """
        name = self._name(key)
        old = await self._api.read(name)
        if old is None:
            return
        if _blob_ref(_envelope(old)) is None:
            await self._api.delete(name)
            return
        async with self._lock(key) as lock:
            await self._delete_locked(name, await self._api.read(name), lock)

    async def mget(self, keys: list[str]) -> list[Any]:
        """Values of ``keys`` in order (None where missing or expired); one request per 200 keys.

        Example: ``a, b = await context.kv().mget(["a", "b"])``
        """
        keys = list(keys)
        key_names = [self._name(k) for k in keys]
        found = await self._api.read_many(sorted(set(key_names)))
        out: list[Any] = []
        for key, name in zip(keys, key_names):
            alive, value, _ = await self._load(key, name, found.get(name))
            out.append(value if alive else None)
        return out

    async def mset(
        self, mapping: Mapping[str, Any] | Iterable[tuple[str, Any]], *, ttl_s: float | None = None
    ) -> None:
        """Set several keys from a dict or from ``(key, value)`` pairs; every value is validated before any write.

        Each key is written under its lock. Not atomic across keys: a failure part-way leaves the earlier keys
        written. A key given twice keeps its last value.

        Example::

            await context.kv().mset({"a": 1, "b": [2]})     # or mset([("a", 1), ("b", [2])])
        """
        ttl = _check_ttl("<mset>", ttl_s)
        exp = time.time() + ttl if ttl else None
        items = _pairs(mapping)
        prepared = {self._name(k): prepare(self.namespace, self._name(k), k, v, exp) for k, v in items}
        limiter = anyio.Semaphore(8)

        async def one(name: str, prep: _Prepared) -> None:
            async with limiter, self._lock(prep.key) as lock:
                await self._write_locked(prep, name, await self._api.read(name), lock)

        async with anyio.create_task_group() as tg:
            for name, prep in prepared.items():
                tg.start_soon(one, name, prep)

    async def expire(self, key: str, ttl_s: float) -> bool:
        """Make ``key`` expire ``ttl_s`` seconds from now; False if it does not exist (or already expired).

        Example: ``await context.kv().expire("session", 3600)``
        """
        name = self._name(key)
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not math.isfinite(ttl_s):
            raise KVValidationError(f"ttl_s for KV key {key!r} must be a number of seconds, got {ttl_s!r}")
        async with self._lock(key) as lock:
            var = await self._api.read(name)
            env = _envelope(var)
            if env is None or not _alive(env):
                return False
            if env.get("k") is None and _blob_ref(env) is None:
                env = {_MARK: 1, "k": key, "v": env.get("v"), "x": None}
            lock.check()
            await self._api.put(name, {**env, "x": time.time() + ttl_s})
            return True

    async def incr(self, key: str, amount: int | float = 1) -> int | float:
        """Add ``amount`` to the number at ``key`` (missing or expired = 0) and return the new value.

        Exact under concurrency across processes (per-key lock); the key's expiry is kept. Increments of one
        key from this process that arrive while its lock is busy are applied together by the next locked
        read-modify-write, each caller getting its own result; the lock is kept (up to about a second)
        while increments keep arriving, so a loop of ``await incr`` costs a read and a write per call.

        Example::

            n = await context.kv().incr("runs")
        """
        name = self._name(key)
        _check_number(key, amount)
        return await _combiner(name).add(amount, self, key, linger=not _from_sync.get())

    async def _incr_under(self, lock: VariableLock, key: str, name: str,
                          amounts: list[int | float]) -> list[int | float]:
        """One read-modify-write under ``lock`` (held) applying ``amounts`` in order; the value after each."""
        var = await self._api.read(name)
        alive, current, env = await self._load(key, name, var)
        if not alive:
            current, exp = 0, None
        else:
            exp = env.get("x") if env else None
        results = _incremented(key, current, amounts)
        await self._write_locked(prepare(self.namespace, name, key, results[-1], exp), name, var, lock)
        return results

    async def update(self, key: str, fn: Callable[[Any], Any], *, ttl_s: float | None = None) -> Any:
        """Replace the value at ``key`` with ``fn(current)`` under the key's lock; return the new value.

        ``current`` is None when the key is missing or expired. ``fn`` runs once, must be quick and must not
        call the KV on the same key; the new value is validated like ``set``. Without ``ttl_s`` the key keeps
        its expiry. Exact under concurrency across processes; raises KVLockLost (nothing written) if the
        process stalled past the lock's lease.

        Example::

            seen = await context.kv().update("seen", lambda cur: sorted({*(cur or []), "a"}))
        """
        name = self._name(key)
        ttl = _check_ttl(key, ttl_s)
        async with self._lock(key) as lock:
            var = await self._api.read(name)
            alive, current, env = await self._load(key, name, var)
            exp = env.get("x") if alive and env else None
            new = fn(current if alive else None)
            if ttl:
                exp = time.time() + ttl
            await self._write_locked(prepare(self.namespace, name, key, new, exp), name, var, lock)
            return new

    async def list_append_unique(
        self, key: str, items: list[dict[str, Any]], id_key: str = "id", *, ttl_s: float | None = None
    ) -> list[dict[str, Any]]:
        """Append the dicts in ``items`` whose ``item[id_key]`` is not in the list yet; return the whole list.

        Exact under concurrency across processes (per-key lock). ``ttl_s`` sets a new
        expiry; without it the list keeps its expiry.

        Example: ``items = await context.kv().list_append_unique("seen", [{"id": 1}])``
        """
        name = self._name(key)
        ttl = _check_ttl(key, ttl_s)
        items = list(items)
        for i, item in enumerate(items):
            if not isinstance(item, dict) or id_key not in item:
                raise KVValidationError(
                    f"list_append_unique({key!r}): item {i} must be a dict with an {id_key!r} entry, got {item!r:.80} "
                    f"(pass id_key= to name the identifying field)"
                )
        check_value(key, items)
        async with self._lock(key) as lock:
            var = await self._api.read(name)
            alive, current, env = await self._load(key, name, var)
            if not alive or current is None:
                current, exp = [], None
            else:
                exp = env.get("x") if env else None
            if not isinstance(current, list):
                raise KVValidationError(
                    f"cannot list_append_unique to KV key {key!r}: it holds a {type(current).__name__}, not a list "
                    "(delete it or use another key)"
                )
            seen = {_ident(x.get(id_key)) for x in current if isinstance(x, dict)}
            for item in items:
                ident = _ident(item[id_key])
                if ident not in seen:
                    seen.add(ident)
                    current.append(item)
            if ttl:
                exp = time.time() + ttl
            await self._write_locked(prepare(self.namespace, name, key, current, exp), name, var, lock)
            return current

    async def list_pop_all(self, key: str) -> list[Any]:
        """Remove ``key`` and return the list it held ([] if missing or expired). Atomic across processes.

        Example: ``batch = await context.kv().list_pop_all("queue")``
        """
        name = self._name(key)
        async with self._lock(key) as lock:
            var = await self._api.read(name)
            alive, current, _ = await self._load(key, name, var)
            if var is None:
                return []
            if alive and not isinstance(current, list):
                raise KVValidationError(
                    f"cannot list_pop_all KV key {key!r}: it holds a {type(current).__name__}, not a list "
                    "(read it with get() and delete it with delete())"
                )
            await self._delete_locked(name, var, lock)
            return list(current) if alive else []

    async def scan_prefix(self, prefix: str, limit: int = 1000) -> list[str]:
        """User keys starting with ``prefix`` (not expired), sorted; at most ``limit`` of them.

        Returns keys, like Redis SCAN; read values with ``mget(keys)``.

        Example: ``keys = await context.kv().scan_prefix("user:")``
        """
        names.check_key(prefix)
        found: list[str] = []
        async for key, _var, env in self._iter(names.scan_name_prefix(self.namespace, prefix)):
            if len(found) >= limit:
                break
            if key.startswith(prefix) and _alive(env):
                found.append(key)
        return sorted(found)

    async def purge_expired(self, limit: int = 1000) -> int:
        """Delete up to ``limit`` expired keys of this namespace (and their blobs); return how many.

        Example: ``removed = await context.kv().purge_expired()``
        """
        now = time.time()
        expired: list[str] = []
        async for key, _var, env in self._iter(names.name_prefix(self.namespace)):
            if len(expired) >= limit:
                break
            if not _alive(env, now):
                expired.append(key)
        removed = 0
        for key in expired:
            name = self._name(key)
            async with self._lock(key) as lock:
                var = await self._api.read(name)
                env = _envelope(var)
                if env is not None and not _alive(env):
                    await self._delete_locked(name, var, lock)
                    removed += 1
        return removed

    @async_cm
    @contextlib.asynccontextmanager
    async def lock(self, key: str, *, lease_s: float | None = None, timeout_s: float | None = None) -> AsyncIterator[None]:
        """``async with kv.lock("k"):`` the per-key lock incr and list_* use, for your own read-modify-writes.

        The lease is renewed while you hold it. If it was broken anyway (the process stalled longer than the
        lease), leaving the block raises KVLockLost: your writes may have raced another holder's. Do not call
        incr/list_*/expire/mset on the same key inside it (the lock is not re-entrant).

        Example::

            async with context.kv().lock("report"):
                await context.kv().set("report", build())
        """
        names.check_key(key)
        lock = self._lock(key, lease_s=lease_s, timeout_s=timeout_s)
        await lock.acquire()
        try:
            yield
        except BaseException:
            await asyncio.shield(lock.release())
            raise
        lost = lock.lost
        if not await asyncio.shield(lock.release()) or lost:
            raise KVLockLost(
                f"the lock on KV key {key!r} was broken while held (held past its {lock.lease_s:g}s lease without "
                "renewing: the process stalled?); writes made inside it may have raced another holder"
            )

    async def aclose(self) -> None:
        """Wait for this loop's increments in flight, so the locks they keep between calls are given back.

        Example: ``await context.kv().aclose()  # the context does this when the task ends``
        """
        await flush_increments()

    def close_blocking(self) -> bool:
        """Close on the calling thread when no increment is in flight on any event loop of this process (so no
        drain keeps a lock to give back); else False (then :meth:`aclose` waits for them).

        Example: ``context.kv().close_blocking()  # NodeContext.close_nowait() does this for you``
        """
        if type(self).aclose is not PrefectKV.aclose:
            return False
        try:
            return not any(c.task is not None and not c.task.done()
                           for loop, table in list(_combiners.items()) if not loop.is_closed()
                           for c in list(table.values()))
        except RuntimeError:  # changed while read (another loop is incrementing): wait for it the usual way
            return False

    async def _iter(self, name_prefix: str) -> AsyncIterator[tuple[str, dict[str, Any], dict[str, Any]]]:
        """(user key, variable, envelope) of every value variable whose name starts with ``name_prefix``."""
        offset = 0
        while True:
            page = await self._api.scan(name_prefix, offset=offset)
            for var in page:
                name = var.get("name", "")
                if not name.startswith(name_prefix):
                    continue
                env = _envelope(var)
                if env is None:
                    continue
                key = env.get("k")
                if key is None and _blob_ref(env) is not None:
                    key = await self._key_from_blob(env)
                if isinstance(key, str) and self._name(key) == name:
                    yield key, var, env
            if len(page) < _PAGE:
                return
            offset += len(page)


    async def _key_from_blob(self, env: dict[str, Any]) -> str | None:
        from aether_prefect.services.stores.base import ObjectNotFound

        try:
            data = await anyio.to_thread.run_sync(self._store_().get_bytes, _blob_ref(env))
        except ObjectNotFound:
            return None
        key = orjson.loads(data).get("k")
        return key if isinstance(key, str) else None


_from_sync: contextvars.ContextVar[bool] = contextvars.ContextVar("aether_kv_from_sync", default=False)


class _KVSyncView(SyncView):  # type: ignore[type-arg]
    """The KV's blocking view: marks its calls so a blocking ``incr`` does not keep the lock after returning."""

    __slots__ = ()

    #: Methods with a blocking fast path for small values (the Variables request on the calling thread).
    _BLOCKING = {"get": "_get_blocking", "exists": "_exists_blocking", "set": "_set_blocking",
                 "delete": "_delete_blocking", "incr": "_incr_blocking"}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not inspect.iscoroutinefunction(attr):
            return super().__getattr__(name)
        fast_name = self._BLOCKING.get(name)
        if fast_name is not None and self._target._api.blocking():
            fast = getattr(self._target, fast_name)

            @functools.wraps(attr)
            def blocking(*args: Any, **kwargs: Any) -> Any:
                out = fast(*args, **kwargs)
                return run_sync(_marked(attr, args, kwargs)) if out is _MISSING else out

            return blocking

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            return run_sync(_marked(attr, args, kwargs))

        return call


def _marked(attr: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The coroutine ``attr(*args, **kwargs)`` marked as called from blocking code (see ``_from_sync``), named
    after ``attr`` (so a trace of the hops to the portal names the method each runs)."""

    async def marked() -> Any:
        _from_sync.set(True)
        return await attr(*args, **kwargs)

    coro = marked()
    coro.__qualname__ = getattr(attr, "__qualname__", coro.__qualname__)
    return coro


class _Combiner:
    """Increments of one key from this process: those arriving while a locked write runs go in the next one.

    The drain keeps the key's lock between batches while increments keep coming (a caller awaiting ``incr``
    in a loop is back within an event-loop tick), so a run of increments pays the lock's create and delete
    once instead of per call. It gives the lock up when no increment came within two ticks, after
    ``_MAX_HOLD_S`` (then it pauses a moment before taking it again, so waiting processes get their turn),
    when the lease is nearly spent (a stalled process takes a fresh lock rather than write late), and after
    any error (a KVLockLost batch is never retried under the broken lock).
    """

    def __init__(self, table: dict[str, "_Combiner"], name: str) -> None:
        self._table = table
        self._name = name
        self._pending: list[tuple[int | float, asyncio.Future[int | float]]] = []
        self._draining = False
        self._linger = False  # some pending caller can come back with its next increment within a tick
        self._batch_linger = False  # the same, for the batch being written
        self.task: asyncio.Task[None] | None = None

    async def add(self, amount: int | float, kv: "PrefectKV", key: str, *, linger: bool = True) -> int | float:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int | float] = loop.create_future()
        self._pending.append((amount, fut))
        self._linger = self._linger or linger
        if not self._draining:
            self._start(kv, key)
        return await fut

    def _start(self, kv: "PrefectKV", key: str) -> None:
        self._draining = True
        self.task = asyncio.get_running_loop().create_task(self._drain(kv, key))  # not the caller's: a
        # cancelled caller must not strand the others

    async def _more(self) -> bool:
        """True when an increment is pending, after letting the callers just answered come back."""
        for _ in range(_LINGER_TICKS if self._batch_linger else 0):
            if self._pending:
                return True
            await asyncio.sleep(0)
        return bool(self._pending)

    async def _drain(self, kv: "PrefectKV", key: str) -> None:
        lock: VariableLock | None = None
        held_since = 0.0
        finished = False
        try:
            while await self._more():
                if lock is not None and (time.monotonic() - held_since > _MAX_HOLD_S or not lock.usable()):
                    turn_over = lock.usable()
                    lock, old = None, lock
                    await _release(old)
                    if turn_over:  # let a process polling for the lock take it before we do again
                        await asyncio.sleep(random.uniform(0.0, _TURN_PAUSE_S))
                    continue
                if lock is None:
                    lock = kv._lock(key)
                    try:
                        await lock.acquire()
                    except BaseException as exc:
                        lock = None
                        self._fail(self._take(), exc)
                        if not isinstance(exc, Exception):
                            raise
                        continue
                    held_since = time.monotonic()
                batch = self._take()
                try:
                    results = await kv._incr_under(lock, key, self._name, [amount for amount, _ in batch])
                except BaseException as exc:  # noqa: BLE001 - every caller of the batch gets the error
                    old, lock = lock, None
                    await _release(old)
                    self._fail(batch, exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                if not self._batch_linger and not self._pending:
                    # Only blocking callers: give the lock back before answering (they cannot come back
                    # within a tick, and then return with the key unlocked, as without the drain).
                    old, lock = lock, None
                    await _release(old)
                for (_, fut), value in zip(batch, results):
                    if not fut.done():
                        fut.set_result(value)
            finished = True
        finally:
            if lock is not None:
                await _release(lock)
            self._draining = False
            if not finished:  # cancelled (loop shutting down): the callers still waiting are cancelled too
                self._fail(self._take(), asyncio.CancelledError())
            if self._pending:  # arrived while the lock was being released: start again
                self._start(kv, key)
            elif self._table.get(self._name) is self:
                del self._table[self._name]

    def _take(self) -> list[tuple[int | float, asyncio.Future[int | float]]]:
        batch, self._pending = self._pending, []
        self._batch_linger, self._linger = self._linger, False
        return batch

    @staticmethod
    def _fail(batch: list[tuple[int | float, asyncio.Future[int | float]]], exc: BaseException) -> None:
        for _, fut in batch:
            if fut.done():
                continue
            if isinstance(exc, asyncio.CancelledError):
                fut.cancel()
            else:
                fut.set_exception(exc)


async def _release(lock: VariableLock) -> None:
    """Release ``lock`` in this task even if the task is cancelled meanwhile (loop shutdown): it never stays held.

    The release is one idempotent DELETE by id; a cancellation arriving during it is delivered afterwards.
    """
    cancelled = False
    for _ in range(2):
        try:
            await lock.release_id()
            break
        except asyncio.CancelledError:
            cancelled = True
        except Exception as exc:  # noqa: BLE001 - the lease runs out by itself; waiters break it
            import logging

            logging.getLogger("aether_prefect.kv").warning("releasing the KV lock on %r failed: %s", lock.label, exc)
            break
    if cancelled:
        raise asyncio.CancelledError()


async def flush_increments() -> None:
    """Wait until this event loop's incr drains have finished and given their locks back."""
    table = _combiners.get(asyncio.get_running_loop(), {})
    while True:
        tasks = [c.task for c in list(table.values()) if c.task is not None and not c.task.done()]
        if not tasks:
            return
        await asyncio.wait(tasks)


_combiners: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Combiner]]" = weakref.WeakKeyDictionary()


def _flush_at_exit() -> None:
    """At interpreter exit, let incr drains on other threads' loops (the sync portal) give their locks back.

    Registered after the portal's own exit hook, so it runs first, while those loops still run.
    """
    for loop, table in list(_combiners.items()):
        if not table or loop.is_closed() or not loop.is_running():
            continue
        try:
            if asyncio.get_running_loop() is loop:
                continue
        except RuntimeError:
            pass
        try:
            asyncio.run_coroutine_threadsafe(flush_increments(), loop).result(timeout=10)
        except Exception:  # noqa: BLE001 - best effort: a lock left behind runs out with its lease
            pass


atexit.register(_flush_at_exit)


def _combiner(name: str) -> _Combiner:
    """This event loop's combiner of increments for the variable ``name``."""
    table = _combiners.setdefault(asyncio.get_running_loop(), {})
    comb = table.get(name)
    if comb is None:
        comb = table[name] = _Combiner(table, name)
    return comb


def _pairs(mapping: Any) -> list[tuple[str, Any]]:
    """``(key, value)`` pairs of a dict or of an iterable of 2-item pairs; KVValidationError otherwise."""
    if isinstance(mapping, Mapping):
        items = list(mapping.items())
    elif isinstance(mapping, (str, bytes)) or not isinstance(mapping, Iterable):
        raise KVValidationError(
            f"mset takes a dict {{key: value}} or a list of (key, value) pairs, got {type(mapping).__name__}"
        )
    else:
        items = []
        for i, pair in enumerate(mapping):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise KVValidationError(
                    f"mset: item {i} must be a (key, value) pair, got {pair!r:.80}; pass a dict or a list of pairs"
                )
            items.append((pair[0], pair[1]))
    for k, _ in items:
        names.check_key(k)
    return items


def _ident(value: Any) -> bytes:
    """A hashable identity for any JSON id value (ids may be dicts or lists)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def create(ctx: "NodeContext") -> PrefectKV:
    """Factory used by ``NodeContext.kv()``."""
    return PrefectKV(ctx)


__all__ = ["PrefectKV", "VariablesAPI", "check_value", "create"]
