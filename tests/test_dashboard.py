"""deploy/grafana/market-backend.json: a dashboard Grafana's own model reads without
losing a key, whose every query returns data from a real Prometheus scraping the real
processes, and which draws every alert rule's threshold on a panel of its metric.

Grafana itself is not installable here (no Debian package, no server on PyPI or npm), so
the structure is checked with Grafana's foundation SDK (the dashboard model generated
from Grafana's schema) and the queries with Prometheus, as Grafana would send them.
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as redis
import yaml
from grafana_foundation_sdk.cog import runtime
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import prometheus as prometheus_query
from grafana_foundation_sdk.models.dashboard import Dashboard

from outbox import ENTITY_PERMISSIONS_EVENTS, MARKETS_EVENTS
from scripts.dashboard_preview import (
    data_panels,
    expand,
    grafana_variables,
    render_from_prometheus,
    screenshot,
)
from tests.conftest import DATABASE_URL, REDIS_URL, emptied_database
from tests.support.approvals import poison
from tests.support.load import SteadyLoad
from tests.support.outbox import seed_outbox, wait_until
from tests.support.processes import ROOT
from tests.support.prometheus import PrometheusError, PrometheusServer, query
from tests.support.stack import Stack

DASHBOARD_PATH = ROOT / "deploy" / "grafana" / "market-backend.json"
ALERTS_PATH = ROOT / "deploy" / "prometheus" / "alerts.yml"
SEVERITY_COLORS = {"critical": "red", "warning": "orange", "info": "blue"}
METRIC = re.compile(r"\bmarket_\w+")
# The rule's first comparison with a number: `> 0.05`, `== 0`, `> on(stream) group_left 0.5 *`.
COMPARISON = re.compile(r"(?:>=|<=|==|!=|>|<)\s*(?:on\s*\([^)]*\)\s*group_left\s*)?(\d+(?:\.\d+)?)")
# Panels whose figure the flow must have moved off zero, not merely reported.
MUST_RISE = (
    "Request rate by route",
    "Relay takeovers (time range)",
    "Entries lost (15 min)",
    "Dead letters",
    "Inbound events by status",
    "Decision latency p50 / p99",
)
LOAD_S = float(os.environ.get("DASHBOARD_LOAD_S", "15"))
PREVIEW = ROOT / "docs" / "dashboard.png"


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD_PATH.read_text())
    return dashboard


# --- (a) structure: Grafana's model --------------------------------------------------------


def lost_in_round_trip(original: Any, decoded: Any, path: str = "") -> Iterator[str]:
    """Each key or value of `original` that the SDK's decode-encode did not give back."""
    if isinstance(original, dict):
        if not isinstance(decoded, dict):
            yield f"{path}: not an object to Grafana's model"
            return
        for key, value in original.items():
            if key not in decoded:
                yield f"{path}.{key}: unknown to Grafana's model"
            else:
                yield from lost_in_round_trip(value, decoded[key], f"{path}.{key}")
    elif isinstance(original, list):
        if not isinstance(decoded, list) or len(decoded) != len(original):
            yield f"{path}: list changed"
            return
        for index, (item, back) in enumerate(zip(original, decoded, strict=True)):
            yield from lost_in_round_trip(item, back, f"{path}[{index}]")
    elif original != decoded:
        yield f"{path}: {original!r} came back as {decoded!r}"


def overlaps(panels: list[dict[str, Any]]) -> Iterator[str]:
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel.get("gridPos")
        if grid is None:
            yield f"{panel['title']}: no gridPos"
            continue
        if grid["x"] < 0 or grid["x"] + grid["w"] > 24:
            yield f"{panel['title']}: outside the 24 columns"
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                if (x, y) in cells:
                    yield f"{panel['title']} overlaps {cells[(x, y)]}"
                    break
                cells[(x, y)] = panel["title"]


