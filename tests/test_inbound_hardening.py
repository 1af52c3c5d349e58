"""Hostile input on the ways decisions come in (review items 8, 9 and 12), over real
processes: a poisoned feed page, decisions that could not be read at first, event ids
reused with other content, and a feed whose cursor does not advance."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest

from app.inbound.poller import (
    MAX_PAGE_BYTES,
    PAGE_SIZE,
    EventFeed,
    FeedUnavailable,
    decode_page,
)
from app.json_limits import TOO_DEEP_MARKER
from app.leadership import POLLER_LOCK, lock_key
from app.markets.events import Decided
from app.settings import load_settings
from tests.conftest import DATABASE_URL
from tests.support.admin import ADMIN, TOKEN
from tests.support.approvals import all_active, pending
from tests.support.feed import (
    API_KEY,
    ENTITY,
    approve,
    nested_event,
    polling,
    put_on_feed,
    requested,
    set_faults,
)
from tests.support.flow import Flow, decision_event
from tests.support.outbox import wait_until
from tests.support.processes import ManagedProcess
from tests.support.webhooks import WEBHOOK, seed_event


async def post_webhook(api: str, event: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        return await http.post(WEBHOOK, json=event)


async def unreadable_rows(flow: Flow) -> list[asyncpg.Record]:
    """The failed records of deliveries that could not be read, oldest first."""
    return await flow.db.fetch(
        "SELECT event_id, event_type, processing_error, payload FROM processed_events"
        " WHERE event_id LIKE 'unreadable:%' ORDER BY id"
    )


async def wait_unreadable(flow: Flow, count: int) -> list[asyncpg.Record]:
    async def recorded() -> bool:
        return len(await unreadable_rows(flow)) >= count

    await wait_until(recorded, 60, f"{count} unreadable deliveries recorded")
    return await unreadable_rows(flow)


def claimed_id(row: asyncpg.Record) -> str | None:
    """The event_id an unreadable record's delivery claimed, from what was kept of it."""
    kept = json.loads(row["payload"])
    document = kept.get("document") or kept.get("payload", {}).get("fields") or {}
    found = document.get("event_id")
    return str(found) if found is not None else None


async def outcome(flow: Flow, event_id: str) -> str | None:
    status: str | None = await flow.db.fetchval(
        "SELECT processing_status FROM processed_events WHERE event_id = $1", event_id
    )
    return status


async def wait_outcome(flow: Flow, event_id: str, status: str) -> None:
    async def there() -> bool:
        return await outcome(flow, event_id) == status

    await wait_until(there, 60, f"{event_id} recorded {status}")


def start_polled(flow: Flow) -> tuple[str, str, ManagedProcess]:
    """The simulator, the API, a relay and a consumer that polls the simulator's feed;
    returns the simulator's and the API's URLs and the consumer."""
    _, simulator = flow.start_simulator(EPC_API_KEY=API_KEY)
    _, api = flow.start_api()
    flow.launch_relay()
    return simulator, api, flow.launch_consumer(**polling(simulator))


def assert_alive(process: ManagedProcess) -> None:
    assert process.process.poll() is None, f"{process.name} died:\n{process.log_tail()}"
    assert "Traceback" not in process.log_text(), process.log_tail(80)


# -- item 9: an event_id reused with other content -------------------------------------


async def test_item_9_the_webhook_reports_a_different_copy_under_a_recorded_event_id(
    flow: Flow,
) -> None:
    api_process, api = flow.start_api()
    flow.launch_relay()
    [market] = [m["id"] for m in await flow.register_markets(api, 1)]
    first = seed_event(market, occurred_at="2026-11-26T15:00:00Z")
    first["payload"]["weight"] = 100
    # The same event: context and occurred_at may differ between the two paths, and the
    # payload's key order and number spelling are not content.
    same = {
        **{k: v for k, v in first.items() if k != "occurred_at"},
        "context": {"actor_id": "another", "request_id": "r-2"},
        "payload": {**dict(reversed(first["payload"].items())), "weight": 1e2},
    }
    rejected = {
        **first,
        "event_type": Decided.REJECTED,
        "payload": {**first["payload"], "decision": "rejected"},
    }
    elsewhere = {**first, "payload": {**first["payload"], "market_id": str(uuid.uuid4())}}

    async def outbox_rows() -> int:
        count: int = await flow.db.fetchval(
            "SELECT count(*) FROM outbox WHERE event_id = $1", first["event_id"]
        )
        return count

    assert (await post_webhook(api, first)).json()["status"] == "accepted"
    for recorded_in in ("the outbox", "processed_events"):
        assert (await post_webhook(api, same)).json()["status"] == "already_processed"
        for other, differs in ((rejected, "event_type"), (elsewhere, "payload")):
            answer = await post_webhook(api, other)
            assert answer.status_code == 409, (recorded_in, answer.text)
            assert first["event_id"] in answer.json()["detail"]
            assert differs in [e["field"] for e in answer.json()["errors"]]
        assert await outbox_rows() == (1 if recorded_in == "the outbox" else 0)
        if recorded_in == "the outbox":
            # Applied, then the outbox row gone with its retention window.
            flow.launch_consumer()
            await all_active(flow, [market])
            await flow.db.execute("DELETE FROM outbox WHERE event_id = $1", first["event_id"])

    api_process.wait_for_log(f"event {first['event_id']} differs from the copy already received")
    assert await flow.db.fetchval("SELECT count(*) FROM processed_events") == 1


