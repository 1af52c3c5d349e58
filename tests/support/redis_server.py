"""A Redis server of a test's own, which it may stop, restart empty, or start again."""

from __future__ import annotations

import shutil
import subprocess

from scripts.services import ephemeral_redis_args, wait_for_redis
from tests.support.processes import free_port


class RedisServer:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (Debian: apt-get install redis-server)"
        self._binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # No persistence: a restart loses everything, as on the machines we deploy to.
        self._process = subprocess.Popen(
            [self._binary, *ephemeral_redis_args(self.port)], stdout=subprocess.DEVNULL
        )
        assert wait_for_redis(self.url, 10), f"redis-server did not start on port {self.port}"

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def restart_empty(self) -> None:
        self.stop()
        self.start()
