"""Settings: read once from the environment and `.env`; production refuses to run unsafe."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from app.logging import JsonFormatter
from app.settings import ConfigError, load_settings
from tests.support.processes import ROOT

SECRETS = {"ADMIN_TOKEN": "t", "WEBHOOK_SECRETS": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}


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
        settings.check_secrets()


def test_production_with_its_secrets_starts(caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings({"APP_ENV": "production", **SECRETS}, dotenv=None)

    settings.check_secrets()

    assert not caplog.records


def test_polling_in_production_needs_the_api_key() -> None:
    settings = load_settings(
        {"APP_ENV": "production", "PERMISSIONS_SERVICE_BASE_URL": "http://epc", **SECRETS},
        dotenv=None,
    )

    with pytest.raises(ConfigError, match="PERMISSIONS_SERVICE_API_KEY"):
        settings.check_secrets()


def test_development_warns_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings({"APP_ENV": "development"}, dotenv=None)

    with caplog.at_level(logging.WARNING):
        settings.check_secrets()

    assert "ADMIN_TOKEN" in caplog.text


def test_the_api_process_exits_in_production_without_secrets() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app"],
        cwd=ROOT,
        env={"APP_ENV": "production", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode != 0
    assert "refusing to start" in result.stderr


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