async def test_item_9_the_poller_logs_a_different_copy_and_passes(flow: Flow) -> None:
    simulator, api, consumer = start_polled(flow)
    first, second = (m["id"] for m in await flow.register_markets(api, 2))
    await requested(simulator, [second])
    by_webhook = seed_event(first, event_id="reused-id")
    assert (await post_webhook(api, by_webhook)).json()["status"] == "accepted"

    await put_on_feed(
        simulator,
        {**by_webhook, "payload": {**by_webhook["payload"], "market_id": second}},
    )
    await approve(simulator, [second])

    await all_active(flow, [first, second])
    consumer.wait_for_log("event reused-id differs from the copy already received")
    history = await flow.db.fetch(
        "SELECT market_id FROM market_approval_events WHERE event_id = 'reused-id'"
    )
    assert [str(h["market_id"]) for h in history] == [first]
    assert_alive(consumer)


# -- item 8: a poisoned feed page stops all approvals -------------------------------------


async def test_item_8_a_poisoned_feed_page_stops_no_approval(flow: Flow) -> None:
    simulator, api, consumer = start_polled(flow)
    by_feed = [m["id"] for m in await flow.register_markets(api, 3)]
    by_webhook = [m["id"] for m in await flow.register_markets(api, 3)]
    await requested(simulator, by_feed)

    # An event 400 levels deep (deep enough for any recursive walk), then one 5,000 deep
    # (the page itself is then too deep to decode); each followed on the feed by a
    # decision, while decisions keep coming by webhook.
    for depth, feed_market, webhook_market in zip((400, 5000), by_feed, by_webhook, strict=False):
        await put_on_feed(simulator, nested_event(f"deep-{depth}", str(uuid.uuid4()), depth))
        await approve(simulator, [feed_market])
        accepted = await post_webhook(api, seed_event(webhook_market))
        assert accepted.json()["status"] == "accepted"
        await all_active(flow, [feed_market, webhook_market], within=30)
        assert_alive(consumer)

    rows = await wait_unreadable(flow, 2)
    assert sorted(claimed_id(row) or "" for row in rows) == ["deep-400", "deep-5000"]
    assert all("nested deeper than 32 levels" in row["processing_error"] for row in rows)

    # A page that is not an object: the feed is failing, the webhook is not.
    await set_faults(simulator, page='["not", "a", "page"]')
    failing = consumer.wait_for_log("Entity Permissions Core unavailable")
    await approve(simulator, [by_feed[2]])
    accepted = await post_webhook(api, seed_event(by_webhook[2]))
    assert accepted.json()["status"] == "accepted"
    await all_active(flow, [by_webhook[2]], within=30)
    await set_faults(simulator)
    await all_active(flow, [by_feed[2]], within=90)
    consumer.wait_for_log("Entity Permissions Core available again", after=failing)
    assert_alive(consumer)


# -- item 9: a decision the poller could not read is later dropped -----------------------


