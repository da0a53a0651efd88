"""KV on Prefect Variables, against the session's real Prefect server (and real child processes)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from prefect import flow

from aether_prefect import NodeContext, aether_task
from aether_prefect._prefect import prefect_client
from aether_prefect._sync import run_sync
from aether_prefect.blocks import AetherConfig
from aether_prefect.errors import KVError, KVValidationError
from aether_prefect.services.kv import _names as kv_names
from aether_prefect.services.kv import PrefectKV, VariablesAPI
from aether_prefect.session import open_session_sync

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture()
def kv(local_config: AetherConfig) -> Iterator[PrefectKV]:
    """A KV service in a fresh namespace on a fresh local store."""
    with open_session_sync(config=local_config) as ctx:
        yield ctx.kv()


def raw_read(name: str) -> Any:
    """The variable as the Prefect API has it (None if absent)."""
    return run_sync(VariablesAPI().read(name))


def blobs(kv: PrefectKV) -> list[str]:
    return list(kv.ctx.store().list_keys(f"kv/{kv.namespace}/"))


ODD_KEYS = ["My Key", "my key", "a/b.c", "ключ", "k" * 300, "K" * 300, "Ab", "ab", "a_b", "a-b", "", "🙂 x"]


def test_odd_keys_round_trip_and_stay_distinct(kv: PrefectKV) -> None:
    for i, key in enumerate(ODD_KEYS):
        kv.sync.set(key, {"i": i, "key": key})
    names = {kv_names.variable_name(kv.namespace, k) for k in ODD_KEYS}
    assert len(names) == len(ODD_KEYS)
    assert all(len(n) <= 255 and set(n) <= set("abcdefghijklmnopqrstuvwxyz0123456789-_") for n in names)
    assert kv.sync.mget(ODD_KEYS) == [{"i": i, "key": k} for i, k in enumerate(ODD_KEYS)]
    for i, key in enumerate(ODD_KEYS):
        assert kv.sync.get(key) == {"i": i, "key": key}
    assert sorted(kv.sync.scan_prefix("")) == sorted(ODD_KEYS)
    assert kv.sync.scan_prefix("a") == ["a-b", "a/b.c", "a_b", "ab"]
    assert kv.sync.scan_prefix("k" * 250) == ["k" * 300]
    assert kv.sync.scan_prefix("my") == ["my key"]


def test_set_get_delete_exists_and_default(kv: PrefectKV) -> None:
    assert kv.sync.get("nope") is None and kv.sync.get("nope", 7) == 7 and kv.sync.exists("nope") is False
    for value in [None, True, 0, -3.5, "txt", [1, [2, {"a": None}]], {"x": {"y": [1.5, "z"]}}]:
        kv.sync.set("v", value)
        assert kv.sync.get("v", "default") == value and kv.sync.exists("v") is True
    kv.sync.delete("v")
    kv.sync.delete("v")  # missing: no error
    assert kv.sync.get("v", "gone") == "gone" and raw_read(kv_names.variable_name(kv.namespace, "v")) is None


def test_overwrite_of_existing_key_is_a_read_and_one_write(kv: PrefectKV) -> None:
    kv.sync.set("hot", 1)
    seen: list[str] = []

    async def count() -> None:
        client = await prefect_client()

        async def hook(request: Any) -> None:
            seen.append(f"{request.method} {request.url.path}")

        client._client.event_hooks["request"].append(hook)
        try:
            await kv.set("hot", 2)
        finally:
            client._client.event_hooks["request"].remove(hook)

    run_sync(count())
    assert [s.split()[0] for s in seen] == ["GET", "PATCH"], seen
    assert kv.sync.get("hot") == 2


def test_large_value_round_trips_and_blobs_are_cleaned(kv: PrefectKV) -> None:
    big = {"rows": [{"n": i, "s": "x" * 90} for i in range(10_000)]}  # about 1 MB of JSON
    assert len(json.dumps(big)) > 1_000_000
    kv.sync.set("big", big)
    assert kv.sync.get("big") == big and len(blobs(kv)) == 1
    var = raw_read(kv_names.variable_name(kv.namespace, "big"))
    assert "b" in var["value"] and len(json.dumps(var["value"])) < 5000
    big2 = {"rows": big["rows"][:5000]}
    kv.sync.set("big", big2)
    assert kv.sync.get("big") == big2 and len(blobs(kv)) == 1
    kv.sync.set("big", "small now")
    assert kv.sync.get("big") == "small now" and blobs(kv) == []
    kv.sync.set("big", big)
    kv.sync.set("other", big)  # same bytes under another key: its own blob
    assert len(blobs(kv)) == 2
    kv.sync.delete("big")
    assert kv.sync.get("big") is None and len(blobs(kv)) == 1
    with pytest.raises(KVError, match="not a list"):
        kv.sync.list_pop_all("other")
    kv.sync.set("edge", "é" * 2400)  # just over the limit once JSON-encoded with the envelope
    assert kv.sync.get("edge") == "é" * 2400


def test_ttl_expiry_expire_and_purge(kv: PrefectKV, monkeypatch: pytest.MonkeyPatch) -> None:
    """Expiry follows the clock, not the test's speed: TTLs far longer than any step, then the clock jumps."""
    real_time = time.time
    skew = {"s": 0.0}
    monkeypatch.setattr(time, "time", lambda: real_time() + skew["s"])
    kv.sync.set("short", "v", ttl_s=60)
    kv.sync.set("long", "v", ttl_s=3600)
    kv.sync.set("forever", "v")
    kv.sync.set("bigshort", "y" * 6000, ttl_s=60)
    assert kv.sync.get("short") == "v" and kv.sync.exists("short")
    assert kv.sync.expire("forever", 60) is True and kv.sync.expire("absent", 60) is False
    skew["s"] = 120.0  # every 60 s TTL has passed; the 3600 s one has not
    assert kv.sync.get("short", "expired") == "expired" and not kv.sync.exists("short")
    assert kv.sync.get("forever") is None and kv.sync.get("long") == "v"
    assert kv.sync.scan_prefix("") == ["long"]
    assert kv.sync.incr("short") == 1  # expired counts as missing
    assert len(blobs(kv)) == 1
    assert kv.sync.purge_expired() == 2  # forever, bigshort ("short" was revived by incr)
    assert raw_read(kv_names.variable_name(kv.namespace, "forever")) is None and blobs(kv) == []
    assert kv.sync.get("long") == "v" and kv.sync.purge_expired() == 0
    skew["s"] = 7200.0
    assert kv.sync.get("long") is None and kv.sync.get("short") == 1  # incr kept no expiry of the expired key


