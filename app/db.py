"""The asyncpg connection pool every process opens once at start-up."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any, Final, TypeVar

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

from app.settings import Settings

# A connection of its own or one lent by a pool: what repositories and the outbox take.
Connection = asyncpg.Connection | PoolConnectionProxy

# What an unreachable or restarting PostgreSQL raises: answered with 503, retried by workers.
UNAVAILABLE_ERRORS: Final[tuple[type[Exception], ...]] = (
    OSError,
    TimeoutError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    # A pooled connection still consuming the server's shutdown notice when it is used.
    asyncpg.InternalClientError,
)

# Worth retrying as they are: the database is away, busy, or chose us as a victim.
TRANSIENT_ERRORS: Final[tuple[type[Exception], ...]] = (
    *UNAVAILABLE_ERRORS,
    asyncpg.InterfaceError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.QueryCanceledError,
)

# A value the database will not take (out of its range, against a constraint, too big
# to index): the input's fault, never to be retried as it is.
REFUSED_VALUE_ERRORS: Final[tuple[type[Exception], ...]] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
)

# Everything a worker retries after a pause: the above, a broken session, a failed statement.
RETRYABLE_ERRORS: Final[tuple[type[Exception], ...]] = (
    *UNAVAILABLE_ERRORS,
    asyncpg.InterfaceError,
    asyncpg.PostgresError,
)

# Every session asks the server to notice a client that vanished (a host cut off sends no
# FIN or RST): keepalive probes after 2 s of silence, 3 probes 1 s apart, and at most 5 s
# for data the client never acknowledges. Without them the server keeps a dead client's
# session, with its locks (a leader's advisory lock, a consumer's row locks), until TCP
# gives up after about 15 minutes, or 2 hours when the session is idle.
DEAD_CLIENT_SETTINGS: Final = {
    "tcp_keepalives_idle": "2",
    "tcp_keepalives_interval": "1",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "5000",
}
# A pooled transaction idle this long belongs to a process that stopped (paused, hung):
# the server ends it and releases its locks. Ours go idle for milliseconds between
# statements, and for a Redis call of at most a few seconds in the relay.
IDLE_IN_TRANSACTION_TIMEOUT: Final = "30s"

T = TypeVar("T")

log = logging.getLogger(__name__)

_encode_json = msgspec.json.Encoder().encode
_decode_json = msgspec.json.Decoder().decode


def _json_text(value: Any) -> str:
    return _encode_json(value).decode()


def storable(value: T, as_type: type[T]) -> T:
    """`value` with each NUL character written as the six characters \\u0000, visibly:
    PostgreSQL text and jsonb hold no NUL. Text that already reads \\u0000 is left as
    it is (an escape applied to the encoded JSON would turn it back into a NUL)."""
    return msgspec.convert(_without_nul(msgspec.to_builtins(value)), as_type)


def _without_nul(document: Any) -> Any:
    """The same builtins, NUL replaced in every string, key or value; no recursion."""
    root = [document]
    stack: list[tuple[Any, Any]] = [(root, 0)]
    while stack:
        container, key = stack.pop()
        item = container[key]
        if isinstance(item, str):
            container[key] = item.replace("\x00", "\\u0000")
        elif isinstance(item, list):
            stack.extend((item, index) for index in range(len(item)))
        elif isinstance(item, dict):
            container[key] = item = {
                (name.replace("\x00", "\\u0000") if isinstance(name, str) else name): inner
                for name, inner in item.items()
            }
            stack.extend((item, name) for name in item)
    return root[0]


async def init_connection(connection: asyncpg.Connection) -> None:
    """json and jsonb read and written with msgspec."""
    for type_name in ("json", "jsonb"):
        await connection.set_type_codec(
            type_name, encoder=_json_text, decoder=_decode_json, schema="pg_catalog"
        )


async def _reset_on_release(connection: asyncpg.Connection) -> None:
    """No server round trip when a connection goes back to the pool.

    asyncpg's default runs `RESET ALL; UNLISTEN *; ...` on every release: a round trip
    per transaction. Pooled connections here keep no session state (no LISTEN, no
    session advisory locks, only SET LOCAL), so only a transaction left open is undone.
    """
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


async def create_pool(
    settings: Settings, *, max_size: int | None = None, application_name: str | None = None
) -> asyncpg.Pool:
    """The process's pool; `application_name` names its sessions in pg_stat_activity."""
    server_settings = {
        **DEAD_CLIENT_SETTINGS,
        "idle_in_transaction_session_timeout": IDLE_IN_TRANSACTION_TIMEOUT,
    }
    if application_name:
        server_settings["application_name"] = application_name
    max_size = max_size or settings.database_pool_max
    pool = await asyncpg.create_pool(
        settings.database_url,
        # A process's own bound (the relay's 3) caps the operator's minimum, never the
        # other way round: asyncpg refuses a minimum above the maximum.
        min_size=min(settings.database_pool_min, max_size),
        max_size=max_size,
        init=init_connection,
        reset=_reset_on_release,
        command_timeout=30,
        server_settings=server_settings,
    )
    assert pool is not None
    await warm(pool, min(WARM_CONNECTIONS, max_size))
    return pool


# Connections each pool opens at start, and how long that may take. A process's first
# events otherwise each wait for a connection of their own: the client's handshake and a
# new server backend whose catalog caches are empty. Measured at 200 webhooks/s right
# after a start: the first quarter second's requests took up to 100 ms end to end, the
# steady ones 10, and they were the whole p99 of a 15 s run.
WARM_CONNECTIONS: Final = 4
WARM_TIMEOUT_S: Final = 1.0

# Tables every process touches: a first query that plans over them loads their entries
# into the new backend's caches, which is most of what a backend's first statement costs.
_WARM_QUERY: Final = "SELECT 1 FROM markets, outbox, processed_events WHERE false"


async def warm(pool: asyncpg.Pool, connections: int) -> None:
    """Open `connections` of the pool's connections now, best effort: a database that is
    away costs the start nothing more, one that stops answering at most twice
    WARM_TIMEOUT_S (the opening, then giving back the connection it cut), and the pool
    connects later as it would have. Sequential, so a slow server is not handed a burst
    of backends."""
    held: list[PoolConnectionProxy] = []
    try:
        async with asyncio.timeout(WARM_TIMEOUT_S):
            for _ in range(connections):
                connection = await pool.acquire()
                held.append(connection)
                await connection.execute(_WARM_QUERY)
    except RETRYABLE_ERRORS as error:  # TimeoutError (the bound) among them
        log.info("pool not warmed (%s); it connects on first use", type(error).__name__)
    finally:
        for connection in held:
            # Bounded too: a query cut by the time-out leaves a cancellation to wait
            # for, and a connection not back in time is closed instead.
            await pool.release(connection, timeout=WARM_TIMEOUT_S)


# Rows each retention transaction deletes: few enough that its locks are short.
DELETE_BATCH: Final = 1000


async def delete_in_batches(
    db: asyncpg.Pool | PoolConnectionProxy | asyncpg.Connection,
    statement: str,
    older_than: datetime,
    batch: int = DELETE_BATCH,
    stop: asyncio.Event | None = None,
) -> int:
    """Run a `DELETE ... LIMIT $2` of rows older than $1 until fewer than `batch` go, or
    until `stop` is set (checked before each batch, so a set one deletes nothing more).

    Every retained table's repository deletes through here. Small transactions keep
    locks short and let retention run beside the traffic.
    """
    deleted = 0
    while stop is None or not stop.is_set():
        count = int((await db.execute(statement, older_than, batch)).split()[-1])
        deleted += count
        if count < batch:
            break
    return deleted
