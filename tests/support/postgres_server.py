"""A PostgreSQL server of a test's own, which it may stop and start again."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from scripts.services import ensure_databases, start_postgres, stop_postgres
from tests.support.processes import free_port


class PostgresServer:
    def __init__(self, database: str = "marketdb_test") -> None:
        self.home = Path(tempfile.mkdtemp(prefix="market-postgres-"))
        os.chmod(self.home, 0o755)  # the server may run as the `postgres` user
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/{database}"
        self._database = database

    async def start(self) -> None:
        start_postgres(self.home, self.port)
        await ensure_databases(self.url, [self._database])

    def stop(self) -> None:
        stop_postgres(self.home)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)