def test_namespace_isolation(local_config: AetherConfig) -> None:
    other = AetherConfig(store=local_config.store, kv_namespace=local_config.kv_namespace + "-b")
    with open_session_sync(config=local_config) as a, open_session_sync(config=other) as b:
        a.kv().sync.set("shared", "A")
        b.kv().sync.set("shared", "B")
        a.kv().sync.incr("n", 5)
        assert a.kv().sync.get("shared") == "A" and b.kv().sync.get("shared") == "B"
        assert b.kv().sync.get("n") is None and b.kv().sync.incr("n") == 1
        assert a.kv().sync.scan_prefix("") == ["n", "shared"] and b.kv().sync.scan_prefix("") == ["n", "shared"]
        b.kv().sync.delete("shared")
        assert a.kv().sync.get("shared") == "A"
    with open_session_sync(config=local_config, kv_namespace=local_config.kv_namespace + "-c") as c:
        assert c.kv().namespace.endswith("-c") and c.kv().sync.get("shared") is None


class _Obj:
    pass


@pytest.mark.parametrize(
    "value, fragment",
    [
        (math.nan, "nan"),
        ({"a": [1, math.inf]}, "['a'][1]"),
        ({1, 2}, "set"),
        (b"raw", "bytes"),
        (datetime(2024, 1, 1), "datetime"),
        ({1: "x"}, "int dict key"),
        ({"ok": {("t",): 1}}, "tuple dict key"),
        (_Obj(), "_Obj"),
        (2**70, "beyond 64 bits"),
    ],
)
def test_bad_values_raise_before_any_write(kv: PrefectKV, value: Any, fragment: str) -> None:
    key = f"bad key {uuid.uuid4().hex[:6]}"
    for call in (lambda: kv.sync.set(key, value), lambda: kv.sync.mset({"fine": 1, key: value}),
                 lambda: kv.sync.list_append_unique(key, [{"id": 1, "v": value}])):
        with pytest.raises(KVError) as err:
            call()
        assert repr(key) in str(err.value) and fragment in str(err.value)
    assert raw_read(kv_names.variable_name(kv.namespace, key)) is None
    assert kv.sync.get("fine") is None  # mset wrote nothing


