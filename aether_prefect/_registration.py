"""AetherGraph's runtime registration calls, mapped onto our configuration for the current process.

``register_llm_client``, ``set_rag_llm_client``, ``set_rag_index_backend``, ``set_default_channel``,
``set_channel_alias``, ``register_mcp_client``, ``set_mcp_service``: each records a Block (or a
setting) in this process's registry. Every context built afterwards in this process sees it, above the
saved ``AetherConfig`` and the environment and below a context's own runtime overrides
(``open_session(llm=...)``): the same precedence the overrides have. Nothing is saved to Prefect; a
worker of a distributed task runner needs the same calls at import time (or saved Blocks).
"""

from __future__ import annotations

import shlex
import threading
from typing import Any, Literal

from pydantic import BaseModel, SecretStr

from aether_prefect.blocks import AetherLLMProfile, AetherMCPServer
from aether_prefect.errors import ValidationError

#: The LLM profile name ``set_rag_llm_client`` registers; the RAG service prefers it over ``default``.
RAG_PROFILE = "rag"

_lock = threading.RLock()
_llm: dict[str, AetherLLMProfile] = {}
_mcp: dict[str, AetherMCPServer | Any] = {}
_channel_default: str | None = None
_channel_aliases: dict[str, str] = {}


class RagIndexSettings(BaseModel):
    """What ``set_rag_index_backend`` recorded: the backend AetherGraph asked for and the vector size to expect."""

    requested_backend: str
    backend: Literal["builtin"] = "builtin"
    dim: int | None = None


_rag_index: RagIndexSettings | None = None


