"""Define a flow in Python with the builder and run it in this process, over the in-memory store.

    .venv/bin/python examples/python_builder.py

Plain functions become steps; nothing needs registering and no service needs to run. Prints the
compact event variants and the flow fingerprint.
"""

from __future__ import annotations

import asyncio

from engine_service.definitions.builder import Flow
from engine_service.run.engine import Engine
from engine_service.steps.context import StepContext, StepResult, success
from store_service.adapters.memory import MemoryEventStore


def words(ctx: StepContext) -> StepResult:
    """One artifact per word of the configured sentence."""
    return success(*({"word": w} for w in str(ctx.params["sentence"]).split()))


def lengths(ctx: StepContext) -> StepResult:
    return success(*({"word": p["word"], "length": len(p["word"])} for p in ctx.input_payloads))


def longest(ctx: StepContext) -> StepResult:
    best = max(ctx.input_payloads, key=lambda p: p["length"])
    return success({"longest": best["word"]})


async def main() -> None:
    definition = (
        Flow("words")
        .source("words", words, sentence="a durable deterministic workflow")
        .transform("lengths", lengths)
        .sink("longest", longest)
        .build()
    )
    store = MemoryEventStore()
    try:
        run = await Engine(store).start(definition, {"run": 1}, idempotency_key="example-1")
        await run.run_to_end()
        print(f"variants:         {await run.event_variants()}")
        print(f"flow fingerprint: {await run.flow_fingerprint()}")
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())