async def test_item_9_a_decision_the_poller_could_not_read_is_applied_from_a_later_copy(
    flow: Flow,
) -> None:
    simulator, api, consumer = start_polled(flow)
    first, second = (m["id"] for m in await flow.register_markets(api, 2))
    by_webhook = seed_event(first, event_id="fixed-by-webhook")
    by_feed = seed_event(second, event_id="fixed-on-the-feed")

    # Each first served unreadable by the feed: an entity_id that is no UUID, no decision.
    await put_on_feed(
        simulator,
        {**by_webhook, "payload": {**by_webhook["payload"], "entity_id": "not-a-uuid"}},
    )
    await put_on_feed(simulator, {**by_feed, "payload": {"market_id": second}})
    rows = {claimed_id(row): row["processing_error"] for row in await wait_unreadable(flow, 2)}
    assert sorted(rows) == ["fixed-by-webhook", "fixed-on-the-feed"]
    assert "payload.entity_id" in rows["fixed-by-webhook"]
    assert "payload.decision" in rows["fixed-on-the-feed"]

    # Then a readable copy of each: by webhook, and on the feed once EPC fixed it.
    answer = await post_webhook(api, by_webhook)
    assert answer.status_code == 200
    assert answer.json() == {"status": "accepted", "event_id": "fixed-by-webhook"}
    await put_on_feed(simulator, by_feed)

    await all_active(flow, [first, second])
    assert await outcome(flow, "fixed-by-webhook") == "success"
    assert await outcome(flow, "fixed-on-the-feed") == "success"
    assert len(await unreadable_rows(flow)) == 2
    assert_alive(consumer)


async def test_item_9_an_unreadable_stream_entry_blocks_no_later_copy(flow: Flow) -> None:
    _, api = flow.start_api()
    flow.launch_relay()
    consumer = flow.launch_consumer()
    consumer.wait_for_log("consuming")
    markets = [m["id"] for m in await flow.register_markets(api, 3)]
    copies = [seed_event(market, event_id=f"entry-{n}") for n, market in enumerate(markets)]
    fields = [
        decision_event(m, event_id=c["event_id"]).stream_fields(0)
        for m, c in zip(markets, copies, strict=True)
    ]
    # A payload that is not JSON; one nested 5,000 deep; an event_id that is not UTF-8.
    await flow.stream.xadd("entity-permissions:events", {**fields[0], "payload": "{not json"})
    deep = fields[1]["payload"][:-1] + ', "note": ' + "[" * 5000 + "]" * 5000 + "}"
    await flow.stream.xadd("entity-permissions:events", {**fields[1], "payload": deep})
    await flow.stream.xadd("entity-permissions:events", {**fields[2], "event_id": b"entry-2\xff"})

    rows = await wait_unreadable(flow, 3)
    assert [claimed_id(row) for row in rows] == ["entry-0", "entry-1", "entry-2\\xff"]
    assert all(row["processing_error"].startswith("unreadable entry:") for row in rows)
    assert "nested deeper than 32 levels" in rows[1]["processing_error"]

    async def acknowledged() -> bool:
        return await pending(flow) == 0

    await wait_until(acknowledged, 30, "the unreadable entries acknowledged")
    for copy in copies:
        answer = await post_webhook(api, copy)
        assert answer.json() == {"status": "accepted", "event_id": copy["event_id"]}
    await all_active(flow, markets)
    assert_alive(consumer)


# -- item 12: a feed that repeats its cursor ----------------------------------------------


class FeedServer:
    """An Entity Permissions feed of the test's own: `page(after)` answers each request,
    and every request is counted."""

    def __init__(
        self,
        page: Callable[[str | None], dict[str, Any]],
        delay_s: float = 0,
        *,
        gzipped: bool = False,
    ) -> None:
        """`gzipped`: every answer gzip-compressed, whatever the request accepted."""
        self.page = page
        self.requests = 0
        self.accepted_encodings: list[str | None] = []
        self._lock = threading.Lock()
        feed = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with feed._lock:
                    feed.requests += 1
                    feed.accepted_encodings.append(self.headers.get("accept-encoding"))
                threading.Event().wait(delay_s)
                after = parse_qs(urlsplit(self.path).query).get("after", [None])[0]
                body = json.dumps(feed.page(after)).encode()
                self.send_response(200)
                if gzipped:
                    body = gzip.compress(body)
                    self.send_header("content-encoding", "gzip")
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    @contextmanager
    def running(self) -> Iterator[FeedServer]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()


def epc_event(event_id: str) -> dict[str, Any]:
    """An event the consumer records `skipped`: enough to see what the poller stored."""
    return {
        "event_id": event_id,
        "event_type": "entity.noted",
        "source": "entity_permissions_core",
        "payload": {"n": event_id},
    }


def launch_poller(flow: Flow, feed: str) -> ManagedProcess:
    """`make poll`: the poller alone."""
    process = ManagedProcess(
        f"poller-{uuid.uuid4().hex[:8]}",
        ["-m", "app.inbound"],
        flow.env(**polling(feed)),
        flow.log_dir,
    )
    flow.processes.append(process)
    return process