def test_bad_arguments(kv: PrefectKV) -> None:
    with pytest.raises(KVError, match="must be str"):
        kv.sync.set(123, "v")  # type: ignore[arg-type]
    with pytest.raises(KVError, match="ttl_s"):
        kv.sync.set("k", "v", ttl_s=-1)
    with pytest.raises(KVError, match="amount"):
        kv.sync.incr("k", "1")  # type: ignore[arg-type]
    kv.sync.set("s", "text")
    with pytest.raises(KVError, match="not a number"):
        kv.sync.incr("s")
    with pytest.raises(KVError, match="must be a dict"):
        kv.sync.list_append_unique("l", [{"no-id": 1}])
    assert kv.sync.get("s") == "text" and kv.sync.get("l") is None


def test_incr_lists_mget_mset(kv: PrefectKV) -> None:
    assert kv.sync.incr("c") == 1 and kv.sync.incr("c", 41) == 42 and kv.sync.incr("c", 0.5) == 42.5
    kv.sync.set("t", 10, ttl_s=3600)
    assert kv.sync.incr("t") == 11
    env = raw_read(kv_names.variable_name(kv.namespace, "t"))["value"]
    assert env["x"] is not None and env["x"] > time.time() + 3000  # incr kept the expiry
    out = kv.sync.list_append_unique("l", [{"id": 1, "v": "a"}, {"id": 2}, {"id": 1, "v": "dup"}])
    assert out == [{"id": 1, "v": "a"}, {"id": 2}]
    assert kv.sync.list_append_unique("l", [{"id": 2}, {"id": 3}]) == [{"id": 1, "v": "a"}, {"id": 2}, {"id": 3}]
    assert kv.sync.list_append_unique("m", [{"key": "x"}], id_key="key") == [{"key": "x"}]
    assert kv.sync.list_pop_all("l") == [{"id": 1, "v": "a"}, {"id": 2}, {"id": 3}]
    assert kv.sync.list_pop_all("l") == [] and kv.sync.get("l") is None
    kv.sync.mset({"a": 1, "b": [2], "c d": {"e": 3}, "huge": "z" * 7000}, ttl_s=600)
    assert kv.sync.mget(["a", "b", "missing", "c d", "huge"]) == [1, [2], None, {"e": 3}, "z" * 7000]
    assert kv.sync.mget([]) == []


def test_user_lock_and_sync_twin_of_lock(kv: PrefectKV) -> None:
    with kv.sync.lock("guarded", lease_s=5):
        with pytest.raises(KVError, match="could not lock"):
            run_sync(_try_incr(kv, "guarded"))
    assert kv.sync.incr("guarded") == 1


class _CountingAPI(VariablesAPI):
    """Counts the Variables requests by kind ("create:lock", "read", "patch", ...)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def _count(self, kind: str, name: str = "") -> None:
        kind += ":lock" if f"_{kv_names.LOCK_KIND}_" in name else ""
        self.counts[kind] = self.counts.get(kind, 0) + 1

    async def read(self, name: str) -> Any:
        self._count("read", name)
        return await super().read(name)

    async def create(self, name: str, value: Any) -> Any:
        self._count("create", name)
        return await super().create(name, value)

    async def patch(self, name: str, value: Any) -> bool:
        self._count("patch", name)
        return await super().patch(name, value)

    async def delete_id(self, var_id: str) -> bool:
        self._count("delete_id")
        return await super().delete_id(var_id)


def test_a_run_of_increments_keeps_the_lock_and_gives_it_back(kv: PrefectKV, monkeypatch: pytest.MonkeyPatch) -> None:
    """20 awaited incr in a row take the key's lock once (a read and a write each); it is gone when the loop ends."""
    import asyncio

    from aether_prefect.services import kv as kv_module

    monkeypatch.setattr(kv_module, "_MAX_HOLD_S", 3600.0)  # no turn-over: the count below is exact
    api = _CountingAPI()
    counting = PrefectKV(kv.ctx, api=api)

    async def main() -> list[Any]:
        return [await counting.incr("run") for _ in range(20)]  # returns at once: no flush, no close

    assert asyncio.run(main()) == list(range(1, 21))
    # Released once; a second DELETE by id when the loop's shutdown cancelled the first one in flight.
    assert api.counts.get("create:lock") == 1 and api.counts.get("delete_id") in (1, 2)
    assert api.counts.get("read") == 20 and api.counts.get("patch", 0) + api.counts.get("create", 0) == 20
    assert raw_read(kv_names.variable_name(kv.namespace, "run", kv_names.LOCK_KIND)) is None  # released at exit
    assert kv.sync.incr("run") == 21


