"""HTTP entry points of the markets domain: parse, call the service, render."""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import HeaderParameter, JSONBody, PathParameter

from app.app_error import FieldError
from app.json_limits import MAX_NESTING
from app.markets import service
from app.markets.cache import MarketViewCache
from app.markets.schemas import (
    ApprovalEventView,
    AssetView,
    MarketDetailView,
    MarketView,
    RegisterMarketRequest,
    RegistrationView,
)
from app.media_types import JSON_ONLY
from app.openapi import error_responses
from app.unit_of_work import UnitOfWork
from app.validation import RequestValidationError

MAX_REGISTER_BODY = 1024 * 1024

IdempotencyKeyHeader = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Retries with the same key and body return the first response; "
        "another body with the same key gets 409.",
    ),
]

# `id`, the path parameter's one name: in the route and so the OpenAPI document, and in
# the field its errors name (400 malformed here, 404 unknown in app.errors). A string, so
# that a malformed id is reported in the API's own words (see parse_uuid).
MarketIdPath = Annotated[str, PathParameter(format="uuid", description="The market's id")]


class MarketController(Controller):
    path = "/api/v1/markets"
    tags = ["markets"]

    @post(
        "/register",
        status_code=201,
        request_max_body_size=MAX_REGISTER_BODY,
        summary="Register a market; it awaits approval by Entity Permissions Core",
        description=f"The body may nest at most {MAX_NESTING} levels of objects and arrays "
        "(assetDetails included); deeper gets 400 naming the limit, before it is read.",
        responses=error_responses(
            400,
            409,
            413,
            415,
            503,
            descriptions={
                400: "Malformed or invalid request; every wrong field is listed. A body nested "
                f"deeper than {MAX_NESTING} levels of objects and arrays is refused.",
                415: JSON_ONLY.description,
            },
        ),
        opt=JSON_ONLY.opt,
    )
    async def register(
        self,
        data: JSONBody[RegisterMarketRequest],
        request: Request[Any, Any, Any],
        uow: NamedDependency[UnitOfWork],
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Response[RegistrationView]:
        outcome = await service.register(
            uow,
            data.to_command(),
            context={"request_id": request_id(request), "actor_id": str(data.issuer_id)},
            idempotency_key=idempotency_key,
        )
        market_id = outcome.registration.market.id
        headers = {"Location": f"{self.path}/{market_id}"}
        if outcome.replayed:
            headers["Idempotent-Replayed"] = "true"
        return Response(RegistrationView.of(outcome.registration), status_code=201, headers=headers)

    @get(
        "/{id:str}",
        summary="A market with its asset and approval state",
        description="Served from a cache that the decision itself invalidates; the "
        "`Cache-Status` header says whether this answer came from it (`hit`) or from the "
        "database (`fwd=miss`).",
        responses={
            200: ResponseSpec(MarketDetailView, description="The market"),
            **error_responses(400, 404, 503),
        },
    )
    async def get_market(
        self, id: MarketIdPath, market_reads: NamedDependency[MarketReads]
    ) -> Response[bytes]:
        market_id = parse_uuid("id", id)
        market_cache = market_reads.cache
        lookup = await market_cache.get(market_id)
        if lookup.body is not None:
            return _market_body(lookup.body, "hit")
        detail = await service.get_market(market_reads.unit_of_work(), market_id)
        body = _encode(
            MarketDetailView(
                market=MarketView.of(detail.registration.market),
                asset=AssetView.of(detail.registration.asset),
                approval_history=[
                    ApprovalEventView(**msgspec.structs.asdict(record))
                    for record in detail.approval_history
                ],
            )
        )
        await market_cache.fill(market_id, detail.registration.market.status, body, lookup)
        return _market_body(body, "fwd=miss")


class MarketReads:
    """What a market read uses, as one dependency: the cache, and PostgreSQL on a miss.
    One, because Litestar resolves two or more in a task group per request, which cost
    a quarter of a cached read's time."""

    def __init__(self, cache: MarketViewCache, pool: asyncpg.Pool) -> None:
        self.cache = cache
        self._pool = pool

    def unit_of_work(self) -> UnitOfWork:
        return UnitOfWork(self._pool)


_encode = msgspec.json.Encoder().encode


def _market_body(body: bytes, cache_status: str) -> Response[bytes]:
    """A market's JSON as rendered once; `Cache-Status` as RFC 9211 spells it."""
    return Response(
        body,
        media_type="application/json",
        headers={"Cache-Status": f"market-backend; {cache_status}"},
    )


def parse_uuid(field: str, value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise RequestValidationError([FieldError(field, f"{value!r} is not a UUID")]) from None


_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")


def request_id(request: Request[Any, Any, Any]) -> str:
    """The caller's X-Request-ID, or a new one, to trace a request through its events.

    Stored with each event it caused, so held to an id's size: a header of any length
    would be written into every outbox row of the request.
    """
    given = request.headers.get("x-request-id")
    if given is None:
        return str(uuid.uuid4())
    if not _REQUEST_ID.fullmatch(given):
        raise RequestValidationError.single(
            "X-Request-ID", "1 to 128 visible ASCII characters, no spaces"
        )
    return given
