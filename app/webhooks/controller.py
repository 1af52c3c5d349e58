"""POST /api/v1/webhooks/entity-permissions and its health check (the routes of
docs/async-approval-flow.md)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
from litestar import Controller, Request, get, post
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.handlers import BaseRouteHandler

from app.inbound import intake
from app.inbound.events import read_event
from app.inbound.intake import Receipt
from app.json_limits import MAX_NESTING
from app.media_types import Accepts
from app.openapi import error_responses
from app.unit_of_work import UnitOfWork
from app.validation import convert_object, decode_json
from app.webhooks import standard
from app.webhooks.guard import RateLimiter, SourceGuard, from_this_machine
from app.webhooks.openapi import WebhookOperation
from app.webhooks.sns import (
    CertificateUnavailable,
    SnsMessage,
    SnsVerifier,
    SubscriptionNotConfirmed,
    subscribe_url_for,
)
from app.webhooks.standard import SignatureError

log = logging.getLogger(__name__)

MAX_WEBHOOK_BODY = 256 * 1024
# Set by SNS on its deliveries. It decides nothing about how a body is read (only the
# body is signed), only how a refusal is worded: SNS drops a delivery answered 4xx.
SNS_TYPE_HEADER = "x-amz-sns-message-type"
ACCEPTS = Accepts(("application/json", "text/plain"))  # SNS posts text/plain


class SnsReceipt(msgspec.Struct, frozen=True):
    status: Literal["subscription_confirmed", "unsubscribe_confirmed"]
    message_id: str


class WebhookHealth(msgspec.Struct, frozen=True):
    status: Literal["ok"]
    service: Literal["webhook-handler"]
    timestamp: datetime


class Forbidden(HTTPException):
    status_code = 403


class TooManyRequests(HTTPException):
    status_code = 429


class TryAgainLater(HTTPException):
    status_code = 503


class WebhookReceiver:
    """Everything the webhook checks before it believes a request, built once per app."""

    def __init__(
        self,
        *,
        secrets: tuple[str, ...],
        production: bool,
        development: bool = False,
        sns: SnsVerifier,
        guard: SourceGuard,
        limiter: RateLimiter,
    ) -> None:
        self.secrets = secrets
        self.production = production
        self.development = development
        self.sns = sns
        self.guard = guard
        self.limiter = limiter
        self._warned_unsigned = False

    async def admit(self, request: ASGIConnection[Any, Any, Any, Any]) -> None:
        peer = request.client.host if request.client else None
        # Every line: headers.get would return the first, which the client may have written.
        forwarded_for = request.headers.getall("x-forwarded-for", [])
        caller = self.guard.identify(peer, forwarded_for)
        if not self.guard.allows(caller):
            raise Forbidden(detail=f"{caller.name} is not in WEBHOOK_ALLOWED_CIDRS")
        if not await self.limiter.allow(caller.rate_key):
            if request.headers.get(SNS_TYPE_HEADER):
                # SNS retries a 5xx and drops a 4xx: a delivery over the limit waits.
                raise TryAgainLater(detail="rate limit exceeded", headers={"Retry-After": "60"})
            raise TooManyRequests(detail="rate limit exceeded", headers={"Retry-After": "60"})

    def authenticate_direct(self, headers: dict[str, str], body: bytes, peer: str | None) -> None:
        if self.secrets:
            if self.accepts_unsigned(headers, peer):
                log.warning("unsigned webhook accepted: development, loopback only")
                return
            standard.verify(self.secrets, headers, body)
            return
        if self.production:
            raise SignatureError("unsigned webhooks are refused in production")
        if not self._warned_unsigned:
            log.warning("WEBHOOK_SECRETS unset: accepting unsigned webhooks (development only)")
            self._warned_unsigned = True

    def accepts_unsigned(self, headers: dict[str, str], peer: str | None) -> bool:
        """Development lets a person on this machine post the README's curls unsigned
        (`make run` makes a webhook secret for the run, for the simulator, that nobody
        types). Never in test or production; never a request that carries any signature
        header (that one is verified, and a bad signature refused); never one from
        another address or forwarded by a proxy or tunnel."""
        return (
            self.development
            and not standard.carries_signature(headers)
            and from_this_machine(peer, headers)
        )


_RESPONSES = error_responses(
    400,
    401,
    403,
    409,
    413,
    415,
    429,
    503,
    descriptions={
        400: "Malformed or invalid request; every wrong field is listed. A body, or an SNS "
        f"Message, nested deeper than {MAX_NESTING} levels of objects and arrays is refused "
        "before it is read.",
        401: "Missing or bad signature (Standard Webhooks or SNS)",
        403: "Caller not in WEBHOOK_ALLOWED_CIDRS",
        409: "Another event already received under this event_id (its event_type, source "
        "or payload differ); the differing fields are listed, the first copy stands",
        413: "Body over 256 KiB",
        415: ACCEPTS.description,
        429: "Rate limited (an SNS delivery gets 503 instead, which SNS retries)",
        503: "PostgreSQL is down, or an SNS delivery cannot be verified or confirmed now "
        "(its certificate or SubscribeURL unreachable, or it was rate limited): retry",
    },
)


async def admitted(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Who is calling and how often, before anything of the request is read (a guard runs
    before the Content-Type check and the body)."""
    receiver: WebhookReceiver = connection.app.state.webhook_receiver
    await receiver.admit(connection)


