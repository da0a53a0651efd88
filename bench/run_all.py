"""Run every bench/bench_*.py (each in its own process with its own Prefect server) and print one table.

Usage: python bench/run_all.py [name ...]   (names like "kv" select bench_kv.py)
Writes bench/results/all.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def main(argv: list[str]) -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    if argv:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in argv]
    failed: list[str] = []
    for script in scripts:
        print(f"--- {script.name}", flush=True)
        t = time.monotonic()
        proc = subprocess.run([sys.executable, script.name], cwd=HERE, timeout=1800)
        print(f"--- {script.name}: exit {proc.returncode} in {time.monotonic() - t:.0f}s", flush=True)
        if proc.returncode != 0:
            failed.append(script.name)
    rows = []
    for path in sorted(RESULTS.glob("*.json")):
        if path.name == "all.json":
            continue
        data = json.loads(path.read_text())
        rows += [{"bench": data["bench"], **r} for r in data["rows"]]
    (RESULTS / "all.json").write_text(json.dumps(rows, indent=2))
    fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
    print(f"\n{'bench':10} {'measure':58} {'ours':>10} {'raw':>10} {'unit':>5} {'ratio':>7} {'target':>7}  ok")
    for r in rows:
        ok = "" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        print(f"{r['bench'][:10]:10} {r['measure'][:58]:58} {fmt(r['ours']):>10} {fmt(r['raw']):>10} "
              f"{r['unit']:>5} {fmt(r['ratio']):>7} {fmt(r['target']):>7}  {ok}")
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