async def test_item_12_a_feed_repeating_its_cursor_is_not_hammered(flow: Flow) -> None:
    advancing = False

    def page(after: str | None) -> dict[str, Any]:
        if advancing and after == "7":
            return {"data": [epc_event("after-7")], "next_cursor": "8", "has_more": False}
        return {"data": [epc_event("at-7")], "next_cursor": "7", "has_more": True}

    with FeedServer(page).running() as feed:
        poller = launch_poller(flow, feed.url)
        stuck = poller.wait_for_log("does not advance")
        before = feed.requests
        await asyncio.sleep(3)
        # Backing off: a handful of requests in 3 s, not thousands.
        assert feed.requests - before <= 20, feed.requests - before

        advancing = True
        poller.wait_for_log("Entity Permissions Core available again", after=stuck, timeout=90)

    assert await flow.db.fetchval("SELECT cursor FROM poller_cursors") == "8"
    stored = await flow.db.fetch("SELECT event_id FROM outbox ORDER BY id")
    assert [row["event_id"] for row in stored] == ["at-7", "after-7"]
    assert_alive(poller)


async def test_item_12_a_poller_that_loses_its_lock_stops_between_pages(flow: Flow) -> None:
    def endless(after: str | None) -> dict[str, Any]:
        position = int(after or 0)
        return {
            "data": [epc_event(f"endless-{position}")],
            "next_cursor": str(position + 1),
            "has_more": True,
        }

    with FeedServer(endless, delay_s=0.02).running() as feed:
        poller = launch_poller(flow, feed.url)
        poller.wait_for_log("polling")

        async def following_pages() -> bool:
            return feed.requests > 5

        await wait_until(following_pages, 30, "the poller following the feed")
        holder = await asyncpg.connect(DATABASE_URL)
        try:
            # The lock's session ends (a network cut, a server restart), and another
            # process takes the lock before this one notices.
            await holder.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name LIKE $1",
                f"{POLLER_LOCK}:%",
            )

            async def taken() -> bool:
                return bool(
                    await holder.fetchval("SELECT pg_try_advisory_lock($1)", lock_key(POLLER_LOCK))
                )

            await wait_until(taken, 10, "the lock taken by another session")
            poller.wait_for_log("waiting as standby")
            stopped_at = feed.requests
            await asyncio.sleep(1)
            assert feed.requests == stopped_at
        finally:
            await holder.close()
    assert_alive(poller)


# -- item 9: admin replay of every kind of failed record ---------------------------------


async def test_item_9_replay_repairs_every_kind_of_failed_row(flow: Flow) -> None:
    flow._env = {**flow._env, "ADMIN_TOKEN": TOKEN}
    _, api = flow.start_api()
    flow.launch_relay()
    flow.launch_consumer().wait_for_log("consuming")
    markets = [m["id"] for m in await flow.register_markets(api, 3)]
    # As today's poller and consumer recorded deliveries they could not read, under the
    # sender's event_id; and an unreadable record under a key of its own.
    feed_document = seed_event(markets[0], event_id="legacy-feed")
    entry_fields = decision_event(markets[1], event_id="legacy-entry").stream_fields(7)
    unreadable_document = seed_event(markets[2], event_id="once-unreadable")
    await record_failed(
        flow, "legacy-feed", {"document": feed_document}, "invalid event: body: ..."
    )
    await record_failed(
        flow,
        "legacy-entry",
        {"payload": {"fields": entry_fields, "error": "..."}, "context": {}},
        "unreadable entry: Object missing required field `occurred_at`",
    )
    await record_failed(
        flow, "unreadable:0123", {"document": unreadable_document}, "invalid event: ..."
    )

    async with httpx.AsyncClient(base_url=api, headers=ADMIN) as http:
        for key, own_id in (
            ("legacy-feed", "legacy-feed"),
            ("legacy-entry", "legacy-entry"),
            ("unreadable:0123", "once-unreadable"),
        ):
            answer = await http.post(f"/api/v1/admin/processed-events/{key}/replay")
            assert answer.status_code == 202, answer.text
            assert answer.json()["replayedAs"] == own_id
        await all_active(flow, markets)

        # Replayed again: nothing is applied twice.
        again = await http.post("/api/v1/admin/processed-events/legacy-feed/replay")
        assert again.status_code == 409
        forced = await http.post("/api/v1/admin/processed-events/legacy-feed/replay?force=true")
        assert forced.status_code == 202
        await wait_outcome(flow, "legacy-feed", "skipped")
        gone = await http.post("/api/v1/admin/processed-events/unreadable:0123/replay")
        assert gone.status_code == 404

    for event_id in ("legacy-entry", "once-unreadable"):
        assert await outcome(flow, event_id) == "success"
    history = await flow.db.fetch("SELECT event_id FROM market_approval_events ORDER BY event_id")
    assert [h["event_id"] for h in history] == ["legacy-entry", "legacy-feed", "once-unreadable"]


