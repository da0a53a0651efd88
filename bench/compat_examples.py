"""Run AetherGraph's own example files and documentation code blocks on aether-prefect (issue 22's measure).

Not a test: it reads AetherGraph's public repositories from paths given on the command line (never
committed here), rewrites only their import lines (``aethergraph...`` -> ``aether_prefect.compat``), and
runs each one as a script against a private real Prefect server and the loopback OpenAI-compatible
server of the test suite. Questions the examples ask on the channel are answered through the inbox
(``answer()``), as a person in the Prefect UI would; examples that ask on the console get a terminal on stdin
where the same answers are typed. Prints pass/fail per file with the reason, then the totals.

    python bench/compat_examples.py --examples PATH/aethergraph-examples [--docs PATH/aethergraph-docs]
        [--only SUBSTRING] [--timeout 240] [--jobs 2]

A docs code block is run when it is a whole program: it imports aethergraph, defines a function or class,
and runs something (``asyncio.run(``, ``run(``, ``run_async(`` or ``__main__``); the rest are fragments
(a runner line for a graph defined elsewhere on the page, a signature) and are counted as skipped.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from _common import ROOT, start_prefect_server  # noqa: E402  (sets PREFECT_HOME etc.)

# "from aethergraph[.x.y] import a, b" (also parenthesised over lines) and "import aethergraph[.x]".
_FROM = re.compile(r"^(\s*)from\s+aethergraph(?:\.[\w.]+)?\s+import\s+", re.M)
_IMPORT = re.compile(r"^(\s*)import\s+aethergraph(?:\.[\w.]+)?(\s+as\s+\w+)?\s*$", re.M)
_SERVICES = re.compile(r"context\.(llm|artifacts|memory|mem|kv|rag|mcp|channel|logger|indices|kb)\b|"
                       r"\b(register_llm_client|register_context_service|start_server)\b")
_ENTRY = re.compile(r"asyncio\.run\(|\brun\(|run_async\(|__main__")


def rewrite_imports(source: str) -> str:
    """Only the import lines change: every aethergraph module becomes ``aether_prefect.compat``."""
    source = _FROM.sub(lambda m: f"{m.group(1)}from aether_prefect.compat import ", source)
    return _IMPORT.sub(lambda m: f"{m.group(1)}import aether_prefect.compat" + (m.group(2) or " as aethergraph"),
                       source)


@dataclass
class Case:
    name: str
    source: str
    workdir: Path  # files next to the script (data, docs/) are copied with it


@dataclass
class Outcome:
    case: Case
    ok: bool
    reason: str
    seconds: float


def example_cases(root: Path) -> list[Case]:
    cases = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if "aethergraph" in text:
            cases.append(Case(str(path.relative_to(root)), text, path.parent))
    return cases


def doc_cases(root: Path) -> tuple[list[Case], int]:
    cases, fragments = [], 0
    for md in sorted(root.rglob("*.md")):
        text = md.read_text(encoding="utf-8", errors="replace")
        for i, m in enumerate(re.finditer(r"```(?:python|py)\s*\n(.*?)```", text, re.S), start=1):
            block = m.group(1)
            if "aethergraph" not in block:
                continue
            if not _ENTRY.search(block) or not re.search(r"^\s*(async\s+def|def|class)\s", block, re.M):
                fragments += 1
                continue
            cases.append(Case(f"{md.relative_to(root)}#block{i}", block, md.parent))
    return cases, fragments


def _reason(stdout: str, stderr: str, code: int | None) -> str:
    lines = [ln for ln in (stderr or "").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception|Exit|NotConfigured|Timeout)\b|^\w+Error:", ln.strip()):
            return ln.strip()[:300]
    return (lines[-1].strip()[:300] if lines else f"exit code {code}")


_CONSOLE = re.compile(r"""["']console(?::\w+)?["']""")
_PROMPT_END = "> "
_FILES_ASKED = "Prefect cannot upload files"  # ask_files' hint: the answer names files (paths), see _uploads.hint
_MENU = re.compile(r"^\s+1\. ", re.M)


def text_answer(asked_before: int) -> str:
    """The text a person types: "3" (a name, a count and a rate all accept it), then "quit" when the same
    question comes back a third time (the examples' chat loops ask the same prompt and end on "quit")."""
    return "3" if asked_before < 2 else "quit"


def _console_session(cmd: list[str], work: Path, env: dict[str, str], timeout: float) -> tuple[int | None, str, str]:
    """Run ``cmd`` with a terminal on stdin and a person at it: each console prompt (a line ending in "> ")
    gets an answer typed, "1" for a numbered menu (the first option), else :func:`text_answer`."""
    import os as _os
    import pty
    import threading

    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _os.close(slave)
    out: list[str] = []
    err: list[bytes] = []
    asked: dict[str, int] = {}

    def read_out() -> None:
        pending = ""
        assert proc.stdout is not None
        while chunk := _os.read(proc.stdout.fileno(), 4096):
            text = chunk.decode("utf-8", errors="replace")
            out.append(text)
            pending += text
            if pending.endswith(_PROMPT_END):
                block = pending[-2000:]
                pending = ""
                if _MENU.search(block):
                    reply = "1"
                else:
                    key = block.strip().splitlines()[-2] if len(block.strip().splitlines()) > 1 else block
                    reply = text_answer(asked.get(key, 0))
                    asked[key] = asked.get(key, 0) + 1
                _os.write(master, (reply + "\n").encode())

    def read_err() -> None:
        assert proc.stderr is not None
        while chunk := proc.stderr.read(4096):
            err.append(chunk)

    threads = [threading.Thread(target=read_out, daemon=True), threading.Thread(target=read_err, daemon=True)]
    for th in threads:
        th.start()
    try:
        code: int | None = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = None
    for th in threads:
        th.join(timeout=5)
    _os.close(master)
    return code, "".join(out), b"".join(err).decode("utf-8", errors="replace")


def run_case(case: Case, env: dict[str, str], timeout: float) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="ag-example-") as tmp:
        work = Path(tmp) / "work"
        shutil.copytree(case.workdir, work, ignore=shutil.ignore_patterns("*.py", ".git"))
        script = work / "example_under_test.py"
        script.write_text(rewrite_imports(case.source), encoding="utf-8")
        t = time.monotonic()
        cmd = [sys.executable, str(script)]
        if _CONSOLE.search(case.source):  # it asks on the console: a person types at a terminal
            code, stdout, stderr = _console_session(cmd, work, env, timeout)
            if code is None:
                return Outcome(case, False, f"timed out after {timeout:.0f}s", time.monotonic() - t)
            took = time.monotonic() - t
            return Outcome(case, code == 0, "" if code == 0 else _reason(stdout, stderr, code), took)
        try:
            proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return Outcome(case, False, f"timed out after {timeout:.0f}s", time.monotonic() - t)
        took = time.monotonic() - t
        if proc.returncode == 0:
            return Outcome(case, True, "", took)
        return Outcome(case, False, _reason(proc.stdout, proc.stderr, proc.returncode), took)


