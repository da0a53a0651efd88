"""Run Prefect's own task tests with ``task`` made by ``@aether_task`` (issue #17, "Prefect's own task semantics").

Not part of the default test run: it needs a git checkout of Prefect (any clone or bare mirror of
github.com/PrefectHQ/prefect) and a few of Prefect's test dependencies beside ours.

    python ci/prefect_task_semantics.py PATH/TO/prefect [--ref 3.9.1] [--plain] [PYTEST ARGS...]

It exports ``tests/`` of Prefect at ``--ref`` (default: the tag of the installed Prefect) into a
scratch folder, makes ``tests/test_tasks.py`` and ``tests/test_task_engine.py`` take ``task`` from
ci/_prefect_task_shim.py (Prefect's ``task`` signature over ``@aether_task``), skips the tests listed
in ``SKIPS`` below (each inspects the decorated function object itself, so it cannot hold for any
wrapping decorator) and runs pytest on the two files. ``--plain`` runs them unmodified, with
Prefect's own ``task``, as the baseline. Exit status: pytest's.

Needs, besides aether-prefect's test extra: ``pytest-asyncio>=1.1,<1.5 respx pytest-env pytest-xdist``
(Prefect's conftest uses them; ``-n`` is never passed). Prefect's hosted-server fixture starts
``uvicorn`` from PATH: the folder of this Python and the one holding ``uvicorn`` are put first.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FILES = ("tests/test_tasks.py", "tests/test_task_engine.py")
SHIM_IMPORT = "from tests._aether_task_shim import task  # aether-prefect: task made by @aether_task\n"

# node id -> why the test cannot hold for any decorator that wraps the user's function.
SKIPS: dict[str, str] = {
    # Empty: at Prefect commit ce79dd3d6c (3.8.4.dev6, the newest tests a mirror held when 3.9.1 was current;
    # Prefect's tag-less sdist has no tests) all 547 tests passed through the shim. Add
    # "tests/test_tasks.py::TestClass::test_name": "why" when a test inspects the function object itself.
}

_SKIP_PLUGIN = '''"""Skip-list of ci/prefect_task_semantics.py (written by it)."""
import pytest

SKIPS = {skips!r}


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        reason = SKIPS.get(item.nodeid)
        if reason:
            item.add_marker(pytest.mark.skip(reason="aether-prefect: " + reason))
'''


def _git(repo: Path, *args: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True).stdout


def export(repo: Path, ref: str, dest: Path) -> None:
    """Write Prefect's ``tests/`` and ``pyproject.toml`` (its pytest settings) at ``ref`` under ``dest``."""
    try:
        _git(repo, "rev-parse", "--verify", f"{ref}^{{commit}}")
    except subprocess.CalledProcessError:
        sys.exit(f"{repo} has no commit {ref!r}: pass --ref with a tag or commit it has (git -C {repo} tag)")
    # git archive of one folder; it can warn about unrelated missing blobs in a partial mirror, so check the files.
    proc = subprocess.run(["git", "-C", str(repo), "archive", ref, "--", "tests"], capture_output=True)
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        tar.extractall(dest, filter="data")
    (dest / "pyproject.toml").write_bytes(_git(repo, "show", f"{ref}:pyproject.toml"))
    missing = [f for f in (*FILES, "tests/conftest.py") if not (dest / f).is_file()]
    if missing:
        sys.exit(f"export of {ref} from {repo} lacks {missing}: {proc.stderr.decode(errors='replace')[-500:]}")


def substitute_task(path: Path) -> None:
    """Insert the shim import right after the module's leading imports, so every later ``task`` is ours."""
    source = path.read_text()
    body = ast.parse(source).body
    end = 0
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            end = node.end_lineno or end
        elif not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):  # a docstring
            break
    lines = source.splitlines(keepends=True)
    path.write_text("".join(lines[:end]) + SHIM_IMPORT + "".join(lines[end:]))


def prepare(dest: Path, plain: bool) -> None:
    tests = dest / "tests"
    conftest = tests / "conftest.py"
    if importlib.util.find_spec("opentelemetry.test") is None:  # only the telemetry tests use these fixtures
        conftest.write_text(conftest.read_text().replace(
            "from .fixtures.telemetry import *", "# from .fixtures.telemetry import *  (opentelemetry-test-utils absent)"))
    (tests / "_aether_skips.py").write_text(_SKIP_PLUGIN.format(skips={} if plain else SKIPS))
    if not plain:
        shutil.copy(HERE / "_prefect_task_shim.py", tests / "_aether_task_shim.py")
        for name in FILES:
            substitute_task(dest / name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prefect_repo", type=Path, help="a git clone (or bare mirror) of PrefectHQ/prefect")
    parser.add_argument("--ref", help="tag or commit to take the tests from (default: the installed Prefect's tag)")
    parser.add_argument("--plain", action="store_true", help="baseline: Prefect's own task, no substitution")
    parser.add_argument("--workdir", type=Path, help="export here and keep it (default: a temporary folder)")
    args, pytest_args = parser.parse_known_args()  # the rest goes to pytest, e.g. -k TestTaskRetries
    pytest_args = [a for a in pytest_args if a != "--"]

    import prefect

    ref = args.ref or prefect.__version__
    dest = args.workdir or Path(tempfile.mkdtemp(prefix="prefect-task-semantics-"))
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    export(args.prefect_repo.resolve(), ref, dest)
    prepare(dest, args.plain)

    env = dict(os.environ)
    bins = [str(Path(sys.executable).parent)]
    uvicorn = shutil.which("uvicorn")
    if uvicorn:
        bins.append(str(Path(uvicorn).parent))
    env["PATH"] = os.pathsep.join([*bins, env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(dest), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    for var in ("PREFECT_API_URL", "PREFECT_PROFILE", "AETHER_PREFECT_CONFIG"):
        env.pop(var, None)
    label = "Prefect's task (baseline)" if args.plain else "task = @aether_task over the function"
    print(f"Prefect tests at {ref} in {dest}: {label}", flush=True)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests._aether_skips", "-q", "-rfE",
           *FILES, *pytest_args]
    return subprocess.run(cmd, cwd=dest, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
