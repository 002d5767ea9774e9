"""The demo's main job: a small sales ETL with parallel extracts, a flaky op and a report.

``runcore demo`` runs it on the embedded SQLite default. It is also a worked example of the
API: upstream ops named by parameter, ``context.log`` fields, a retry policy, a pool, tags.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import runcore as rc

Row = dict[str, Any]

#: Seconds each op pretends to work, so the live view has something to show.
PACE = float(os.environ.get("RUNCORE_DEMO_PACE", "0.4"))


def _work(scale: float = 1.0) -> None:
    time.sleep(PACE * scale * random.uniform(0.7, 1.3))


@rc.op(tags={"source": "orders_api"})
def extract_orders(context: rc.OpContext) -> list[Row]:
    """Pull the day's orders."""
    _work()
    rng = random.Random(7)
    orders = [
        {"id": i, "customer": rng.randrange(40), "amount": round(rng.uniform(5, 500), 2)}
        for i in range(500)
    ]
    context.log.info("fetched orders", count=len(orders))
    return orders


@rc.op(tags={"source": "crm"})
def extract_customers(context: rc.OpContext) -> dict[int, str]:
    """Pull customers and their regions."""
    _work(1.3)
    regions = ["north", "south", "east", "west"]
    customers = {i: regions[i % len(regions)] for i in range(40)}
    context.log.info("fetched customers", count=len(customers))
    return customers


@rc.op
def clean_orders(context: rc.OpContext, extract_orders: list[Row]) -> list[Row]:
    """Drop tiny orders (test purchases)."""
    _work(0.6)
    kept = [o for o in extract_orders if float(o["amount"]) >= 10]
    context.log.info("cleaned orders", kept=len(kept), dropped=len(extract_orders) - len(kept))
    return kept


_flaky_calls: dict[str, int] = {}


@rc.op(pool="warehouse", retry_policy=rc.RetryPolicy(max_retries=2, delay=0.2))
def join_regions(
    context: rc.OpContext, clean_orders: list[Row], extract_customers: dict[int, str]
) -> list[Row]:
    """Attach each order's region; the warehouse drops the first connection of every run."""
    _work(0.8)
    calls = _flaky_calls.get(context.run_id, 0) + 1
    _flaky_calls[context.run_id] = calls
    if calls == 1:
        raise ConnectionError("warehouse connection reset by peer")
    joined = [{**o, "region": extract_customers[int(o["customer"])]} for o in clean_orders]
    context.log.info("joined", rows=len(joined), attempt=context.attempt)
    return joined


@rc.op
def revenue_by_region(context: rc.OpContext, join_regions: list[Row]) -> dict[str, float]:
    """Sum revenue per region."""
    _work(0.5)
    totals: dict[str, float] = {}
    for row in join_regions:
        region = str(row["region"])
        totals[region] = round(totals.get(region, 0.0) + float(row["amount"]), 2)
    context.log.info("aggregated", regions=len(totals))
    return totals


@rc.op
def top_customers(context: rc.OpContext, join_regions: list[Row]) -> list[int]:
    """The five biggest spenders."""
    _work(0.7)
    spend: dict[int, float] = {}
    for row in join_regions:
        cust = int(row["customer"])
        spend[cust] = spend.get(cust, 0.0) + float(row["amount"])
    top = sorted(spend, key=lambda c: spend[c], reverse=True)[:5]
    context.log.info("ranked customers", top=top)
    return top


@rc.op
def publish_report(
    context: rc.OpContext, revenue_by_region: dict[str, float], top_customers: list[int]
) -> str:
    """Write the daily report."""
    _work(0.4)
    lines = [
        f"{region:>6}: {amount:>10.2f}" for region, amount in sorted(revenue_by_region.items())
    ]
    report = "revenue by region\n" + "\n".join(lines) + f"\ntop customers: {top_customers}"
    context.log.info("report published", chars=len(report))
    return report


daily_sales = rc.job(
    "daily_sales",
    [
        extract_orders,
        extract_customers,
        clean_orders,
        join_regions,
        revenue_by_region,
        top_customers,
        publish_report,
    ],
    tags={"team": "analytics"},
    executor=rc.ThreadPoolExecutor(max_concurrent=4),
    description="Daily sales ETL: extract, clean, join, aggregate, publish.",
)

defs = rc.Definitions(jobs=[daily_sales])