class Responder:
    """A person at the Prefect UI: answers every pending question through the inbox (``answer``).

    Text: :func:`text_answer` per flow run and prompt; approvals: approve; choices: the first option; a file
    question (``ask_files``): the path of a small file of the first expected type, written for it.
    Examples that ask on the console get a terminal and the same answers typed (``_console_session``).
    """

    def __init__(self) -> None:
        import threading

        self.stop = threading.Event()
        self.answered = 0
        self._asked: dict[str, int] = {}
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> "Responder":
        self._thread.start()
        return self

    def _file_for(self, prompt: str) -> Path:
        """The file a person would name for an ``ask_files`` question: a small one of the first expected type."""
        m = re.search(r"expected: ([^;)]*)", prompt)
        ext = next((e.strip() for e in (m.group(1).split(",") if m else []) if e.strip().startswith(".")), ".txt")
        path = Path(tempfile.mkdtemp(prefix="ag-upload-")) / f"upload{ext}"
        path.write_text("x,y\n1,2\n2,4\n3,6\n" if ext == ".csv" else
                        "Method: fit y = a*x + b to the points (1,2), (2,4), (3,6) by least squares and plot it.\n")
        return path

    def _loop(self) -> None:
        from aether_prefect import answer, pending_questions

        while not self.stop.wait(2.0):
            try:
                for q in pending_questions():
                    key = f"{q.flow_run_id}:{q.prompt}"
                    n = self._asked.get(key, 0)
                    self._asked[key] = n + 1
                    if q.kind == "text" and _FILES_ASKED in q.prompt:
                        answer(q.flow_run_id, text=str(self._file_for(q.prompt)), question_id=q.question_id)
                    elif q.kind == "text":
                        answer(q.flow_run_id, text=text_answer(n), question_id=q.question_id)
                    elif q.kind == "approval":
                        answer(q.flow_run_id, approve=True, question_id=q.question_id)
                    else:
                        answer(q.flow_run_id, choice=q.options[0].id, question_id=q.question_id)
                    self.answered += 1
            except Exception as exc:  # noqa: BLE001 - a question that closed meanwhile; try again next round
                print(f"  (responder: {type(exc).__name__}: {exc})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=Path, help="a checkout of AIperture/aethergraph-examples")
    ap.add_argument("--docs", type=Path, help="a checkout of AIperture/aethergraph-docs")
    ap.add_argument("--only", default=None, help="run only cases whose name contains one of these (comma-separated)")
    ap.add_argument("--timeout", type=float, default=240.0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--no-answers", action="store_true", help="do not answer channel questions (they time out)")
    ap.add_argument("--api-url", default=None, help="use this running Prefect API instead of starting one")
    args = ap.parse_args()
    if not args.examples and not args.docs:
        ap.error("give --examples and/or --docs")

    cases: list[Case] = []
    fragments = 0
    if args.examples:
        cases += example_cases(args.examples)
    if args.docs:
        found, fragments = doc_cases(args.docs)
        cases += found
    if args.only:
        wanted = [w for w in args.only.split(",") if w]
        cases = [c for c in cases if any(w in c.name for w in wanted)]

    sys.path.insert(0, str(ROOT))
    from tests.servers.openai_server import FAKE_API_KEY, FakeOpenAI

    api = args.api_url or start_prefect_server()
    os.environ["PREFECT_API_URL"] = api  # the responder below talks to the same server
    llm = FakeOpenAI().start()
    env = {
        **os.environ,
        "PREFECT_API_URL": api,
        "OPENAI_API_KEY": FAKE_API_KEY,
        "OPENAI_BASE_URL": llm.base_url,
        "AETHER_LLM_MODEL": "fake-chat",
        "AETHER_EMBED_MODEL": "fake-embed",
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "PYTHONUNBUFFERED": "1",
        "MPLBACKEND": "Agg",
    }
    responder = Responder().start() if not args.no_answers else None
    print(f"{len(cases)} cases ({fragments} doc fragments skipped); Prefect {api}; LLM {llm.base_url}", flush=True)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        outcomes = []
        for out in pool.map(lambda c: run_case(c, env, args.timeout), cases):
            uses = "services" if _SERVICES.search(out.case.source) else "no-services"
            print(f"{'PASS' if out.ok else 'FAIL'} {out.seconds:6.1f}s [{uses}] {out.case.name}"
                  + ("" if out.ok else f"\n      {out.reason}"), flush=True)
            outcomes.append(out)
    llm.stop()
    if responder is not None:
        responder.stop.set()
        print(f"questions answered through the inbox: {responder.answered}")
    for label, subset in (("examples", [o for o in outcomes if "#block" not in o.case.name]),
                          ("doc blocks", [o for o in outcomes if "#block" in o.case.name])):
        if subset:
            svc = [o for o in subset if _SERVICES.search(o.case.source)]
            print(f"{label}: {sum(o.ok for o in subset)}/{len(subset)} pass; "
                  f"using the seed's services: {sum(o.ok for o in svc)}/{len(svc)}")
    total = len(outcomes)
    print(f"total: {sum(o.ok for o in outcomes)}/{total} pass")


if __name__ == "__main__":
    main()