def is_sns_envelope(document: Any) -> bool:
    """SNS's `Type` field, which a direct event never has.

    The body decides, not the x-amz-sns-message-type header: only the body is signed. An
    envelope without its header (a proxy may drop it) is still verified as SNS, and a
    direct event is verified as one whatever the header says.
    """
    return isinstance(document, dict) and "Type" in document


class WebhookController(Controller):
    path = "/api/v1/webhooks"
    tags = ["webhooks"]

    @post(
        "/entity-permissions",
        status_code=200,
        request_max_body_size=MAX_WEBHOOK_BODY,
        summary="Receive an Entity Permissions decision (direct JSON or an SNS delivery)",
        description="A 200 means the event is durable in PostgreSQL. Repeats answer "
        "already_processed and change nothing. The body (and an SNS envelope's Message) may "
        f"nest at most {MAX_NESTING} levels of objects and arrays; deeper gets 400.",
        responses=_RESPONSES,
        operation_class=WebhookOperation,
        guards=[admitted],
        opt=ACCEPTS.opt,
    )
    async def entity_permissions(
        self,
        request: Request[Any, Any, Any],
        uow: NamedDependency[UnitOfWork],
        receiver: NamedDependency[WebhookReceiver],
    ) -> Receipt | SnsReceipt:
        body = await request.body()
        document = decode_json(body)
        if is_sns_envelope(document):
            return await self._sns(document, uow, receiver)
        peer = request.client.host if request.client else None
        receiver.authenticate_direct(dict(request.headers), body, peer)
        return await intake.accept(uow, read_event(document))

    async def _sns(
        self, document: Any, uow: UnitOfWork, receiver: WebhookReceiver
    ) -> Receipt | SnsReceipt:
        message = convert_object(document, SnsMessage)
        try:
            await receiver.sns.verify(message)
        except CertificateUnavailable as unavailable:
            # A 5xx, so that SNS sends the delivery again (a 4xx would drop it for good).
            log.warning("SNS delivery %s not verified yet: %s", message.message_id, unavailable)
            raise TryAgainLater(
                detail="the SNS signing certificate cannot be fetched now; retry",
                headers={"Retry-After": "5"},
            ) from None
        if message.type == "SubscriptionConfirmation":
            url = subscribe_url_for(message)
            try:
                await receiver.sns.confirm(url)
            except SubscriptionNotConfirmed as failed:
                # A 5xx, so that SNS sends the confirmation again (a 4xx would end it).
                log.warning("SNS subscription to %s not confirmed: %s", message.topic_arn, failed)
                raise TryAgainLater(
                    detail="could not confirm the SNS subscription now; retry",
                    headers={"Retry-After": "5"},
                ) from None
            log.info("SNS subscription to %s confirmed", message.topic_arn)
            return SnsReceipt("subscription_confirmed", message.message_id)
        if message.type == "UnsubscribeConfirmation":
            log.warning("SNS unsubscribed this endpoint from %s", message.topic_arn)
            return SnsReceipt("unsubscribe_confirmed", message.message_id)
        # The event is a JSON document of its own, held to the same nesting limit as a body.
        inner = decode_json(message.message.encode(), field="Message")
        return await intake.accept(uow, read_event(inner, default_event_id=message.message_id))

    @get("/health", summary="The webhook handler answers")
    async def health(self) -> WebhookHealth:
        return WebhookHealth(status="ok", service="webhook-handler", timestamp=datetime.now(UTC))
