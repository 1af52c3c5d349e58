"""Configuration read once from the environment (and `.env` when present).

Names follow DESIGN.md. Values in the process environment win over `.env`.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
from pathlib import Path
from typing import Literal

import msgspec

from app.webhooks.standard import decode_secret

log = logging.getLogger(__name__)

AppEnv = Literal["development", "test", "production"]

# Environment variables holding several values, separated by white space.
_LIST_FIELDS = frozenset(
    {"webhook_secrets", "sns_topic_arns", "webhook_allowed_cidrs", "trusted_proxies"}
)
# Environment variables holding "name=value" pairs, separated by white space.
_MAP_FIELDS = frozenset({"stream_maxlen"})


class ConfigError(RuntimeError):
    """The configuration cannot be used; the message says which variable and why."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    app_env: AppEnv = "development"
    http_host: str = "127.0.0.1"
    http_port: int = 3000
    database_url: str = "postgresql://postgres@127.0.0.1:5432/marketdb"
    redis_url: str = "redis://127.0.0.1:6379/0"
    database_pool_min: int = 0  # 0: start even while PostgreSQL is down; /ready says so
    database_pool_max: int = 10
    log_level: str = "INFO"
    permissions_service_base_url: str | None = None
    permissions_service_api_key: str | None = None
    permissions_service_timeout_ms: int = 5000
    permissions_poll_interval_s: float = 10.0
    webhook_secrets: tuple[str, ...] = ()
    sns_topic_arns: tuple[str, ...] = ()
    admin_token: str | None = None
    sns_verify: bool = True  # false only outside production
    webhook_rate_limit_per_minute: int = 6000  # per client address, across API workers
    webhook_allowed_cidrs: tuple[str, ...] = ()  # empty: any address
    trusted_proxies: tuple[str, ...] = ()  # whose X-Forwarded-For is believed
    # The outbox relay.
    outbox_batch_size: int = 1000  # rows per batch; a batch holds Redis about 4 ms
    outbox_poll_interval_s: float = 1.0
    outbox_retention_hours: float = 168.0
    processed_events_retention_days: float = 30.0
    idempotency_key_retention_hours: float = 24.0
    stream_maxlen_default: int = 1_000_000
    # Per-stream overrides, "stream=length" pairs: "markets:events=5000000".
    stream_maxlen: dict[str, int] = msgspec.field(default_factory=dict)
    # The approval consumers.
    consumer_name: str | None = None  # default: "<host>-<CONSUMER_SLOT>"
    consumer_slot: int = 0
    consumer_concurrency: int = 16
    consumer_batch_size: int = 100
    consumer_block_ms: int = 2000
    claim_idle_ms: int = 30_000
    max_deliveries: int = 5

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"

    def maxlen_of(self, stream: str) -> int:
        """The approximate length a stream is trimmed to."""
        return self.stream_maxlen.get(stream, self.stream_maxlen_default)

    def missing_secrets(self) -> list[str]:
        """Secrets a production deployment must have, by variable name."""
        missing = []
        if not self.admin_token:
            missing.append("ADMIN_TOKEN")
        if not self.webhook_secrets and not self.sns_topic_arns:
            missing.append("WEBHOOK_SECRETS or SNS_TOPIC_ARNS")
        if self.permissions_service_base_url and not self.permissions_service_api_key:
            missing.append("PERMISSIONS_SERVICE_API_KEY")
        return missing

    def check_values(self) -> None:
        """Values that parse but cannot work; raises ConfigError naming the variable."""
        for secret in self.webhook_secrets:
            try:
                decode_secret(secret)
            except ValueError as error:
                raise ConfigError(f"invalid configuration: WEBHOOK_SECRETS: {error}") from None
        for name in ("webhook_allowed_cidrs", "trusted_proxies"):
            for cidr in getattr(self, name):
                try:
                    ipaddress.ip_network(cidr, strict=False)
                except ValueError:
                    raise ConfigError(
                        f"invalid configuration: {name.upper()}: {cidr!r} is not an address or CIDR"
                    ) from None
        if self.is_production and not self.sns_verify:
            raise ConfigError("invalid configuration: SNS_VERIFY=false is refused in production")

    def check_secrets(self) -> None:
        """Refuse to run in production without secrets; elsewhere warn loudly and go on."""
        self.check_values()
        missing = self.missing_secrets()
        if not missing:
            return
        names = ", ".join(missing)
        if self.is_production:
            raise ConfigError(f"APP_ENV=production requires {names}; refusing to start")
        log.warning(
            "insecure configuration: %s not set; acceptable in %s only", names, self.app_env
        )


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse KEY=VALUE lines; blank lines and # comments are skipped, quotes stripped."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep:
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE, got {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def load_settings(
    environ: dict[str, str] | None = None, dotenv: Path | None = Path(".env")
) -> Settings:
    """Build Settings from `.env` overlaid by the environment; raise ConfigError on bad values."""
    source = read_dotenv(dotenv) if dotenv is not None else {}
    source.update(os.environ if environ is None else environ)
    raw: dict[str, object] = {}
    for field in msgspec.structs.fields(Settings):
        value = source.get(field.name.upper())
        if value is None or value == "":
            continue
        if field.name in _LIST_FIELDS:
            raw[field.name] = tuple(value.split())
        elif field.name in _MAP_FIELDS:
            raw[field.name] = _pairs(field.name, value)
        else:
            raw[field.name] = value
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration: {_env_name(exc)}") from exc


def _pairs(name: str, value: str) -> dict[str, str]:
    pairs = {}
    for item in value.split():
        key, sep, setting = item.rpartition("=")
        if not sep or not key:
            raise ConfigError(
                f"invalid configuration: {name.upper()}: expected name=value, got {item!r}"
            )
        pairs[key] = setting
    return pairs


def _env_name(exc: msgspec.ValidationError) -> str:
    """Rewrite msgspec's `$.http_port` path into the variable name an operator set."""
    message = str(exc)
    head, sep, path = message.rpartition(" - at `$.")
    if not sep:
        return message
    return f"{path.rstrip('`').split('[')[0].upper()}: {head}"


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read on first use."""
    return load_settings()
