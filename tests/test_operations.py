"""Operations: /metrics, the admin API, alerts on crafted data, retention, replay."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio as redis

from app.markets.events import Decided
from app.settings import load_settings
from outbox import ENTITY_PERMISSIONS_DEAD, MARKETS_EVENTS
from relay.retention import Deleted, apply_retention
from tests.conftest import DATABASE_URL, TABLES, service_env
from tests.support.admin import ADMIN, TOKEN, alerts
from tests.support.flow import Flow, decision_event
from tests.support.markets import REGISTER, seed_body
from tests.support.metrics import metric, scrape
from tests.support.outbox import seed_outbox, wait_until
from tests.support.postgres_server import PostgresServer
from tests.support.processes import ManagedProcess, start_api
from tests.support.tally import group_settled
from tests.support.webhooks import WEBHOOK, seed_event

CONSUMER = "metrics-consumer"
INBOUND = "entity-permissions:events"
Sample = tuple[str, tuple[tuple[str, str], ...]]  # a metric's name and labels


def sample(name: str, **labels: str) -> Sample:
    return name, tuple(sorted(labels.items()))


def mismatched(text: str, wanted: dict[Sample, float]) -> str:
    """The samples of `text` that differ from `wanted` (name, labels) -> value, or ""."""
    wrong = []
    for (name, labels), value in wanted.items():
        found = metric(text, name, **dict(labels))
        if found != value:
            wrong.append(f"{name}{dict(labels)}: {found}, not {value}")
    return "; ".join(wrong)


async def scraped_until(http: httpx.AsyncClient, wanted: dict[Sample, float], what: str) -> str:
    """The first scrape whose samples are all `wanted` (the figures are a snapshot,
    refreshed at most every METRICS_REFRESH_INTERVAL_S)."""
    latest = ""

    async def there() -> bool:
        nonlocal latest
        latest = await scrape(http)
        return not mismatched(latest, wanted)

    try:
        await wait_until(there, 60, what)
    except AssertionError as error:
        raise AssertionError(f"{error}: {mismatched(latest, wanted)}") from None
    return latest


async def test_metrics_move_through_register_approve_and_fail(flow: Flow) -> None:
    api_process, api = start_api(
        flow.env(METRICS_REFRESH_INTERVAL_S="1"), flow.log_dir, "api-metrics"
    )
    flow.processes.append(api_process)
    launched = time.monotonic()
    flow.launch_consumer(0, CONSUMER_NAME=CONSUMER).wait_for_log("consuming")
    async with httpx.AsyncClient(base_url=api) as http:
        before = await scrape(http)
        assert metric(before, "market_processed_events_recent", status="success", window="1h") == 0
        assert metric(before, "market_processed_events_recent", status="failed", window="1h") == 0
        assert metric(before, "market_decision_latency_seconds_gcount") == 0
        assert metric(before, "market_outbox_backlog") == 0
        assert metric(before, "market_relay_processes") == 0
        assert metric(before, "market_relay_leader") is None
        assert metric(before, "market_polling_enabled") == 0
        assert metric(before, "market_stream_length", stream="markets:events") is None

        # No relay yet: the market's two events and both decisions wait in the outbox.
        [market] = await flow.register_markets(api, 1)
        for event in (seed_event(market["id"]), seed_event(str(uuid.uuid4()))):  # one unknown
            accepted = await http.post(WEBHOOK, json=event)
            assert accepted.status_code == 200, accepted.text
        await scraped_until(
            http,
            {sample("market_outbox_backlog"): 4, sample("market_relay_processes"): 0},
            "a snapshot with four rows waiting in the outbox",
        )

        flow.launch_relay().wait_for_log("leading")
        after = await scraped_until(
            http,
            {
                sample("market_relay_processes"): 1,
                sample("market_relay_leader"): 1,
                sample("market_outbox_backlog"): 0,
                sample("market_processed_events_recent", status="success", window="1h"): 1,
                sample("market_processed_events_recent", status="failed", window="1h"): 1,
                sample("market_processed_events", status="success", event_type=Decided.APPROVED): 1,
                sample("market_decision_latency_seconds_gcount"): 1,
                # registered, approval_requested, activated, token.deployment_requested
                sample("market_stream_length", stream="markets:events"): 4,
                sample("market_stream_length", stream=INBOUND): 2,
                # Both decisions read and acknowledged by the group.
                sample("market_stream_group_lag", stream=INBOUND, group="market-approvals"): 0,
                sample("market_stream_group_pending", stream=INBOUND, group="market-approvals"): 0,
                sample("market_dependency_up", dependency="redis"): 1,
                sample("market_dependency_up", dependency="postgres"): 1,
            },
            "a snapshot with both decisions applied and every row published",
        )
        rows = await flow.db.fetch(
            "SELECT processing_status, processing_reason FROM processed_events"
        )
        assert sorted((r["processing_status"], r["processing_reason"]) for r in rows) == [
            ("failed", "unknown_market"),
            ("success", None),
        ]

    idle = metric(
        after, "market_stream_consumer_idle_seconds", group="market-approvals", consumer=CONSUMER
    )
    # Seconds since our consumer last read: never more than it has been running.
    assert idle is not None and 0 <= idle <= time.monotonic() - launched
    assert "market_requests_total" in after or "market_request" in after  # Litestar's HTTP metrics


@pytest.fixture(scope="module")
def admin_api(log_dir: Path) -> Iterator[str]:
    process, base_url = start_api(service_env(ADMIN_TOKEN=TOKEN), log_dir, "api-admin")
    yield base_url
    process.stop()


@pytest.fixture
async def admin(admin_api: str, db: asyncpg.Connection) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=admin_api) as http:
        yield http


@pytest.mark.parametrize("path", ["/processed-events", "/processed-events/x", "/stats", "/alerts"])
async def test_admin_endpoints_refuse_a_missing_or_wrong_token(
    admin: httpx.AsyncClient, path: str
) -> None:
    url = f"/api/v1/admin{path}"
    assert (await admin.get(url)).status_code == 401
    assert (await admin.get(url, headers={"Authorization": "Bearer nope"})).status_code == 403
    assert (await admin.get(url, headers={"Authorization": f"Basic {TOKEN}"})).status_code == 401
    replay = await admin.post(
        "/api/v1/admin/processed-events/x/replay", headers={"Authorization": "Bearer nope"}
    )
    assert replay.status_code == 403


async def test_without_admin_token_the_admin_api_is_closed(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/admin/stats", headers=ADMIN)

    assert response.status_code == 403
    assert "ADMIN_TOKEN" in response.json()["detail"]


async def record(db: asyncpg.Connection, status: str, count: int, age: str = "1 minute") -> None:
    await db.execute(
        """
        INSERT INTO processed_events (event_id, event_type, source, processing_status, payload,
                                      received_at, processed_at)
        SELECT gen_random_uuid()::text, 'market.approved', 'entity_permissions_core', $1, '{}',
               now() - $3::text::interval, now() - $3::text::interval
        FROM generate_series(1, $2)
        """,
        status,
        count,
        age,
    )


async def test_each_alert_flips_on_crafted_data(
    admin: httpx.AsyncClient, db: asyncpg.Connection, log_dir: Path
) -> None:
    assert await alerts(admin) == {
        "FailedEventRateHigh": False,
        "NoEventsReceived": False,
        "PollingEnabled": False,
    }

    await record(db, "success", 2, age="2 hours")  # traffic seen today, none lately
    assert (await alerts(admin))["NoEventsReceived"]

    await record(db, "success", 100)
    await record(db, "failed", 5)  # 4.8 %: under the threshold
    firing = await alerts(admin)
    assert not firing["NoEventsReceived"]
    assert not firing["FailedEventRateHigh"]

    await record(db, "failed", 2)  # 6.5 %
    assert (await alerts(admin))["FailedEventRateHigh"]

    process, base_url = start_api(
        service_env(ADMIN_TOKEN=TOKEN, PERMISSIONS_SERVICE_BASE_URL="http://127.0.0.1:9"),
        log_dir,
        "api-polling",
    )
    try:
        async with httpx.AsyncClient(base_url=base_url) as http:
            assert (await alerts(http))["PollingEnabled"]
    finally:
        process.stop()


async def test_stats_give_the_seed_figures(
    admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await record(db, "success", 9)
    await record(db, "failed", 1)
    await db.execute(
        """
        INSERT INTO market_approval_events
               (market_id, event_id, decision, occurred_at, processed_at)
        SELECT gen_random_uuid(), 'lat-' || g, 'approved',
               now() - (g || ' seconds')::interval, now()
        FROM generate_series(1, 100) AS g
        """
    )

    stats = (await admin.get("/api/v1/admin/stats", headers=ADMIN)).json()

    assert stats["total"] == 10
    assert stats["successRatePercent"] == 90.0
    assert stats["failed"] == 1 and stats["failedLastHour"] == 1
    assert 49 <= stats["latencyP50Seconds"] <= 52
    assert 94 <= stats["latencyP95Seconds"] <= 96
    assert 98 <= stats["latencyP99Seconds"] <= 100


async def test_processed_events_are_listed_filtered_and_found(
    admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await record(db, "success", 3)
    await record(db, "failed", 2)

    url = "/api/v1/admin/processed-events"
    failed = (await admin.get(url, params={"status": "failed"}, headers=ADMIN)).json()
    assert len(failed["items"]) == 2
    event_id = failed["items"][0]["eventId"]
    one = await admin.get(f"/api/v1/admin/processed-events/{event_id}", headers=ADMIN)
    assert one.json()["processingStatus"] == "failed"
    missing = await admin.get("/api/v1/admin/processed-events/nope", headers=ADMIN)
    assert missing.status_code == 404
    bad = await admin.get(url, params={"status": "odd"}, headers=ADMIN)
    assert bad.status_code == 400


@pytest.mark.parametrize(
    ("field", "value"),
    [("since", "0001-01-01T00:00:00+01:00"), ("until", "9999-12-31T23:30:00-01:00")],
)
async def test_a_time_past_the_calendar_once_in_utc_is_a_400_naming_its_field(
    admin: httpx.AsyncClient, field: str, value: str
) -> None:
    url = "/api/v1/admin/processed-events"
    answer = await admin.get(url, params={field: value}, headers=ADMIN)
    assert answer.status_code == 400, answer.text
    [error] = answer.json()["errors"]
    assert error["field"] == field, error
    assert "outside the years 0001 to 9999" in error["reason"], error


async def test_replaying_a_dead_lettered_event_applies_it_exactly_once(flow: Flow) -> None:
    flow._env = {**flow._env, "ADMIN_TOKEN": TOKEN}
    _, api = flow.start_api()
    flow.launch_relay()
    [market] = await flow.register_markets(api, 1)
    consumer = flow.launch_consumer(0, MAX_DELIVERIES="2", CLAIM_IDLE_MS="200")
    consumer.wait_for_log("consuming")
    # PostgreSQL cannot store this reason: dead-lettered, recorded failed (escaped).
    await flow.xadd_decision(
        decision_event(market["id"], "rejected", event_id="dlq-1", reason="\x00")
    )

    async def dead_lettered_recorded_and_acked() -> bool:
        # The replay reads the failed record; and while the poison entry is pending, a
        # redelivery after the replay took the record away would record it failed again.
        status = await flow.db.fetchval(
            "SELECT processing_status FROM processed_events WHERE event_id = 'dlq-1'"
        )
        return bool(
            status == "failed"
            and await flow.stream.xlen(ENTITY_PERMISSIONS_DEAD) == 1
            and await group_settled(flow.stream)
        )

    await wait_until(
        dead_lettered_recorded_and_acked, 60, "the entry dead-lettered, recorded failed, acked"
    )

    async with httpx.AsyncClient(base_url=api, headers=ADMIN) as http:
        replayed = await http.post("/api/v1/admin/processed-events/dlq-1/replay")
        assert replayed.status_code == 202, replayed.text

        async def rejected() -> bool:
            body = (await http.get(f"/api/v1/markets/{market['id']}")).json()
            return bool(body["market"]["status"] == "rejected")

        await wait_until(rejected, 60, "the replayed decision applied")
        again = await http.post("/api/v1/admin/processed-events/dlq-1/replay")
        assert again.status_code == 409  # a success replays only when forced
        forced = await http.post("/api/v1/admin/processed-events/dlq-1/replay?force=true")
        assert forced.status_code == 202

        async def skipped() -> bool:
            status = await flow.db.fetchval(
                "SELECT processing_status FROM processed_events WHERE event_id = 'dlq-1'"
            )
            return bool(status == "skipped")

        await wait_until(skipped, 60, "the forced replay recorded skipped")

    assert await flow.db.fetchval("SELECT count(*) FROM market_approval_events") == 1
    rejections = await flow.db.fetchval(
        "SELECT count(*) FROM outbox WHERE event_type = 'market.rejected'"
        " AND stream = 'markets:events'"
    )
    assert rejections == 1
    audit = await flow.db.fetch("SELECT previous_status, forced FROM event_replays ORDER BY id")
    assert [(a["previous_status"], a["forced"]) for a in audit] == [
        ("failed", False),
        ("success", True),
    ]


async def test_retention_deletes_only_what_is_old(db: asyncpg.Connection, log_dir: Path) -> None:
    await record(db, "success", 3, age="40 days")
    await record(db, "success", 2, age="1 day")
    await seed_outbox(db, 4, age="200 hours", published=True)
    await seed_outbox(db, 3, age="200 hours", published=False)
    await seed_outbox(db, 5, age="1 hour", published=True)
    await db.execute(
        """
        INSERT INTO idempotency_keys (key, request_fingerprint, response_status, response_body,
                                      created_at)
        VALUES ('old', 'f', 201, '{}', now() - interval '2 days'), ('new', 'f', 201, '{}', now())
        """
    )

    started = await db.fetchval("SELECT clock_timestamp()")
    cleanup = ManagedProcess("cleanup", ["-m", "relay", "cleanup"], service_env(), log_dir)
    assert cleanup.process.wait(60) == 0, cleanup.log_tail()

    assert await db.fetchval("SELECT count(*) FROM processed_events") == 2
    outbox = await db.fetch("SELECT published_at IS NULL AS waiting FROM outbox")
    assert sorted(r["waiting"] for r in outbox) == [False] * 5 + [True] * 3
    assert [r["key"] for r in await db.fetch("SELECT key FROM idempotency_keys")] == ["new"]
    assert "deleted 4 outbox rows, 3 processed events, 1 idempotency keys" in cleanup.log_text()
    # The space is reusable at once, whether or not autovacuum runs on this server.
    vacuumed = await db.fetch(
        "SELECT relname FROM pg_stat_user_tables WHERE last_vacuum > $1 ORDER BY relname", started
    )
    assert [r["relname"] for r in vacuumed] == ["idempotency_keys", "outbox", "processed_events"]


async def test_retention_with_stop_set_deletes_nothing_more(db: asyncpg.Connection) -> None:
    """`stop` (the relay shutting down) ends retention between batches in every table:
    none of the three deletes starts another batch once it is set."""
    await record(db, "success", 3, age="40 days")
    await seed_outbox(db, 4, age="200 hours", published=True)
    await db.execute(
        """
        INSERT INTO idempotency_keys (key, request_fingerprint, response_status, response_body,
                                      created_at)
        VALUES ('old', 'f', 201, '{}', now() - interval '2 days')
        """
    )
    stop = asyncio.Event()
    stop.set()
    pool = await asyncpg.create_pool(DATABASE_URL, min_size=1, max_size=1)
    try:
        settings = load_settings(service_env(), dotenv=None)
        deleted = await apply_retention(pool, settings, stop)
    finally:
        await pool.close()

    assert deleted == Deleted(outbox=0, processed_events=0, idempotency_keys=0)
    assert await db.fetchval("SELECT count(*) FROM processed_events") == 3
    assert await db.fetchval("SELECT count(*) FROM outbox") == 4
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 1


# Issue item 6: /ready and /metrics.

REFRESH_INTERVAL_S = 5


async def snapshot_reads(db: asyncpg.Connection) -> int:
    """Scans of poller_cursors, which only the metrics snapshot reads: one per refresh."""
    scans = await db.fetchval(
        "SELECT seq_scan + coalesce(idx_scan, 0) FROM pg_stat_user_tables"
        " WHERE relname = 'poller_cursors'"
    )
    return int(scans)


async def only_session(db: asyncpg.Connection) -> bool:
    """Whether `db` is the server's only client session: the others have ended, and a
    session's statistics are all counted before it leaves pg_stat_activity."""
    others = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
    )
    return bool(others == 0)


