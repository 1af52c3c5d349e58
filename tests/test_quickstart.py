"""The first hour: the README's quick start, run as printed, against a real `make run`.

One `make run` (`python -m scripts.run` after `python -m scripts.migrate`, as the
Makefile runs them) serves the whole module, in development as on a fresh clone
(APP_ENV, ADMIN_TOKEN and WEBHOOK_SECRETS unset), on the README's ports, 3000 and 8000,
against the test database and Redis. The curls are taken from README.md itself, so
that the two cannot drift: every bash block between the quick start's markers is fed
to one bash, in order, as a person pastes them into one terminal, and what it prints
must match the answer the README shows under it.
"""

from __future__ import annotations

import fcntl
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis.asyncio as redis

from scripts.demo import redis_cli
from tests.conftest import DATABASE_URL, REDIS_URL, emptied_database
from tests.support.migrations import make_migrate
from tests.support.processes import ROOT, ManagedProcess, free_port

README = ROOT / "README.md"
BEGIN = "<!-- quickstart: begin"
END = "<!-- quickstart: end -->"
REPEAT = "<!-- quickstart: repeat until it answers as shown -->"
READY_BLOCK = "<!-- quickstart: ready block"
FENCE = re.compile(r"^```(?P<lang>[a-z]*)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)
API = "http://127.0.0.1:3000"
SIMULATOR = "http://127.0.0.1:8000"
PORTS_LOCK = Path(tempfile.gettempdir()) / "market-backend-readme-ports.lock"
READY = "-- run: ready (development) "
TOKEN = re.compile(r"ADMIN_TOKEN=(?P<token>\S+)")
UNSIGNED_WARNING = "unsigned webhook accepted: development, loopback only"
# What makes a fresh clone's environment: nothing a developer's shell may have set.
UNSET = (
    "APP_ENV",
    "ADMIN_TOKEN",
    "METRICS_TOKEN",
    "WEBHOOK_SECRETS",
    "SNS_TOPIC_ARNS",
    "PERMISSIONS_SERVICE_BASE_URL",
    "PERMISSIONS_SERVICE_API_KEY",
    "HTTP_HOST",
    "HTTP_PORT",
    "EPC_PORT",
    "EPC_API_KEY",
    "EPC_WEBHOOK_URL",
    "EPC_WEBHOOK_SECRET",
)


# --- the README -----------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    commands: str
    answer: list[str]  # the lines the README shows; `…` stands for anything
    repeat: bool  # run again until it answers so (the README says to)


def readme() -> str:
    return README.read_text()


def quick_start_steps(text: str) -> list[Step]:
    """Each bash block between the markers, with the answer block that follows it."""
    region = text[text.index(BEGIN) : text.index(END)]
    blocks = list(FENCE.finditer(region))
    assert len(blocks) % 2 == 0, "every bash block of the quick start is followed by its answer"
    steps = []
    for commands, answer in zip(blocks[::2], blocks[1::2], strict=True):
        assert commands["lang"] == "bash", commands["body"]
        assert answer["lang"] == "text", answer["body"]
        before = region[: commands.start()].rsplit("```", 1)[-1]
        steps.append(Step(commands["body"], answer["body"].splitlines(), REPEAT in before))
    return steps


def ready_block_of(text: str) -> list[str]:
    after = text[text.index(READY_BLOCK) :]
    block = FENCE.search(after)
    assert block is not None
    return block["body"].splitlines()


def line_pattern(documented: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in documented.split("…")))


def answers_as_documented(documented: list[str], printed: list[str]) -> bool:
    """Every documented line matches a printed line, in order; printed lines between
    them (headers the README leaves out) may be skipped."""
    lines = iter(line.rstrip("\r") for line in printed)
    return all(any(line_pattern(want).fullmatch(line) for line in lines) for want in documented)


# --- one bash, as one terminal ---------------------------------------------------------


