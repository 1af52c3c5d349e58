"""Configuration read once from the environment (and `.env` when present).

Names follow docs/design.md. Values in the process environment win over `.env`. APP_ENV
unset means production: a deployment that forgot it fails closed (refuses to start
without its secrets) rather than accepting unsigned webhooks; the commands meant for
a person at a terminal (`make run`, `make demo`) and the tests set it themselves.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import ipaddress
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import msgspec

log = logging.getLogger(__name__)

AppEnv = Literal["development", "test", "production"]

# Production refuses shorter secrets: an HMAC key under 24 bytes or a bearer token under
# 32 characters is within reach of a determined guesser (or was typed as a placeholder).
MIN_WEBHOOK_KEY_BYTES = 24
MIN_TOKEN_CHARACTERS = 32
# How a Standard Webhooks secret is written: the prefix, then its key in base64.
STANDARD_WEBHOOKS_PREFIX = "whsec_"

# Environment variables holding several values, separated by white space.
_LIST_FIELDS = frozenset(
    {"webhook_secrets", "sns_topic_arns", "webhook_allowed_cidrs", "trusted_proxies"}
)
# Environment variables holding "name=value" pairs, separated by white space.
_MAP_FIELDS = frozenset({"stream_maxlen"})


# Counts, sizes, intervals and retentions: a zero or a negative value parses but cannot
# work (a batch size of 0 spins the relay a thousand empty transactions a second while
# nothing is published; a concurrency of 0 divides by zero in the consumer; a retention
# of 0 leaves nothing for a refill), so it stops the process at start, naming the variable.
AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]
AtLeastZero = Annotated[int, msgspec.Meta(ge=0)]
Positive = Annotated[float, msgspec.Meta(gt=0)]
PositiveSeconds = Annotated[float, msgspec.Meta(ge=0.01)]  # a poll loop's pace
# A Redis time-to-live: finite, and one Redis accepts in milliseconds.
CacheSeconds = Annotated[float, msgspec.Meta(ge=0.01, le=7 * 86400)]


class ConfigError(RuntimeError):
    """The configuration cannot be used; the message says which variable and why."""


class Uses(enum.Flag):
    """The secrets a process reads: it requires those, and no others, in production."""

    NOTHING = 0
    # ADMIN_TOKEN, WEBHOOK_SECRETS or SNS_TOPIC_ARNS, and METRICS_TOKEN when set.
    HTTP_API = enum.auto()
    # PERMISSIONS_SERVICE_API_KEY, when PERMISSIONS_SERVICE_BASE_URL is set.
    POLLING = enum.auto()
    EVERYTHING = HTTP_API | POLLING


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    app_env: AppEnv = "production"
    http_host: str = "127.0.0.1"
    http_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 3000
    # unset: one per CPU in production, else 1; at most 256 (each holds its own pools)
    api_workers: Annotated[int, msgspec.Meta(ge=1, le=256)] | None = None
    database_url: str = "postgresql://postgres@127.0.0.1:5432/marketdb"
    redis_url: str = "redis://127.0.0.1:6379/0"
    database_pool_min: AtLeastZero = 0  # 0: start even while PostgreSQL is down; /ready says so
    database_pool_max: AtLeastOne = 10
    log_level: str = "INFO"
    permissions_service_base_url: str | None = None
    permissions_service_api_key: str | None = None
    permissions_service_timeout_ms: AtLeastOne = 5000
    permissions_poll_interval_s: PositiveSeconds = 10.0
    webhook_secrets: tuple[str, ...] = ()
    sns_topic_arns: tuple[str, ...] = ()
    admin_token: str | None = None
    metrics_token: str | None = None  # unset: /metrics answers anyone
    # The flow's figures on /metrics are read at most this often, however often scraped.
    metrics_refresh_interval_s: Annotated[float, msgspec.Meta(ge=1, le=300)] = 5.0
    sns_verify: bool = True  # false only outside production
    webhook_rate_limit_per_minute: AtLeastOne = 6000  # per client address, across API workers
    webhook_allowed_cidrs: tuple[str, ...] = ()  # empty: any address
    trusted_proxies: tuple[str, ...] = ()  # whose X-Forwarded-For is believed
    # GET /api/v1/markets/{id} through Redis (app/markets/cache.py).
    market_cache: bool = True
    market_cache_pending_ttl_s: CacheSeconds = 2.0  # the staleness bound when a marker is lost
    market_cache_ttl_s: CacheSeconds = 3600.0  # decided views (they never change) and markers
    market_cache_local_entries: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 5000
    # The outbox relay.
    outbox_batch_size: AtLeastOne = 1000  # rows per batch; a batch holds Redis about 4 ms
    outbox_poll_interval_s: PositiveSeconds = 1.0
    outbox_retention_hours: Positive = 168.0
    processed_events_retention_days: Positive = 30.0
    idempotency_key_retention_hours: Positive = 24.0
    stream_maxlen_default: AtLeastOne = 1_000_000
    # Per-stream overrides, "stream=length" pairs: "markets:events=5000000".
    stream_maxlen: dict[str, AtLeastOne] = msgspec.field(default_factory=dict)
    # The approval consumers.
    consumer_name: str | None = None  # default: "<host>-<CONSUMER_SLOT>"
    consumer_slot: AtLeastZero = 0
    consumer_concurrency: AtLeastOne = 16
    consumer_batch_size: AtLeastOne = 100
    consumer_block_ms: AtLeastOne = 2000  # 0 would be BLOCK 0: wait forever
    claim_idle_ms: AtLeastOne = 30_000
    max_deliveries: AtLeastOne = 5

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"

    @property
    def workers(self) -> int:
        """API worker processes: API_WORKERS, else one per CPU this process may run on in
        production, and one elsewhere (a development or test run stays one process, with
        one log and one debugger)."""
        if self.api_workers is not None:
            return self.api_workers
        return usable_cpus() if self.is_production else 1

    def maxlen_of(self, stream: str) -> int:
        """The approximate length a stream is trimmed to."""
        return self.stream_maxlen.get(stream, self.stream_maxlen_default)

    def check_values(self) -> None:
        """Values that parse but cannot work; raises ConfigError naming the variable."""
        for number, secret in enumerate(self.webhook_secrets, start=1):
            if not _webhook_key(number, secret):
                raise ConfigError(
                    f"invalid configuration: WEBHOOK_SECRETS: secret {number} is an empty key, "
                    "with which anyone can sign"
                )
        for name in ("admin_token", "metrics_token"):
            token = getattr(self, name)
            if token is not None and not _fits_a_header(token):
                raise ConfigError(
                    f"invalid configuration: {name.upper()}: white space or control characters, "
                    "which an Authorization header cannot carry"
                )
        for name in ("webhook_allowed_cidrs", "trusted_proxies"):
            for cidr in getattr(self, name):
                try:
                    ipaddress.ip_network(cidr, strict=False)
                except ValueError:
                    raise ConfigError(
                        f"invalid configuration: {name.upper()}: {cidr!r} is not an address or CIDR"
                    ) from None
        if self.market_cache_pending_ttl_s >= self.market_cache_ttl_s:
            # The markers that keep a stale pending view out must outlive the pending views.
            raise ConfigError(
                "invalid configuration: MARKET_CACHE_PENDING_TTL_S must be below MARKET_CACHE_TTL_S"
            )
        if self.is_production and not self.sns_verify:
            raise ConfigError("invalid configuration: SNS_VERIFY=false is refused in production")

    def missing_secrets(self, uses: Uses) -> list[str]:
        """Secrets a process that `uses` them cannot do without in production, by variable."""
        missing = []
        if Uses.HTTP_API in uses:
            if not self.admin_token:
                missing.append("ADMIN_TOKEN is not set")
            if not self.webhook_secrets and not self.sns_topic_arns:
                missing.append("WEBHOOK_SECRETS or SNS_TOPIC_ARNS is not set")
        if (
            Uses.POLLING in uses
            and self.permissions_service_base_url
            and not self.permissions_service_api_key
        ):
            missing.append("PERMISSIONS_SERVICE_API_KEY is not set")
        return missing

    def weak_secrets(self, uses: Uses) -> list[str]:
        """Secrets set but too short for production; never their values, only their names."""
        if Uses.HTTP_API not in uses:
            return []
        weak = [
            f"WEBHOOK_SECRETS: secret {number} decodes to under {MIN_WEBHOOK_KEY_BYTES} bytes"
            for number, secret in enumerate(self.webhook_secrets, start=1)
            if len(_webhook_key(number, secret)) < MIN_WEBHOOK_KEY_BYTES
        ]
        for name in ("admin_token", "metrics_token"):
            token = getattr(self, name)
            if token and len(token) < MIN_TOKEN_CHARACTERS:
                weak.append(f"{name.upper()} is under {MIN_TOKEN_CHARACTERS} characters")
        return weak

    def check_secrets(self, uses: Uses) -> None:
        """Refuse to run in production without strong secrets for what the process `uses`;
        elsewhere warn once and go on. An unusable value is refused everywhere."""
        self.check_values()
        problems = [*self.missing_secrets(uses), *self.weak_secrets(uses)]
        if not problems:
            return
        if self.is_production:
            raise ConfigError(
                f"refusing to start: APP_ENV is production (its default when unset) and "
                f"{'; '.join(problems)}. Local development sets APP_ENV=development "
                "(in the environment or .env)."
            )
        log.warning(
            "insecure configuration, acceptable in %s only: %s", self.app_env, "; ".join(problems)
        )


def _fits_a_header(token: str) -> bool:
    return token.isprintable() and not any(character.isspace() for character in token)


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret (`whsec_` and base64); ValueError if
    it is not one. Read here, where WEBHOOK_SECRETS is checked, and by the webhook."""
    try:
        return base64.b64decode(secret.removeprefix(STANDARD_WEBHOOKS_PREFIX), validate=True)
    except binascii.Error as error:
        raise ValueError("a webhook secret must be whsec_ followed by base64") from error