def structure_problems(raw: dict[str, Any]) -> list[str]:
    register_default_plugins()
    model = Dashboard.from_json(raw)
    problems = list(lost_in_round_trip(raw, json.loads(json.dumps(model, cls=JSONEncoder))))
    for key in ("uid", "title", "time", "refresh", "schemaVersion"):
        if not raw.get(key):
            problems.append(f"no {key}")
    variables = {v["name"]: v for v in raw.get("templating", {}).get("list", [])}
    if variables.get("datasource", {}).get("query") != "prometheus":
        problems.append("no ${datasource} variable of Prometheus data sources")
    panels = [*data_panels(raw), *(p for p in raw.get("panels", []) if p.get("type") == "row")]
    ids = [p.get("id") for p in panels]
    if len(set(ids)) != len(ids):
        problems.append(f"panel ids repeat: {ids}")
    problems += overlaps(panels)
    decoded = [p for p in model.panels or [] if getattr(p, "type_val", "row") != "row"]
    for panel in decoded:
        if runtime.panelcfg_config(panel.type_val) is None:
            problems.append(f"{panel.title}: panel type {panel.type_val!r} unknown to Grafana")
        for target in panel.targets or []:
            if not isinstance(target, prometheus_query.Dataquery):
                problems.append(f"{panel.title}: a target Grafana does not read as PromQL")
    for panel in data_panels(raw):
        sources = [panel.get("datasource"), *(t.get("datasource") for t in panel["targets"])]
        if any(s != {"type": "prometheus", "uid": "${datasource}"} for s in sources):
            problems.append(f"{panel['title']}: not on the ${{datasource}} variable")
        if not panel["targets"]:
            problems.append(f"{panel['title']}: no query")
    return problems


def test_grafana_model_reads_the_dashboard_without_losing_a_key() -> None:
    assert structure_problems(load_dashboard()) == []


def test_structure_check_catches_a_misspelt_key_a_foreign_query_and_an_overlap() -> None:
    broken = load_dashboard()
    first, second = data_panels(broken)[:2]
    first["gridpos"] = first.pop("gridPos")  # Grafana would drop it and stack the panel
    second["targets"][0]["datasource"] = {"type": "loki", "uid": "x"}
    second["gridPos"] = {**data_panels(broken)[2]["gridPos"]}
    problems = "\n".join(structure_problems(broken))
    assert "gridpos: unknown to Grafana's model" in problems
    assert "not on the ${datasource} variable" in problems
    assert "overlaps" in problems


# --- (c) alert thresholds drawn --------------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS_PATH.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def panel_thresholds(panel: Mapping[str, Any]) -> set[tuple[float, str]]:
    steps = panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [])
    return {(float(s["value"]), s["color"]) for s in steps if s.get("value") is not None}


def undrawn_alerts(dashboard: dict[str, Any], rules: list[dict[str, Any]]) -> list[str]:
    """Each rule with no panel that queries every metric of its expression and draws a
    threshold at the rule's number, in its severity's colour, as a line."""
    undrawn = []
    for rule in rules:
        metrics = set(METRIC.findall(rule["expr"]))
        found = COMPARISON.search(rule["expr"])
        assert found and metrics, f"{rule['alert']}: no metric or comparison to draw"
        line = (float(found.group(1)), SEVERITY_COLORS[rule["labels"]["severity"]])
        drawn = [
            panel
            for panel in data_panels(dashboard)
            if metrics <= set(METRIC.findall(" ".join(t["expr"] for t in panel["targets"])))
            and line in panel_thresholds(panel)
            and (
                panel["type"] == "stat"
                or panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] != "off"
            )
        ]
        if not drawn:
            undrawn.append(f"{rule['alert']}: {sorted(metrics)} at {line}")
    return undrawn


def test_every_alert_rule_is_drawn_at_its_threshold_on_a_panel_of_its_metrics() -> None:
    rules = alert_rules()
    assert len(rules) == 6
    assert undrawn_alerts(load_dashboard(), rules) == []


def test_a_threshold_moved_in_alerts_yml_or_the_dashboard_is_caught() -> None:
    rules = alert_rules()
    moved_rule = copy.deepcopy(rules)
    failed_rate = next(r for r in moved_rule if r["alert"] == "FailedEventRateHigh")
    failed_rate["expr"] = failed_rate["expr"].replace("> 0.05", "> 0.10")
    assert undrawn_alerts(load_dashboard(), moved_rule) == [
        "FailedEventRateHigh: ['market_decisions_refused_recent', "
        "'market_processed_events_recent'] at (0.1, 'red')"
    ]
    moved_line = load_dashboard()
    for panel in data_panels(moved_line):
        for step in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]:
            if step["value"] == 0.9:
                step["value"] = 0.8
    assert [u.split(":")[0] for u in undrawn_alerts(moved_line, rules)] == ["StreamNearTrimLimit"]


# --- (b) every query returns data from the running service -----------------------------------


