"""A preview of deploy/grafana/market-backend.json, drawn without Grafana.

Grafana cannot be installed here (no Debian package, no PyPI or npm server), so this
reads the dashboard JSON, runs each panel's PromQL against a real Prometheus
(query_range, Grafana's variables substituted as Grafana would), and draws the panels
in the dashboard's grid as one self-contained HTML page of SVG (no scripts, no CDN),
which Chromium screenshots. It is a preview of what the JSON asks for, not Grafana's
rendering:

    python -m scripts.dashboard_preview --prometheus http://127.0.0.1:9090 \
        --minutes 10 --out docs/dashboard.png
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import async_playwright

from tests.support.browser import ARGS, CHROMIUM
from tests.support.prometheus import SCRAPE_INTERVAL_S, query_range

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "market-backend.json"
WIDTH_PX = 1600
GRID_COLUMNS = 24
ROW_UNIT_PX = 30  # Grafana's grid height unit
POINTS = 240  # samples per series across the time range
PALETTE = ("#73bf69", "#f2cc0c", "#5794f2", "#ff780a", "#b877d9", "#37872d", "#fade2a", "#8ab8ff")
LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def grafana_variables(range_s: float, interval_s: float) -> dict[str, str]:
    """Grafana's built-in variables for a time range: $__rate_interval is
    max($__interval + scrape interval, 4 x scrape interval), as Grafana documents it."""
    rate_interval_s = max(interval_s + SCRAPE_INTERVAL_S, 4 * SCRAPE_INTERVAL_S)
    return {
        "__rate_interval": f"{math.ceil(rate_interval_s)}s",
        "__interval": f"{math.ceil(interval_s)}s",
        "__range": f"{math.ceil(range_s)}s",
    }


def expand(expr: str, variables: Mapping[str, str]) -> str:
    """$name and ${name} replaced; an unknown variable is left for Prometheus to refuse."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return variables.get(name, match.group(0))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def data_panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every panel that queries (rows only group), nested rows' panels included."""
    found: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            found.extend(data_panels(panel))
        else:
            found.append(panel)
    return found


def legend(template: str, labels: Mapping[str, str]) -> str:
    if not template:
        return "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    return LEGEND_LABEL.sub(lambda m: labels.get(m.group(1), ""), template)


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]


async def panel_series(
    http: httpx.AsyncClient, panel: Mapping[str, Any], start: float, end: float
) -> list[Series]:
    step_s = max(1.0, (end - start) / POINTS)
    variables = grafana_variables(end - start, step_s)
    series = []
    for target in panel.get("targets", []):
        expr = expand(target["expr"], variables)
        for result in await query_range(http, expr, start, end, step_s):
            labels = {k: v for k, v in result["metric"].items() if k != "__name__"}
            points = [(float(t), float(v)) for t, v in result["values"] if math.isfinite(float(v))]
            series.append(Series(legend(target.get("legendFormat", ""), labels), points))
    return series


def formatted(value: float, unit: str) -> str:
    if unit == "percentunit":
        return f"{value * 100:.1f}%"
    suffix = {"s": " s", "reqps": " req/s"}.get(unit, "")
    for scale, prefix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{prefix}{suffix}"
    text = f"{value:.0f}" if abs(value) >= 100 or value == int(value) else f"{value:.3g}"
    return text + suffix


def thresholds(panel: Mapping[str, Any]) -> list[tuple[float, str]]:
    steps = panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [])
    return [(float(s["value"]), s["color"]) for s in steps if s.get("value") is not None]


def timeseries_svg(
    panel: Mapping[str, Any],
    series: list[Series],
    span: tuple[float, float],
    size: tuple[float, float],
) -> str:
    """Lines over the time span (start, end) in a (width, height) box, thresholds dashed."""
    (start, end), (width, height) = span, size
    unit = panel["fieldConfig"]["defaults"].get("unit", "short")
    lines = thresholds(panel)
    values = [v for s in series for _, v in s.points] + [v for v, _ in lines]
    low, high = min([0.0, *values]), max([1e-9, *values])
    high += (high - low) * 0.08
    left, bottom = 64.0, 18.0

    def x(t: float) -> float:
        return left + (t - start) / max(end - start, 1e-9) * (width - left - 8)

    def y(v: float) -> float:
        return (height - bottom) - (v - low) / (high - low) * (height - bottom - 6)

    parts = [f'<svg width="{width:.0f}" height="{height:.0f}">']
    for i in range(5):
        v = low + (high - low) * i / 4
        parts.append(
            f'<line x1="{left}" x2="{width - 8}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y(v) + 4:.1f}" class="axis" text-anchor="end">'
            f"{html.escape(formatted(v, unit))}</text>"
        )
    for n in range(5):
        t = start + (end - start) * n / 4
        parts.append(
            f'<text x="{x(t):.1f}" y="{height - 4}" class="axis" '
            f'text-anchor="{("start", "middle", "middle", "middle", "end")[n]}">'
            f"{time.strftime('%H:%M:%S', time.gmtime(t))}</text>"
        )
    for index, s in enumerate(series):
        path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in s.points)
        color = PALETTE[index % len(PALETTE)]
        parts.append(f'<polyline points="{path}" stroke="{color}" class="series"/>')
    for value, color in lines:
        parts.append(
            f'<line x1="{left}" x2="{width - 8}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
            f'stroke="{html.escape(color)}" class="threshold"/>'
        )
    parts.append("</svg>")
    return "".join(parts)


