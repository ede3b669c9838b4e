"""The rule a tenant id of the configuration follows (per-tenant budgets and rate limits), as an
API key's tenant and a request's ``tenantId``: printable, no blank at either end, at most what
every store holds (``gateway.events.INDEXED_TEXT``). A tenant no call could bill is refused at
start rather than silently never matched."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeVar

from gateway.events import INDEXED_TEXT

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
