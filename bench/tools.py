"""The machine's own load generators and limits: wrk, pgbench, redis-benchmark."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent


def require(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise SystemExit(f"bench: {tool} not found: install it (Debian: apt-get install {package})")
    return path


def wrk(
    url: str,
    seconds: int,
    connections: int = 32,
    threads: int = 2,
    script: Path | None = HERE / "register.lua",
) -> dict[str, Any]:
    """wrk running `script` (by default POSTing the register body), or GETting `url` when
    None; requests/s and latency percentiles."""
    out = subprocess.run(
        [
            require("wrk", "wrk"),
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            *(("-s", str(script)) if script is not None else ()),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),  # type: ignore[index]
        "p50_ms": _ms(re.search(r"\s50%\s+([\d.]+\w+)", out)[1]),  # type: ignore[index]
        "p99_ms": _ms(re.search(r"\s99%\s+([\d.]+\w+)", out)[1]),  # type: ignore[index]
        "non_2xx": int(errors[1]) if errors else 0,
    }


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def pgbench(
    database_url: str,
    script: Path,
    *,
    seconds: int | None = None,
    transactions: int | None = None,
    clients: int = 32,
    variables: dict[str, int | str] | None = None,
    protocol: str = "simple",
) -> float:
    """Transactions per second of `script` at `clients` connections, for `seconds` or for
    `transactions` each; `variables` are the script's -D definitions."""
    parts = urlsplit(database_url)
    length = f"-T{seconds}" if transactions is None else f"-t{transactions}"
    defines = [f"-D{name}={value}" for name, value in (variables or {}).items()]
    out = subprocess.run(
        [
            require("pgbench", "postgresql-client"),
            "-n",
            f"-c{clients}",
            f"-j{min(clients, 2)}",
            length,
            f"-M{protocol}",
            *defines,
            "-f",
            str(script),
            "-h",
            parts.hostname or "127.0.0.1",
            "-p",
            str(parts.port or 5432),
            "-U",
            parts.username or "postgres",
            parts.path.lstrip("/"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(re.search(r"tps = ([\d.]+)", out)[1])  # type: ignore[index]


def redis_xadd_limit(port: int, entries: int, fields: dict[str, str], batch: int = 500) -> float:
    """redis-benchmark of XADD with the relay's fields, pipelined `batch` deep; entries/s."""
    args = [item for pair in fields.items() for item in pair]
    out = subprocess.run(
        [
            require("redis-benchmark", "redis-tools"),
            "-p",
            str(port),
            "-n",
            str(entries),
            "-P",
            str(batch),
            "-q",
            "XADD",
            "bench:xadd",
            "MAXLEN",
            "~",
            "1000000",
            "*",
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(re.search(r"([\d.]+) requests per second", out)[1])  # type: ignore[index]
