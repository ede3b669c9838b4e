"""``GET /v1/budgets``: each tenant's budget and each metadata budget, what was spent of it this
period, and when it resets.

An admin key (or an open gateway) sees every tenant with a budget given or a spend counted and
every metadata budget, or the ones of the tenant named by ``?tenantId=``; another key sees its
own tenant's (a metadata budget of every tenant together only an admin sees: its spend is
theirs). Money is exact decimal
text; ``complete`` is false while a starting replica is still reading the period's events
from Kafka (its numbers may then be short)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.api.query import only_parameters
from gateway.api.state import STATE
from gateway.api.validation import tenant_field
from gateway.budgets.ledger import Standing
from gateway.pricing.base import money_text


def _iso(moment: Any) -> str:
    return str(moment.strftime("%Y-%m-%dT%H:%M:%SZ"))


def standing_json(standing: Standing) -> dict[str, Any]:
    return {
        "object": "budget",
        "tenantId": standing.tenant,
        "metadata": standing.metadata,
        "period": standing.budget.period,
        "limitUsd": money_text(standing.budget.usd),
        "spentUsd": money_text(standing.spent),
        "remainingUsd": money_text(standing.remaining),
        "exceeded": standing.exceeded,
        "periodStart": _iso(standing.start),
        "resetsAt": _iso(standing.resets),
    }


async def budgets(request: web.Request) -> web.Response:
    state = request.app[STATE]
    principal = state.auth.authenticate(request)
    only_parameters(request.query, ("tenantId",))
    # as a body's tenantId: a tenant no call can bill has no budget to show
    asked = tenant_field(request.query)
    ledger = state.budgets
    standings: list[Standing | None] = []
    if ledger is not None:
        if asked is not None or not principal.admin:
            tenant = state.auth.tenant_for(principal, asked)
            standings = [ledger.standing(tenant), *ledger.scoped_standings(tenant)]
        else:
            standings = [*map(ledger.standing, ledger.tenants()), *ledger.scoped_standings(None)]
    body = {
        "object": "list",
        "data": [standing_json(s) for s in standings if s is not None],
        "complete": ledger.complete if ledger is not None else True,
    }
    return web.Response(body=orjson.dumps(body), content_type="application/json")
