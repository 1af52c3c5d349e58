"""A PostgreSQL server of a test's own, which it may stop and start again."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from scripts.services import ensure_databases, start_postgres, stop_postgres
from tests.support.netns import IsolatedHost
from tests.support.processes import free_port


class PostgresServer:
    def __init__(
        self,
        database: str = "marketdb_test",
        *,
        listen: str = "127.0.0.1",
        trusted_networks: tuple[str, ...] = (),
    ) -> None:
        """`listen` and `trusted_networks`: see scripts.services.start_postgres."""
        self.home = Path(tempfile.mkdtemp(prefix="market-postgres-"))
        self._listen = listen
        self._trusted = trusted_networks
        os.chmod(self.home, 0o755)  # the server may run as the `postgres` user
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/{database}"
        self._database = database

    @classmethod
    def reachable_from(cls, host: IsolatedHost) -> PostgresServer:
        """A server that also listens on this side of `host`'s link and trusts it."""
        return cls(listen=f"127.0.0.1,{host.host_address}", trusted_networks=(host.network,))

    async def start(self) -> None:
        start_postgres(self.home, self.port, listen=self._listen, trusted_networks=self._trusted)
        await ensure_databases(self.url, [self._database])

    def stop(self) -> None:
        stop_postgres(self.home)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)
