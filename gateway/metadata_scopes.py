"""Settings of the calls carrying given metadata pairs (budgets, rate limits): what one covers
(its tenant, or every tenant's calls together; its pairs), and the index that finds those a call
falls under from the call's own keys, however many are given."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cached_property
from typing import ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, field_validator

from gateway.api.metadata import metadata_problem
from gateway.safe_text import log_value
from gateway.tenant_ids import check_tenant_ids

#: what a setting of metadata pairs covers: its tenant (None: every tenant) and its pairs, sorted
Scope = tuple[str | None, tuple[tuple[str, str], ...]]
#: whose count (spend, requests): a tenant's (its id), or a setting of metadata pairs' (its scope)
Account = str | Scope


def account_name(account: Account) -> str:
    """An account as a log line names it: ``tenant acme``, ``tenant acme's team=search``,
    ``every tenant's feature=summarize``."""
    if isinstance(account, str):
        return f"tenant {log_value(account)}"
    tenant, pairs = account
    named = ", ".join(f"{log_value(key)}={log_value(value)}" for key, value in pairs)
    return f"tenant {log_value(tenant)}'s {named}" if tenant is not None else f"every tenant's {named}"


def account_fields(account: Account) -> dict[str, object]:
    """An account's fields in JSON logs."""
    if isinstance(account, str):
        return {"tenantId": account}
    tenant, pairs = account
    return {"tenantId": tenant, "metadata": dict(pairs)}


class MetadataScoped(BaseModel):
    """A setting of the calls whose metadata hold every pair of ``match``: of ``tenant``'s calls,
    or of every tenant's together when it is None."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    #: what the setting is, as its errors name it ("budget", "rate limit")
    kind: ClassVar[str] = "setting"

    #: the pairs a call's metadata must hold (others may be there too): 1 to 16, as a request's
    match: dict[str, str]
    #: the tenant whose calls it covers (None: every tenant's, together)
    tenant: str | None = None

    @field_validator("match")
    @classmethod
    def _pairs(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError(
                f"match: give the metadata pairs of the calls this {cls.kind} covers, e.g. {{team: search}}"
            )
        if (problem := metadata_problem(value)) is not None:
            raise ValueError(f"match: {problem.message}")
        return value

    @field_validator("tenant")
    @classmethod
    def _tenant_id(cls, value: str | None) -> str | None:
        if value is not None:
            check_tenant_ids({value: None})
        return value

    @cached_property
    def scope(self) -> Scope:
        """Its tenant and sorted pairs, made once (a private attribute cost 4.5 µs a read, through
        pydantic's ``__getattr__``: on the path of every call under a metadata setting)."""
        return self.tenant, tuple(sorted(self.match.items()))

    @property
    def pairs(self) -> str:
        """``env=prod, team=search``, as a message names the setting."""
        return ", ".join(f"{key}={value}" for key, value in self.scope[1])


def one_a_scope(settings: Sequence[MetadataScoped]) -> None:
    """A ValueError when two of ``settings`` cover the same calls (which would hold?)."""
    seen: set[Scope] = set()
    for setting in settings:
        if setting.scope in seen:
            whose = f"tenant {setting.tenant!r}" if setting.tenant is not None else "every tenant"
            raise ValueError(f"metadata: two {setting.kind}s for the calls of {whose} with {setting.pairs}: give one")
        seen.add(setting.scope)


T = TypeVar("T", bound=MetadataScoped)


class ScopeIndex(Generic[T]):
    """The settings of metadata pairs by the first of their keys (sorted), then by all those
    keys, then by their tenant (None: every tenant) and values: a call's metadata finds its
    settings with a lookup a key it has, and two a set of keys starting with it."""

    def __init__(self, settings: Iterable[T]) -> None:
        by_keys: dict[tuple[str, ...], dict[tuple[str | None, tuple[str, ...]], T]] = {}
        for setting in settings:
            tenant, pairs = setting.scope
            keys = tuple(key for key, _ in pairs)
            by_keys.setdefault(keys, {})[tenant, tuple(value for _, value in pairs)] = setting
        self._by_first: dict[str, list[tuple[tuple[str, ...], dict[tuple[str | None, tuple[str, ...]], T]]]] = {}
        for keys, found in by_keys.items():
            self._by_first.setdefault(keys[0], []).append((keys, found))

    def matching(self, tenant: str, metadata: dict[str, str]) -> list[T]:
        """The settings a call of ``tenant`` with ``metadata`` falls under: for each set of keys
        starting with a key of the call, the call's values of those keys name at most one setting
        of its tenant and one of every tenant."""
        found = []
        get = metadata.get
        by_first = self._by_first
        for first in metadata:
            for keys, settings in by_first.get(first, ()):
                values = tuple(map(get, keys))  # a key the call lacks is None: no setting's value
                setting = settings.get((tenant, values))  # type: ignore[arg-type]
                if setting is not None:
                    found.append(setting)
                setting = settings.get((None, values))  # type: ignore[arg-type]
                if setting is not None:
                    found.append(setting)
        return found
