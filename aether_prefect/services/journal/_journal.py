"""The journal of one context (one task-run attempt): positions, the replay switch, and store I/O.

Entries live in ``journal/<flow run>/<task key>/<params hash>-<ordinal>/`` in the object store (layout and framing:
``_log.py``). The ordinal is claimed per flow attempt with an exclusive create (``journal/<flow run>/claims/...``),
so the n-th run of a task with these parameters gets journal n in every attempt of the flow run, on any worker; a
task retry finds its own claim.

Cost per call: the first lookup of an attempt claims the ordinal and reads the whole folder (every attempt's log
and entry objects; for a position, the newest entry wins) in one worker-thread hop; every later lookup is a dict
lookup. An entry is written once its call succeeded. On a store that can append (local) it is a framed record
copied into a memory map of the attempt's log, inline, with no system call (cheaper than handing it to a thread,
and a third of an ``os.write`` on a live call; creating a file per entry cost 40-450 us of kernel time on a busy
machine); the log is opened (allocated ``LOG_RESERVE`` bytes) at the first entry and trimmed and closed with the
context. On a store that cannot append (S3) each entry is its own object, PUT by a background thread
(a PUT costs milliseconds), and the context's close waits for those puts, so the entries are stored before the
task reports its result; per-entry objects rather than one upload at the end, so entries survive a worker that
is killed mid-attempt. What a crash can do: lose an entry (the call is paid again), never leave a torn one that
replays (every log record carries a CRC-32 and every object a sha256, checked on read).
"""

from __future__ import annotations

import itertools
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import anyio

from aether_prefect._prefect import DurableIdentity, durable_identity
from aether_prefect.services.journal._entry import Entry, object_bytes, secret_needles
from aether_prefect.services.journal._log import entries_at, entry_key, frame, log_name
from aether_prefect.services.stores.base import ObjectNotFound

if TYPE_CHECKING:
    from aether_prefect.context import NodeContext
    from aether_prefect.services.stores.base import AppendLog, ObjectStore

#: Folder of every journal in the object store.
PREFIX = "journal"
#: Default retention: an older entry is never replayed, and ``aether-prefect journal prune`` deletes it.
RETENTION_S = 7 * 24 * 3600
#: Environment twin of ``replay_from=``: replay the calls recorded by this earlier flow run.
ENV_REPLAY_FROM = "AETHER_PREFECT_REPLAY_FROM"
#: Bytes a local attempt log is allocated up front (doubled when full, trimmed at close): its entries are copied
#: into a memory map of it instead of a ``write`` each (see ``LocalStore.open_log``).
LOG_RESERVE = 64 * 1024
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+@:,~-]")


def _safe(part: str) -> str:
    return _UNSAFE.sub("_", part)[:200] or "_"


def folder(identity: DurableIdentity, ordinal: int) -> str:
    """The store folder of one identity's n-th journal ('/'-terminated)."""
    parts = [identity.flow_run_id, identity.task_key, f"{identity.params_hash}-{ordinal}"]
    return "/".join([PREFIX, *map(_safe, parts)]) + "/"


def claim_ordinal(store: "ObjectStore", identity: DurableIdentity) -> int:
    """This task run's ordinal among runs of its task with equal parameters in this flow attempt.

    A task retry reads back its own claim; otherwise the first free number is taken with an exclusive create.
    Neither write is flushed to disk: a claim only has to outlive the processes of this flow attempt (a machine
    crash ends the attempt, and the flow run's next attempt claims afresh in its own ``attempt-<n>`` folder).
    The slot marker may be briefly empty (it is never read back); the ``task-<id>`` record is atomic.
    """
    if identity.task_run_id is None:
        return 0  # the flow body: one per flow run
    base = "/".join([PREFIX, _safe(identity.flow_run_id), "claims", _safe(identity.task_key),
                     _safe(identity.params_hash)])
    mine = f"{base}/task-{_safe(identity.task_run_id)}"
    try:
        return int(store.get_bytes(mine))
    except (ObjectNotFound, ValueError):
        pass
    n = 0
    slot = f"{base}/attempt-{identity.flow_attempt}/"
    while not store.put_small_if_absent(f"{slot}{n:06d}", identity.task_run_id.encode()):
        n += 1
    store.put_small(mine, str(n).encode())
    return n


