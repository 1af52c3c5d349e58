"""The application factory: settings, connections for the app's lifetime, routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import redis.asyncio as redis
from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

from app import tracing
from app.admin.controller import ADMIN_COMPONENTS, AdminController
from app.api_docs import DOCS_PATH, OfflineSwagger
from app.console.auth import SIGN_IN_PER_MINUTE, ConsoleAccess
from app.console.pages import ConsoleFigures
from app.console.routes import CONSOLE_TEMPLATES, console_router
from app.db import create_pool
from app.errors import EXCEPTION_HANDLERS, validate_request_body
from app.logging import address_of, configure_logging
from app.markets.cache import MarketViewCache
from app.markets.controller import MarketController, MarketReads
from app.monitoring.flow import FlowMonitor
from app.monitoring.health import HealthController, ReadinessProbe
from app.monitoring.metrics import FLOW, HTTP_METRICS, MetricsController, worker_stopped
from app.openapi import ExactStructSchemaPlugin
from app.process import secrets_used_by, settle_heap, stopping_with_supervisor
from app.redis_client import connect_redis
from app.settings import Settings, get_settings
from app.unit_of_work import UnitOfWork
from app.web.pages import template_config
from app.webhooks.controller import WebhookController, WebhookReceiver
from app.webhooks.guard import RateLimiter, SourceGuard
from app.webhooks.sns import SnsVerifier
from outbox.streams import TRIMMED_STREAMS


def create_app(settings: Settings | None = None, sns: SnsVerifier | None = None) -> Litestar:
    """The API. `sns` replaces the SNS verifier (tests sign with a certificate of their own)."""
    settings = settings or get_settings()
    configure_logging(settings)
    settings.check_secrets(secrets_used_by("api"))
    tracing.configure("api")
    FLOW.polling_enabled = bool(settings.permissions_service_base_url)
    FLOW.stream_maxlen = {stream: settings.maxlen_of(stream) for stream in TRIMMED_STREAMS}

    @asynccontextmanager
    async def connections(app: Litestar) -> AsyncIterator[None]:
        app.state.admin_token = settings.admin_token
        app.state.metrics_token = settings.metrics_token
        app.state.db_pool = await create_pool(settings)
        app.state.redis = connect_redis(settings.redis_url, "api", socket_timeout=2)
        # Its own client with short time-outs: a slow Redis delays a read by at most these
        # before PostgreSQL answers it (and the cache is skipped for a second).
        market_cache = MarketViewCache(
            connect_redis(
                settings.redis_url, "api-cache", socket_timeout=0.25, connect_timeout=0.25
            ),
            pending_ttl_s=settings.market_cache_pending_ttl_s,
            decided_ttl_s=settings.market_cache_ttl_s,
            enabled=settings.market_cache,
            local_entries=settings.market_cache_local_entries,
        )
        app.state.market_reads = MarketReads(market_cache, app.state.db_pool)
        # Where each dependency is, for the log lines that say it is down (never an answer).
        addresses = {
            "postgres": address_of(settings.database_url),
            "redis": address_of(settings.redis_url),
        }
        app.state.readiness_probe = ReadinessProbe(app.state.db_pool, app.state.redis, addresses)
        app.state.flow_monitor = FlowMonitor(
            app.state.db_pool, app.state.redis, settings.metrics_refresh_interval_s, addresses
        )
        app.state.webhook_receiver = WebhookReceiver(
            secrets=settings.webhook_secrets,
            production=settings.is_production,
            development=settings.app_env == "development",
            sns=sns or SnsVerifier(settings.sns_topic_arns, verify_signatures=settings.sns_verify),
            guard=SourceGuard(settings.webhook_allowed_cidrs, settings.trusted_proxies),
            limiter=RateLimiter(app.state.redis, settings.webhook_rate_limit_per_minute),
        )
        app.state.console_access = ConsoleAccess(
            settings.admin_token,
            secure_cookies=settings.is_production,
            guard=SourceGuard((), settings.trusted_proxies),
            limiter=RateLimiter(
                app.state.redis, SIGN_IN_PER_MINUTE, prefix="ratelimit:console-sign-in"
            ),
        )
        app.state.console_figures = ConsoleFigures(
            {stream: settings.maxlen_of(stream) for stream in TRIMMED_STREAMS}
        )
        settle_heap()
        try:
            async with stopping_with_supervisor():
                yield
        finally:
            await app.state.market_reads.cache.close()
            await app.state.redis.aclose()
            await app.state.db_pool.close()
            worker_stopped()
            tracing.shutdown()

    return Litestar(
        route_handlers=[
            HealthController,
            MarketController,
            WebhookController,
            MetricsController,
            AdminController,
            console_router(),
        ],
        template_config=template_config(CONSOLE_TEMPLATES),
        middleware=[*tracing.asgi_middleware(), HTTP_METRICS.middleware],
        plugins=[ExactStructSchemaPlugin()],
        lifespan=[connections],
        dependencies={
            "db_pool": Provide(_db_pool, sync_to_thread=False),
            "redis_client": Provide(_redis_client, sync_to_thread=False),
            "uow": Provide(_unit_of_work, sync_to_thread=False),
            "market_reads": Provide(_market_reads, sync_to_thread=False),
            "receiver": Provide(_webhook_receiver, sync_to_thread=False),
            "readiness_probe": Provide(_readiness_probe, sync_to_thread=False),
            "flow_monitor": Provide(_flow_monitor, sync_to_thread=False),
            "polling": Provide(lambda: FLOW.polling_enabled, sync_to_thread=False),
        },
        before_request=validate_request_body,
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=OpenAPIConfig(
            title="market-backend",
            version="0.1.0",
            description="Market registration with asynchronous approval by Entity Permissions Core",
            path=DOCS_PATH,
            # Each feature brings the components its operations refer to.
            components=[ADMIN_COMPONENTS],
            render_plugins=[OfflineSwagger()],
        ),
        logging_config=None,  # app.logging owns the handlers
        debug=False,
    )


def _db_pool(state: State) -> asyncpg.Pool:
    pool: asyncpg.Pool = state.db_pool
    return pool


def _redis_client(state: State) -> redis.Redis:
    client: redis.Redis = state.redis
    return client


def _market_reads(state: State) -> MarketReads:
    reads: MarketReads = state.market_reads
    return reads


def _unit_of_work(state: State) -> UnitOfWork:
    return UnitOfWork(state.db_pool)


def _webhook_receiver(state: State) -> WebhookReceiver:
    receiver: WebhookReceiver = state.webhook_receiver
    return receiver


def _readiness_probe(state: State) -> ReadinessProbe:
    probe: ReadinessProbe = state.readiness_probe
    return probe


def _flow_monitor(state: State) -> FlowMonitor:
    monitor: FlowMonitor = state.flow_monitor
    return monitor
