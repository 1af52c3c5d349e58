"""The operator console and the approver screen, used as a person uses them: in a real
browser (headless Chromium), against the whole service as real processes.

One stack and one browser for the module; each test has a browser context of its own
(its own cookies). The API believes X-Forwarded-For from 127.0.0.1 here, so that the
sign-in rate-limit test counts against an address of its own, not the browser's.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
import redis.asyncio as redis

from app.console.session import LIFETIME_S, SESSION_COOKIE, SessionKeys
from app.webhooks import standard
from tests.conftest import DATABASE_URL, REDIS_URL, emptied_database
from tests.support.browser import chromium, require_browser, screenshot
from tests.support.markets import REGISTER, seed_body
from tests.support.outbox import wait_until
from tests.support.stack import WEBHOOK_SECRET, Stack

ADMIN_TOKEN = "console-test-admin-token-0123456789abcdef"
OPERATOR = "Ada Operator"
WEBHOOK = "/api/v1/webhooks/entity-permissions"
TIMEOUT_MS = 30_000

pytestmark = pytest.mark.usefixtures("stack")


@pytest.fixture(scope="module")
async def stack(log_dir: Path) -> AsyncIterator[Stack]:
    require_browser()
    client = redis.Redis.from_url(REDIS_URL)
    await client.flushdb()
    await client.aclose()
    async with emptied_database(DATABASE_URL):
        pass
    running = Stack(
        DATABASE_URL,
        REDIS_URL,
        log_dir,
        env={
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "METRICS_REFRESH_INTERVAL_S": "1",
            "TRUSTED_PROXIES": "127.0.0.1",
        },
    )
    try:
        running.start_all()
        yield running
    finally:
        running.stop_all()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    async with chromium() as launched:
        yield launched


@pytest.fixture
async def context(browser: Any, stack: Stack) -> AsyncIterator[Any]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context
    finally:
        await context.close()


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
        yield http


async def sign_in(page: Any, stack: Stack, token: str = ADMIN_TOKEN) -> None:
    """By keyboard, as a person does: the name field has the focus, Tab, Enter."""
    await page.goto(f"{stack.api_url}/console/sign-in")
    # Typed before the autofocus lands, the first keys go nowhere ("da Operator" seen).
    await page.wait_for_function("document.activeElement?.id === 'operator'")
    await page.keyboard.type(OPERATOR)
    await page.keyboard.press("Tab")
    await page.keyboard.type(token)
    await page.keyboard.press("Enter")
    await page.wait_for_load_state()


async def signed_in(context: Any, stack: Stack) -> Any:
    page = await context.new_page()
    await sign_in(page, stack)
    await page.get_by_role("heading", name="Overview").wait_for()
    return page


async def register(http: httpx.AsyncClient, **changes: Any) -> dict[str, Any]:
    response = await http.post(REGISTER, json=seed_body(**changes))
    assert response.status_code == 201, response.text
    market: dict[str, Any] = response.json()["market"]
    return market


async def send_decision(http: httpx.AsyncClient, market_id: str, entity_id: str) -> str:
    """A signed webhook delivery of an approval, as Entity Permissions Core sends it."""
    event_id = f"epc-{uuid.uuid4()}"
    body = msgspec.json.encode(
        {
            "event_id": event_id,
            "event_type": "market.approved",
            "source": "entity_permissions_core",
            "payload": {"market_id": market_id, "entity_id": entity_id, "decision": "approved"},
            "context": {"actor_id": "epc-admin"},
        }
    )
    stamp = int(time.time())
    response = await http.post(
        WEBHOOK,
        content=body,
        headers={
            "content-type": "application/json",
            "webhook-id": event_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": standard.sign(WEBHOOK_SECRET, event_id, stamp, body),
        },
    )
    assert response.status_code in (200, 202), response.text
    return event_id


async def recorded_status(http: httpx.AsyncClient, event_id: str) -> str | None:
    response = await http.get(
        f"/api/v1/admin/processed-events/{event_id}",
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    return response.json()["processingStatus"] if response.status_code == 200 else None


async def test_sign_in_refuses_a_wrong_token_and_the_overview_shows_the_flow(
    context: Any, stack: Stack, log_dir: Path
) -> None:
    page = await context.new_page()
    await page.goto(f"{stack.api_url}/console/")
    assert page.url.startswith(f"{stack.api_url}/console/sign-in"), page.url
    await screenshot(page, "console-sign-in", log_dir)

    await sign_in(page, stack, token="not-the-admin-token")
    await page.get_by_role("alert").get_by_text("Wrong admin token").wait_for()
    assert await context.cookies() == [
        c for c in await context.cookies() if c["name"] != SESSION_COOKIE
    ]

    await sign_in(page, stack)
    await page.get_by_role("heading", name="Overview").wait_for()
    assert page.url == f"{stack.api_url}/console/"
    session = next(c for c in await context.cookies() if c["name"] == SESSION_COOKIE)
    assert session["httpOnly"] and session["sameSite"] == "Strict" and session["expires"] > 0
    assert ADMIN_TOKEN not in page.url
    # The figures refresh themselves: the relay, consumers and poller appear once read.
    processes = page.get_by_role("region", name="Processes")
    await processes.get_by_text("leader", exact=False).first.wait_for()
    consumer = processes.get_by_role("row", name=re.compile("Consumer"))
    await consumer.first.get_by_text("alive").wait_for()
    alerts = page.get_by_role("region", name=re.compile("Alerts"))
    for rule in ("FailedEventRateHigh", "NoEventsReceived", "PollingEnabled", "StreamEntriesLost"):
        await alerts.get_by_role("link", name=rule).wait_for()
    await screenshot(page, "console-overview", log_dir)
    for name in ("api", "relay", "consumer-0", "epc"):
        assert ADMIN_TOKEN not in stack.processes[name].log_text(), f"the token in {name}'s log"


async def test_approve_on_the_approver_screen_and_watch_the_market_become_active(
    context: Any, stack: Stack, http: httpx.AsyncClient, log_dir: Path
) -> None:
    console = await signed_in(context, stack)
    market = await register(http, name="Lisbon Harbour Offices", tokenSymbol="LISBON")
    await console.goto(f"{stack.api_url}/console/markets/{market['id']}")
    await console.get_by_text("pending approval").first.wait_for()

    approver = await context.new_page()
    await approver.goto(stack.epc_url)
    approve = approver.get_by_role("button", name="Approve Lisbon Harbour Offices")
    await approve.wait_for()
    await screenshot(approver, "approver-pending", log_dir)
    await approver.get_by_label("Approver").first.fill("maria.approver")
    await approve.click()
    await (
        approver.get_by_role("region", name="Decision log").get_by_text("maria.approver").wait_for()
    )
    await screenshot(approver, "approver-decided", log_dir)

    # The console's market page refreshes itself until the market's events are out.
    await console.locator("#market-status").get_by_text("active").wait_for()
    timeline = console.get_by_role("region", name=re.compile("Timeline"))
    await timeline.get_by_text("Activated", exact=True).wait_for()
    await console.locator("#life:not([hx-trigger])").wait_for()
    assert await timeline.get_by_text("not yet").count() == 0
    assert await timeline.get_by_text("approved by maria.approver").count() == 1
    entries = console.get_by_role("region", name="Stream entries")
    await entries.get_by_text("redis-cli XRANGE markets:events").first.wait_for()
    await screenshot(console, "console-market", log_dir)

    await console.goto(f"{stack.api_url}/console/markets?q=lisbon")
    await console.get_by_role("link", name="Lisbon Harbour Offices").wait_for()
    await console.get_by_label("Status").select_option("active")
    await console.get_by_role("button", name="Show").click()
    await console.get_by_role("link", name="Lisbon Harbour Offices").wait_for()
    await screenshot(console, "console-markets", log_dir)


async def test_text_from_senders_is_shown_never_run(
    context: Any, stack: Stack, http: httpx.AsyncClient
) -> None:
    page = await signed_in(context, stack)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    name = "<img src=x onerror=alert(1)><script>alert(2)</script>"
    market = await register(http, name=name, assetDetails={"note": "<script>alert(3)</script>"})
    await page.goto(f"{stack.api_url}/console/markets/{market['id']}")
    await page.get_by_role("heading", name=name).wait_for()
    await page.get_by_text("<script>alert(3)</script>", exact=False).wait_for()
    await page.goto(f"{stack.api_url}/console/markets?q=%3Cimg")
    await page.get_by_role("link", name=name).wait_for()
    assert dialogs == []


async def test_a_failed_decision_is_found_in_events_and_replayed_once_its_cause_is_fixed(
    context: Any, stack: Stack, http: httpx.AsyncClient, log_dir: Path
) -> None:
    page = await signed_in(context, stack)
    market = await register(http, name="Porto Vineyard Fund", tokenSymbol="PORTO")
    other_entity = str(uuid.uuid4())
    event_id = await send_decision(http, market["id"], other_entity)

    async def failed() -> bool:
        return await recorded_status(http, event_id) == "failed"

    await wait_until(failed, 30, "the mismatched decision to be recorded failed")
    await page.goto(f"{stack.api_url}/console/events")
    await page.get_by_label("Status").select_option("failed")
    await page.get_by_role("button", name="Show").click()
    row = page.get_by_role("row", name=re.compile(re.escape(event_id)))
    await row.get_by_text("entity_mismatch").wait_for()
    await screenshot(page, "console-events", log_dir)
    await row.get_by_role("link", name=event_id).click()
    await page.get_by_text("is not the market's").wait_for()

    # The cause: the market was registered under the wrong entity. An operator fixes it.
    db = await asyncpg.connect(DATABASE_URL)
    try:
        await db.execute(
            "UPDATE markets SET entity_id = $1 WHERE id = $2",
            uuid.UUID(other_entity),
            uuid.UUID(market["id"]),
        )
    finally:
        await db.close()
    await page.get_by_role("button", name=f"Replay event {event_id}").click()
    notice = page.get_by_role("status")
    await notice.get_by_text("success").wait_for()
    await page.locator("#event-status").get_by_text("success").wait_for()
    await page.get_by_role("region", name="Replays").get_by_text(f"console: {OPERATOR}").wait_for()
    await screenshot(page, "console-event-replayed", log_dir)

    response = await http.get(f"/api/v1/markets/{market['id']}")
    assert response.json()["market"]["status"] == "active"
    await page.goto(f"{stack.api_url}/console/audit")
    await page.get_by_role("row", name=re.compile(re.escape(event_id))).wait_for()
    await screenshot(page, "console-audit", log_dir)


async def test_replay_all_failed_since_counts_them_and_asks_first(
    context: Any, stack: Stack, http: httpx.AsyncClient, log_dir: Path
) -> None:
    page = await signed_in(context, stack)
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1))
    # Decisions for markets nobody registered: recorded failed (unknown_market).
    sent = [await send_decision(http, str(uuid.uuid4()), str(uuid.uuid4())) for _ in range(2)]

    async def all_failed() -> bool:
        return all([await recorded_status(http, e) == "failed" for e in sent])

    await wait_until(all_failed, 30, "both decisions to be recorded failed")
    await page.goto(f"{stack.api_url}/console/events")
    await page.get_by_label("Received since (UTC)").last.fill(since)
    await page.get_by_role("button", name="Count them…").click()
    await page.get_by_text("2 failed events were received since").wait_for()
    await screenshot(page, "console-replay-confirm", log_dir)
    await page.get_by_role("button", name="Replay 2 events").click()
    await page.get_by_role("status").get_by_text("2 replayed, 0 refused").wait_for()
    for event_id in sent:
        await page.get_by_role("link", name=event_id).first.wait_for()

    async def failed_again() -> bool:
        return all([await recorded_status(http, e) == "failed" for e in sent])

    # Still for no market: the consumer records them failed again, and nothing else.
    await wait_until(failed_again, 30, "the replays to be applied (and fail again)")


async def test_streams_and_outbox_pages(context: Any, stack: Stack, log_dir: Path) -> None:
    page = await signed_in(context, stack)
    await page.goto(f"{stack.api_url}/console/streams?name=markets:events")
    await (
        page.get_by_role("region", name="Consumer groups")
        .get_by_text("entity-permissions-core")
        .wait_for()
    )
    await screenshot(page, "console-streams", log_dir)
    await page.goto(f"{stack.api_url}/console/outbox")
    await page.get_by_text("make replay SINCE=").wait_for()
    await page.get_by_role("button", name="Count them…").click()
    await page.get_by_role("heading", name="Publish again?").wait_for()
    await screenshot(page, "console-outbox-confirm", log_dir)
    await page.goto(f"{stack.api_url}/console/outbox")
    await screenshot(page, "console-outbox", log_dir)


def _session_cookie(value: str) -> dict[str, str]:
    return {SESSION_COOKIE: value}


def with_cookies(http: httpx.AsyncClient, cookies: dict[str, str]) -> httpx.AsyncClient:
    """`http` sending these cookies (and only these) from now on."""
    http.cookies.clear()
    http.cookies.update(cookies)
    return http


async def test_a_post_without_its_csrf_token_is_refused(
    context: Any, stack: Stack, http: httpx.AsyncClient
) -> None:
    await signed_in(context, stack)
    session = next(c for c in await context.cookies() if c["name"] == SESSION_COOKIE)
    with_cookies(http, _session_cookie(session["value"]))
    form = {"event_id": "anything"}
    refused = await http.post("/console/events/replay", data=form)
    assert refused.status_code == 403 and "CSRF" in refused.text
    forged = await http.post("/console/events/replay", data={**form, "csrf_token": "forged"})
    assert forged.status_code == 403
    as_json = await http.post("/console/events/replay", json=form)
    assert as_json.status_code == 415


async def test_an_expired_or_forged_session_is_refused(http: httpx.AsyncClient) -> None:
    keys = SessionKeys(ADMIN_TOKEN)
    expired = keys.mint(OPERATOR, now=time.time() - LIFETIME_S - 60)
    session = keys.read(keys.mint(OPERATOR))
    assert session is not None
    for cookie in (expired, keys.mint(OPERATOR)[:-2] + "xx", SessionKeys("other" * 8).mint("x")):
        with_cookies(http, _session_cookie(cookie))
        page = await http.get("/console/events")
        assert page.status_code == 303
        assert page.headers["location"].startswith("/console/sign-in?next=")
        form = {"event_id": "x", "csrf_token": keys.csrf_token(session)}
        posted = await http.post("/console/events/replay", data=form)
        assert posted.status_code == 401


async def test_sign_in_never_redirects_off_the_console_and_is_rate_limited(
    http: httpx.AsyncClient,
) -> None:
    client = {"x-forwarded-for": "198.51.100.7"}
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "/api/v1/x"):
        form_page = await http.get("/console/sign-in", headers=client)
        token = re.search(r'name="sign_in_token" value="([^"]+)"', form_page.text)
        assert token is not None
        signed = await http.post(
            "/console/sign-in",
            data={
                "sign_in_token": token[1],
                "operator": OPERATOR,
                "token": ADMIN_TOKEN,
                "next": target,
            },
            headers=client,
        )
        assert signed.status_code == 303, signed.text
        assert signed.headers["location"] == "/console/", target
    without_form_token = await http.post(
        "/console/sign-in", data={"operator": OPERATOR, "token": ADMIN_TOKEN}, headers=client
    )
    assert without_form_token.status_code == 403
    answers = [
        (await http.post("/console/sign-in", data={"token": "guess"}, headers=client)).status_code
        for _ in range(12)
    ]
    assert answers[-1] == 429 and 403 in answers, answers


async def test_bad_input_to_the_console_is_a_4xx(
    context: Any, stack: Stack, http: httpx.AsyncClient
) -> None:
    await signed_in(context, stack)
    session = next(c for c in await context.cookies() if c["name"] == SESSION_COOKIE)
    with_cookies(http, _session_cookie(session["value"]))
    for path in (
        "/console/markets?status=gone",
        "/console/markets?before=nonsense",
        "/console/markets?before=2026-01-01T00:00:00~not-a-uuid",
        "/console/markets?q=" + "x" * 300,
        "/console/markets/not-a-uuid",
        f"/console/markets/{uuid.uuid4()}",
        "/console/events?since=yesterday",
        "/console/events?before=2026-01-01T00:00:00~99999999999999999999",
        "/console/events/detail",
        "/console/events/detail?id=" + "e" * 300,
        "/console/events/detail?id=never-seen",
        "/console/events/replay-failed",
        "/console/streams?name=other",
        "/console/streams?before=1-x",
        "/console/streams?before=99999999999999999999-0",
        "/console/markets?q=%00",
        "/console/events/detail?id=a%00b",
        "/console/outbox?after=-1",
        "/console/outbox/republish?since=2026-01-01T00:00&stream=other",
        "/console/audit?before=x",
    ):
        response = await http.get(path)
        assert 400 <= response.status_code < 500, (path, response.status_code)
        assert "text/html" in response.headers["content-type"], path


async def test_the_console_is_off_without_admin_token(api: str) -> None:
    """The session's API (conftest's `api`) runs without ADMIN_TOKEN."""
    async with httpx.AsyncClient(base_url=api) as http:
        assert (await http.get("/console/sign-in")).status_code == 403
        assert (await http.get("/console/")).status_code == 403


async def test_the_overview_after_the_flows_links_each_figure_to_its_list(
    context: Any, stack: Stack, log_dir: Path
) -> None:
    """Last in the module: the decisions and failures of the tests above are figures now."""
    page = await signed_in(context, stack)
    decisions = page.get_by_role("link", name=re.compile("Decisions applied, last hour"))
    await decisions.get_by_text(re.compile(r"^[1-9][0-9]*$")).wait_for()
    await screenshot(page, "console-overview", log_dir)
    await page.get_by_role("link", name=re.compile("Failed events, last hour")).click()
    await page.get_by_role("heading", name="Processed events").wait_for()
    assert "status=failed" in page.url
    await page.get_by_role("row", name=re.compile("failed")).first.wait_for()