class _Writer:
    """One attempt's background writer (stores that cannot append): a daemon thread putting entries in order, started on the first entry.

    A queue hand-off costs the calling loop about a microsecond (a pool's submit costs tens), and one thread per
    attempt keeps a slow store of one task from delaying the entries of another. The thread exits at
    :meth:`drain`; if the context is never closed, whatever it had not written is lost (paid again on a retry).
    """

    def __init__(self, put: Callable[["ObjectStore", str, str, int, bytes], bool]) -> None:
        self._put = put
        self._queue: queue.SimpleQueue[tuple[ObjectStore, str, str, int, bytes] | None] = queue.SimpleQueue()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aether-journal", daemon=True)
        self._thread.start()

    def submit(self, store: "ObjectStore", key: str, kind: str, position: int, data: bytes) -> None:
        self._queue.put((store, key, kind, position, data))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._put(*item)
            except BaseException:  # noqa: BLE001, S110 - _put logs its failures; drain must never wait forever
                pass
        self._done.set()

    def drain(self) -> None:
        """Block until every submitted entry is written, then stop the thread."""
        self._queue.put(None)
        self._done.wait()


class Journal:
    """Calls of one context in order; replays the recorded ones until the first fingerprint mismatch."""

    def __init__(self, ctx: "NodeContext") -> None:
        self._ctx = ctx
        self.identity = durable_identity()
        self._source = ctx.overrides.replay_from or os.environ.get(ENV_REPLAY_FROM) or None
        self._write = self._read = ""  # set by the first lookup, once the ordinal is claimed
        self._positions = itertools.count()  # next() is atomic: no lock on every call
        self._replaying = True
        self._entries: dict[int, Entry] | None = None  # the read folder's entries, loaded once per attempt
        self._lock = threading.Lock()  # the replay switch
        self._load_lock = threading.Lock()  # the one load (held in a worker thread only)
        self._broken = False
        self._object_store: ObjectStore | None = None
        self._writer: _Writer | None = None
        self._log: AppendLog | None = None
        self._appends = True  # False once the store said it cannot append (or the log failed)
        self._needles: dict[int, tuple[Any, list[bytes]]] = {}

    def _off(self, why: str) -> None:
        """The store failed: no replay, no journaling for the rest of this attempt (logged once)."""
        with self._lock:
            first, self._broken, self._replaying = not self._broken, True, False
        if first:
            self._ctx.logger().warning("call journal off for this attempt (calls go live): %s", why)

    @property
    def active(self) -> bool:
        """False outside a Prefect task or flow run: nothing would ever retry the calls."""
        return self.identity is not None

    @property
    def replaying(self) -> bool:
        return self._replaying

    def claim(self) -> int:
        """The next position in this attempt's sequence of calls (claimed before any await: deterministic)."""
        return next(self._positions)

    def needles(self, svc: Any, secrets: Callable[[], Iterable[str]]) -> list[bytes]:
        """The secret needles of ``svc``, UTF-8 encoded (``secrets()`` computed once per service object of this
        attempt)."""
        cached = self._needles.get(id(svc))
        if cached is None or cached[0] is not svc:  # holding svc keeps its id from being reused
            needles = [n.encode("utf-8", "surrogatepass") for n in secret_needles(secrets())]
            cached = self._needles[id(svc)] = (svc, needles)
        return cached[1]

    def _store(self) -> "ObjectStore":
        if self._object_store is None:
            self._object_store = self._ctx.store()
        return self._object_store

    def _load(self) -> dict[int, Entry]:
        """Claim the ordinal and read every replayable entry of the read folder (once per attempt, in a thread)."""
        with self._load_lock:
            if self._entries is None:
                assert self.identity is not None
                store = self._store()
                ordinal = claim_ordinal(store, self.identity)
                self._write = folder(self.identity, ordinal)
                source = self.identity.with_flow_run(self._source) if self._source else self.identity
                self._read = folder(source, ordinal)
                entries: dict[int, Entry] = {}
                now = time.time()
                for key in list(store.list_keys(self._read)):
                    for entry in entries_at(store, key):  # every attempt's log, and entries stored one per object
                        held = entries.get(entry.position)
                        if now - entry.created <= RETENTION_S and (held is None or entry.created >= held.created):
                            entries[entry.position] = entry  # a later attempt's live call at a position wins
                self._entries = entries
            return self._entries

    def expects(self, position: int) -> bool:
        """Whether :meth:`lookup` at ``position`` could replay: replay is on and the journal is not read yet or
        holds that position (False in a first attempt once read: its calls skip the lookup)."""
        entries = self._entries
        return self._replaying and (entries is None or position in entries)

    async def lookup(self, position: int, fingerprint: str, what: Callable[[], str],
                     older: Callable[[], Iterable[str]]) -> Entry | None:
        """The recorded entry to replay at ``position``, or None (go live). The entry's fingerprint must be
        ``fingerprint`` or (an entry written before) one of ``older()``, computed only when it is not the first. A
        mismatch ends replay, logged once (``what()`` names the call in that line)."""
        if not self._replaying:
            return None
        entries = self._entries
        if entries is None:
            try:
                entries = await anyio.to_thread.run_sync(self._load)
            except Exception as exc:  # noqa: BLE001 - a journal the store cannot serve means live calls, not a failure
                self._off(f"cannot read the journal: {type(exc).__name__}")
                return None
        entry = entries.pop(position, None)  # each position is looked up once per attempt: free it
        if entry is None:
            return None
        if entry.fingerprint != fingerprint and entry.fingerprint not in older():
            with self._lock:
                first, self._replaying = self._replaying, False
            if first:
                self._ctx.logger().warning(
                    "call journal: %s at position %d differs from the recorded call (%s); replay ends here and "
                    "this and later calls of this attempt go live", what(), position, entry.kind)
            return None
        return entry

    async def record(self, kind: str, position: int, data: bytes | None) -> bool:
        """Write the entry whose JSON body is ``data`` (see ``entry_body``; None: not journaled) after its call
        succeeded: appended to this attempt's log, or (a store that cannot append) put as its own object by a
        background thread that :meth:`aclose` waits for, so it is stored before the task reports its result.
        False when it is not journaled.
        """
        if self._broken:
            return False
        if data is None:
            self._ctx.logger().debug("call journal: %s at position %d not journaled (a secret in it, or not JSON)",
                                     kind, position)
            return False
        if not self._write:  # no lookup ran yet (replay ended before): claim the ordinal now
            try:
                await anyio.to_thread.run_sync(self._load)
            except Exception as exc:  # noqa: BLE001 - see lookup
                self._off(f"cannot claim a journal: {type(exc).__name__}")
                return False
        if self._appends:
            appended = self._append(kind, position, data)
            if appended is not None:
                return appended
        if self._writer is None:
            self._writer = _Writer(self._put)
        self._writer.submit(self._store(), entry_key(self._write, position), kind, position, object_bytes(data))
        return True

    def append_now(self, kind: str, position: int, data: bytes | None) -> bool:
        """Write the entry whose JSON body is ``data`` without awaiting anything when this attempt's log is open
        (every entry but the first, on a store that can append): True when handled (written, or the append failed
        and journaling is off), False when :meth:`record` has to do it."""
        if self._log is None or data is None or self._broken:
            return False
        return self._append(kind, position, data) is not None

    def _append(self, kind: str, position: int, data: bytes) -> bool | None:
        """Append ``data`` to this attempt's log (opened at the first entry): True when written, None when the
        store cannot append. A failed append (False) turns journaling off for the attempt, as a torn record would
        hide every later one of the log."""
        try:
            if self._log is None:
                self._log = self._store().open_log(self._write + log_name(), reserve=LOG_RESERVE)
                if self._log is None:
                    self._appends = False
                    return None
            self._log.append(frame(data))
            return True
        except Exception as exc:  # noqa: BLE001 - a paid-for result must not be lost to a journal failure
            self._appends = False
            self._off(f"could not record {kind} at position {position}: {type(exc).__name__}")
            return False

    def _put(self, store: "ObjectStore", key: str, kind: str, position: int, data: bytes) -> bool:
        try:
            getattr(store, "put_small", store.put_bytes)(key, data)  # an injected store may lack put_small
        except Exception as exc:  # noqa: BLE001 - a paid-for result must not be lost to a journal failure
            self._ctx.logger().warning("call journal: could not record %s at position %d: %s",
                                       kind, position, type(exc).__name__)
            return False
        return True

    async def aclose(self) -> None:
        """Close this attempt's log, and wait for the entries still being put, so they are stored before the task
        reports its result.

        Example: ``await journal.aclose()  # the context does this when the attempt ends``
        """
        log, self._log = self._log, None
        if log is not None:
            log.close()
        writer, self._writer = self._writer, None
        if writer is not None:
            await anyio.to_thread.run_sync(writer.drain)


def journal_of(ctx: "NodeContext") -> Journal:
    """The context's one journal (created on first journaled call)."""
    return ctx._service("journal", lambda: Journal(ctx))  # type: ignore[no-any-return]
