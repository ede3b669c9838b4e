"""The rule a tenant id of the configuration follows (per-tenant budgets and rate limits), as an
API key's tenant and a request's ``tenantId``: printable, no blank at either end, at most what
every store holds (``gateway.events.INDEXED_TEXT``). A tenant no call could bill is refused at
start rather than silently never matched."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.events import INDEXED_TEXT

if TYPE_CHECKING:
    from gateway.metadata_scopes import MetadataScoped

_TENANT = re.compile(r"\S(.*\S)?", re.DOTALL)
T = TypeVar("T")


def check_tenant_ids(tenants: Mapping[str, T]) -> Mapping[str, T]:
    """``tenants`` as given, or a ValueError naming the first id no call could bill."""
    for tenant in tenants:
        if not _TENANT.fullmatch(tenant) or len(tenant) > INDEXED_TEXT or not tenant.isprintable():
            raise ValueError(
                f"{tenant[:80]!r} is not a tenant id (1 to {INDEXED_TEXT} printable characters, no blank at "
                "either end: no call could bill it)"
            )
    return tenants


class PerTenant(BaseModel, Generic[T]):
    """A setting per tenant id, and a default for every tenant not listed (budgets, rate limits)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: the setting of each tenant named
    tenants: dict[str, T] = Field(default_factory=dict)
    #: the setting of every tenant not in ``tenants`` (None: none, unlimited)
    default: T | None = None

    @field_validator("tenants")
    @classmethod
    def _tenant_ids(cls, tenants: dict[str, T]) -> dict[str, T]:
        check_tenant_ids(tenants)
        return tenants

    @property
    def enabled(self) -> bool:
        return bool(self.tenants) or self.default is not None

    def for_tenant(self, tenant: str) -> T | None:
        setting = self.tenants.get(tenant)
        return setting if setting is not None else self.default


S = TypeVar("S", bound="MetadataScoped")


class PerTenantAndScope(PerTenant[T], Generic[T, S]):
    """A setting per tenant id and a default (:class:`PerTenant`), and the settings of the calls
    carrying given metadata pairs (``metadata``: of one tenant, or of every tenant's together)."""

    #: the settings of the calls carrying given metadata pairs, at most one for the same calls
    metadata: list[S] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_a_scope(self) -> PerTenantAndScope[T, S]:
        from gateway.metadata_scopes import one_a_scope

        one_a_scope(self.metadata)
        return self

    @property
    def enabled(self) -> bool:
        return super().enabled or bool(self.metadata)
