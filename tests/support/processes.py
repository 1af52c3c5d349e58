"""Start the project's real processes (API, relay, consumer...) for a test and stop them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ManagedProcess:
    """A child process whose output goes to a log file, shown when something goes wrong."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        log_dir: Path,
        wrapper: tuple[str, ...] = (),
    ) -> None:
        """`wrapper`: a command the Python process runs under (`ip netns exec <ns>`)."""
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        # Processes of one name share a log across the session: this one's output starts
        # here, so that neither a wait nor a failure's tail reads an earlier process's lines.
        self._log_start = self._log.tell()
        self.process = subprocess.Popen(
            [*wrapper, sys.executable, *args],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_http_ok(self, url: str, timeout: float = 60.0) -> None:
        """Until `url` answers below 500; the deadline is generous because a start on a busy
        machine (the suite beside `make bench`) has been seen to take over 20 s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                if httpx.get(url, timeout=1).status_code < 500:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{self.name} did not answer {url}:\n{self.log_tail()}")

    def log_text(self) -> str:
        """What this process has written (not the processes of its name before it)."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_start)
            return log.read().decode(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 20.0, after: int = 0) -> int:
        """Wait until `text` appears in the log past offset `after`; returns where it ends."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log_text()
            found = log.find(text, after)
            if found >= 0:
                return found + len(text)
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited before logging {text!r}:\n{log[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"{self.name} did not log {text!r}:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def memory_mb(pid: int, field: str = "VmRSS") -> float:
    """A field of /proc/<pid>/status in MB: VmRSS now, or VmHWM, the peak so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise LookupError(f"no {field} for process {pid}")


def start_relay(env: dict[str, str], log_dir: Path, name: str = "relay") -> ManagedProcess:
    return ManagedProcess(name, ["-m", "relay"], env, log_dir)


def start_api(env: dict[str, str], log_dir: Path, name: str = "api") -> tuple[ManagedProcess, str]:
    port = free_port()
    process = ManagedProcess(name, ["-m", "app"], {**env, "HTTP_PORT": str(port)}, log_dir)
    base_url = f"http://127.0.0.1:{port}"
    try:
        process.wait_http_ok(f"{base_url}/health")
    except BaseException:
        process.kill()  # the caller never gets it to stop: it would outlive the suite
        raise
    return process, base_url