async def _try_incr(kv: PrefectKV, key: str) -> Any:
    async with kv._lock(key, timeout_s=0.3):
        return None


def test_inside_a_flow_with_sync_tasks(local_config: AetherConfig) -> None:
    @aether_task(config=local_config)
    def count(n: int, *, context: NodeContext) -> int:
        for _ in range(n):
            context.kv().sync.incr("task-count")
        context.kv().sync.list_append_unique("nodes", [{"id": context.task_run_id}])
        return int(context.kv().sync.get("task-count"))

    @flow(name="kv-flow")
    def f() -> list[int]:
        futs = [count.submit(3) for _ in range(3)]
        return [fu.result() for fu in futs]

    counts = f()
    assert max(counts) == 9 and all(3 <= c <= 9 for c in counts)
    with open_session_sync(config=local_config) as ctx:
        assert ctx.kv().sync.get("task-count") == 9 and len(ctx.kv().sync.get("nodes")) == 3


# -- several processes --------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import asyncio, json, os, sys, time
    from aether_prefect.blocks import AetherConfig, AetherObjectStore
    from aether_prefect.session import open_session

    ns, root, mode, worker = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

    async def main():
        cfg = AetherConfig(kv_namespace=ns, store=AetherObjectStore(backend="local", root=root))
        async with open_session(config=cfg) as ctx:
            kv = ctx.kv()
            if mode == "contend":
                await kv.get("warm")
                print("READY", flush=True)
                while not os.path.exists(os.path.join(root, "go")):
                    await asyncio.sleep(0.02)
                seen = []
                for i in range(50):
                    seen.append(await kv.incr("counter"))
                    if i % 5 == 0:
                        ids = [{"id": f"w{worker}-{i}"}, {"id": f"shared-{i}"}]
                        await kv.list_append_unique("items", ids)
                print(json.dumps(seen), flush=True)
            elif mode == "hold":
                kv.lock_lease_s = 2.0
                async with kv.lock("victim"):
                    print("LOCKED", flush=True)
                    await asyncio.sleep(600)

    asyncio.run(main())
    """
)


def _spawn(tmp_path: Path, ns: str, mode: str, worker: int) -> subprocess.Popen[str]:
    script = tmp_path / "kv_child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(script), ns, str(tmp_path / "store"), mode, str(worker)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT),
    )


def test_four_processes_lose_no_update(local_config: AetherConfig, tmp_path: Path) -> None:
    (tmp_path / "store").mkdir(exist_ok=True)
    procs = [_spawn(tmp_path, local_config.kv_namespace, "contend", w) for w in range(4)]
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line.strip() == "READY", p.stderr.read() if p.stderr else ""
        (tmp_path / "store" / "go").touch()
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    seen = [n for out, _ in outs for n in json.loads(out.strip().splitlines()[-1])]
    assert sorted(seen) == list(range(1, 201))  # every incr saw a distinct value: none lost
    with open_session_sync(config=local_config) as ctx:
        assert ctx.kv().sync.get("counter") == 200
        items = ctx.kv().sync.get("items")
    ids = [x["id"] for x in items]
    expected = {f"w{w}-{i}" for w in range(4) for i in range(0, 50, 5)} | {f"shared-{i}" for i in range(0, 50, 5)}
    assert len(ids) == len(set(ids)) and set(ids) == expected


def test_killed_lock_holder_is_broken_after_its_lease(local_config: AetherConfig, tmp_path: Path) -> None:
    (tmp_path / "store").mkdir(exist_ok=True)
    proc = _spawn(tmp_path, local_config.kv_namespace, "hold", 0)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "LOCKED", proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    with open_session_sync(config=local_config) as ctx:
        kv: PrefectKV = ctx.kv()
        lock_name = kv_names.variable_name(kv.namespace, "victim", kv_names.LOCK_KIND)
        assert raw_read(lock_name) is not None  # the dead holder's lock is still there
        with pytest.raises(KVError, match="could not lock"):
            run_sync(_try_incr(kv, "victim"))
        t0 = time.monotonic()
        assert kv.sync.incr("victim") == 1  # waits for the 2 s lease to run out, then breaks it
        assert time.monotonic() - t0 < 30
        assert raw_read(lock_name) is None


def test_large_values_on_s3(s3_store_block: Any) -> None:
    cfg = AetherConfig(store=s3_store_block, kv_namespace=f"t{uuid.uuid4().hex[:10]}")
    big = ["é" * 1000] * 1000  # about 2 MB of JSON
    with open_session_sync(config=cfg) as ctx:
        kv: PrefectKV = ctx.kv()
        kv.sync.set("s3 big", big)
        assert kv.sync.get("s3 big") == big and kv.sync.mget(["s3 big"]) == [big] and len(blobs(kv)) == 1
        kv.sync.set("s3 big", {"small": True})
        assert kv.sync.get("s3 big") == {"small": True} and blobs(kv) == []


STALL_CHILD = textwrap.dedent(
    """
    import asyncio, json, os, signal, sys
    from aether_prefect.blocks import AetherConfig, AetherObjectStore
    from aether_prefect.errors import KVLockLost
    from aether_prefect.services.kv import PrefectKV, VariablesAPI
    from aether_prefect.session import open_session

    ns, root, worker = sys.argv[1], sys.argv[2], int(sys.argv[3])

    class StallingAPI(VariablesAPI):
        # Worker 0 stops itself (SIGSTOP) while it holds the lock: after its 2nd lock create and at
        # its 30th read of the counter; the test continues it (SIGCONT) after 3 leases. (A run of
        # increments keeps the lock between calls, so a worker takes it only a few times: the 2nd
        # create comes at the latest when it takes the lock again after the stall at the 30th read.)
        creates = reads = 0

        async def create(self, name, value):
            out = await super().create(name, value)
            if worker == 0 and out is not None and "_l_" in name:
                StallingAPI.creates += 1
                if StallingAPI.creates == 2:
                    os.kill(os.getpid(), signal.SIGSTOP)
            return out

        async def read(self, name):
            out = await super().read(name)
            if worker == 0 and "_k_" in name:
                StallingAPI.reads += 1
                if StallingAPI.reads == 30:
                    os.kill(os.getpid(), signal.SIGSTOP)
            return out

    async def main():
        cfg = AetherConfig(kv_namespace=ns, store=AetherObjectStore(backend="local", root=root))
        async with open_session(config=cfg) as ctx:
            kv = PrefectKV(ctx, api=StallingAPI())
            assert kv.lock_lease_s == 2.0
            await kv.get("warm")
            print("READY", flush=True)
            while not os.path.exists(os.path.join(root, "go")):
                await asyncio.sleep(0.02)
            ok, lost = [], 0
            for _ in range(50):
                try:
                    ok.append(await kv.incr("counter"))
                except KVLockLost:
                    lost += 1
            print(json.dumps({"ok": ok, "lost": lost}), flush=True)

    asyncio.run(main())
    """
)


def _stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except (OSError, IndexError):
        return False


@pytest.mark.slow
def test_stalled_holder_never_writes_after_its_lease(local_config: AetherConfig, tmp_path: Path) -> None:
    """4 processes x 50 incr with a 2 s lease; one is SIGSTOPped twice while holding the lock, for 3 leases."""
    (tmp_path / "store").mkdir(exist_ok=True)
    script = tmp_path / "kv_stall_child.py"
    script.write_text(STALL_CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AETHER_KV_LOCK_LEASE_S": "2"}
    procs = [
        subprocess.Popen([sys.executable, str(script), local_config.kv_namespace, str(tmp_path / "store"), str(w)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))
        for w in range(4)
    ]
    stalls = 0
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "READY", p.stderr.read() if p.stderr else ""
        (tmp_path / "store" / "go").touch()
        deadline = time.monotonic() + 240
        while procs[0].poll() is None and time.monotonic() < deadline:
            if _stopped(procs[0].pid):
                stalls += 1
                time.sleep(6.0)  # three leases: the lock is broken and others move on meanwhile
                procs[0].send_signal(signal.SIGCONT)
            time.sleep(0.02)
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert stalls == 2 and results[0]["lost"] >= 2  # both stalled operations raised KVLockLost
    ok = [n for r in results for n in r["ok"]]
    assert all(len(r["ok"]) + r["lost"] == 50 for r in results)
    with open_session_sync(config=local_config) as ctx:
        final = ctx.kv().sync.get("counter")
    # Every increment that returned is in the counter, once; none that raised was written.
    assert final == len(ok) and sorted(ok) == list(range(1, final + 1))


def test_sync_twins_of_small_values_skip_the_portal(kv: PrefectKV, portal_hops: Any) -> None:
    """kv.sync get/exists/set/delete of small values send their request on the calling thread (as raw
    Variable.get does); a large value, expired or not, still goes through the async path (the object store)."""
    from aether_prefect.services import kv as kv_module

    hops = portal_hops(kv_module)
    kv.sync.set("small", {"n": 1})
    kv.sync.set("small", {"n": 2})  # overwrite: PATCH
    kv.sync.set("short", "v", ttl_s=0.01)
    assert kv.sync.get("small") == {"n": 2} and kv.sync.exists("small")
    time.sleep(0.05)
    assert kv.sync.get("short", "gone") == "gone" and not kv.sync.exists("short")
    kv.sync.delete("small")
    kv.sync.delete("never-set")
    assert kv.sync.get("small") is None and hops == []
    big = "x" * 6000
    kv.sync.set("big", big)
    assert kv.sync.get("big") == big
    kv.sync.set("big", "small again")  # the old value is a blob: the locked path deletes it
    assert kv.sync.get("big") == "small again"
    kv.sync.set("big", big)
    kv.sync.delete("big")
    assert kv.sync.get("big") is None
    assert [h.split(".")[-1] for h in hops] == ["set", "get", "set", "set", "delete"]
    assert list(kv._store_().list_keys(f"kv/{kv.namespace}/")) == []  # no blob left behind


def test_sync_incr_with_a_free_lock_stays_on_the_calling_thread(kv: PrefectKV, portal_hops: Any) -> None:
    """kv.sync.incr takes a free lock, reads, writes and releases on the calling thread (#21: a sync task's
    counter no longer hops to the portal loop and back); when the lock is held it takes the async path, which
    waits for the lock, and every increment still counts exactly once; the lock is never left behind."""
    import threading

    from aether_prefect._prefect import variables as prefect_variables
    from aether_prefect.services import kv as kv_module

    hops = portal_hops(kv_module)
    lock_name = kv_names.variable_name(kv.namespace, "n", kv_names.LOCK_KIND)
    assert [kv.sync.incr("n") for _ in range(3)] == [1, 2, 3]
    assert kv.sync.incr("n", 0.5) == 3.5 and hops == [] and raw_read(lock_name) is None
    kv.sync.set("ttl", 5, ttl_s=3600)
    expiry = raw_read(kv._name("ttl"))["value"]["x"]
    assert kv.sync.incr("ttl") == 6 and raw_read(kv._name("ttl"))["value"]["x"] == expiry  # the expiry is kept
    kv.sync.set("text", "abc")
    with pytest.raises(KVValidationError, match="not a number"):
        kv.sync.incr("text")
    assert hops == [] and raw_read(kv_names.variable_name(kv.namespace, "text", kv_names.LOCK_KIND)) is None

    held = prefect_variables.create_sync(lock_name, {"owner": "test", "lease_s": 30.0, "pid": 0, "host": "test"})
    assert held is not None
    timer = threading.Timer(0.3, prefect_variables.delete_id_sync, args=(held["id"],))
    timer.start()
    try:
        assert kv.sync.incr("n") == 4.5  # waited for the held lock on the async path
    finally:
        timer.cancel()
    assert [h.split(".")[-1] for h in hops] == ["incr"] and raw_read(lock_name) is None
    assert kv.sync.get("n") == 4.5


def test_sync_twins_go_through_an_overriding_api(local_config: AetherConfig) -> None:
    """A VariablesAPI subclass that overrides the async calls (a counter, a fault injector) sees kv.sync calls."""
    with open_session_sync(config=local_config) as ctx:
        api = _CountingAPI()
        counting = PrefectKV(ctx, api=api)
        counting.sync.set("k", 1)
        assert counting.sync.get("k") == 1
        assert api.counts.get("read") == 2
