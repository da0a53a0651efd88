"""The journal of one context (one task-run attempt): positions, the replay switch, and store I/O.

Entries live at ``journal/<flow run>/<task key>/<params hash>-<ordinal>/<position>.json`` in the object store.
The ordinal is claimed per flow attempt with an atomic create (``journal/<flow run>/claims/...``), so the n-th
run of a task with these parameters gets journal n in every attempt of the flow run, on any worker; a task
retry finds its own claim. The first lookup lists the journal once; a position not listed is live without a
read. Store calls are blocking (boto3, file I/O), so they run in a worker thread.
"""

from __future__ import annotations

import os
import re
import threading
import time
from typing import TYPE_CHECKING

import anyio

from aether_prefect._prefect import DurableIdentity, durable_identity
from aether_prefect.services.journal._entry import Entry
from aether_prefect.services.stores.base import ObjectNotFound

if TYPE_CHECKING:
    from aether_prefect.context import NodeContext
    from aether_prefect.services.stores.base import ObjectStore

#: Folder of every journal in the object store.
PREFIX = "journal"
#: Default retention: an older entry is never replayed, and ``aether-prefect journal prune`` deletes it.
RETENTION_S = 7 * 24 * 3600
#: Environment twin of ``replay_from=``: replay the calls recorded by this earlier flow run.
ENV_REPLAY_FROM = "AETHER_PREFECT_REPLAY_FROM"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+@:,~-]")


def _safe(part: str) -> str:
    return _UNSAFE.sub("_", part)[:200] or "_"


def folder(identity: DurableIdentity, ordinal: int) -> str:
    """The store folder of one identity's n-th journal ('/'-terminated)."""
    parts = [identity.flow_run_id, identity.task_key, f"{identity.params_hash}-{ordinal}"]
    return "/".join([PREFIX, *map(_safe, parts)]) + "/"


def claim_ordinal(store: "ObjectStore", identity: DurableIdentity) -> int:
    """This task run's ordinal among runs of its task with equal parameters in this flow attempt.

    A task retry reads back its own claim; otherwise the first free number is taken with an atomic create.
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
    while not store.put_if_absent(f"{base}/attempt-{identity.flow_attempt}/{n:06d}", identity.task_run_id.encode()):
        n += 1
    store.put_bytes(mine, str(n).encode())
    return n


def entry_key(base: str, position: int) -> str:
    return f"{base}{position:06d}.json"


class Journal:
    """Calls of one context in order; replays the recorded ones until the first fingerprint mismatch."""

    def __init__(self, ctx: "NodeContext") -> None:
        self._ctx = ctx
        self.identity = durable_identity()
        self._source = ctx.overrides.replay_from or os.environ.get(ENV_REPLAY_FROM) or None
        self._write = self._read = ""  # set by the first lookup, once the ordinal is claimed
        self._next = 0
        self._replaying = True
        self._known: set[int] | None = None
        self._lock = threading.Lock()  # positions and the replay switch
        self._list_lock = threading.Lock()  # the one listing (held in a worker thread only)
        self._broken = False

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
        with self._lock:
            position, self._next = self._next, self._next + 1
        return position

    def _store(self) -> "ObjectStore":
        return self._ctx.store()

    def _listed(self) -> set[int]:
        """Positions recorded under the read folder (listed once per attempt)."""
        with self._list_lock:
            if self._known is None:
                assert self.identity is not None
                ordinal = claim_ordinal(self._store(), self.identity)
                self._write = folder(self.identity, ordinal)
                source = self.identity.with_flow_run(self._source) if self._source else self.identity
                self._read = folder(source, ordinal)
                known = set()
                for key in self._store().list_keys(self._read):
                    stem = key.rsplit("/", 1)[-1].removesuffix(".json")
                    if stem.isdigit():
                        known.add(int(stem))
                self._known = known
            return self._known

    def _read_entry(self, position: int) -> Entry | None:
        if position not in self._listed():
            return None
        try:
            data = self._store().get_bytes(entry_key(self._read, position))
        except ObjectNotFound:
            return None
        entry = Entry.decode(data)
        if entry is None or entry.position != position or time.time() - entry.created > RETENTION_S:
            return None
        return entry

    async def lookup(self, position: int, fingerprint: str, what: str) -> Entry | None:
        """The recorded entry to replay at ``position``, or None (go live). A mismatch ends replay, logged once."""
        if not self._replaying or (self._known is not None and position not in self._known):
            return None  # nothing recorded there: no thread hop, no read
        try:
            entry = await anyio.to_thread.run_sync(self._read_entry, position)
        except Exception as exc:  # noqa: BLE001 - a journal the store cannot serve means live calls, not a failure
            self._off(f"cannot read the journal: {type(exc).__name__}")
            return None
        if entry is None:
            return None
        if entry.fingerprint != fingerprint:
            with self._lock:
                first, self._replaying = self._replaying, False
            if first:
                self._ctx.logger().warning(
                    "call journal: %s at position %d differs from the recorded call (%s); replay ends here and "
                    "this and later calls of this attempt go live", what, position, entry.kind)
            return None
        return entry

    async def record(self, entry: Entry, secrets: list[str]) -> bool:
        """Write ``entry`` (atomic put) after its call succeeded; False when it was not journaled."""
        if self._broken:
            return False
        data = entry.encode(secrets)
        if data is not None and not self._write:  # no lookup ran yet (replay ended before): claim the ordinal now
            try:
                await anyio.to_thread.run_sync(self._listed)
            except Exception as exc:  # noqa: BLE001 - see lookup
                self._off(f"cannot claim a journal: {type(exc).__name__}")
                return False
        if data is None:
            self._ctx.logger().debug("call journal: %s at position %d not journaled (a secret in it, or not JSON)",
                                     entry.kind, entry.position)
            return False
        try:
            await anyio.to_thread.run_sync(self._store().put_bytes, entry_key(self._write, entry.position), data)
        except Exception as exc:  # noqa: BLE001 - a paid-for result must not be lost to a journal failure
            self._ctx.logger().warning("call journal: could not record %s at position %d: %s",
                                       entry.kind, entry.position, type(exc).__name__)
            return False
        return True


def journal_of(ctx: "NodeContext") -> Journal:
    """The context's one journal (created on first journaled call)."""
    return ctx._service("journal", lambda: Journal(ctx))  # type: ignore[no-any-return]
