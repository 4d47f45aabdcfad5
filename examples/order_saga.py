"""Seed flux's order saga, run in this process over the in-memory store.

    .venv/bin/python examples/order_saga.py

validate → reserve (undone by `release`) → charge (undone by `refund`; a commit step: its side
effect happens at most once, never again on replay or recovery) → ship. The card is declined, so
the flow fails and the engine runs the compensations of the finished steps in reverse order: the
reservation is released; the charge never finished, so nothing is refunded. Each compensation is
an event in the log (Y started, V finished). Prints the events and the warehouse's stock.
"""

from __future__ import annotations

import asyncio

from engine_service.definitions.builder import Flow
from engine_service.run.engine import Engine
from engine_service.steps.context import StepContext, StepResult, failure, success
from store_service.adapters.memory import MemoryEventStore

STOCK = {"tea": 10}


def validate(ctx: StepContext) -> StepResult:
    order = ctx.flow_input
    if not isinstance(order, dict) or order.get("qty", 0) <= 0:
        return failure("an order needs a positive qty", "InvalidOrder")
    return success(order)


def reserve(ctx: StepContext) -> StepResult:
    order = ctx.input_payloads[0]
    STOCK[order["sku"]] -= order["qty"]
    return success({"reservation": f"r-{order['id']}", "sku": order["sku"], "qty": order["qty"]})


def release(ctx: StepContext) -> StepResult:
    """Compensation of reserve: its inputs are reserve's outputs."""
    reservation = ctx.input_payloads[0]
    STOCK[reservation["sku"]] += reservation["qty"]
    return success({"released": reservation["reservation"]})


def charge(ctx: StepContext) -> StepResult:
    return failure("card declined", "PaymentDeclined")


def refund(ctx: StepContext) -> StepResult:
    return success({"refunded": True})


def ship(ctx: StepContext) -> StepResult:
    return success({"shipped": True})


async def main() -> None:
    saga = (
        Flow("order-saga")
        .source("validate", validate)
        .transform("reserve", reserve)
        .options(compensate=release)
        .transform("charge", charge)
        .options(compensate=refund, commit=True)
        .transform("ship", ship)
        .build()
    )
    store = MemoryEventStore()
    try:
        run = await Engine(store).run(saga, {"id": 7, "sku": "tea", "qty": 3})
        for logged in await run.events():
            step = getattr(logged.event, "step_id", "")
            print(f"{logged.version:>3}  {logged.variant}  {logged.stored.type.value:<24} {step}")
        state = await run.state()
        print(f"variants: {await run.event_variants()}")
        print(f"status:   {'failed' if state.failed else 'not failed'}")
        print(f"stock of tea: {STOCK['tea']} (3 reserved, then released)")
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())