class Shell:
    """One bash reading the steps in turn; each step's output and exit status."""

    def __init__(self, cwd: Path) -> None:
        self._process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.put(line.rstrip("\n"))

    def run(self, commands: str, within: float = 30) -> tuple[int, list[str]]:
        marker = f"quickstart-step-done-{uuid.uuid4().hex}"
        assert self._process.stdin is not None
        self._process.stdin.write(f"{commands}\nprintf '\\n{marker} %s\\n' \"$?\"\n")
        self._process.stdin.flush()
        printed: list[str] = []
        deadline = time.monotonic() + within
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no end to the step within {within} s:\n{commands}") from None
            if line.startswith(marker):
                return int(line.split()[-1]), printed
            printed.append(line)

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.wait(10)


# --- make run ----------------------------------------------------------------------------


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def fresh_clone_env(**overrides: str) -> dict[str, str]:
    """`make run`'s environment on a fresh clone: nothing set but where the test database
    and Redis are (an empty value is an unset one)."""
    return {
        **dict.fromkeys(UNSET, ""),
        "DATABASE_URL": DATABASE_URL,
        "REDIS_URL": REDIS_URL,
        **overrides,
    }


@dataclass
class MakeRun:
    process: ManagedProcess
    migrated: str  # what `make migrate` printed first

    def output(self) -> str:
        return self.process.log_text()

    def before_ready(self) -> str:
        output = self.output()
        return output[: output.index(READY)]

    def token(self) -> str:
        output = self.output()
        found = TOKEN.search(output, output.index(READY))
        assert found is not None, output
        return found["token"]


@pytest.fixture(scope="module")
def readme_ports() -> Iterator[None]:
    """The README's ports are the machine's, not a test run's: two runs of the suite at
    once (as when it is run beside another checkout's) take turns here instead of failing."""
    with PORTS_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
async def make_run(readme_ports: None, log_dir: Path) -> AsyncIterator[MakeRun]:
    busy = [port for port in (3000, 8000) if not port_is_free(port)]
    if busy:
        pytest.fail(
            f"port {' and '.join(map(str, busy))} in use (a `make run` in another shell?): "
            "the quick start's curls name localhost:3000, and the simulator has 8000"
        )
    async with emptied_database(DATABASE_URL):
        pass
    client = redis.Redis.from_url(REDIS_URL)
    await client.flushdb()
    await client.aclose()
    env = fresh_clone_env()
    migrate = make_migrate(DATABASE_URL)  # as `make run` does first
    assert migrate.returncode == 0, migrate.stderr
    process = ManagedProcess("make-run", ["-m", "scripts.run"], env, log_dir)
    try:
        process.wait_for_log(READY, timeout=120)
        yield MakeRun(process, migrate.stdout)
    finally:
        process.stop()


# --- the tests ---------------------------------------------------------------------------


def test_make_migrate_says_what_it_did_in_one_line(make_run: MakeRun) -> None:
    lines = make_run.migrated.splitlines()

    assert len(lines) == 1, make_run.migrated
    assert re.fullmatch(r"migrate: up to date \(\d+\), nothing to apply", lines[0])


async def test_the_ready_block_comes_once_everything_is_up_and_its_token_opens_the_admin_api(
    make_run: MakeRun,
) -> None:
    output = make_run.output()
    ready_at = output.index(READY)
    up = [
        "epc      | ",
        "Application startup complete",
        "api      | ",
        "Application startup complete",
        "relay    | ",
        "leading: publishing",
        "consumer | ",
        "consuming entity-permissions:events",
    ]
    for process, line in zip(up[::2], up[1::2], strict=True):
        said = re.search(f"^{re.escape(process)}.*{re.escape(line)}", output, re.MULTILINE)
        assert said is not None and said.start() < ready_at, output
    assert output.count(READY) == 1
    printed = output[ready_at:].splitlines()[: len(ready_block_of(readme()))]
    assert [TOKEN.sub("ADMIN_TOKEN=…", line) for line in printed] == [
        TOKEN.sub("ADMIN_TOKEN=…", line) for line in ready_block_of(readme())
    ], "the README shows the ready block make run prints"
    for line in (f"  API        {API}", f"{API}/schema", SIMULATOR, "next: make demo"):
        assert line in "\n".join(printed)

    token = make_run.token()
    async with httpx.AsyncClient(base_url=API, timeout=10) as http:
        stats = await http.get("/api/v1/admin/stats", headers={"Authorization": f"Bearer {token}"})
        wrong = await http.get("/api/v1/admin/stats", headers={"Authorization": "Bearer wrong"})
        docs = await http.get("/schema")
        simulator = await http.get(f"{SIMULATOR}/health")
    assert stats.status_code == 200, stats.text
    assert wrong.status_code == 403
    assert docs.status_code == 200
    assert simulator.status_code == 200


