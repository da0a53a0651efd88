"""NodeContext: the per-task-run handle on every service. Nothing else lives here.

Accessors are sync and cheap: services are created on first access and connect
lazily on first use, so building a context makes no network call.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aether_prefect._overrides import RuntimeOverrides
from aether_prefect.blocks import AetherConfig, AetherLLMProfile, AetherMCPServer, AetherObjectStore
from aether_prefect.budgets import LLMBudget
from aether_prefect.errors import ServiceNotConfigured

if TYPE_CHECKING:
    from concurrent.futures import Future

    from aether_prefect.services.stores.base import ObjectStore

_log = logging.getLogger("aether_prefect")
_current: contextvars.ContextVar["NodeContext | None"] = contextvars.ContextVar("aether_node_context", default=None)

#: Per-process key of the fingerprints that tell override values apart in the service cache (secrets included)
#: without keeping them in clear there.
_FINGERPRINT_KEY = secrets.token_bytes(32)


def _fingerprint(value: Any) -> str:
    """A keyed hash of an override value, secrets revealed first (every SecretStr reprs the same)."""

    def reveal(v: Any) -> Any:
        if hasattr(v, "get_secret_value"):
            return ["secret", reveal(v.get_secret_value())]
        if isinstance(v, dict):
            return {str(k): reveal(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [reveal(x) for x in v]
        if hasattr(type(v), "model_fields"):
            return [type(v).__name__, {n: reveal(getattr(v, n, None)) for n in type(v).model_fields}]
        return v

    data = json.dumps(reveal(value), sort_keys=True, default=repr).encode()
    return hmac.new(_FINGERPRINT_KEY, data, hashlib.sha256).hexdigest()




def current_context() -> "NodeContext":
    """The NodeContext of the running ``aether_task`` (or open session); LookupError outside one."""
    ctx = _current.get()
    if ctx is None:
        raise LookupError(
            "no aether-prefect context is active here: call this inside an @aether_task, "
            "an @aether_flow, or an open_session() block"
        )
    return ctx


def _set_current(ctx: "NodeContext | None") -> contextvars.Token["NodeContext | None"]:
    return _current.set(ctx)


def _reset_current(token: contextvars.Token["NodeContext | None"]) -> None:
    try:
        _current.reset(token)
    except ValueError:  # token from another context (e.g. closed from another task)
        _current.set(None)


class _RagAccessor:
    """Lets both ``context.rag.search(...)`` and ``context.rag().search(...)`` work."""

    def __get__(self, ctx: "NodeContext | None", owner: type) -> Any:
        if ctx is None:
            return self
        return ctx._service("rag", lambda: _create("rag", ctx), injected=ctx.overrides.rag)


def _create(service: str, ctx: "NodeContext", *args: Any) -> Any:
    """Build a service through the explicit factory table (see ``services/__init__.py``)."""
    from aether_prefect.services import FACTORIES

    return FACTORIES[service](ctx, *args)


class NodeContext:
    """A fully wired context for one task run (or one ad-hoc session).

    Ids: ``run_id, graph_id, node_id, session_id, flow_run_id, task_run_id, deployment_id``.
    Accessors return services whose I/O methods are async; ``service.sync`` is the
    blocking twin for sync tasks.
    """

    rag = _RagAccessor()

    # Set per instance in __init__; declared here so custom service names cannot shadow them.
    run_id: str
    graph_id: str
    node_id: str
    overrides: RuntimeOverrides
    session_id: str | None
    flow_run_id: str | None
    task_run_id: str | None
    deployment_id: str | None

    def __init__(
        self,
        *,
        run_id: str,
        graph_id: str,
        node_id: str,
        config: "AetherConfig | Future[AetherConfig]",
        overrides: RuntimeOverrides | None = None,
        session_id: str | None = None,
        flow_run_id: str | None = None,
        task_run_id: str | None = None,
        deployment_id: str | None = None,
    ) -> None:
        self.run_id = run_id
        self.graph_id = graph_id
        self.node_id = node_id
        self.overrides = overrides or RuntimeOverrides()
        self.session_id = self.overrides.session_id if self.overrides.session_id is not None else session_id
        self.flow_run_id = flow_run_id
        self.task_run_id = task_run_id
        self.deployment_id = deployment_id
        self._config = config
        self._services: dict[Any, Any] = {}
        self._owned: list[Any] = []
        self._llm_keys: dict[str, AetherLLMProfile] = {}
        self._closed = False

    # -- identity and settings ------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"NodeContext(run_id={self.run_id!r}, graph_id={self.graph_id!r}, node_id={self.node_id!r}, "
            f"session_id={self.session_id!r}, flow_run_id={self.flow_run_id!r}, task_run_id={self.task_run_id!r})"
        )

    def __reduce__(self) -> Any:
        raise TypeError(
            "a NodeContext is built inside each task run and cannot be pickled or shipped to another process; "
            "pass ids or data instead and let @aether_task build a context there"
        )

    @property
    def config(self) -> AetherConfig:
        """The resolved AetherConfig this context was built from.

        A flow's context may be built while its saved config still loads (``config.prefetch_config``): the first
        use waits for it here (and raises the load's error, e.g. ConfigError).
        """
        cfg = self._config
        if not isinstance(cfg, AetherConfig):
            cfg = self._config = cfg.result()
        return cfg

    @property
    def memory_level(self) -> str:
        return self.overrides.memory_level or self.config.memory_level

    @property
    def kv_namespace(self) -> str:
        return self.overrides.kv_namespace or self.config.kv_namespace

    @property
    def max_concurrency(self) -> int | None:
        return self.overrides.max_concurrency

    @property
    def llm_budget(self) -> LLMBudget | None:
        """The ``llm_budget=`` override, if any (per task run; profiles carry their own)."""
        return self.overrides.llm_budget

    @property
    def closed(self) -> bool:
        return self._closed

    def store(self) -> "ObjectStore":
        """The object store shared by artifacts, memory, RAG and large KV values.

        Example: ``context.store().put_bytes("notes/a.txt", b"hi")``
        """
        from aether_prefect.services.stores import open_store

        ov = self.overrides.store
        if ov is not None and not isinstance(ov, AetherObjectStore):
            return ov  # type: ignore[no-any-return]
        if isinstance(ov, AetherObjectStore):
            return open_store(ov)
        from aether_prefect.config import store_config

        return open_store(store_config(self.config))

    # -- service cache -------------------------------------------------------

    def _service(self, key: Any, factory: Callable[[], Any], *, injected: Any = None) -> Any:
        if injected is not None:
            return injected
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; open a new session or task run to use services")
        svc = self._services.get(key)
        if svc is None:
            svc = factory()
            self._services[key] = svc
            self._owned.append(svc)
        return svc

    # -- accessors ------------------------------------------------------------

    def logger(self) -> logging.LoggerAdapter:  # type: ignore[type-arg]
        """A LoggerAdapter carrying run/graph/node ids; in a Prefect run its lines reach the UI.

        Example: ``context.logger().info("cleaned %d rows", 10)``
        """
        return self._service("logger", lambda: _create("logger", self))

    def artifacts(self) -> Any:
        """Artifacts: content-addressed bytes in the object store, published as Prefect artifacts.

        Example: ``art = await context.artifacts().save_text("hello", name="greeting")``
        """
        return self._service("artifacts", lambda: _create("artifacts", self), injected=self.overrides.artifacts)

    def kv(self) -> Any:
        """Key-value store on Prefect Variables.

        Example: ``await context.kv().set("seen", 1)`` (sync code: ``context.kv().sync.incr("seen")``)
        """
        return self._service("kv", lambda: _create("kv", self), injected=self.overrides.kv)

    def memory(self) -> Any:
        """The event log of this run (or session / graph, per ``memory_level``).

        Example: ``await context.memory().record("note", {"rows": 10})``
        """
        return self._service("memory", lambda: _create("memory", self), injected=self.overrides.memory)

    mem = memory

    def channel(self, channel_key: str | None = None) -> Any:
        """Messages to the run log, and questions answered in the Prefect UI (``channel("console")``: the terminal).

        Example: ``await context.channel().send_text("done")``
        """
        from aether_prefect._registration import channel_key as registered_channel_key

        channel_key = registered_channel_key(channel_key)  # set_channel_alias / set_default_channel
        key = "channel" if channel_key is None else ("channel", channel_key)
        return self._service(key, lambda: _create("channel", self, channel_key), injected=self.overrides.channel)

    def llm_profile(self, profile: str = "default") -> AetherLLMProfile | None:
        """The profile ``profile`` as this context sees it: llm_set_key > llm= override > config > environment.

        Example: ``context.llm_profile("default").model``
        """
        if profile in self._llm_keys:
            return self._llm_keys[profile]
        ov = self.overrides.llm
        if isinstance(ov, AetherLLMProfile) and profile == "default":
            return ov
        if isinstance(ov, dict) and profile in ov:
            return ov[profile]  # type: ignore[no-any-return]
        from aether_prefect._registration import registered_llm
        from aether_prefect.config import llm_profile

        return registered_llm(profile) or llm_profile(self.config, profile)

    def _llm_profiles_in_effect(self) -> list[str]:
        """Every LLM profile name this context resolves, with where an implicit one comes from."""
        from aether_prefect.config import llm_profile

        from aether_prefect._registration import registered_llm_names

        names = set(self.config.llm) | set(self._llm_keys) | set(registered_llm_names())
        ov = self.overrides.llm
        if isinstance(ov, dict):
            names |= set(ov)
        elif isinstance(ov, AetherLLMProfile):
            names.add("default")
        labels = {n: n for n in names}
        if "default" not in names and llm_profile(self.config, "default") is not None:
            labels["default"] = "default (from OPENAI_API_KEY / OPENAI_BASE_URL)"
        return [labels[n] for n in sorted(labels)]

    def llm(self, profile: str = "default", **overrides: Any) -> Any:
        """The LLM client of ``profile`` (any provider); ``overrides`` replace profile fields for this call site.

        Example: ``text, usage = await context.llm().chat([{"role": "user", "content": "Say hi"}])``
        """
        ov = self.overrides.llm
        if ov is not None and not isinstance(ov, (AetherLLMProfile, dict)):
            return ov
        if not isinstance(profile, str) or not profile:
            raise TypeError(f"profile must be a non-empty str, got {profile!r}")
        if "timeout" in overrides:  # AetherGraph's spelling of timeout_s
            overrides["timeout_s"] = overrides.pop("timeout")
        prof = self.llm_profile(profile)
        if prof is None and overrides.get("provider") is not None:
            # AetherGraph's inline setup: context.llm("p", provider=..., model=..., api_key=...) creates profile "p"
            # for this context (llm_set_key's scope); the keywords are then its fields, not call-site overrides.
            from aether_prefect._registration import llm_profile_block

            self._llm_keys[profile] = prof = llm_profile_block(
                overrides.pop("provider"), overrides.pop("model", None), embed_model=overrides.pop("embed_model", None),
                base_url=overrides.pop("base_url", None), api_key=overrides.pop("api_key", None),
                timeout=overrides.pop("timeout_s", None),
            )
        if prof is None:
            configured = self._llm_profiles_in_effect()
            raise ServiceNotConfigured(
                f"LLM profile {profile!r}",
                block_type="AetherLLMProfile",
                how=(
                    f"add it to AetherConfig(llm={{{profile!r}: AetherLLMProfile(model=..., api_key=...)}})"
                    + (", or set OPENAI_API_KEY (and OPENAI_BASE_URL, AETHER_LLM_MODEL)" if profile == "default" else "")
                    + f" (configured profiles: {', '.join(configured) or 'none'})"
                ),
            )
        if overrides:
            unknown = sorted(set(overrides) - set(AetherLLMProfile.model_fields))
            if unknown:
                raise TypeError(
                    f"unknown LLM override {unknown[0]!r}; overridable fields: {', '.join(sorted(AetherLLMProfile.model_fields))}"
                )
            data = {k: getattr(prof, k) for k in AetherLLMProfile.model_fields}
            data.update(overrides)
            prof = AetherLLMProfile.model_validate(data)
        key = ("llm", profile, tuple(sorted((k, _fingerprint(v)) for k, v in overrides.items())))
        return self._service(key, lambda: _create("llm", self, profile, prof))

    def llm_set_key(self, provider: str, api_key: str, model: str | None = None, profile: str = "default") -> None:
        """Use ``api_key`` (and ``model``) for ``profile`` in this context only; nothing is saved.

        Example: ``context.llm_set_key("openai", "sk-...", model="gpt-4o-mini")``
        """
        from pydantic import SecretStr

        from aether_prefect.services.llm._providers import default_base_url, normalize

        if not isinstance(api_key, str) or not api_key:
            raise TypeError("api_key must be a non-empty str")
        base = self.llm_profile(profile)
        data: dict[str, Any] = {k: getattr(base, k) for k in AetherLLMProfile.model_fields} if base else {}
        try:
            provider = normalize(provider)
        except ValueError as exc:
            from aether_prefect.errors import ValidationError

            raise ValidationError(str(exc)) from None
        if base is None or base.provider != provider:
            data["base_url"] = default_base_url(provider) or data.get("base_url")
        data.update(provider=provider, api_key=SecretStr(api_key))
        if model:
            data["model"] = model
        self._llm_keys[profile] = AetherLLMProfile.model_validate(data)
        for key in [k for k in self._services if isinstance(k, tuple) and k[:2] == ("llm", profile)]:
            self._services.pop(key)  # next llm(profile) builds a client with the new key

    def mcp_servers(self) -> dict[str, AetherMCPServer]:
        """MCP servers this context can reach, by name: mcp= override > config.

        Example: ``sorted(context.mcp_servers())  # ["default", "files"]``
        """
        from aether_prefect._registration import registered_mcp

        ov = self.overrides.mcp
        servers = {**self.config.mcp, **registered_mcp()}
        if isinstance(ov, AetherMCPServer):
            servers["default"] = ov
        elif isinstance(ov, dict):
            servers.update(ov)
        return servers

    def mcp(self, name: str = "default") -> Any:
        """An MCP client for the server configured as ``name``; the session opens on first use.

        Example: ``tools = await context.mcp("files").list_tools()``
        """
        ov = self.overrides.mcp
        if ov is not None and not isinstance(ov, (AetherMCPServer, dict)):
            return ov
        servers = self.mcp_servers()
        server = servers.get(name)
        if server is None:
            raise ServiceNotConfigured(
                f"MCP server {name!r}",
                block_type="AetherMCPServer",
                how=(
                    f"add it to AetherConfig(mcp={{{name!r}: AetherMCPServer(command=...) or AetherMCPServer(transport='http', url=...)}})"
                    f" (configured servers: {', '.join(sorted(servers)) or 'none'})"
                ),
            )
        return self._service(("mcp", name), lambda: _create("mcp", self, name, server))

    def indices(self) -> Any:
        """AetherGraph 0.1.0a15's name for the retrieval service: the RAG service (``context.rag``).

        Example: ``hits = await context.indices().search(corpus_id, "refunds")``
        """
        return self.rag

    def kb(self) -> Any:
        """AetherGraph 0.1.0a15's knowledge-base accessor: the RAG service (``context.rag``).

        Example: ``answer = await context.kb().answer(corpus_id, "How long do refunds take?")``
        """
        return self.rag

    def svc(self, name: str) -> Any:
        """The custom service registered as ``name`` (KeyError if none).

        Example: ``context.svc("materials")`` after ``register_context_service("materials", MaterialsDB())``
        """
        from aether_prefect.services.base import get_service

        return get_service(name)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        from aether_prefect.services.base import ServiceHandle, get_service, registered_services

        if name in registered_services():
            return ServiceHandle(name, get_service(name))
        raise AttributeError(
            f"NodeContext has no attribute or service {name!r}; register a custom service with "
            f"register_context_service({name!r}, service)"
        )

    # -- lifecycle ------------------------------------------------------------

    async def aclose(self) -> None:
        """Close every service this context opened (reverse order); safe to call twice.

        Example: ``context = await build_adhoc_context(); ...; await context.aclose()``
        """
        if self._closed:
            return
        self._closed = True
        owned, self._owned = self._owned, []
        self._services.clear()
        for svc in reversed(owned):
            close = getattr(svc, "aclose", None)
            if close is None:
                continue
            try:
                await close()
            except Exception as exc:  # noqa: BLE001 - closing must reach every service
                _log.warning("closing %s failed: %s", type(svc).__name__, exc)
        from aether_prefect._prefect import events

        # Send the Prefect events this context's services queued (the memory mirror) before the caller goes
        # on: a script then exits clean (no "Still processing items") and none is lost at exit.
        if not await events.aflush():
            _log.warning("Prefect events from %r not sent yet; Prefect retries at process exit", self)

    def close_nowait(self) -> bool:
        """Close on the calling thread if no service needs an event loop to close and no Prefect event is waiting
        to be sent (True); else close what can be closed so (last opened first, as :meth:`aclose`) and leave the
        rest open (False: call :meth:`close`).

        Saves sync callers a hop to the portal loop (#21: a sync task that saved artifacts and counted in the KV).

        Example: ``if not context.close_nowait(): context.close()``
        """
        from aether_prefect._prefect import events

        remaining = list(self._owned)
        while remaining:
            svc = remaining[-1]
            if hasattr(svc, "aclose"):
                close = getattr(svc, "close_blocking", None)
                try:
                    if close is None or not close():
                        break
                except Exception as exc:  # noqa: BLE001 - closing must reach every service
                    _log.warning("closing %s failed: %s", type(svc).__name__, exc)
            remaining.pop()
        self._owned = remaining
        if remaining or events.pending():
            return False
        self._closed = True
        self._services.clear()
        return True

    def close(self) -> None:
        """Blocking twin of :meth:`aclose`.

        Example: ``context.close()  # from sync code, instead of await context.aclose()``
        """
        from aether_prefect._sync import run_sync

        run_sync(self.aclose())
