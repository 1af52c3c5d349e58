"""The whole service as real processes: API, relay, two consumers, the poller, and the
Entity Permissions Core simulator, on a PostgreSQL and a Redis given to it.

Each process keeps its port and name across restarts, so a test (or the soak) can
kill -9 one at any moment and start it again exactly as an operator's supervisor would.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

from tests.support.netns import IsolatedHost
from tests.support.processes import ManagedProcess, free_port

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
EPC_API_KEY = "stack-epc-key"
CONSUMERS = ("consumer-0", "consumer-1")
# A worker's first line once its signal handlers are set: from then on SIGTERM is graceful.
READY_LINES = {
    "relay": "[relay] relay.",  # leading, or standing by
    "relay-standby": "[relay] relay.",
    "relay-isolated": "relay.outbox: leading",  # before the others start
    **{name: "approvals.consumer: consuming" for name in CONSUMERS},
    "poller": "inbound.poller:",
}


@dataclass(frozen=True)
class Command:
    args: list[str]
    env: dict[str, str]
    wrapper: tuple[str, ...] = ()  # e.g. `ip netns exec <ns>`: run on an isolated host


class Stack:
    def __init__(
        self,
        database_url: str,
        redis_url: str,
        log_dir: Path,
        *,
        webhook: bool = True,
        env: dict[str, str] | None = None,
        standby_relay: bool = False,
        isolated: IsolatedHost | None = None,
        poller_in_consumers: bool = False,
    ) -> None:
        """`webhook=False`: the simulator pushes nothing, so the poller is the only path.
        `standby_relay`: a second relay, standing by. `isolated`: the leading relay runs on
        that host (reaching PostgreSQL and Redis at its host address), `relay` stands by.
        `poller_in_consumers`: each consumer process also polls, as `make consume` does,
        instead of a poller process of its own."""
        self.api_url = f"http://127.0.0.1:{free_port()}"
        self.epc_url = f"http://127.0.0.1:{free_port()}"
        self.log_dir = log_dir
        self._env = {
            "APP_ENV": "test",
            "LOG_LEVEL": "INFO",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "WEBHOOK_SECRETS": WEBHOOK_SECRET,
            # A consumer killed holding entries is taken over within a second.
            "CLAIM_IDLE_MS": "1000",
            **(env or {}),
        }
        relays: dict[str, Command] = {"relay": Command(["-m", "relay"], {})}
        if isolated is not None:
            relays = {
                "relay-isolated": Command(
                    ["-m", "relay"],
                    {
                        name: self._env[name].replace("127.0.0.1", isolated.host_address)
                        for name in ("DATABASE_URL", "REDIS_URL")
                    },
                    isolated.wrapper,
                ),
                **relays,
            }
        if standby_relay:
            relays["relay-standby"] = Command(["-m", "relay"], {})
        polling = {
            "PERMISSIONS_SERVICE_BASE_URL": self.epc_url,
            "PERMISSIONS_SERVICE_API_KEY": EPC_API_KEY,
            "PERMISSIONS_POLL_INTERVAL_S": "0.2",
        }
        pollers = {} if poller_in_consumers else {"poller": Command(["-m", "app.inbound"], polling)}
        self._commands: dict[str, Command] = {
            "epc": Command(
                ["-m", "simulator"],
                {
                    "EPC_PORT": self.epc_url.rsplit(":", 1)[1],
                    "EPC_API_KEY": EPC_API_KEY,
                    **(
                        {
                            "EPC_WEBHOOK_URL": f"{self.api_url}/api/v1/webhooks/entity-permissions",
                            "EPC_WEBHOOK_SECRET": WEBHOOK_SECRET,
                        }
                        if webhook
                        else {}
                    ),
                },
            ),
            "api": Command(["-m", "app"], {"HTTP_PORT": self.api_url.rsplit(":", 1)[1]}),
            **relays,
            **{
                name: Command(
                    ["-m", "app.approvals"],
                    {"CONSUMER_SLOT": str(slot), **(polling if poller_in_consumers else {})},
                )
                for slot, name in enumerate(CONSUMERS)
            },
            **pollers,
        }
        self.processes: dict[str, ManagedProcess] = {}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._commands)

    def start(self, name: str) -> ManagedProcess:
        """Start `name` and wait until it is ready (it appends to the same log each time;
        a process reads only its own part of it)."""
        command = self._commands[name]
        process = ManagedProcess(
            name, command.args, {**self._env, **command.env}, self.log_dir, command.wrapper
        )
        self.processes[name] = process
        if name == "api":
            process.wait_http_ok(f"{self.api_url}/health")
        elif name == "epc":
            process.wait_http_ok(f"{self.epc_url}/health")
        else:
            process.wait_for_log(READY_LINES[name])
        return process

    def start_all(self) -> None:
        for name in self._commands:
            self.start(name)

    def __enter__(self) -> Stack:
        """Every process started (and, should one fail to start, those started killed)."""
        try:
            self.start_all()
        except BaseException:
            self.stop_all()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop_all()

    def stop(self, name: str, sig: int = signal.SIGKILL) -> int:
        """SIGKILL by default: no shutdown hook runs, whatever the process was doing.
        Returns the exit status (negative: the signal that ended it)."""
        return self.processes[name].stop(sig)

    def stop_all(self) -> None:
        for process in self.processes.values():
            process.kill()

    def log_tails(self, lines: int = 15) -> str:
        return "\n".join(
            f"--- {name}\n{process.log_tail(lines)}" for name, process in self.processes.items()
        )
