"""A Prometheus server of a test's own (Debian's `prometheus`), scraping given /metrics
URLs every second, in a temporary directory, on a free port; and its HTTP query API."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.support.processes import free_port

SCRAPE_INTERVAL_S = 1


class PrometheusError(Exception):
    """The query API refused a query (bad PromQL, a bad range): its error type and text."""


class PrometheusServer:
    def __init__(self, metrics_urls: list[str], log_dir: Path) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is not installed (Debian: apt-get install prometheus)"
        self._binary = binary
        self._dir = Path(tempfile.mkdtemp(prefix="market-prometheus-"))
        self._log_path = log_dir / "prometheus.log"
        self.url = f"http://127.0.0.1:{free_port()}"
        targets = [urlsplit(url) for url in metrics_urls]
        # JSON is YAML: no YAML writer needed for the one file Prometheus reads.
        config = {
            "global": {
                "scrape_interval": f"{SCRAPE_INTERVAL_S}s",
                "evaluation_interval": f"{SCRAPE_INTERVAL_S}s",
            },
            "scrape_configs": [
                {
                    "job_name": "market-backend",
                    "metrics_path": target.path or "/metrics",
                    "static_configs": [{"targets": [target.netloc]}],
                }
                for target in targets
            ],
        }
        self._config = self._dir / "prometheus.yml"
        self._config.write_text(json.dumps(config))
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        with self._log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    self._binary,
                    f"--config.file={self._config}",
                    f"--storage.tsdb.path={self._dir / 'data'}",
                    f"--web.listen-address={urlsplit(self.url).netloc}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{self._log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"prometheus not ready:\n{self._log_path.read_text()[-3000:]}")

    def destroy(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None
        shutil.rmtree(self._dir, ignore_errors=True)


async def query(http: httpx.AsyncClient, expr: str, at: float | None = None) -> list[Any]:
    """An instant query's result (a list of series, or a scalar's [time, value])."""
    params = {"query": expr} | ({"time": str(at)} if at is not None else {})
    return await _data(await http.get("/api/v1/query", params=params))


async def query_range(
    http: httpx.AsyncClient, expr: str, start: float, end: float, step_s: float
) -> list[Any]:
    params = {"query": expr, "start": str(start), "end": str(end), "step": str(step_s)}
    return await _data(await http.get("/api/v1/query_range", params=params))


async def _data(response: httpx.Response) -> list[Any]:
    body = response.json()
    if body.get("status") != "success":
        raise PrometheusError(f"{body.get('errorType')}: {body.get('error')}")
    result = body["data"]["result"]
    return list(result)