def _check_str(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{name} must be a non-empty str, got {value!r}")
    return value.strip()


def llm_profile_block(
    provider: str, model: str | None, *, embed_model: str | None = None, base_url: str | None = None,
    api_key: str | SecretStr | None = None, timeout: float | None = None,
) -> AetherLLMProfile:
    """An ``AetherLLMProfile`` from AetherGraph's ``(provider, model, embed_model, base_url, api_key, timeout)``."""
    provider = _check_str(provider, "provider").lower()
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ValidationError(f"timeout must be a positive number of seconds, got {timeout!r}")
    data: dict[str, Any] = {"provider": provider, "model": model, "embed_model": embed_model}
    if base_url:
        data["base_url"] = base_url  # else the LLM service uses the provider's own URL
    if api_key is not None:
        data["api_key"] = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
    if timeout is not None:
        data["timeout_s"] = float(timeout)
    try:
        return AetherLLMProfile(**data)
    except Exception as exc:  # pydantic's message names the field; the key is a SecretStr, never shown
        raise ValidationError(f"invalid LLM profile for provider {provider!r}: {exc}") from None


def register_llm_client(
    profile: str, provider: str, model: str, embed_model: str | None = None, base_url: str | None = None,
    api_key: str | None = None, timeout: float | None = None,
) -> AetherLLMProfile:
    """Make ``context.llm(profile)`` use this provider/model in every context of this process.

    Returns the registered ``AetherLLMProfile`` (pass it to ``set_rag_llm_client(client=...)`` or save it
    as a Block). It overrides a profile of the same name in the saved config, like a runtime override.

    >>> register_llm_client("fast", "openai", "gpt-4o-mini", api_key="sk-...").model
    'gpt-4o-mini'
    """
    name = _check_str(profile, "profile")
    block = llm_profile_block(provider, _check_str(model, "model"), embed_model=embed_model, base_url=base_url,
                              api_key=api_key, timeout=timeout)
    with _lock:
        _llm[name] = block
    return block


set_llm_client = register_llm_client  # AetherGraph's older name


def set_rag_llm_client(
    client: AetherLLMProfile | None = None, *, provider: str | None = None, model: str | None = None,
    embed_model: str | None = None, base_url: str | None = None, api_key: str | None = None,
    timeout: float | None = None,
) -> AetherLLMProfile:
    """The LLM the RAG service embeds and answers with (profile ``"rag"``); without it RAG uses ``default``.

    ``client`` is a profile from ``register_llm_client`` (or any ``AetherLLMProfile``); otherwise the
    keywords describe one as ``register_llm_client`` does.

    >>> set_rag_llm_client(provider="openai", model="gpt-4o-mini", embed_model="text-embedding-3-small").embed_model
    'text-embedding-3-small'
    """
    if client is not None:
        if not isinstance(client, AetherLLMProfile):
            raise ValidationError(
                f"set_rag_llm_client(client=...) takes the profile register_llm_client returned (an AetherLLMProfile), "
                f"got {type(client).__name__}; or pass provider=/model=/embed_model=/base_url=/api_key="
            )
        block = client
    else:
        if provider is None:
            raise ValidationError("set_rag_llm_client needs client= or provider= (with model=, embed_model=, ...)")
        block = llm_profile_block(provider, model, embed_model=embed_model, base_url=base_url, api_key=api_key,
                                  timeout=timeout)
    with _lock:
        _llm[RAG_PROFILE] = block
    return block


def set_rag_index_backend(backend: str | None = None, index_path: str | None = None, dim: int | None = None) -> RagIndexSettings:
    """AetherGraph's vector-index choice ("sqlite", "faiss", ...): our RAG has one built-in index in the store.

    The backend name is recorded (``rag_index_settings()``), every name maps to the built-in index
    (a NumPy matrix per corpus, persisted in the object store, so ``faiss`` is not needed), and ``dim``
    is enforced: an embedding of another size raises instead of corrupting the corpus. ``index_path`` is
    ignored (the index lives in the configured object store).

    >>> set_rag_index_backend("faiss", dim=1536).backend
    'builtin'
    """
    del index_path
    name = _check_str(backend or "builtin", "backend").lower()
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
        raise ValidationError(f"dim must be a positive int or None, got {dim!r}")
    global _rag_index
    settings = RagIndexSettings(requested_backend=name, dim=dim)
    with _lock:
        _rag_index = settings
    return settings


def rag_index_settings() -> RagIndexSettings | None:
    """What ``set_rag_index_backend`` recorded in this process, or None."""
    return _rag_index


def _check_channel_key(key: Any, name: str = "key") -> str:
    """A channel key our channel service accepts; AetherGraph's ``console:<name>`` keys mean the console."""
    from aether_prefect.services.channel import _check_key

    key = _check_str(key, name)
    low = key.lower()
    if low.startswith("console:") and low not in ("console:stdin", "console:stdout"):
        key = "console"  # AetherGraph names console channels ("console:local"); there is one console here
    checked = _check_key(key)  # ValidationError naming the accepted keys (slack:..., telegram:... are not)
    assert checked is not None
    return checked


def set_default_channel(key: str) -> None:
    """The channel ``context.channel()`` uses when no key is given, in every context of this process.

    >>> set_default_channel("console:local")
    """
    global _channel_default
    with _lock:
        _channel_default = _check_channel_key(key)


def set_channel_alias(alias: str, key: str) -> None:
    """Let ``context.channel(alias)`` mean ``context.channel(key)`` in this process.

    >>> set_channel_alias("ops", "console:local")
    """
    a, k = _check_str(alias, "alias"), _check_channel_key(key)
    with _lock:
        _channel_aliases[a] = k


def channel_key(key: str | None = None) -> str | None:
    """``key`` with aliases resolved; with no key, the default set by ``set_default_channel`` (or None)."""
    with _lock:
        chosen = key if key is not None else _channel_default
        seen: set[str] = set()
        while chosen is not None and chosen in _channel_aliases and chosen not in seen:
            seen.add(chosen)
            chosen = _channel_aliases[chosen]
        return chosen


def channel_aliases() -> dict[str, str]:
    """The aliases registered in this process."""
    with _lock:
        return dict(_channel_aliases)


# -- MCP ----------------------------------------------------------------------


def StdioMCPClient(cmd: list[str] | str, env: dict[str, str] | None = None, timeout: float = 60.0) -> AetherMCPServer:  # noqa: N802
    """AetherGraph's stdio MCP client: an ``AetherMCPServer`` block running ``cmd`` (our client speaks the spec).

    >>> StdioMCPClient(["python", "server.py"]).command
    'python'
    """
    del timeout  # our client's timeouts come from the MCP SDK session
    argv = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
    if not argv or not all(isinstance(a, str) and a for a in argv):
        raise ValidationError(f"cmd must be a command line (a non-empty list of str), got {cmd!r}")
    return AetherMCPServer(transport="stdio", command=argv[0], args=argv[1:], env=dict(env) if env else None)


def HttpMCPClient(base_url: str, *, headers: dict[str, str] | None = None, timeout: float = 60.0) -> AetherMCPServer:  # noqa: N802
    """AetherGraph's HTTP MCP client: an ``AetherMCPServer`` block for the streamable HTTP endpoint ``base_url``."""
    del timeout
    data: dict[str, Any] = {"transport": "http", "url": _check_str(base_url, "base_url")}
    if headers:
        data["headers"] = dict(headers)
    return AetherMCPServer(**data)


class MCPService:
    """AetherGraph's MCP registry: named MCP servers (``AetherMCPServer`` blocks, e.g. from ``StdioMCPClient``).

    ``set_mcp_service(svc)`` makes its servers the ones ``context.mcp(name)`` reaches in this process.
    """

    def __init__(self, clients: dict[str, AetherMCPServer] | None = None, **_: Any) -> None:
        self._clients: dict[str, AetherMCPServer] = {}
        for name, client in (clients or {}).items():
            self.register(name, client)

    def register(self, name: str, client: AetherMCPServer) -> None:
        """Add (or replace) server ``name``."""
        self._clients[_check_str(name, "name")] = _check_mcp(client)

    def remove(self, name: str) -> None:
        """Forget server ``name``."""
        self._clients.pop(name, None)

    def has(self, name: str) -> bool:
        return name in self._clients

    def names(self) -> list[str]:
        return sorted(self._clients)

    list_clients = names

    def get(self, name: str = "default") -> AetherMCPServer:
        """The server block registered as ``name`` (KeyError naming the known ones)."""
        try:
            return self._clients[name]
        except KeyError:
            raise KeyError(f"no MCP server {name!r} in this MCPService (known: {', '.join(self.names()) or 'none'})") from None

    def __repr__(self) -> str:
        return f"MCPService(names={self.names()!r})"


def _check_mcp(client: Any) -> AetherMCPServer:
    if not isinstance(client, AetherMCPServer):
        raise ValidationError(
            f"an MCP client here is an AetherMCPServer block (StdioMCPClient([...]) / HttpMCPClient(url) build one), "
            f"got {type(client).__name__}"
        )
    return client


def register_mcp_client(name: str, client: AetherMCPServer) -> None:
    """Make ``context.mcp(name)`` reach ``client`` in every context of this process.

    >>> register_mcp_client("tools", StdioMCPClient(["python", "tools_server.py"]))
    """
    n, c = _check_str(name, "name"), _check_mcp(client)
    with _lock:
        _mcp[n] = c


def set_mcp_service(svc: MCPService) -> None:
    """Replace this process's registered MCP servers with those of ``svc``."""
    if not isinstance(svc, MCPService):
        raise ValidationError(f"set_mcp_service takes an MCPService, got {type(svc).__name__}")
    with _lock:
        _mcp.clear()
        _mcp.update(svc._clients)


def list_mcp_clients() -> list[str]:
    """Names of the MCP servers registered in this process."""
    with _lock:
        return sorted(_mcp)


# -- what contexts read ---------------------------------------------------------


def registered_llm(profile: str) -> AetherLLMProfile | None:
    """The profile registered as ``profile`` in this process, or None."""
    with _lock:
        return _llm.get(profile)


def registered_llm_names() -> list[str]:
    with _lock:
        return sorted(_llm)


def registered_mcp() -> dict[str, AetherMCPServer]:
    """MCP servers registered in this process, by name."""
    with _lock:
        return dict(_mcp)


def clear_registrations() -> None:
    """Forget every registration of this process (tests)."""
    global _channel_default, _rag_index
    with _lock:
        _llm.clear()
        _mcp.clear()
        _channel_aliases.clear()
        _channel_default = None
        _rag_index = None
