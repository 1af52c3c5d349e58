"""A Redis server of a test's own, which it may stop, restart empty, or start again, and
restart from a snapshot it took earlier (as a server restored from an older RDB file)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from scripts.services import ephemeral_redis_args, wait_for_redis
from tests.support.processes import free_port


class RedisServer:
    def __init__(self, bind: str = "127.0.0.1") -> None:
        """`bind`: the addresses it listens on, space separated (loopback by default)."""
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (Debian: apt-get install redis-server)"
        self._binary = binary
        self._bind = bind
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        # Where SAVE writes and a start reads dump.rdb: empty unless a test took a snapshot.
        self._dir = Path(tempfile.mkdtemp(prefix="market-redis-"))
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # No automatic persistence: a restart loses everything, as on the machines we
        # deploy to, unless the test took a snapshot with SAVE (see snapshot()).
        args = ephemeral_redis_args(self.port)
        if self._bind != "127.0.0.1":
            # Clients beyond loopback (a test's isolated host): no password on a test server.
            args[args.index("--bind") + 1] = self._bind
            args += ["--protected-mode", "no"]
        self._process = subprocess.Popen(
            [self._binary, *args, "--dir", str(self._dir)], stdout=subprocess.DEVNULL
        )
        assert wait_for_redis(self.url, 10), f"redis-server did not start on port {self.port}"

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections and answers nothing (a hung host)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def restart_empty(self) -> None:
        self.stop()
        self.forget_snapshot()
        self.start()

    def snapshot(self) -> None:
        """SAVE: what the server holds now is what restart_from_snapshot() brings back."""
        subprocess.run(
            ["redis-cli", "-p", str(self.port), "SAVE"], check=True, stdout=subprocess.DEVNULL
        )

    def restart_from_snapshot(self) -> None:
        """Killed, then started from the last snapshot: a new run_id, older data."""
        self.stop()
        self.start()

    def forget_snapshot(self) -> None:
        (self._dir / "dump.rdb").unlink(missing_ok=True)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
