"""`make bench`: figures for the flow on this machine, as a table and bench/results.json.

QUICK=1 runs smaller sizes. Figures, not pass/fail: targets are printed beside them.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import consumer, relay
from bench.support import BenchEnv

RESULTS = Path(__file__).resolve().parent / "results.json"


async def run(quick: bool) -> dict[str, Any]:
    async with BenchEnv() as env:
        backlog = 50_000 if quick else 200_000
        drain = await relay.drain_rate(env, backlog)
        drain["postgres_limit_events_per_s"] = (await relay.postgres_drain_limit(env, backlog))[
            "events_per_s"
        ]
        drain["ratio_to_postgres_limit"] = (
            drain["events_per_s"] / drain["postgres_limit_events_per_s"]
        )
        latency = await relay.commit_to_xadd_latency(env, 1000, 5 if quick else 20)
        decisions = 10_000 if quick else 40_000
        consumers = [
            await consumer.decisions_per_second(env, processes, decisions) for processes in (1, 2)
        ]
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "quick": quick,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "relay_drain": drain,
        "relay_latency": latency,
        "consumer": consumers,
    }


def table(results: dict[str, Any]) -> str:
    drain, latency = results["relay_drain"], results["relay_latency"]
    one, two = results["consumer"]
    rows = [
        ("figure", "value", "target"),
        (
            f"relay drain, {drain['rows']:,}-row backlog",
            f"{drain['events_per_s']:,.0f} events/s",
            ">= 50,000 events/s",
        ),
        (
            "  same SQL with no Redis (PostgreSQL's limit)",
            f"{drain['postgres_limit_events_per_s']:,.0f} events/s",
            "",
        ),
        ("  ratio relay / PostgreSQL limit", f"{drain['ratio_to_postgres_limit']:.2f}", ""),
        (
            f"relay commit->XADD at {latency['rate_per_s']:,}/s, p50",
            f"{latency['p50_ms']:.1f} ms",
            "",
        ),
        ("relay commit->XADD, p99", f"{latency['p99_ms']:.1f} ms", "<= 20 ms"),
        (
            f"consumer, 1 process, {one['decisions']:,} decisions",
            f"{one['decisions_per_s']:,.0f} decisions/s",
            "",
        ),
        ("consumer, 2 processes", f"{two['decisions_per_s']:,.0f} decisions/s", ">= 5,000/s"),
        (
            "consumer peak RSS (largest process)",
            f"{max(one['peak_rss_mb'], two['peak_rss_mb']):.0f} MB",
            "<= 100 MB",
        ),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def main() -> None:
    quick = os.environ.get("QUICK", "") not in ("", "0")
    results = asyncio.run(run(quick))
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\nwritten to {RESULTS}", flush=True)


if __name__ == "__main__":
    main()