@pytest.fixture(scope="module")
async def stack(log_dir: Path) -> AsyncIterator[Stack]:
    """The whole service with a standby relay (for a takeover), a short markets:events
    (for entries lost to a group that never reads), and decisions dead-lettered fast."""
    client = redis.Redis.from_url(REDIS_URL)
    await client.flushdb()
    # A reader outside the service, which never reads: what is trimmed is lost to it.
    await client.xgroup_create(MARKETS_EVENTS, "slow-reader", id="0", mkstream=True)
    await client.aclose()
    async with emptied_database(DATABASE_URL):
        pass
    options = {
        "METRICS_REFRESH_INTERVAL_S": "1",
        "STREAM_MAXLEN": f"{MARKETS_EVENTS}=50",
        "MAX_DELIVERIES": "2",
    }
    with Stack(DATABASE_URL, REDIS_URL, log_dir, standby_relay=True, env=options) as running:
        yield running


@pytest.fixture(scope="module")
def prometheus(stack: Stack, log_dir: Path) -> Iterator[PrometheusServer]:
    server = PrometheusServer([f"{stack.api_url}/metrics"], log_dir)
    server.start()
    try:
        yield server
    finally:
        server.destroy()


async def run_flow(stack: Stack) -> None:
    """Registrations and decisions (approved and rejected, at load), a decision that
    fails every delivery (dead-lettered), outbox rows enough to trim markets:events past
    the slow reader, and the leading relay killed (the standby takes over)."""
    load = SteadyLoad(stack.api_url, stack.epc_url, random.Random(17), registrations_per_s=4)
    try:
        await load.run(LOAD_S)
    finally:
        await load.aclose()
    assert load.accepted.markets and not load.accepted.unexpected
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        fields: dict[Any, Any] = poison(sorted(load.accepted.markets)[0], f"poison-{uuid.uuid4()}")
        await client.xadd(ENTITY_PERMISSIONS_EVENTS, fields)
    finally:
        await client.aclose()


async def trim_and_take_over(stack: Stack) -> None:
    connection = await asyncpg.connect(DATABASE_URL)
    try:
        await seed_outbox(connection, 300)
        await connection.execute("NOTIFY outbox")
    finally:
        await connection.close()
    stack.stop("relay")  # SIGKILL: its session ends, the standby's lock attempt wins


def panel_queries(dashboard: dict[str, Any], range_s: float) -> list[tuple[str, str]]:
    variables = grafana_variables(range_s, interval_s=1)
    return [
        (panel["title"], expand(target["expr"], variables))
        for panel in data_panels(dashboard)
        for target in panel["targets"]
    ]


async def empty_queries(http: httpx.AsyncClient, queries: list[tuple[str, str]]) -> list[str]:
    """The queries with no result now. A query Prometheus refuses raises: no reason to wait."""
    empty = []
    for title, expr in queries:
        try:
            result = await query(http, expr)
        except PrometheusError as refused:
            raise AssertionError(f"{title}: {expr}: {refused}") from None
        if not result:
            empty.append(f"{title}: {expr}")
    return empty


def risen(queries: list[tuple[str, str]], range_s: float) -> list[tuple[str, str]]:
    """The MUST_RISE panels' queries, as: was it above 0 at some point of the range."""
    window = grafana_variables(range_s, interval_s=1)["__range"]
    return [
        (title, f"max_over_time(({expr})[{window}:1s]) > 0")
        for title, expr in queries
        if title in MUST_RISE
    ]


@pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="prometheus not installed (Debian: apt-get install prometheus)",
)
async def test_every_panel_query_returns_data_from_prometheus_scraping_the_service(
    stack: Stack, prometheus: PrometheusServer, log_dir: Path
) -> None:
    started = time.time()
    await run_flow(stack)
    await trim_and_take_over(stack)
    dashboard = load_dashboard()
    async with httpx.AsyncClient(base_url=prometheus.url, timeout=10) as http:
        waiting: list[str] = []

        async def all_answered() -> bool:
            nonlocal waiting
            range_s = time.time() - started
            queries = panel_queries(dashboard, range_s)
            waiting = await empty_queries(http, queries + risen(queries, range_s))
            return not waiting

        try:
            await wait_until(all_answered, 90, "every panel's query to return data")
        except AssertionError:
            raise AssertionError("no data for:\n" + "\n".join(waiting)) from None
        assert len(panel_queries(dashboard, 60)) >= 25
        # The check tells a broken query and a misspelt metric from a working one.
        with pytest.raises(PrometheusError, match="bad_data"):
            await query(http, "sum by (path) (rate(market_requests_total[$__rate_interval]))")
        assert await empty_queries(http, [("typo", "market_outbox_backlogg")])
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        page = await render_from_prometheus(prometheus.url, dashboard, started, time.time())
        (log_dir / "dashboard.html").write_text(page)
        await screenshot(page, PREVIEW)