def _webhook_key(number: int, secret: str) -> bytes:
    """The HMAC key of the `number`th of WEBHOOK_SECRETS; never echoes the secret."""
    try:
        return decode_secret(secret)
    except ValueError as error:
        raise ConfigError(
            f"invalid configuration: WEBHOOK_SECRETS: secret {number}: {error}"
        ) from None


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


def usable_cpus(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The CPUs this process may run on, capped by its cgroup's CPU quota (a container
    limited to 2 CPUs on a 64-CPU host gets 2, not 64)."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError, ZeroDivisionError):
        pass  # no cgroup v2 quota to read: the affinity stands
    return cpus


def load_settings(
    environ: Mapping[str, str] | None = None,
    dotenv: Path | None = Path(".env"),
    defaults: Mapping[str, str] | None = None,
) -> Settings:
    """Build Settings from `defaults`, overlaid by `.env`, overlaid by the environment;
    raise ConfigError on bad values. `defaults` lets a command meant for development
    (`make run`) default APP_ENV to development while `.env` or the environment decide."""
    source = dict(read_dotenv(dotenv) if dotenv is not None else {})
    source.update(os.environ if environ is None else environ)
    # An empty value is an unset one, here as below: the default shows through it.
    source |= {key: value for key, value in (defaults or {}).items() if not source.get(key)}
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
