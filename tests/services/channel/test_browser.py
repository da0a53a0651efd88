"""The question's form in a real browser: a Prefect server with its UI, a paused run asking ask_choices, and
headless Chromium (Debian's package, installed by ``make test`` through ci/install-chromium.sh) that opens the
flow run's page, sees the prompt and the choices, picks one and submits; the task gets that choice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers.prefect_server import PrefectServer, free_port
from tests.services.channel._browser import Chromium, chromium_path

pytestmark = [pytest.mark.timeout(1500), pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[3]
PROMPT = "Which region gets build 7f3?"

FLOW = """
import json, sys
from prefect import flow
from aether_prefect import aether_task, NodeContext
from aether_prefect.blocks import AetherConfig, AetherObjectStore
cfg = AetherConfig(store=AetherObjectStore(backend="local", root=sys.argv[1]))

@aether_task(config=cfg)
def pick(*, context: NodeContext):
    r = context.channel().sync.ask_choices({prompt!r}, [{{"id": "eu", "label": "Europe West"}}, "US East"], timeout_s=1200)
    return [r.choice, r.choice_label, r.text, r.matched]

@flow(name="browser-form")
def f():
    return pick()

print("RESULT " + json.dumps(f()), flush=True)
"""


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A Prefect server of its own with the UI enabled (the suite's server runs without it)."""
    port = free_port()
    server = PrefectServer(home=tmp_path_factory.mktemp("ui-server"), port=port, env={
        "PREFECT_UI_ENABLED": "true", "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
    }).start()
    try:
        server.wait_ready(900)  # the UI's static build is copied on first start: slow on a busy machine
        yield server
    finally:
        server.stop()


def _question(api: str, deadline: float) -> str:
    """The id of the flow run that is paused on our question."""
    while time.monotonic() < deadline:
        runs = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}},
                          timeout=10).json()
        for run in runs:
            inputs = httpx.post(f"{api}/flow_runs/{run['id']}/input/filter", json={"prefix": "aether-question-"},
                                timeout=10).json()
            if any(json.loads(i["value"])["prompt"] == PROMPT for i in inputs):
                return str(run["id"])
        time.sleep(1)
    raise AssertionError("the flow run never paused on the question")


def _pick_and_submit(browser: Chromium, modal: str, label: str, timeout: float = 120) -> None:
    """Select ``label`` in the form's select and submit until the modal closes (the server took the answer)."""
    deadline = time.monotonic() + timeout
    while True:
        browser.evaluate(f"(() => {{ const s = {modal}.querySelector('select'); s.value = {label!r};"
                         " s.dispatchEvent(new Event('input', {bubbles: true}));"
                         " s.dispatchEvent(new Event('change', {bubbles: true})); })()")
        time.sleep(1)
        browser.evaluate(f"[...{modal}.querySelectorAll('button')].find(b => b.innerText.trim() === 'Submit').click()")
        for _ in range(20):
            time.sleep(0.5)
            if not browser.evaluate(f"!!{modal}"):
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"the form did not take the answer; it shows: {browser.evaluate(f'{modal}.innerText')}")


def _diagnose(api: str, run_id: str, browser: Chromium, modal: str) -> str:
    """What the server and the page show when the answer did not reach the flow (for the failure message)."""
    run = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()
    inputs = httpx.post(f"{api}/flow_runs/{run_id}/input/filter", json={"prefix": ""}, timeout=10).json()
    page = browser.evaluate(f"({modal} && {modal}.innerText) || document.body.innerText.slice(0, 2000)")
    return json.dumps({"state": run.get("state"), "inputs": {i["key"]: i["value"] for i in inputs}, "page": page},
                      indent=1, default=str)


def test_the_form_in_headless_chromium(ui_server: PrefectServer, tmp_path: Path) -> None:
    binary = chromium_path()
    if binary is None:
        subprocess.run(["bash", str(ROOT / "ci" / "install-chromium.sh")], timeout=900, check=False)
        binary = chromium_path()
    if binary is None:
        pytest.skip("chromium is not installed and ci/install-chromium.sh could not install it (needs root + apt-get)")

    env = {**os.environ, "PREFECT_API_URL": ui_server.api_url, "PREFECT_HOME": str(tmp_path / "home"),
           "PYTHONPATH": str(ROOT)}
    log = open(tmp_path / "flow.log", "w+")
    proc = subprocess.Popen([sys.executable, "-c", FLOW.format(prompt=PROMPT), str(tmp_path / "store")],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    browser = None
    try:
        run_id = _question(ui_server.api_url, time.monotonic() + 600)
        browser = Chromium(binary)
        browser.goto(f"http://127.0.0.1:{ui_server.port}/runs/flow-run/{run_id}")
        browser.wait_for("document.body && [...document.querySelectorAll('button')]"
                         ".some(b => b.innerText.trim() === 'Resume')", 300, "the Resume button")
        browser.evaluate("[...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Resume').click()")
        modal = "document.querySelector('.p-modal')"
        text = browser.wait_for(f"{modal} && {modal}.innerText.includes({PROMPT!r}) && {modal}.innerText", 120, "the form")
        options = browser.wait_for(f"[...{modal}.querySelectorAll('select option')].map(o => o.textContent.trim())",
                                   60, "the choices")
        assert PROMPT in text and options == ["Europe West", "US East"], (text, options)
        # Answer as a person does: pick "Europe West" in the select and submit the form. The UI's form state
        # follows the select a moment later (Vue re-renders); a Submit before that is refused with "'choice' is
        # a required property" and the modal stays open, so pick again and resubmit, as a person would.
        _pick_and_submit(browser, modal, "Europe West")
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            raise AssertionError("the flow never got the answer: " + _diagnose(ui_server.api_url, run_id, browser, modal))
    finally:
        if browser is not None:
            browser.close()
        if proc.poll() is None:
            proc.kill()
    log.seek(0)
    out = log.read()
    assert 'RESULT ["eu", "Europe West", "", true]' in out, out[-3000:]
