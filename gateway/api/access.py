"""What one API key may call: the models it may ask for and the providers its calls may reach.

A platform gives a team's key the models it pays for (``models: [gpt-4o-mini, "claude-3-5-*"]``)
and keeps a tenant's data with the vendors it may go to (``providers: [azure, ollama]``, data
residency). A model is named as the client asks for it, exactly, or by a prefix ending in
``*``; a snapshot is a model of its own (``gpt-4o`` does not allow ``gpt-4o-2024-08-06``,
``gpt-4o*`` does). The providers bound the candidates the router may try, fallbacks
included: a call never reaches a provider its key may not use, whatever its model's group or
its pin says. A key with neither may call everything, as a gateway without keys does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway import errors


@dataclass(frozen=True, slots=True)
class Access:
    #: exact names, and prefixes (the patterns' text before their ``*``); None: every model
    names: frozenset[str] | None
    prefixes: tuple[str, ...]
    #: None: every provider
    providers: frozenset[str] | None

    @classmethod
    def of(cls, models: Sequence[str] | None, providers: Sequence[str] | None) -> Access | None:
        """The key's access, or None for a key without limits."""
        if models is None and providers is None:
            return None
        names = None if models is None else frozenset(m for m in models if not m.endswith("*"))
        prefixes = () if models is None else tuple(m[:-1] for m in models if m.endswith("*"))
        return cls(names, prefixes, None if providers is None else frozenset(providers))

    def allows_model(self, model: str) -> bool:
        if self.names is None:
            return True
        return model in self.names or model.startswith(self.prefixes)

    def check(self, model: str, pinned: str | None) -> None:
        """Raise for a model the key may not ask for, or a provider it may not pin."""
        if not self.allows_model(model):
            raise errors.ModelNotAllowed(f"This API key may not use the model {model!r}", param="model")
        if pinned is not None and self.providers is not None and pinned not in self.providers:
            raise errors.ProviderNotAllowed(f"This API key may not use the provider {pinned!r}", param="provider")

    def serving(self, providers: Iterable[str]) -> list[str]:
        """Of ``providers``, those the key may use (in their order)."""
        allowed = self.providers
        return [p for p in providers if allowed is None or p in allowed]
