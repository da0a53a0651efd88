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


def test_aethergraph_webhook_key_announces_messages_and_questions_through_the_matching_block(
    webhook: Webhook, local_config: Any
) -> None:
    """AetherGraph's `webhook:url/<URL>` key (set as the default channel, AetherGraph's spelling): the saved
    custom-webhook block with that url announces plain messages and questions; the answer comes from the inbox."""
    from aether_prefect import set_default_channel
    from aether_prefect import _registration as reg
    from aether_prefect.services.channel import _external

    CustomWebhookNotificationBlock(name="aether", url=webhook.url, json_data={"body": "{{body}}"}).save(
        f"ag-{uuid.uuid4().hex[:8]}")
    _external.forget()
    seen: dict[str, Any] = {}

    @aether_task(config=local_config)
    def ask(*, context: NodeContext) -> str:
        seen["run"] = context.flow_run_id
        context.channel().sync.send_text("nightly job started")  # a plain message: announced, no notify=True
        return context.channel().sync.ask_text("Which table?", timeout_s=120)

    @flow(name="channel-webhook-key")
    def f() -> str:
        return ask()

    set_default_channel(f"webhook:url/{webhook.url}")
    try:
        run = Background(f)
        wait_for(lambda: len(webhook.received) >= 2, 60, "the message and the question at the webhook")
        assert [b["body"].splitlines()[0] for _, b in webhook.received] == ["nightly job started", "Question: Which table?"]
        answer(seen["run"], text="orders")
        assert run.join(120) == "orders"
    finally:
        reg.clear_registrations()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_aethergraph_slack_key_uses_the_saved_slack_block_named_after_the_channel(local_config: Any) -> None:
    """`slack:team/T:chan/C<id>` resolves to the saved SlackWebhook block named after the channel id (among
    several saved ones), and to the AetherConfig.notify entry of that type when one is configured."""
    import logging

    from prefect.blocks.notifications import SlackWebhook

    from aether_prefect.services.channel import _external

    chan = f"C{uuid.uuid4().hex[:8].upper()}"
    await SlackWebhook(url="https://hooks.slack.com/services/T0/B0/x").save(chan.lower())
    await SlackWebhook(url="https://hooks.slack.com/services/T0/B0/y").save(f"other-{uuid.uuid4().hex[:6]}")
    _external.forget()
    log = logging.getLogger("test.external")
    key = f"slack:team/T123:chan/{chan}"
    assert await _external.targets_for(key, [], log) == [f"slack-webhook/{chan.lower()}"]
    assert await _external.targets_for(key, ["custom-webhook/x", "slack-webhook/ops"], log) == ["slack-webhook/ops"]
    other = f"slack:team/T123:chan/C{uuid.uuid4().hex[:8]}"  # no block named after it, several saved: fall back
    assert await _external.targets_for(other, [], log) == []


@pytest.mark.anyio
async def test_aethergraph_telegram_key_without_a_block_falls_back_with_one_warning(
    local_config: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """No Telegram block exists in Prefect: the messages go to the run log, ONE warning says how to configure
    announcements, nothing raises; an alias to it (AetherGraph's set_channel_alias) behaves the same."""
    import logging

    from aether_prefect import open_session, set_channel_alias
    from aether_prefect import _registration as reg
    from aether_prefect.services.channel import _external

    _external.forget()
    key = f"tg:chat/{uuid.uuid4().int % 10**9}"
    set_channel_alias("my_telegram", key)
    try:
        with caplog.at_level(logging.INFO, logger="aether_prefect"):
            async with open_session(config=local_config) as context:
                await context.channel("my_telegram").send_text("hello via telegram")
                await context.channel(key).send_text("hello again")
    finally:
        reg.clear_registrations()
    messages = [r.getMessage() for r in caplog.records]
    assert "hello via telegram" in messages and "hello again" in messages
    warnings = [m for m in messages if key in m and "no Telegram notification block" in m]
    assert len(warnings) == 1 and "notify:<block-type-slug>/<name>" in warnings[0]