def stat_html(panel: Mapping[str, Any], series: list[Series]) -> str:
    unit = panel["fieldConfig"]["defaults"].get("unit", "short")
    cells = []
    for s in series:
        last = s.points[-1][1] if s.points else float("nan")
        color = next((c for v, c in reversed(thresholds(panel)) if last >= v), "transparent")
        cells.append(
            f'<div class="stat" style="background:{html.escape(color)}"><div class="big">'
            f"{html.escape(formatted(last, unit))}</div><div>{html.escape(s.name)}</div></div>"
        )
    return "".join(cells) or '<div class="nodata">No data</div>'


def render(
    dashboard: Mapping[str, Any], data: Mapping[int, list[Series]], start: float, end: float
) -> str:
    column_px = WIDTH_PX / GRID_COLUMNS
    blocks = []
    bottom = 0.0
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        left, top = grid["x"] * column_px, grid["y"] * ROW_UNIT_PX
        width, height = grid["w"] * column_px - 8, grid["h"] * ROW_UNIT_PX - 8
        bottom = max(bottom, top + height)
        title = html.escape(panel.get("title", ""))
        style = f"left:{left:.0f}px;top:{top:.0f}px;width:{width:.0f}px;height:{height:.0f}px"
        if panel["type"] == "row":
            blocks.append(f'<div class="row" style="{style}">{title}</div>')
            continue
        series = data.get(panel["id"], [])
        if panel["type"] == "stat":
            body = stat_html(panel, series)
        else:
            chart = timeseries_svg(panel, series, (start, end), (width - 16, height - 78))
            keys = "".join(
                f'<span><i style="background:{PALETTE[i % len(PALETTE)]}"></i>'
                f"{html.escape(s.name)}</span>"
                for i, s in enumerate(series[:10])
            )
            body = chart + f'<div class="legend">{keys}</div>'
        blocks.append(f'<div class="panel" style="{style}"><h3>{title}</h3>{body}</div>')
    span = f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(start))} to " + time.strftime(
        "%H:%M:%S UTC", time.gmtime(end)
    )
    return PAGE.format(
        title=html.escape(dashboard.get("title", "")),
        span=span,
        height=f"{bottom + 16:.0f}",
        width=WIDTH_PX,
        panels="".join(blocks),
    )


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>
body {{ margin:0; background:#111217; color:#ccccdc; font:12px sans-serif; }}
header {{ padding:10px 16px; font-size:16px; }}
header small {{ color:#8e8e8e; font-size:12px; margin-left:12px; }}
main {{ position:relative; width:{width}px; height:{height}px; margin:0 8px; }}
.panel {{ position:absolute; background:#181b1f; border:1px solid #2c3235; border-radius:2px;
  padding:4px 8px; box-sizing:border-box; overflow:hidden; }}
.row {{ position:absolute; font-size:14px; font-weight:bold; color:#d8d9da; }}
h3 {{ margin:2px 0 4px; font-size:13px; font-weight:500; color:#d8d9da; }}
.grid {{ stroke:#2c3235; }} .axis {{ fill:#8e8e8e; font-size:10px; }}
.series {{ fill:none; stroke-width:1.5; }}
.threshold {{ stroke-width:1.5; stroke-dasharray:6 4; }}
.legend span {{ margin-right:10px; white-space:nowrap; display:inline-block; }}
.legend i {{ display:inline-block; width:12px; height:3px; margin-right:4px;
  vertical-align:middle; }}
.stat {{ display:inline-block; margin:4px; padding:6px 12px; border-radius:2px;
  min-width:90px; text-align:center; }}
.big {{ font-size:30px; font-weight:500; color:#fff; }}
.nodata {{ color:#8e8e8e; padding:20px; }}
</style></head><body><header>{title}<small>preview from deploy/grafana/market-backend.json,
queried from Prometheus: {span}</small></header><main>{panels}</main></body></html>"""


async def render_from_prometheus(
    prometheus_url: str, dashboard: Mapping[str, Any], start: float, end: float
) -> str:
    async with httpx.AsyncClient(base_url=prometheus_url, timeout=30) as http:
        data = {p["id"]: await panel_series(http, p, start, end) for p in data_panels(dashboard)}
    return render(dashboard, data, start, end)


async def screenshot(page_html: str, out: Path) -> None:
    """The page as a PNG, by the system's Chromium (Playwright's own browsers unused)."""
    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": WIDTH_PX + 16, "height": 900})
            await page.set_content(page_html)
            await page.screenshot(path=str(out), full_page=True)
        finally:
            await browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", required=True, help="Prometheus base URL")
    parser.add_argument("--minutes", type=float, default=15, help="time range, ending now")
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    parser.add_argument("--html", type=Path, help="also keep the page itself here")
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD)
    args = parser.parse_args()
    dashboard = json.loads(args.dashboard.read_text())
    end = time.time()
    start = end - args.minutes * 60
    page_html = asyncio.run(render_from_prometheus(args.prometheus, dashboard, start, end))
    if args.html:
        args.html.write_text(page_html)
    asyncio.run(screenshot(page_html, args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
