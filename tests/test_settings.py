"""Settings: read once from the environment and `.env`; production refuses to run unsafe."""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from app.logging import JsonFormatter
from app.settings import ConfigError, Uses, load_settings, usable_cpus
from tests.conftest import service_env
from tests.support.processes import ROOT, ManagedProcess, free_port, start_api

ADMIN_TOKEN = "a-test-admin-token-of-40-characters-xyz!"
SECRETS = {"ADMIN_TOKEN": ADMIN_TOKEN, "WEBHOOK_SECRETS": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}


def whsec(key_bytes: int) -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(key_bytes)).decode()


def run_api(env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """`python -m app` with only `env` (nothing inherited); it must exit on its own."""
    return subprocess.run(
        [sys.executable, "-m", "app"],
        cwd=cwd,
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(ROOT),
            "HTTP_PORT": str(free_port()),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_defaults_match_the_seed() -> None:
    settings = load_settings({}, dotenv=None)

    assert settings.http_port == 3000
    assert settings.permissions_service_timeout_ms == 5000
    assert settings.permissions_poll_interval_s == 10
    assert settings.permissions_service_base_url is None


def test_environment_overrides_dotenv(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# local overrides\nHTTP_PORT=4000\nexport ADMIN_TOKEN='from-file'\n"
        'WEBHOOK_SECRETS="whsec_a whsec_b"\n'
    )

    settings = load_settings({"HTTP_PORT": "5000"}, dotenv=dotenv)

    assert settings.http_port == 5000
    assert settings.admin_token == "from-file"
    assert settings.webhook_secrets == ("whsec_a", "whsec_b")


def test_a_bad_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="HTTP_PORT"):
        load_settings({"HTTP_PORT": "three thousand"}, dotenv=None)
    with pytest.raises(ConfigError, match="APP_ENV"):
        load_settings({"APP_ENV": "prod"}, dotenv=None)


def test_a_malformed_dotenv_line_names_the_file_and_line(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("HTTP_PORT=1\nnot a setting\n")

    with pytest.raises(ConfigError, match=r"\.env:2"):
        load_settings({}, dotenv=dotenv)


def test_production_refuses_to_start_without_its_secrets() -> None:
    settings = load_settings({"APP_ENV": "production"}, dotenv=None)

    with pytest.raises(ConfigError, match=r"ADMIN_TOKEN.*WEBHOOK_SECRETS"):
        settings.check_secrets(Uses.HTTP_API)


def test_production_with_its_secrets_starts(caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings({"APP_ENV": "production", **SECRETS}, dotenv=None)

    settings.check_secrets(Uses.EVERYTHING)

    assert not caplog.records


def test_polling_in_production_needs_the_api_key() -> None:
    settings = load_settings(
        {"APP_ENV": "production", "PERMISSIONS_SERVICE_BASE_URL": "http://epc", **SECRETS},
        dotenv=None,
    )

    with pytest.raises(ConfigError, match="PERMISSIONS_SERVICE_API_KEY"):
        settings.check_secrets(Uses.POLLING)


def test_development_warns_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings({"APP_ENV": "development"}, dotenv=None)

    with caplog.at_level(logging.WARNING):
        settings.check_secrets(Uses.EVERYTHING)

    assert "ADMIN_TOKEN" in caplog.text


def test_api_workers_are_the_cpus_in_production_and_one_elsewhere() -> None:
    assert load_settings({"APP_ENV": "production"}, dotenv=None).workers == usable_cpus()
    for app_env in ("development", "test"):
        assert load_settings({"APP_ENV": app_env}, dotenv=None).workers == 1
    assert load_settings({"APP_ENV": "test", "API_WORKERS": "3"}, dotenv=None).workers == 3
    for refused in ("0", "100000"):
        with pytest.raises(ConfigError, match="API_WORKERS"):
            load_settings({"API_WORKERS": refused}, dotenv=None)


def test_usable_cpus_follow_the_cgroup_quota(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    affinity = len(os.sched_getaffinity(0))
    for quota, expected in (("max 100000", affinity), ("50000 100000", 1), ("150000 100000", 2)):
        cpu_max.write_text(quota + "\n")
        assert usable_cpus(cpu_max) == min(affinity, expected), quota
    for unreadable in ("100000 0", "not numbers", ""):
        cpu_max.write_text(unreadable)
        assert usable_cpus(cpu_max) == affinity, unreadable
    assert usable_cpus(tmp_path / "absent") == affinity


def test_the_market_cache_is_on_and_its_pending_views_outlived_by_its_markers() -> None:
    settings = load_settings({}, dotenv=None)
    assert settings.market_cache and settings.market_cache_pending_ttl_s == 2.0
    assert not load_settings({"MARKET_CACHE": "false"}, dotenv=None).market_cache
    equal = load_settings(
        {"MARKET_CACHE_PENDING_TTL_S": "5", "MARKET_CACHE_TTL_S": "5"}, dotenv=None
    )
    with pytest.raises(ConfigError, match="MARKET_CACHE_PENDING_TTL_S"):
        equal.check_values()
    for variable, value in (
        ("MARKET_CACHE_PENDING_TTL_S", "0"),
        ("MARKET_CACHE_TTL_S", "inf"),
        ("MARKET_CACHE_TTL_S", "1e16"),
    ):
        with pytest.raises(ConfigError, match=variable):
            load_settings({variable: value}, dotenv=None)


def test_the_api_process_exits_in_production_without_secrets() -> None:
    result = run_api({"APP_ENV": "production"})

    assert result.returncode != 0
    assert "refusing to start" in result.stderr
    assert "Traceback" not in result.stderr


# Issue item 4: weak secrets in production.


@pytest.mark.parametrize("app_env", ["development", "test", "production"])
def test_weak_secrets_an_empty_webhook_key_is_refused_in_every_environment(app_env: str) -> None:
    settings = load_settings(
        {"APP_ENV": app_env, "ADMIN_TOKEN": ADMIN_TOKEN, "WEBHOOK_SECRETS": "whsec_"},
        dotenv=None,
    )

    with pytest.raises(ConfigError, match=r"WEBHOOK_SECRETS: secret 1 is an empty key"):
        settings.check_secrets(Uses.NOTHING)


def test_weak_secrets_production_refuses_a_short_webhook_secret_by_name_only() -> None:
    short = whsec(23)
    settings = load_settings(
        {
            "APP_ENV": "production",
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "WEBHOOK_SECRETS": f"{whsec(24)} {short}",
        },
        dotenv=None,
    )

    with pytest.raises(ConfigError) as refused:
        settings.check_secrets(Uses.HTTP_API)

    message = str(refused.value)
    assert "WEBHOOK_SECRETS: secret 2 decodes to under 24 bytes" in message
    assert short.removeprefix("whsec_") not in message


@pytest.mark.parametrize("variable", ["ADMIN_TOKEN", "METRICS_TOKEN"])
def test_weak_secrets_production_refuses_a_short_token_by_name_only(variable: str) -> None:
    short = "x" * 7 + secrets.token_hex(12)  # 31 characters
    settings = load_settings({"APP_ENV": "production", **SECRETS, variable: short}, dotenv=None)

    with pytest.raises(ConfigError) as refused:
        settings.check_secrets(Uses.HTTP_API)

    assert f"{variable} is under 32 characters" in str(refused.value)
    assert short not in str(refused.value)


def test_weak_secrets_of_32_characters_and_24_bytes_are_enough() -> None:
    settings = load_settings(
        {
            "APP_ENV": "production",
            "ADMIN_TOKEN": "a" * 32,
            "METRICS_TOKEN": "m" * 32,
            "WEBHOOK_SECRETS": whsec(24),
        },
        dotenv=None,
    )

    settings.check_secrets(Uses.EVERYTHING)


def test_weak_secrets_outside_production_get_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    short_secret = whsec(8)
    settings = load_settings(
        {"APP_ENV": "development", "ADMIN_TOKEN": "a", "WEBHOOK_SECRETS": short_secret},
        dotenv=None,
    )

    with caplog.at_level(logging.WARNING):
        settings.check_secrets(Uses.HTTP_API)

    [warning] = caplog.records
    assert "ADMIN_TOKEN is under 32 characters" in warning.getMessage()
    assert "WEBHOOK_SECRETS: secret 1 decodes to under 24 bytes" in warning.getMessage()
    assert short_secret.removeprefix("whsec_") not in caplog.text


@pytest.mark.parametrize("token", ["two words", "tab\tinside", "new\nline"])
def test_weak_secrets_a_token_no_header_can_carry_is_refused(token: str) -> None:
    settings = load_settings({"APP_ENV": "development", "ADMIN_TOKEN": token}, dotenv=None)

    with pytest.raises(ConfigError, match="ADMIN_TOKEN: white space or control characters"):
        settings.check_secrets(Uses.NOTHING)


def test_weak_secrets_the_api_process_refuses_them_naming_each_variable() -> None:
    short_secret, short_token = whsec(16), "admin-" + secrets.token_hex(4)
    result = run_api(
        {"APP_ENV": "production", "ADMIN_TOKEN": short_token, "WEBHOOK_SECRETS": short_secret}
    )

    assert result.returncode == 1, result.stderr
    assert "ADMIN_TOKEN is under 32 characters" in result.stderr
    assert "WEBHOOK_SECRETS: secret 1 decodes to under 24 bytes" in result.stderr
    assert short_token not in result.stderr
    assert short_secret.removeprefix("whsec_") not in result.stderr


def test_stream_lengths_are_set_per_stream() -> None:
    settings = load_settings(
        {"STREAM_MAXLEN": "markets:events=5000 entity-permissions:events=70"}, dotenv=None
    )

    assert settings.maxlen_of("markets:events") == 5000
    assert settings.maxlen_of("entity-permissions:events") == 70
    assert settings.maxlen_of("entity-permissions:events:dead") == 1_000_000
    with pytest.raises(ConfigError, match="STREAM_MAXLEN"):
        load_settings({"STREAM_MAXLEN": "markets:events"}, dotenv=None)


def test_production_logs_are_json_lines_with_their_fields() -> None:
    record = logging.makeLogRecord(
        {
            "name": "inbound",
            "levelname": "INFO",
            "msg": "inbound event %s: %s",
            "args": ("e-1", "accepted"),
            "event_id": "e-1",
            "market_id": "m-1",
        }
    )

    line = json.loads(JsonFormatter().format(record))

    assert line["message"] == "inbound event e-1: accepted"
    assert line["event_id"] == "e-1" and line["market_id"] == "m-1"
    assert line["level"] == "info"


# Issue item 5: fail closed by default.


def test_fail_closed_by_default_app_env_unset_means_production() -> None:
    settings = load_settings({}, dotenv=None)

    assert settings.app_env == "production"
    with pytest.raises(ConfigError) as refused:
        settings.check_secrets(Uses.HTTP_API)
    assert "ADMIN_TOKEN is not set; WEBHOOK_SECRETS or SNS_TOPIC_ARNS is not set" in str(
        refused.value
    )
    assert "sets APP_ENV=development (in the environment or .env)" in str(refused.value)


def test_fail_closed_by_default_dotenv_still_chooses_the_environment(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("APP_ENV=development\n")

    assert load_settings({}, dotenv=dotenv).app_env == "development"
    assert load_settings({"APP_ENV": "test"}, dotenv=dotenv).app_env == "test"


def test_fail_closed_by_default_the_api_refuses_to_start_with_app_env_unset(
    tmp_path: Path,
) -> None:
    result = run_api({}, cwd=tmp_path)  # no APP_ENV anywhere: no .env in tmp_path

    assert result.returncode == 1, result.stderr
    assert "ADMIN_TOKEN is not set; WEBHOOK_SECRETS or SNS_TOPIC_ARNS is not set" in result.stderr
    assert "APP_ENV=development (in the environment or .env)" in result.stderr
    assert "Traceback" not in result.stderr


def test_fail_closed_by_default_the_api_in_production_needs_no_polling_key(
    log_dir: Path,
) -> None:
    """The API never polls: PERMISSIONS_SERVICE_API_KEY is the poller's to require."""
    env = service_env(
        APP_ENV="production", PERMISSIONS_SERVICE_BASE_URL="http://127.0.0.1:9", **SECRETS
    )
    process, _ = start_api(env, log_dir, "api-production")
    process.stop()


@pytest.mark.parametrize(
    ("args", "ready_line"),
    [
        (["-m", "relay"], "leading: publishing"),
        (["-m", "app.approvals"], "consuming entity-permissions:events"),
    ],
)
def test_fail_closed_by_default_workers_in_production_need_no_api_secret(
    log_dir: Path, args: list[str], ready_line: str
) -> None:
    worker = ManagedProcess(
        f"worker-production-{args[-1]}", args, service_env(APP_ENV="production"), log_dir
    )
    worker.wait_for_log(ready_line)

    assert worker.stop() == 0, worker.log_tail()


@pytest.mark.parametrize("command", [["cleanup"], ["replay", "--since", "2026-01-01T00:00:00Z"]])
def test_fail_closed_by_default_one_off_commands_in_production_need_no_secret(
    log_dir: Path, command: list[str]
) -> None:
    one_off = ManagedProcess(
        f"production-{command[0]}",
        ["-m", "relay", *command],
        service_env(APP_ENV="production"),
        log_dir,
    )

    assert one_off.process.wait(60) == 0, one_off.log_tail()


@pytest.mark.parametrize("args", [["-m", "app.approvals"], ["-m", "app.inbound"]])
def test_fail_closed_by_default_a_poller_in_production_needs_its_api_key(
    log_dir: Path, args: list[str]
) -> None:
    env = service_env(APP_ENV="production", PERMISSIONS_SERVICE_BASE_URL="http://127.0.0.1:9")
    poller = ManagedProcess(f"poller-production-{args[-1]}", args, env, log_dir)

    assert poller.process.wait(60) == 1
    log = poller.log_text()
    assert "PERMISSIONS_SERVICE_API_KEY is not set" in log
    assert "ADMIN_TOKEN" not in log
    assert "Traceback" not in log


def test_fail_closed_by_default_make_run_and_demo_run_in_development(tmp_path: Path) -> None:
    from scripts.run import child_environment, local_settings  # noqa: PLC0415

    settings = local_settings({}, dotenv=None)
    children = child_environment(settings, {"PATH": "/usr/bin"})

    assert settings.app_env == "development"
    assert children["APP_ENV"] == "development"  # explicit: never a child's own default
    assert children["WEBHOOK_SECRETS"] == children["EPC_WEBHOOK_SECRET"]
    dotenv = tmp_path / ".env"
    dotenv.write_text("APP_ENV=production\n")
    chosen = local_settings({}, dotenv=dotenv)
    assert child_environment(chosen, {})["APP_ENV"] == "production"
    assert "WEBHOOK_SECRETS" not in child_environment(chosen, {})


def test_a_value_that_cannot_be_read_stops_the_api_naming_it_without_a_traceback() -> None:
    started = subprocess.run(
        [sys.executable, "-m", "app"],
        cwd=ROOT,
        env={**os.environ, "APP_ENV": "test", "HTTP_PORT": "not-a-port"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert started.returncode != 0
    assert "HTTP_PORT" in started.stderr and "Traceback" not in started.stderr


# Each of these parses as a number but cannot work: the relay would spin empty
# transactions while publishing nothing, the consumer divide by zero, a refill find
# nothing to send again, a stream be trimmed to nothing, Redis block forever.
UNWORKABLE_VALUES = [
    ("OUTBOX_BATCH_SIZE", "0"),
    ("OUTBOX_POLL_INTERVAL_S", "0"),
    ("CONSUMER_CONCURRENCY", "0"),
    ("CONSUMER_BATCH_SIZE", "-1"),
    ("CONSUMER_BLOCK_MS", "0"),
    ("CLAIM_IDLE_MS", "0"),
    ("MAX_DELIVERIES", "0"),
    ("DATABASE_POOL_MAX", "0"),
    ("DATABASE_POOL_MIN", "-1"),
    ("CONSUMER_SLOT", "-1"),
    ("PERMISSIONS_POLL_INTERVAL_S", "0"),
    ("PERMISSIONS_SERVICE_TIMEOUT_MS", "0"),
    ("WEBHOOK_RATE_LIMIT_PER_MINUTE", "0"),
    ("OUTBOX_RETENTION_HOURS", "0"),
    ("PROCESSED_EVENTS_RETENTION_DAYS", "-1"),
    ("IDEMPOTENCY_KEY_RETENTION_HOURS", "0"),
    ("STREAM_MAXLEN_DEFAULT", "0"),
    ("STREAM_MAXLEN", "markets:events=0"),
    ("HTTP_PORT", "65536"),
]


@pytest.mark.parametrize(("variable", "value"), UNWORKABLE_VALUES)
def test_a_count_or_interval_that_cannot_work_is_refused_naming_the_variable(
    variable: str, value: str
) -> None:
    with pytest.raises(ConfigError, match=f"invalid configuration: {variable}: "):
        load_settings({variable: value}, dotenv=None)


def test_a_relay_with_a_batch_size_of_zero_refuses_to_start_rather_than_spin(
    log_dir: Path,
) -> None:
    relay = ManagedProcess(
        "relay-batch-size-0", ["-m", "relay"], service_env(OUTBOX_BATCH_SIZE="0"), log_dir
    )

    try:
        exited = relay.process.wait(60)
    except subprocess.TimeoutExpired:
        exited = None  # still running: it took the value
    finally:
        relay.stop()  # a relay left running would hold the lock for the tests after
    assert exited == 1, relay.log_tail()
    log = relay.log_text()
    assert "OUTBOX_BATCH_SIZE" in log and "Traceback" not in log
    assert "leading: publishing" not in log