async def test_item_9_replay_refuses_what_still_cannot_be_read(flow: Flow) -> None:
    flow._env = {**flow._env, "ADMIN_TOKEN": TOKEN}
    simulator, api, consumer = start_polled(flow)
    consumer.wait_for_log("consuming")
    [market] = [m["id"] for m in await flow.register_markets(api, 1)]
    await requested(simulator, [market])
    await put_on_feed(simulator, nested_event("too-deep", market, 400))
    no_uuid = {"market_id": "no-uuid", "entity_id": ENTITY, "decision": "approved"}
    await put_on_feed(simulator, seed_event(event_id="no-uuid-market", payload=no_uuid))
    [applied] = await approve(simulator, [market])
    # A copy of the applied decision that could not be read (its id taken since), and a
    # decision whose payload the consumer found invalid (straight onto the stream).
    await record_failed(
        flow, "unreadable:4567", {"document": applied}, "invalid event: (a reader since fixed)"
    )
    await flow.xadd_decision(decision_event("not-a-uuid", event_id="invalid-payload"))
    await all_active(flow, [market])
    await wait_outcome(flow, "invalid-payload", "failed")
    recorded = {claimed_id(row): row["event_id"] for row in await wait_unreadable(flow, 3)}
    deep, invalid = recorded["too-deep"], recorded["no-uuid-market"]

    async with httpx.AsyncClient(base_url=api, headers=ADMIN) as http:

        async def refused(event_id: str, status: int) -> dict[str, Any]:
            answer = await http.post(f"/api/v1/admin/processed-events/{event_id}/replay")
            assert answer.status_code == status, answer.text
            body: dict[str, Any] = answer.json()
            return body

        too_deep = await refused(deep, 422)
        assert "nested deeper than 32 levels" in json.dumps(too_deep["errors"])
        not_a_uuid = await refused(invalid, 422)
        assert [e["field"] for e in not_a_uuid["errors"]] == ["payload.market_id"]
        bad_payload = await refused("invalid-payload", 422)
        assert "payload.market_id" in [e["field"] for e in bad_payload["errors"]]
        taken = await refused("unreadable:4567", 409)
        assert applied["event_id"] in taken["detail"]

    assert await flow.db.fetchval("SELECT count(*) FROM event_replays") == 0
    assert await flow.db.fetchval("SELECT count(*) FROM market_approval_events") == 1


async def record_failed(flow: Flow, event_id: str, payload: dict[str, Any], error: str) -> None:
    await flow.db.execute(
        """
        INSERT INTO processed_events (event_id, event_type, source, processing_status,
                                      processing_error, payload)
        VALUES ($1, 'market.approved', 'entity_permissions_core', 'failed', $2, $3)
        """,
        event_id,
        error,
        json.dumps(payload),
    )


# -- what a second hostile review found ---------------------------------------------------


async def test_an_occurred_at_the_database_cannot_hold_is_refused_not_retried_forever(
    flow: Flow,
) -> None:
    simulator, api, consumer = start_polled(flow)
    by_feed, by_webhook = (m["id"] for m in await flow.register_markets(api, 2))
    year_zero = "0001-01-01T00:00:00+01:00"  # in year 0 once in UTC

    refused = await post_webhook(api, {**seed_event(by_webhook), "occurred_at": year_zero})
    assert refused.status_code == 400, refused.text
    assert refused.json()["errors"][0]["field"] == "occurred_at"

    # On the feed: the event beside it, and the pages after it, still go in.
    await put_on_feed(simulator, {**epc_event("from-year-zero"), "occurred_at": year_zero})
    await requested(simulator, [by_feed])
    await approve(simulator, [by_feed])
    await all_active(flow, [by_feed], within=60)
    [row] = await wait_unreadable(flow, 1)
    assert claimed_id(row) == "from-year-zero" and "occurred_at" in row["processing_error"]
    assert_alive(consumer)