async def redis_calls(client: redis.Redis, command: str) -> int:
    stats = await client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_ready_and_metrics_a_scrape_flood_leaves_registrations_alone(
    flow: Flow, own_postgres: PostgresServer
) -> None:
    """Hundreds of concurrent scrapes against a pool of two connections, while issuers
    register: every registration succeeds, and PostgreSQL and Redis see one snapshot
    read per refresh interval, not one per scrape."""
    emptying = await asyncpg.connect(own_postgres.url)
    await emptying.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    await emptying.close()
    db = await asyncpg.connect(own_postgres.url)  # reads statistics only from here on
    # PostgreSQL counts a session's scans for certain when the session ends: every count
    # is taken once no other session is left.
    await wait_until(lambda: only_session(db), 30, "the other sessions to end")
    reads_before = await snapshot_reads(db)
    env = flow.env(
        DATABASE_URL=own_postgres.url,
        DATABASE_POOL_MAX="2",
        METRICS_REFRESH_INTERVAL_S=str(REFRESH_INTERVAL_S),
    )
    api, base_url = start_api(env, flow.log_dir, "api-scrape-flood")
    flow.processes.append(api)
    await flow.stream.config_resetstat()
    # Fresh connections: none left idle for the server to close while reused.
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=0)
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as http:
            started = time.monotonic()
            scrapes = [http.get("/metrics") for _ in range(300)]
            registrations = [
                http.post(REGISTER, json=seed_body(name=f"Flooded {n}")) for n in range(40)
            ]
            answers = await asyncio.gather(*scrapes, *registrations)
            assert [a.status_code for a in answers[:300]] == [200] * 300
            assert [a.status_code for a in answers[300:]] == [201] * 40

            async def postgres_read() -> bool:
                # Under the flood a refresh may give up on the busy pool; by now one reads.
                text = await scrape(http)
                return metric(text, "market_dependency_up", dependency="postgres") == 1

            await wait_until(postgres_read, 60, "a snapshot that read PostgreSQL")
            elapsed = time.monotonic() - started
        assert await db.fetchval("SELECT count(*) FROM markets") == 40
        exists_calls = await redis_calls(flow.stream, "exists")

        api.stop()
        await wait_until(lambda: only_session(db), 30, "the API's sessions to end")
        reads = await snapshot_reads(db) - reads_before
    finally:
        await db.close()

    most = int(elapsed // REFRESH_INTERVAL_S) + 1
    assert 1 <= reads <= most, f"{reads} snapshot reads in {elapsed:.1f} s"
    assert exists_calls <= 3 * most  # one EXISTS per stream per refresh


async def test_ready_and_metrics_a_failed_refresh_serves_the_last_figures(
    flow: Flow, db: asyncpg.Connection
) -> None:
    """processed_events locked (the snapshot's statements time out) and Redis stopped:
    the figures already read are served, and market_dependency_up says what failed."""
    await record(db, "success", 3)
    await flow.stream.xadd(MARKETS_EVENTS, {"event_id": "e-1"})
    api, base_url = start_api(
        flow.env(METRICS_REFRESH_INTERVAL_S="1"), flow.log_dir, "api-failed-refresh"
    )
    flow.processes.append(api)
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        first = await scrape(http)
        assert metric(first, "market_dependency_up", dependency="postgres") == 1
        assert metric(first, "market_processed_events", status="success") == 3
        assert metric(first, "market_stream_length", stream=MARKETS_EVENTS) == 1

        latest = first

        async def reported(postgres: int, redis_up: int) -> bool:
            nonlocal latest
            latest = await scrape(http)
            return (
                metric(latest, "market_dependency_up", dependency="postgres") == postgres
                and metric(latest, "market_dependency_up", dependency="redis") == redis_up
            )

        locker = await asyncpg.connect(DATABASE_URL)
        try:
            async with locker.transaction():
                await locker.execute("LOCK TABLE processed_events IN ACCESS EXCLUSIVE MODE")
                flow.redis_server.stop()
                await wait_until(lambda: reported(0, 0), 60, "both dependencies reported down")
                assert metric(latest, "market_processed_events", status="success") == 3
                assert metric(latest, "market_stream_length", stream=MARKETS_EVENTS) == 1
        finally:
            await locker.close()
        flow.redis_server.start()
        await wait_until(lambda: reported(1, 1), 60, "both dependencies reported up again")

    log = api.log_text()
    assert log.count("metrics snapshot: postgres down") == 1
    assert "statement timeout" in log
    assert log.count("metrics snapshot: redis down") == 1


@pytest.fixture(scope="module")
def metrics_token_api(log_dir: Path) -> Iterator[str]:
    process, base_url = start_api(
        service_env(METRICS_TOKEN=METRICS_TOKEN), log_dir, "api-metrics-token"
    )
    yield base_url
    process.stop()


METRICS_TOKEN = "a-metrics-token-of-at-least-32-characters"


async def test_ready_and_metrics_token_guards_metrics_when_set(metrics_token_api: str) -> None:
    async with httpx.AsyncClient(base_url=metrics_token_api) as http:
        missing = await http.get("/metrics")
        basic = await http.get("/metrics", headers={"Authorization": f"Basic {METRICS_TOKEN}"})
        wrong = await http.get("/metrics", headers={"Authorization": "Bearer nope"})
        right = await http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})

    assert (missing.status_code, basic.status_code, wrong.status_code) == (401, 401, 403)
    assert right.status_code == 200
    assert metric(right.text, "market_dependency_up", dependency="postgres") == 1
