"""#21 on S3: fresh-process artifact queries on a moto S3 store of 100,000 records vs 1,000, ours vs raw boto3.

Run: ``.venv/bin/python bench/bench_s3_scale.py`` (about 3-6 minutes; ``BENCH_S3_N`` sets the big store's size,
``BENCH_S3_ROUNDS`` the paired rounds).

The S3 endpoint is moto in server mode on 127.0.0.1 (moto's own threaded werkzeug server, the one
``python -m moto.server`` runs, started here in a subprocess). Filling 100,000 records through HTTP runs at
30-100 records/s on a busy 2-core machine (3 PUTs each), so the big store is filled by the *bulk path*: the
server process itself runs ``bench/fill.py``'s ``fill_artifacts`` against a store object whose writes go
straight into moto's in-memory bucket. The keys and bytes are exactly those the public API writes (the same
``PartitionedIndex.write_add`` builds them; only the transport differs). The 1,000-record store is filled
through HTTP by the real ``S3Store`` (the public write path), and the bench checks both stores answer the
same way.

Each round runs, in fresh Python processes, interleaved:
- ours: ``open_session_sync`` on the S3 config, then ``search(view="run")`` (a run of 50; the first S3 call of the
  process, so it includes building the boto3 client), ``get_by_id`` and ``best(kind, metric, view="graph")``;
- raw: boto3 client, LIST of the run's partition and GET of its 50 event objects (16 threads, as ours);
  LIST of an id's pointer prefix, GET of the pointer and of its add event; LIST of the graph's partitions.
Figures are medians over the rounds, with the load average printed next to them.

Note on moto: its LIST copies and walks every key of the bucket (``moto/s3/models.py: list_objects``), so one
LIST costs O(store) there, unlike S3, whose LIST costs O(keys returned). The raw column pays the same, which is
what the "raw" ratio shows. So the same server also listens on a second port whose LIST reads only the keys under
the prefix (a sorted index of the bucket's names; every other request is stock moto, on the same data): the rows
"moto listing by prefix as S3 does" are the big store's queries, ours and raw, under S3's cost model.

Measured 2026-12-05 (load 1.4-1.7, 3 rounds; 100,000 records = 314,001 objects, bulk-filled in 34 s):
fresh ``search(view="run")`` 2,354 ms (goal 300) vs raw 908 ms (2.6x) and vs 704 ms on 1,000 records (3.3x, goal 2;
raw itself 2.0x); second search in the process 715 ms; ``get_by_id`` 483 ms vs raw 395 ms; ``best(view="graph")``
9.0 s vs 8.0 s for the raw LIST of the graph's keys alone. A fresh search sends 4 LISTs (the run's segments, the
run, and the old layout's ``rec/`` and ``snap/``), 51 HEADs (the migration marker, a pin check per hit) and 1 GET;
at ~0.5 s per moto LIST of this bucket, the LISTs are most of it.

After the migration marker on first save, run segments in the run's folder and pins as events in their runs
(2026-12-05 17:00, load 8.6-9.4, 3 rounds; the "before" run of the same day, at load 4.5-5.8: 4,017 ms, raw 1,198 ms,
1,000 records 1,612 ms): a fresh search sends 1 LIST and 2 GETs (the marker, the run's segment), no HEAD; fresh
``search(view="run")`` 1,867 ms vs raw 1,360 ms (1.37x, was 3.35x) and vs 552 ms on 1,000 records (3.4x; raw itself
2.45x: moto's LIST walks the bucket); second search in the process (1 LIST) 1,277 ms. The goals (300 ms, 2x) are not
met on moto while a query sends any LIST: one LIST of this bucket costs ~0.5-1.3 s there, O(bucket), where S3's
costs O(keys returned).
"""

from __future__ import annotations

import _common as common  # noqa: I001 - must come first: sets the environment

import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

BIG_N = int(os.environ.get("BENCH_S3_N", "100000"))
SMALL_N = 1000
ROUNDS = int(os.environ.get("BENCH_S3_ROUNDS", "5"))
RUN_SIZE = 50
PREFIX = "aether"


