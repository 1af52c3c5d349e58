"""The processed_events repository: the seed's functions under Python names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from app.approvals.domain import Status
from app.approvals.processed_events import ProcessedEventRepository, ProcessedEventRow
from app.db import init_connection
from app.markets.events import Decided


@pytest.fixture
async def repo(db: asyncpg.Connection) -> ProcessedEventRepository:
    await init_connection(db)  # jsonb as the app's pool reads and writes it
    return ProcessedEventRepository(db)


async def record(
    repo: ProcessedEventRepository, event_id: str, status: Status, **changes: object
) -> bool:
    fields: dict[str, Any] = {
        "event_id": event_id,
        "event_type": Decided.APPROVED,
        "source": "entity_permissions_core",
        "status": status,
        "error": None if status == Status.SUCCESS else "why",
        "payload": {"payload": {"market_id": "m"}},
    }
    fields.update(changes)
    return await repo.record_processed_event(ProcessedEventRow(**fields))


async def test_record_once_then_find_and_check(repo: ProcessedEventRepository) -> None:

    assert await record(repo, "e-1", Status.SUCCESS)
    assert not await record(repo, "e-1", Status.FAILED)  # the first outcome stands

    assert await repo.is_event_processed("e-1")
    assert not await repo.is_event_processed("e-2")
    found = await repo.find_processed_event_by_id("e-1")
    assert found is not None
    assert found.processing_status == Status.SUCCESS
    assert found.payload == {"payload": {"market_id": "m"}}
    assert await repo.find_processed_event_by_id("e-2") is None


async def test_list_filters_and_pages(repo: ProcessedEventRepository) -> None:
    now = datetime.now(UTC)
    await record(repo, "old", Status.SUCCESS, received_at=now - timedelta(days=3))
    await record(repo, "s-1", Status.SUCCESS)
    await record(repo, "f-1", Status.FAILED, source="other")
    await record(repo, "k-1", Status.SKIPPED, event_type="market.suspended")

    def ids(events: list) -> list[str]:  # type: ignore[type-arg]
        return [e.event_id for e in events]

    # Newest first: the three received now in the order recorded, then the one of 3 days ago.
    assert ids(await repo.list_processed_events()) == ["k-1", "f-1", "s-1", "old"]
    assert ids(await repo.list_processed_events(status=Status.FAILED)) == ["f-1"]
    assert ids(await repo.list_processed_events(event_type="market.suspended")) == ["k-1"]
    assert ids(await repo.list_processed_events(source="other")) == ["f-1"]
    recent = await repo.list_processed_events(since=now - timedelta(hours=1))
    assert ids(recent) == ["k-1", "f-1", "s-1"]
    assert ids(await repo.list_processed_events(until=now - timedelta(days=1))) == ["old"]
    first_page = await repo.list_processed_events(limit=2)
    second_page = await repo.list_processed_events(limit=2, offset=2)
    assert len(first_page) == len(second_page) == 2
    assert not set(ids(first_page)) & set(ids(second_page))


async def test_failed_count_and_deleting_old_events(
    repo: ProcessedEventRepository, db: asyncpg.Connection
) -> None:
    now = datetime.now(UTC)
    await record(repo, "f-new", Status.FAILED)
    await record(repo, "f-old", Status.FAILED, received_at=now - timedelta(days=40))
    await db.execute(
        "UPDATE processed_events SET processed_at = received_at WHERE event_id = 'f-old'"
    )

    assert await repo.get_failed_events_count(timedelta(hours=1)) == 1
    assert await repo.get_failed_events_count(timedelta(days=60)) == 2
    assert await repo.delete_old_processed_events(now - timedelta(days=30), batch=1) == 1
    assert await repo.is_event_processed("f-new")
    assert not await repo.is_event_processed("f-old")
