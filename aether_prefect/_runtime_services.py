"""AetherGraph's ``current_services()`` container, as a view onto this process's registrations.

AetherGraph scripts reach its service container after ``start_server`` to configure it:
``svc.channels.set_default_channel_key(key)``, ``svc.llm.configure_profile(...)``,
``svc.rag.set_llm_client(client)``, ``svc.rag.set_index_backend(...)``. Here each of those is the matching
registration call of :mod:`aether_prefect._registration` (same checks, same effect: every context this
process builds afterwards sees it). Other container parts do not exist on Prefect: reaching one raises
AttributeError naming what exists, never a silent stand-in.
"""

from __future__ import annotations

from typing import Any

from aether_prefect import _registration as reg
from aether_prefect.blocks import AetherLLMProfile


class _Part:
    """A container part: only the listed methods; any other name is an AttributeError naming them."""

    _part = "part"

    def __getattr__(self, name: str) -> Any:
        methods = sorted(n for n in [*type(self).__dict__, *self.__dict__] if not n.startswith("_"))
        raise AttributeError(
            f"current_services().{self._part} has no {name!r} on aether-prefect; it has {', '.join(methods)}"
        )


class ChannelsView(_Part):
    """``svc.channels``: the default channel and aliases (``set_default_channel`` / ``set_channel_alias``)."""

    _part = "channels"

    def set_default_channel_key(self, channel_key: str) -> None:
        """The channel ``context.channel()`` uses in this process.

        Example: ``current_services().channels.set_default_channel_key("console:stdin")``
        """
        reg.set_default_channel(channel_key)

    def register_alias(self, alias: str, target: str) -> None:
        """``context.channel(alias)`` means the channel ``target``.

        Example: ``current_services().channels.register_alias("ops", "ui")``
        """
        reg.set_channel_alias(alias, target)

    def get_default_channel_key(self) -> str | None:
        """The registered default channel key (None: the Prefect UI).

        Example: ``current_services().channels.get_default_channel_key()``
        """
        return reg.channel_key(None)


class LLMView(_Part):
    """``svc.llm``: LLM profiles for this process (``register_llm_client``)."""

    _part = "llm"

    def configure_profile(self, profile: str = "default", *, provider: str | None = None, model: str | None = None,
                          embed_model: str | None = None, base_url: str | None = None, api_key: str | None = None,
                          timeout: float | None = None) -> AetherLLMProfile:
        """Register the LLM profile ``profile`` (as ``register_llm_client``).

        Example: ``current_services().llm.configure_profile("fast", provider="openai", model="gpt-4o-mini")``
        """
        return reg.register_llm_client(profile, provider or "openai", model,  # type: ignore[arg-type]
                                       embed_model=embed_model, base_url=base_url, api_key=api_key, timeout=timeout)


class RagView(_Part):
    """``svc.rag``: the RAG service's LLM and index (``set_rag_llm_client`` / ``set_rag_index_backend``)."""

    _part = "rag"

    def set_llm_client(self, client: AetherLLMProfile) -> AetherLLMProfile:
        """The profile RAG embeds and answers with.

        Example: ``current_services().rag.set_llm_client(register_llm_client("rag", "openai", "gpt-4o-mini"))``
        """
        return reg.set_rag_llm_client(client)

    def set_index_backend(self, backend: str | None = None, index_path: str | None = None,
                          dim: int | None = None) -> reg.RagIndexSettings:
        """Record the vector-index choice (the built-in index; ``dim`` enforced).

        Example: ``current_services().rag.set_index_backend("faiss", dim=1536)``
        """
        return reg.set_rag_index_backend(backend, index_path=index_path, dim=dim)


class RuntimeServices(_Part):
    """What ``current_services()`` returns: ``.channels``, ``.llm``, ``.rag``."""

    _part = "(container)"

    def __init__(self) -> None:
        self.channels = ChannelsView()
        self.llm = LLMView()
        self.rag = RagView()


def current_services() -> RuntimeServices:
    """AetherGraph's service container, as a view onto this process's registrations.

    >>> current_services().channels.set_default_channel_key("console:stdin")
    """
    return RuntimeServices()