# -- the filled moto server (runs in its own process) -----------------------------------------------------------

def _prefix_listing(port: int) -> Any:
    """A second moto listener on ``port``, on the same in-memory buckets, whose LIST reads only the keys under its
    prefix (a sorted index of the bucket's names, bisected), as S3's LIST does; every other request is stock moto.

    Why: stock moto copies and walks the whole bucket on every LIST (``moto/s3/models.py: list_objects``), so any
    LIST there costs O(bucket), which S3's does not. This listener shows what a query costs under S3's cost model,
    for our path and the raw boto3 path alike; the stock listener's figures are printed beside it."""
    import bisect
    from types import SimpleNamespace

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from moto.s3.models import S3Backend
    from werkzeug.serving import make_server

    local = threading.local()
    stock = S3Backend.list_objects
    names: dict[str, tuple[int, list[str]]] = {}  # bucket -> (key count it was built at, sorted key names)
    lock = threading.Lock()

    def list_objects(self: Any, bucket: Any, prefix: str | None, *args: Any, **kwargs: Any) -> Any:
        if not (prefix and getattr(local, "by_prefix", False)):
            return stock(self, bucket, prefix, *args, **kwargs)
        keys = bucket.keys
        with lock:  # rebuilt when a key was added or removed since (this bench never deletes)
            count = dict.__len__(keys)
            built = names.get(bucket.name)
            if built is None or built[0] != count:
                built = names[bucket.name] = (count, sorted(dict.keys(keys)))
        sorted_names = built[1]
        lo = hi = bisect.bisect_left(sorted_names, prefix)
        while hi < len(sorted_names) and sorted_names[hi].startswith(prefix):
            hi += 1
        view = SimpleNamespace(keys={name: keys[name] for name in sorted_names[lo:hi]})
        return stock(self, view, prefix, *args, **kwargs)

    S3Backend.list_objects = list_objects  # type: ignore[method-assign]
    app = DomainDispatcherApplication(create_backend_app)

    def by_prefix(environ: Any, start_response: Any) -> Any:
        local.by_prefix = True
        try:
            return app(environ, start_response)
        finally:
            local.by_prefix = False

    server = make_server("127.0.0.1", port, by_prefix, True, request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _serve(port: int, spec: dict[str, Any], prefix_port: int) -> None:
    """Start moto's threaded server (and the prefix-listing one), fill the buckets of ``spec`` through moto's
    backend, print READY, serve."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.s3.models import s3_backends

    from fill import fill_artifacts

    from aether_prefect.services.stores.base import ObjectNotFound
    from aether_prefect.services.stores.s3 import S3Store

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    by_prefix = _prefix_listing(prefix_port)
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]

    class BackendStore(S3Store):
        """An S3Store whose writes and lists go straight into this process's moto bucket (the bulk path)."""

        def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None, sha256: str | None = None) -> None:
            obj = backend.put_object(self.bucket, self._key(key), data, disable_notification=True)
            if content_type:
                obj.set_metadata({"Content-Type": content_type})

        def exists(self, key: str) -> bool:
            return self._key(key) in backend.get_bucket(self.bucket).keys

        def get_bytes(self, key: str) -> bytes:
            obj = backend.get_object(self.bucket, self._key(key))
            if obj is None:
                raise ObjectNotFound(key)
            return bytes(obj.value)

        def list_keys(self, prefix: str, *, start_after: str | None = None) -> Any:
            full = f"{self.prefix}/{prefix}"
            names = sorted(k for k in backend.get_bucket(self.bucket).keys if k.startswith(full))
            return iter([self._strip(k) for k in names if start_after is None or self._strip(k) > start_after])

    out: dict[str, Any] = {}
    for bucket, n in spec.items():
        backend.create_bucket(bucket, "us-east-1")
        t = time.perf_counter()
        scopes = fill_artifacts(BackendStore(bucket, PREFIX), n, graphs=max(1, n // 10_000), run_size=RUN_SIZE,
                                write_blobs=False, threads=1)
        out[bucket] = {"scopes": scopes, "fill_s": time.perf_counter() - t,
                       "objects": len(backend.get_bucket(bucket).keys)}
    print("READY " + json.dumps(out), flush=True)
    sys.stdin.read()  # serve until the bench closes our stdin (or ends)
    by_prefix.shutdown()
    server.stop()


# -- fresh-process probes -----------------------------------------------------------------------------------------

_OURS = r"""
import json, sys, time
args = json.loads(sys.argv[1])
from pydantic import SecretStr
from aether_prefect import open_session_sync
from aether_prefect.blocks import AetherConfig, AetherObjectStore
block = AetherObjectStore(backend="s3", bucket=args["bucket"], prefix=args["prefix"], endpoint_url=args["url"],
                          region="us-east-1", aws_access_key_id=args["ak"], aws_secret_access_key=SecretStr(args["sk"]))
cfg = AetherConfig(store=block, memory_mirror="off")
out = {}
with open_session_sync(config=cfg, graph_id=args["graph"], run_id=args["run"]) as ctx:
    arts = ctx.artifacts().sync
    t = time.perf_counter(); hits = arts.search(view="run"); out["run_ms"] = (time.perf_counter() - t) * 1000
    out["run_hits"] = len(hits)
    out["ids"] = sorted(h.artifact_id for h in hits)
    t = time.perf_counter(); hits = arts.search(view="run"); out["run_again_ms"] = (time.perf_counter() - t) * 1000
    t = time.perf_counter(); rec = arts.get_by_id(args["id"]); out["id_ms"] = (time.perf_counter() - t) * 1000
    assert rec.artifact_id == args["id"], rec
    t = time.perf_counter(); best = arts.best(kind="model", metric="score", view="graph")
    out["graph_ms"] = (time.perf_counter() - t) * 1000
    out["graph_ok"] = best is not None and best.graph_id == args["graph"]
print(json.dumps(out))
"""

_COUNT = r"""
import json, sys, collections
args = json.loads(sys.argv[1])
from pydantic import SecretStr
from aether_prefect import open_session_sync
from aether_prefect.blocks import AetherConfig, AetherObjectStore
block = AetherObjectStore(backend="s3", bucket=args["bucket"], prefix=args["prefix"], endpoint_url=args["url"],
                          region="us-east-1", aws_access_key_id=args["ak"], aws_secret_access_key=SecretStr(args["sk"]))
cfg = AetherConfig(store=block, memory_mirror="off")
calls = collections.Counter()
out = {}
with open_session_sync(config=cfg, graph_id=args["graph"], run_id=args["run"]) as ctx:
    client = ctx.store()._client()  # built before the queries here, to count their requests (botocore's events)
    client.meta.events.register("before-call.s3", lambda model, **kw: calls.update([model.name]))
    arts = ctx.artifacts().sync
    for name, fn in (("run", lambda: arts.search(view="run")), ("run_again", lambda: arts.search(view="run")),
                     ("id", lambda: arts.get_by_id(args["id"]))):
        calls.clear()
        fn()
        out[name] = ", ".join(f"{op} x{n}" for op, n in sorted(calls.items()))
print(json.dumps(out))
"""

_RAW = r"""
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
args = json.loads(sys.argv[1])
import boto3
from botocore.config import Config
out = {}
t = time.perf_counter()
c = boto3.session.Session(region_name="us-east-1", aws_access_key_id=args["ak"], aws_secret_access_key=args["sk"]).client(
    "s3", endpoint_url=args["url"], config=Config(retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=32))
def keys(prefix):
    return [o["Key"] for page in c.get_paginator("list_objects_v2").paginate(Bucket=args["bucket"], Prefix=prefix)
            for o in page.get("Contents", ())]
def get(key):
    return json.loads(c.get_object(Bucket=args["bucket"], Key=key)["Body"].read())
base = args["prefix"] + "/artifacts/index/v2"
run_keys = keys(f"{base}/run/g={args['graph']}/r={args['run']}/")
with ThreadPoolExecutor(16) as pool:
    events = list(pool.map(get, run_keys))
out["run_ms"] = (time.perf_counter() - t) * 1000
out["run_hits"] = sum(1 for e in events if e.get("op") == "add")
t = time.perf_counter()
sha = args["id"]
ptr = max(keys(f"{base}/id/{sha[:2]}/{sha}/"))
ref = c.get_object(Bucket=args["bucket"], Key=ptr)["Body"].read().decode()
rec = get(args["prefix"] + "/" + ref)["record"]
assert rec["artifact_id"] == sha
out["id_ms"] = (time.perf_counter() - t) * 1000
t = time.perf_counter()
graph_keys = keys(f"{base}/run/g={args['graph']}/")
out["graph_list_ms"] = (time.perf_counter() - t) * 1000
out["graph_keys"] = len(graph_keys)
print(json.dumps(out))
"""


def _probe(code: str, args: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(common.ROOT)}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, timeout=900,
                         cwd=str(common.ROOT), env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _fill_http(url: str, bucket: str, n: int) -> tuple[list[tuple[str, str]], float]:
    """Fill ``bucket`` through HTTP with the real S3Store (the public write path's transport)."""
    from fill import fill_artifacts

    from aether_prefect.services.stores.s3 import S3Store
    from tests.servers.s3 import ACCESS_KEY, SECRET_KEY

    store = S3Store(bucket, PREFIX, endpoint_url=url, region="us-east-1", aws_access_key_id=ACCESS_KEY,
                    aws_secret_access_key=SECRET_KEY)
    t = time.perf_counter()
    scopes = fill_artifacts(store, n, graphs=max(1, n // 10_000), run_size=RUN_SIZE, write_blobs=False)
    store.close()
    return scopes, time.perf_counter() - t


def _load() -> str:
    return "load %.1f %.1f %.1f" % os.getloadavg()


def main() -> None:
    from fill import artifact_record

    from aether_prefect.services.stores.s3 import S3Store
    from tests.servers.prefect_server import free_port
    from tests.servers.s3 import ACCESS_KEY, SECRET_KEY

    common.start_prefect_server()  # open_session_sync reads blocks/variables: a private server, as every bench
    port = free_port()
    prefix_port = free_port()
    while prefix_port == port:
        prefix_port = free_port()
    big, small = "big", "small"
    #: the big store again, through the listener whose LIST reads only its prefix (S3's cost model)
    big_s3 = "big, LIST by prefix"
    t = time.perf_counter()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port), json.dumps({big: BIG_N}), str(prefix_port)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(common.ROOT),
                              env={**os.environ, "PYTHONPATH": f"{common.ROOT}:{common.ROOT / 'bench'}"},
                              start_new_session=True)
    try:
        line = server.stdout.readline() if server.stdout else ""
        if not line.startswith("READY "):
            raise RuntimeError(f"the filled moto server did not start: {line!r}")
        filled = json.loads(line[6:])
        url = f"http://127.0.0.1:{port}"
        print(f"bulk-filled {BIG_N} records ({filled[big]['objects']} objects) in {filled[big]['fill_s']:.0f} s "
              f"(server up in {time.perf_counter() - t:.0f} s); {_load()}", flush=True)
        import boto3

        boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
                     aws_secret_access_key=SECRET_KEY).create_bucket(Bucket=small)
        small_scopes, small_fill_s = _fill_http(url, small, SMALL_N)
        print(f"HTTP-filled {SMALL_N} records in {small_fill_s:.0f} s ({SMALL_N / small_fill_s:.0f} records/s); {_load()}",
              flush=True)
        stores = {big: [tuple(s) for s in filled[big]["scopes"]], small: small_scopes}

        def args_of(target: str) -> dict[str, Any]:
            bucket = big if target == big_s3 else target
            scopes = stores[bucket]
            mid = len(scopes) // 2
            graph, run = scopes[mid]
            aid = artifact_record(S3Store(bucket, PREFIX), mid * RUN_SIZE + 7, graph, run, "n")[1].artifact_id
            return {"bucket": bucket, "prefix": PREFIX, "ak": ACCESS_KEY, "sk": SECRET_KEY,
                    "url": f"http://127.0.0.1:{prefix_port}" if target == big_s3 else url,
                    "graph": graph, "run": run, "id": aid}

        # the first reader of each run partition writes its segment: measured once, apart from the rounds
        first = {b: _probe(_OURS, args_of(b)) for b in (small, big)}
        assert first[small]["run_hits"] == first[big]["run_hits"] == RUN_SIZE, first
        counts = _probe(_COUNT, args_of(big))
        print(f"S3 requests of a fresh process's queries ({BIG_N} records): {counts}", flush=True)
        targets = (small, big, big_s3)
        res: dict[str, dict[str, list[dict[str, Any]]]] = {b: {"ours": [], "raw": []} for b in targets}
        loads = []
        for i in range(ROUNDS):
            for b in targets if i % 2 == 0 else targets[::-1]:
                for who, code in (("ours", _OURS), ("raw", _RAW)) if i % 2 == 0 else (("raw", _RAW), ("ours", _OURS)):
                    res[b][who].append(_probe(code, args_of(b)))
            loads.append(os.getloadavg()[0])
            print(f"round {i + 1}/{ROUNDS}: {_load()}", flush=True)
        for b in targets:
            assert all(r["run_hits"] == RUN_SIZE for r in res[b]["ours"] + res[b]["raw"]), res[b]
            assert all(r["graph_ok"] for r in res[b]["ours"]), res[b]["ours"]
    finally:
        if server.stdin:
            server.stdin.close()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)

    def med(b: str, who: str, key: str) -> float:
        return statistics.median(r[key] for r in res[b][who])

    load = f"load {min(loads):.1f}-{max(loads):.1f}"
    rows = [
        common.row(f"bulk fill {BIG_N} records into moto (per record)", filled[big]["fill_s"] / BIG_N * 1000, None, "ms"),
        common.row(f"fresh search(view='run'), 50 of {BIG_N}, S3; {load}", med(big, "ours", "run_ms"), None, "ms", 300),
        common.row("  same vs raw boto3 LIST + 50 GET (incl. client build)", med(big, "ours", "run_ms"),
                   med(big, "raw", "run_ms"), "ms"),
        common.row(f"  same vs the same query on {SMALL_N} records (target 2)", med(big, "ours", "run_ms"),
                   med(small, "ours", "run_ms"), "ms", 2),
        common.row(f"  raw boto3: {BIG_N} vs {SMALL_N} records (moto's LIST is O(bucket))", med(big, "raw", "run_ms"),
                   med(small, "raw", "run_ms"), "ms"),
        common.row("  first reader of the run (writes its segment)", first[big]["run_ms"], None, "ms"),
        common.row("  second search(view='run') in the same process", med(big, "ours", "run_again_ms"), None, "ms"),
        common.row(f"fresh get_by_id, S3 {BIG_N} vs raw LIST + 2 GET", med(big, "ours", "id_ms"),
                   med(big, "raw", "id_ms"), "ms"),
        common.row(f"fresh best(view='graph'), 10,000 of {BIG_N} vs raw LIST of the graph", med(big, "ours", "graph_ms"),
                   med(big, "raw", "graph_list_ms"), "ms"),
        common.row("  first reader of the graph (no segments yet)", first[big]["graph_ms"], None, "ms"),
        common.row(f"same {BIG_N} records, moto listing by prefix as S3 does: fresh search(view='run')",
                   med(big_s3, "ours", "run_ms"), None, "ms", 300),
        common.row("  same vs raw boto3 LIST + 50 GET (incl. client build)", med(big_s3, "ours", "run_ms"),
                   med(big_s3, "raw", "run_ms"), "ms"),
        common.row(f"  same vs the same query on {SMALL_N} records (target 2)", med(big_s3, "ours", "run_ms"),
                   med(small, "ours", "run_ms"), "ms", 2),
        common.row("  fresh get_by_id vs raw LIST + 2 GET", med(big_s3, "ours", "id_ms"), med(big_s3, "raw", "id_ms"), "ms"),
        common.row("  fresh best(view='graph') vs raw LIST of the graph", med(big_s3, "ours", "graph_ms"),
                   med(big_s3, "raw", "graph_list_ms"), "ms"),
    ]
    common.report("s3_scale", rows)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        _serve(int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
