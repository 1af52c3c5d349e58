"""`make run`, `make demo` and `make help` as a newcomer reads them: the ready block, the
secrets made for a development run, the redis-cli lines, the help text."""

from __future__ import annotations

import logging
import subprocess

import pytest

from app.process import secrets_used_by
from app.settings import Settings
from scripts.demo import eventually, redis_cli, where_redis_is
from scripts.run import child_environment, local_settings, ready_block
from tests.support.processes import ROOT


def development(**environ: str) -> tuple[Settings, dict[str, str]]:
    settings = local_settings(environ, dotenv=None)
    return settings, child_environment(settings, {"PATH": "/usr/bin", **environ})


def test_an_empty_app_env_is_an_unset_one_and_make_run_means_development() -> None:
    settings, env = development(APP_ENV="")

    assert settings.app_env == "development"
    assert env["APP_ENV"] == "development"


def test_a_development_run_makes_an_admin_token_that_passes_without_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, env = development()
    _, another = development()
    children = local_settings(env, dotenv=None)

    assert env["ADMIN_TOKEN"] != another["ADMIN_TOKEN"]  # made for each run
    with caplog.at_level(logging.WARNING):
        children.check_secrets(secrets_used_by("api"))
    assert caplog.records == []


def test_a_token_of_your_own_is_kept_and_production_gets_none_made() -> None:
    _, env = development(ADMIN_TOKEN="my-own-token-of-at-least-32-characters")
    _, production = development(APP_ENV="production")

    assert env["ADMIN_TOKEN"] == "my-own-token-of-at-least-32-characters"
    assert "ADMIN_TOKEN" not in production


def test_the_ready_block_says_where_everything_is_and_what_to_do_next() -> None:
    settings, env = development()

    block = ready_block(settings, env)

    assert block.startswith("-- run: ready (development) ---")
    assert "  API        http://127.0.0.1:3000\n" in block
    assert "  API docs   http://127.0.0.1:3000/schema\n" in block
    assert "http://127.0.0.1:8000" in block
    assert f"ADMIN_TOKEN={env['ADMIN_TOKEN']}   (made for this run)" in block
    assert "  console    http://127.0.0.1:3000/console/\n" in block
    assert "next: make demo" in block


def test_the_ready_block_gives_an_address_a_browser_can_open() -> None:
    settings, env = development(HTTP_HOST="0.0.0.0", HTTP_PORT="3100")

    block = ready_block(settings, env)

    assert "  console    http://127.0.0.1:3100/console/\n" in block


def test_outside_development_the_ready_block_gives_no_token_and_no_simulator() -> None:
    settings, env = development(APP_ENV="production", ADMIN_TOKEN="x" * 40)

    block = ready_block(settings, env)

    assert block.startswith("-- run: ready (production) ---")
    assert "x" * 40 not in block and "8000" not in block and "make demo" not in block


@pytest.mark.parametrize(
    ("url", "command"),
    [
        ("redis://127.0.0.1:6379/0", "redis-cli"),
        ("redis://localhost:6379", "redis-cli"),
        ("redis://127.0.0.1:6379/14", "redis-cli -n 14"),
        ("redis://cache.internal:6380/0", "redis-cli -h cache.internal -p 6380"),
        ("redis://10.0.0.7/2", "redis-cli -h 10.0.0.7 -p 6379 -n 2"),
        (
            "rediss://ops:s3cret@cache:6390/1",
            "redis-cli -h cache -p 6390 --tls -n 1 --user ops --askpass",
        ),
        ("unix:///run/redis.sock", "redis-cli -s /run/redis.sock"),
    ],
)
def test_the_demos_redis_cli_lines_reach_the_redis_it_reads(url: str, command: str) -> None:
    assert redis_cli(url) == command
    assert "s3cret" not in redis_cli(url)


async def test_the_demo_names_the_redis_it_gave_up_waiting_on() -> None:
    async def never() -> None:
        return None

    where = where_redis_is("redis://:s3cret@127.0.0.1:6390/3")
    with pytest.raises(SystemExit) as gave_up:
        await eventually(never, f"the approval request in {where}", within=0.05)

    message = str(gave_up.value)
    assert "127.0.0.1:6390/3" in message and "REDIS_URL" in message
    assert "s3cret" not in message


def test_make_help_says_everything_make_run_starts() -> None:
    shown = subprocess.run(
        ["make", "--no-print-directory", "help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    run = next(line for line in shown.splitlines() if line.strip().startswith("make run "))

    for process in ("API", "relay", "consumer", "simulator"):
        assert process in run
    assert "make services-down" in shown and "saying which" in shown