def test_start_up_is_quiet(make_run: MakeRun) -> None:
    """No warning that start-up itself causes: the poller's first request finds the
    simulator up, and the secrets a development API warns about are set. (A dependency
    slow to answer on a loaded machine may still be worth a warning: not asserted.)"""
    start_up = make_run.before_ready()

    for alarm in (" ERROR ", " CRITICAL ", "Traceback", "insecure configuration"):
        assert alarm not in start_up, start_up
    assert "Entity Permissions Core unavailable" not in make_run.output()
    assert make_run.output().count("ADMIN_TOKEN") == 1  # in the ready block, never a warning


def test_the_readme_quick_start_answers_as_the_readme_shows_for_one_market_and_the_next(
    make_run: MakeRun, tmp_path: Path
) -> None:
    steps = quick_start_steps(readme())
    documented = "\n".join(line for step in steps for line in step.answer)
    for promise in (
        "HTTP/1.1 201 Created",
        '"status":"pending_approval"',
        '{"status":"accepted"',
        '"status":"active"',
        '{"status":"already_processed"',
        '{"status":"ok","service":"webhook-handler"',
    ):
        assert promise in documented, f"the quick start no longer shows {promise}"
    assert any(step.repeat and '"status":"active"' in "".join(step.answer) for step in steps)
    unsigned = sum(step.commands.count("/api/v1/webhooks/entity-permissions") for step in steps)
    offset = len(make_run.output())

    shell = Shell(tmp_path)
    try:
        # Twice: a second market through the same curls is a market of its own (its
        # approval accepted and applied, never taken for a repeat of the first's).
        for step in steps * 2:
            deadline = time.monotonic() + 30
            while True:
                status, printed = shell.run(step.commands)
                assert status == 0, f"{step.commands}\n" + "\n".join(printed)
                if answers_as_documented(step.answer, printed):
                    break
                assert step.repeat and time.monotonic() < deadline, (
                    f"{step.commands}\nanswered:\n"
                    + "\n".join(printed)
                    + "\nthe README shows:\n"
                    + "\n".join(step.answer)
                )
                time.sleep(0.1)
    finally:
        shell.close()

    # One warning for each unsigned webhook the curls sent.
    unsigned *= 2
    after = offset
    for _ in range(unsigned):
        after = make_run.process.wait_for_log(UNSIGNED_WARNING, after=after)
    assert make_run.output()[offset:].count(UNSIGNED_WARNING) == unsigned


def run_demo(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scripts.demo"],
        cwd=ROOT,
        env={**os.environ, **fresh_clone_env(**env)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_make_demo_takes_a_market_to_active_and_prints_redis_cli_lines_for_its_redis(
    make_run: MakeRun,
) -> None:
    demo = run_demo()

    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "demo: done: the market is active" in demo.stdout
    cli = redis_cli(REDIS_URL)
    assert f"see it yourself: {cli} XREVRANGE markets:events" in demo.stdout
    assert f"$ {cli} XINFO GROUPS entity-permissions:events" in demo.stdout


def test_make_demo_names_the_redis_it_could_not_reach(make_run: MakeRun) -> None:
    port = free_port()

    demo = run_demo(REDIS_URL=f"redis://127.0.0.1:{port}/3")

    assert demo.returncode != 0
    assert f"demo: Redis at 127.0.0.1:{port}/3 (REDIS_URL" in demo.stderr, demo.stderr
    assert "Traceback" not in demo.stderr


def test_ctrl_c_stops_every_process_and_exits_0(make_run: MakeRun) -> None:
    make_run.process.process.send_signal(signal.SIGINT)

    assert make_run.process.process.wait(60) == 0, make_run.process.log_tail()
    output = make_run.output()
    for process in ("relay", "consumer"):
        assert re.search(f"^{process} +\\|.* stopped", output, re.MULTILINE), output
    assert output.endswith("run: stopped epc, api, relay, consumer\n"), output[-500:]
    assert port_is_free(3000) and port_is_free(8000)
