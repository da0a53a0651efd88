"""Questions announced through Prefect notification blocks: a loopback webhook server receives them over real HTTP."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from uuid import UUID

import pytest
from prefect import flow
from prefect.blocks.notifications import CustomWebhookNotificationBlock

from aether_prefect import AetherConfig, NodeContext, aether_task, answer
from tests.servers.prefect_server import free_port
from tests.services.channel._helpers import Background, wait_for

pytestmark = pytest.mark.timeout(240)


class Webhook:
    """A loopback HTTP server that records every JSON body POSTed to it, with its arrival time."""

    def __init__(self) -> None:
        received: list[tuple[float, dict[str, Any]]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                received.append((time.monotonic(), json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture()
def webhook() -> Any:
    hook = Webhook()
    yield hook
    hook.close()


def test_question_reaches_the_webhook_and_a_failing_block_does_not_fail_the_task(
    tmp_store: Any, webhook: Webhook, prefect_server: Any
) -> None:
    name = f"hitl-{uuid.uuid4().hex[:8]}"
    CustomWebhookNotificationBlock(
        name="aether", url=webhook.url, json_data={"subject": "{{subject}}", "body": "{{body}}"}
    ).save(name)
    broken = CustomWebhookNotificationBlock(name="broken", url=f"http://127.0.0.1:{free_port()}/nobody-listens")
    config = AetherConfig(store=tmp_store, kv_namespace=f"t{uuid.uuid4().hex[:10]}",
                          notify=[f"custom-webhook/{name}", broken])
    secret = "sk-live" + uuid.uuid4().hex
    seen: dict[str, Any] = {}

    @aether_task(config=config)
    def ask(*, context: NodeContext) -> str:
        seen["run"] = context.flow_run_id
        context.channel().sync.send_text(f"starting with key {secret}", notify=True)
        seen["asked"] = time.monotonic()
        return context.channel().sync.ask_text(f"Rotate the key {secret} now?", timeout_s=120)

    @flow(name="channel-notify")
    def f() -> str:
        return ask()

    run = Background(f)
    wait_for(lambda: len(webhook.received) >= 2, 60, "two notifications at the webhook")
    run_id = seen["run"]
    message, question = (body for _, body in webhook.received[:2])
    arrival_s = webhook.received[1][0] - seen["asked"]
    assert "starting with key" in message["body"] and secret not in json.dumps(message)
    assert secret not in json.dumps(question) and "Rotate the key ******** now?" in question["body"]
    body = question["body"]
    assert "channel-notify" in body and "ask" in body and "(in 120s)" in body
    ui = prefect_server.api_url[: -len("/api")]
    assert f"{ui}/runs/flow-run/{run_id}" in body and f"aether-prefect answer {run_id} --text" in body
    answer(run_id, text="yes")
    assert run.join(120) == "yes"
    print(f"ask -> webhook arrival: {arrival_s * 1000:.0f} ms")


def test_channel_key_selects_one_notification_block(tmp_store: Any, webhook: Webhook, local_config: Any) -> None:
    """context.channel('notify:<slug>/<name>') announces through that block even when AetherConfig.notify is empty."""
    name = f"key-{uuid.uuid4().hex[:8]}"
    CustomWebhookNotificationBlock(name="aether", url=webhook.url, json_data={"body": "{{body}}"}).save(name)
    seen: dict[str, Any] = {}

    @aether_task(config=local_config)
    def ask(*, context: NodeContext) -> str:
        seen["run"] = context.flow_run_id
        context.channel().sync.send_text("not announced", notify=True)  # nothing configured: only logged
        return context.channel(f"notify:custom-webhook/{name}").sync.ask_text("Keyed?", timeout_s=120)

    @flow(name="channel-key")
    def f() -> str:
        return ask()

    run = Background(f)
    wait_for(lambda: webhook.received, 60, "the keyed notification")
    assert [b["body"].splitlines()[0] for _, b in webhook.received] == ["Question: Keyed?"]
    answer(seen["run"], text="ok")
    assert run.join(120) == "ok"
    UUID(seen["run"])
