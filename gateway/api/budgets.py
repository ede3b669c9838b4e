"""``GET /v1/budgets``: each tenant's budget, what it spent of it this period, and when it resets.

An admin key (or an open gateway) sees every tenant with a budget given or a spend counted,
or the one named by ``?tenantId=``; another key sees its own tenant's. Money is exact decimal
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
    if asked is not None or not principal.admin:
        tenants = [state.auth.tenant_for(principal, asked)]
    else:
        tenants = ledger.tenants() if ledger is not None else []
    standings = [ledger.standing(t) for t in tenants] if ledger is not None else []
    body = {
        "object": "list",
        "data": [standing_json(s) for s in standings if s is not None],
        "complete": ledger.complete if ledger is not None else True,
    }
    return web.Response(body=orjson.dumps(body), content_type="application/json")
