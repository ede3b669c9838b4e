"""The budget ledger's cost a call with metadata budgets: ``check`` (before every call) and
``observe_record`` (every record of the log a replica follows), against the same calls with
tenant budgets only (the baseline), in one run, for budgets of the shapes a platform writes::

    python -m tests.bench.budget_check [--budgets 1000] [--calls 20000] [--smoke]

- ``teams of one tenant``: ``{tenant: acme, match: {env: prod, team: tN}}``, N budgets;
- ``one team of each tenant``: ``{tenant: tN, match: {team: search}}``;
- ``a key each``: ``{match: {kN: x}}``, N sets of keys (a scan over them cost ~0.6 µs each a call);
- ``a feature of every tenant``: ``{match: {feature: fN}}``, with the calls' pairs among them.

Every call carries four pairs (team, env, feature, region); half of them fall under budgets (a
quarter under each shape of team budget, the half under each of the others). Each shape's spend
is checked against what its calls cost (exits non-zero if not).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from gateway.budgets.config import Budget, BudgetSettings, MetadataBudget
from gateway.budgets.ledger import SpendLedger
from tests.bench.common import say, table
from tests.support.events import usage_event

COST = Decimal("0.0000125")
NOW = datetime.now(UTC)


def shapes(count: int) -> dict[str, list[dict[str, Any]]]:
    return {
        "tenant budgets only (baseline)": [],
        "teams of one tenant": [
            {"tenant": "acme", "match": {"env": "prod", "team": f"t{n}"}, "usd": "1000000"} for n in range(count)
        ],
        "one team of each tenant": [
            {"tenant": f"tenant{n}", "match": {"team": "search"}, "usd": "1000000"} for n in range(count)
        ],
        "a key each": [{"match": {f"k{n}": "x"}, "usd": "1000000"} for n in range(count)],
        "a feature of every tenant": [{"match": {"feature": f"f{n}"}, "usd": "1000000"} for n in range(count)],
    }


def call(n: int, count: int) -> tuple[str, dict[str, str]]:
    """Call ``n``: every other one falls under a budget of each shape."""
    hit = n % 2 == 0
    tenant = "acme" if hit and n % 4 == 0 else f"tenant{n % count}" if hit else "nobody"
    team = "search" if tenant != "acme" else f"t{n % count}"
    metadata = {
        "team": team if hit else "none",
        "env": "prod",
        "feature": f"f{n % count}" if hit else "none",
        "region": "eu",
    }
    if hit:
        metadata[f"k{n % count}"] = "x"
    return tenant, metadata


def best(runs: int, work: Callable[[], None]) -> float:
    times = []
    for _ in range(runs):
        began = time.process_time()
        work()
        times.append(time.process_time() - began)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=int, default=1000, help="budgets of each shape")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run (CI)")
    args = parser.parse_args()
    count, calls, runs = (100, 2000, 1) if args.smoke else (args.budgets, args.calls, args.runs)
    made = [call(n, count) for n in range(calls)]
    records = [usage_event(tenant, COST, NOW, metadata=metadata).to_json() for tenant, metadata in made]
    rows: list[list[str]] = []
    baseline: tuple[float, float] | None = None
    for name, budgets in shapes(count).items():
        config = BudgetSettings(default=Budget(usd=1_000_000), metadata=[MetadataBudget(**b) for b in budgets])

        def check(config: BudgetSettings = config) -> None:
            ledger = SpendLedger(config)
            for tenant, metadata in made:
                ledger.check(tenant, metadata)

        def observe(config: BudgetSettings = config) -> None:
            ledger = SpendLedger(config)
            for raw in records:
                ledger.observe_record(raw)

        checked = best(runs, check) / calls * 1e6
        observed = best(runs, observe) / calls * 1e6
        ledger = SpendLedger(config)
        for raw in records:
            ledger.observe_record(raw)
        counted = sum((s.spent for s in ledger.scoped_standings(None)), Decimal(0))
        index = ledger._index
        expected = COST * sum(len(index.matching(tenant, metadata)) if index else 0 for tenant, metadata in made)
        brute = COST * sum(
            1
            for tenant, metadata in made
            for budget in config.metadata
            if budget.tenant in (None, tenant) and all(metadata.get(k) == v for k, v in budget.match.items())
        )
        if not counted == expected == brute:
            raise SystemExit(f"{name}: counted {counted}, matched {expected}, by the rule {brute}")
        if baseline is None:
            baseline = (checked, observed)
        rows.append(
            [
                name,
                f"{len(budgets):,}",
                f"{checked:.2f}",
                f"{checked / baseline[0]:.2f}",
                f"{observed:.2f}",
                f"{observed / baseline[1]:.2f}",
            ]
        )
    say(f"{calls:,} calls of 4 pairs each; every shape counted what the rule covers")
    print(
        table(
            ["budgets", "count", "check µs", "x baseline", "observe_record µs", "x baseline"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
