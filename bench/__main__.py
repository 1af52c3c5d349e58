"""`make bench`: the flow's figures on this machine, as a table and bench/results.json.

Each figure is printed beside the same run's limit of the machine where one exists
(pgbench of the same SQL, redis-benchmark of the same XADD), so that a figure means
something on a noisy shared box: the ratio says how much of the machine the service
turns into work. QUICK=1 runs shorter and smaller (about three minutes). Figures, not
pass/fail: each target is printed beside its figure.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import consumer, flow, reads, relay
from bench.support import BenchEnv

RESULTS = Path(__file__).resolve().parent / "results.json"
# webhook -> active is measured at each of these rates until its p99 passes 100 ms.
KNEE_RATES = (300, 400, 500, 600, 800, 1000, 1300, 1600)
KNEE_RATES_QUICK = (300, 600, 1200)


async def run(quick: bool) -> dict[str, Any]:
    seconds = 5 if quick else 15
    async with BenchEnv() as env:
        register = await flow.register(env, seconds)
        backlog = 50_000 if quick else 200_000
        drain = await relay.drain_with_limits(env, backlog)
        latency = await relay.commit_to_xadd_latency(env, 1000, seconds)
        decisions = 10_000 if quick else 40_000
        consumers = [
            await consumer.decisions_per_second(env, processes, decisions, seconds)
            for processes in (1, 2)
        ]
        end_to_end = await flow.webhook_to_active(env, 200, seconds)
        knee = await flow.knee(env, seconds, KNEE_RATES_QUICK if quick else KNEE_RATES)
        market_read = await reads.market_read(env, seconds)
        staleness = await reads.read_after_decision(env, 300 if quick else 1000, 100)
    rss = {
        "api": max(
            register["api_peak_rss_mb"],
            end_to_end["peak_rss_mb"]["api"],
            market_read["peak_rss_mb"],
        ),
        "relay": end_to_end["peak_rss_mb"]["relay"],
        "consumer": max(
            end_to_end["peak_rss_mb"]["consumer"], *(c["peak_rss_mb"] for c in consumers)
        ),
    }
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "quick": quick,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "register": register,
        "relay_drain": drain,
        "relay_latency": latency,
        "consumer": consumers,
        "end_to_end": end_to_end,
        "end_to_end_knee": knee,
        "market_read": market_read,
        "read_after_decision": staleness,
        "peak_rss_mb": rss,
    }


def table(r: dict[str, Any]) -> str:
    reg, drain, lat, e2e = r["register"], r["relay_drain"], r["relay_latency"], r["end_to_end"]
    read, stale, knee = r["market_read"], r["read_after_decision"], r["end_to_end_knee"]
    one, two = r["consumer"]
    rss = r["peak_rss_mb"]
    rows = [
        ("figure", "value", "same run's limit", "ratio", "target"),
        (
            f"register, concurrency 32 (wrk), {reg['api_workers']} API workers",
            f"{reg['requests_per_s']:,.0f} req/s",
            f"{reg['pgbench_tps']:,.0f} tx/s pgbench",
            f"{reg['ratio']:.2f}",
            ">= 0.8 of pgbench",
        ),
        (
            "  register latency p50 / p99",
            f"{reg['p50_ms']:.1f} / {reg['p99_ms']:.1f} ms",
            "",
            "",
            "",
        ),
        (
            f"relay drain, {drain['rows']:,}-row backlog",
            f"{drain['events_per_s']:,.0f} ev/s",
            f"{drain['pgbench_events_per_s']:,.0f} ev/s pgbench drain SQL",
            f"{drain['ratio_to_pgbench']:.2f}",
            ">= 50,000 ev/s",
        ),
        (
            "",
            "",
            f"{drain['redis_xadd_limit_per_s']:,.0f} XADD/s redis-benchmark",
            f"{drain['ratio_to_redis']:.2f}",
            "",
        ),
        (
            f"relay commit->XADD at {lat['rate_per_s']:,}/s, p50 / p99",
            f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} ms",
            "",
            "",
            "p99 <= 20 ms",
        ),
        *(
            (
                f"consumer, {c['processes']} process{'es' if c['processes'] > 1 else ''}",
                f"{c['decisions_per_s']:,.0f} decisions/s",
                f"{c['pgbench_decisions_per_s']:,.0f}/s pgbench same transaction",
                f"{c['ratio']:.2f}",
                target,
            )
            for c, target in ((one, ""), (two, ">= 5,000/s"))
        ),
        (
            f"webhook -> active at {e2e['rate_per_s']}/s, p50 / p99",
            f"{e2e['p50_ms']:.1f} / {e2e['p99_ms']:.1f} ms",
            "",
            "",
            "p99 <= 50 ms",
        ),
        (
            "  of which webhook / relay / consumer, p99",
            " / ".join(
                f"{e2e['stages_p50_p99_ms'][k][1]:.0f}"
                for k in ("webhook_ms", "relay_ms", "consumer_ms")
            )
            + " ms",
            "",
            "",
            "",
        ),
        (
            f"  highest rate with p99 <= {knee['limit_p99_ms']:.0f} ms (the knee)",
            f"{knee['rate_per_s']:,}/s" if knee["rate_per_s"] else f"below {KNEE_RATES[0]}/s",
            "",
            "",
            "",
        ),
        *(
            (
                f"    at {p['rate_per_s']:,}/s, p50 / p99",
                f"{p['p50_ms']:.1f} / {p['p99_ms']:.1f} ms",
                "",
                "",
                "",
            )
            for p in knee["points"]
        ),
        (
            f"GET a decided market, concurrency 32, {read['workers']} API workers",
            f"{read['requests_per_s']:,.0f} req/s",
            f"{read['health_requests_per_s']:,.0f} req/s GET /health",
            f"{read['ratio']:.2f}",
            ">= 0.8 of /health",
        ),
        (
            "  pending markets (their views in Redis)",
            f"{read['pending_requests_per_s']:,.0f} req/s",
            "",
            f"{read['pending_requests_per_s'] / read['health_requests_per_s']:.2f}",
            "",
        ),
        (
            "  both, with the cache off",
            f"{read['uncached_requests_per_s']:,.0f} req/s",
            "",
            f"{read['uncached_requests_per_s'] / read['health_requests_per_s']:.2f}",
            "",
        ),
        (
            f"decision applied -> read shows it, p99 / max ({stale['decisions']:,})",
            f"{stale['stale_p99_ms']:.1f} / {stale['stale_max_ms']:.1f} ms",
            "",
            "",
            f"<= 2,000 ms; {stale['went_back']} went back",
        ),
        (
            "peak RSS api (per worker) / relay / consumer",
            f"{rss['api']:.0f} / {rss['relay']:.0f} / {rss['consumer']:.0f} MB",
            "",
            "",
            "<= 100 MB each",
        ),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
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