def test_a_page_of_more_events_than_asked_for_is_refused() -> None:
    body = json.dumps({"data": [epc_event(f"e-{n}") for n in range(PAGE_SIZE + 1)]})
    with pytest.raises(FeedUnavailable, match="invalid feed body"):
        decode_page(body.encode())


async def test_an_event_that_merely_quotes_the_nesting_marker_is_read_as_sent(
    flow: Flow,
) -> None:
    simulator, api, _ = start_polled(flow)
    [market] = [m["id"] for m in await flow.register_markets(api, 1)]
    event = seed_event(market, event_id="quoting")
    event["context"]["note"] = TOO_DEEP_MARKER

    await put_on_feed(simulator, event)

    await all_active(flow, [market], within=60)
    assert await outcome(flow, "quoting") == "success"


async def test_a_stream_entry_id_past_year_9999_crashes_no_consumer(flow: Flow) -> None:
    flow.launch_relay()
    consumer = flow.launch_consumer()
    await flow.stream.xgroup_create(
        "entity-permissions:events", "market-approvals", id="0", mkstream=True
    )
    await flow.stream.xadd("entity-permissions:events", {"junk": "x"}, id="300000000000000-0")
    # Every id Redis makes from now on is past year 9999 too.
    await flow.xadd_decision(decision_event(str(uuid.uuid4()), event_id="after-the-junk"))

    await wait_outcome(flow, "after-the-junk", "failed")  # an unknown market: read, judged
    [row] = await wait_unreadable(flow, 1)
    assert "unreadable entry" in row["processing_error"]
    assert_alive(consumer)


async def test_what_senders_name_adds_no_series_to_metrics(flow: Flow) -> None:
    _, simulator = flow.start_simulator(EPC_API_KEY=API_KEY)
    _, api = flow.start_api()
    flow.launch_consumer(**polling(simulator))
    for n in range(30):  # unreadable, each under an event type and source of its own
        await put_on_feed(
            simulator, {"event_id": f"odd-{n}", "event_type": f"type-{n}", "source": f"s{n}"}
        )
    await wait_unreadable(flow, 30)

    async with httpx.AsyncClient(base_url=api) as http:
        text = (await http.get("/metrics")).text  # the first scrape reads the figures
    samples = re.findall(r"^market_processed_events\{([^}]*)\} (\S+)$", text, re.MULTILINE)
    assert [(dict(re.findall(r'(\w+)="([^"]*)"', labels)), value) for labels, value in samples] == [
        ({"status": "failed", "event_type": "other", "source": "entity_permissions_core"}, "30.0")
    ]


async def test_an_entry_with_nul_and_text_that_reads_as_one_holds_up_no_consumer(
    flow: Flow,
) -> None:
    """A NUL in a field, and text spelling \\u0000, once made the failure record of such an
    entry unstorable: the consumer retried it for ever, and every entry behind it waited."""
    consumer = flow.launch_consumer()
    await flow.stream.xgroup_create(
        "entity-permissions:events", "market-approvals", id="0", mkstream=True
    )
    await flow.stream.xadd(
        "entity-permissions:events",
        {"event_id": "bad\x00id", "event_type": "x", "payload": '{"note": "C:\\\\u0000"}'},
    )
    await flow.xadd_decision(decision_event(str(uuid.uuid4()), event_id="behind-it"))

    await wait_outcome(flow, "behind-it", "failed")  # an unknown market: read and judged
    [row] = await wait_unreadable(flow, 1)
    assert "\\u0000" in json.dumps(json.loads(row["payload"]))
    assert_alive(consumer)


async def test_a_compressed_feed_page_is_refused_not_inflated_in_memory() -> None:
    """A page sent gzip-compressed (a few KiB on the wire) could inflate to many times the
    page limit inside the HTTP client before any byte is counted: the poller asks for
    uncompressed pages and refuses one that comes compressed anyway."""
    padding = " " * (MAX_PAGE_BYTES // 2)  # well under the limit: inflating it would pass
    feed = FeedServer(lambda _: {"events": [], "next_cursor": None, "pad": padding}, gzipped=True)
    settings = load_settings(
        {"APP_ENV": "test", "PERMISSIONS_SERVICE_BASE_URL": feed.url}, dotenv=None
    )
    client = EventFeed(settings)
    try:
        with feed.running(), pytest.raises(FeedUnavailable, match="Content-Encoding 'gzip'"):
            await client.page(None)
    finally:
        await client.close()
    assert feed.accepted_encodings == ["identity"]
