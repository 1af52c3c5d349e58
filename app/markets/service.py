"""Use cases of the markets domain, each in one unit of work."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import msgspec

from app.app_error import AppError, FieldError
from app.idempotency import IdempotencyRepository, StoredResponse, fingerprint
from app.markets.domain import RegisterMarket, Registration, register_market
from app.markets.repository import ApprovalRecord, MarketRepository
from app.unit_of_work import UnitOfWork
from outbox import MARKETS_EVENTS


class MarketNotFound(AppError):
    status_code = HTTPStatus.NOT_FOUND.value

    def __init__(self, market_id: uuid.UUID) -> None:
        super().__init__(
            f"market {market_id} not found", errors=[FieldError("id", "no market has this id")]
        )
        self.market_id = market_id


class RegistrationOutcome(msgspec.Struct, frozen=True):
    registration: Registration
    replayed: bool


class MarketDetail(msgspec.Struct, frozen=True):
    registration: Registration
    approval_history: list[ApprovalRecord]


async def register(
    uow: UnitOfWork,
    command: RegisterMarket,
    *,
    context: dict[str, Any],
    idempotency_key: str | None = None,
) -> RegistrationOutcome:
    """Save the market, its asset and its outbox events together, and return at once.

    With an idempotency key, a retry of the same request gets the first result back and
    writes nothing; the same key with a different request raises IdempotencyConflict.
    """
    async with uow:
        idempotency = IdempotencyRepository(uow.connection)
        if idempotency_key is not None:
            prior = await idempotency.claim(idempotency_key, fingerprint(command))
            if prior is not None:
                first = msgspec.convert(prior.body, Registration, strict=False)
                return RegistrationOutcome(first, replayed=True)
        registration, events = register_market(command, datetime.now(UTC), context)
        await MarketRepository(uow.connection).add(registration)
        await uow.enqueue(MARKETS_EVENTS, events)
        if idempotency_key is not None:
            body = msgspec.to_builtins(registration)
            await idempotency.store(idempotency_key, StoredResponse(status=201, body=body))
        await uow.commit()
    return RegistrationOutcome(registration, replayed=False)


async def get_market(uow: UnitOfWork, market_id: uuid.UUID) -> MarketDetail:
    async with uow:
        markets = MarketRepository(uow.connection)
        registration = await markets.get(market_id)
        if registration is None:
            raise MarketNotFound(market_id)
        history = await markets.approval_history(market_id)
    return MarketDetail(registration, history)
