"""`make services` on a machine where nothing answers: throw-away servers from the binaries,
which `make services-down` stops, saying so."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import asyncpg
import redis

from tests.support.processes import ROOT, free_port


def services(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scripts.services", command],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_services_start_throw_away_servers_when_none_answer() -> None:
    pg_port, redis_port = free_port(), free_port()
    local_dir = tempfile.mkdtemp(prefix="market-services-")
    os.chmod(local_dir, 0o755)  # the server may run as the `postgres` user
    env = {
        "LOCAL_SERVICES_DIR": local_dir,
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{pg_port}/marketdb",
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "TEST_DATABASE_URL": "",
        "BENCH_DATABASE_URL": "",
        "SOAK_DATABASE_URL": "",
    }
    try:
        started = services("up", env)
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"starting PostgreSQL on 127.0.0.1:{pg_port}" in started.stdout

        connection = await asyncpg.connect(env["DATABASE_URL"].replace("marketdb", "postgres"))
        databases = {
            r["datname"] for r in await connection.fetch("SELECT datname FROM pg_database")
        }
        await connection.close()
        assert {"marketdb", "marketdb_test", "marketdb_bench", "marketdb_soak"} <= databases
        assert redis.Redis(port=redis_port).ping()

        again = services("up", env)
        assert "PostgreSQL answers at DATABASE_URL" in again.stdout

        stopped = services("down", env)
        assert f"services: stopped the throw-away PostgreSQL (data in {local_dir}/postgres)" in (
            stopped.stdout
        )
        assert "services: stopped the throw-away Redis (pid " in stopped.stdout
        assert "nothing to stop: no throw-away server" in services("down", env).stdout
    finally:
        services("down", env)
        shutil.rmtree(local_dir, ignore_errors=True)
