"""An external worker: carries out the `task` steps on queue `shout` (examples/task.yaml).

    flowctl up                                                 # terminal 1
    .venv/bin/python examples/worker.py                        # terminal 2, until Ctrl-C
    flowctl run examples/task.yaml --input '{"name": "bo"}'    # terminal 3

The engine puts the flow's `shout` step on the queue; this worker polls it, receives the step's
params and inputs, upper-cases the message and completes the task; its outputs become the step's
outputs and the flow goes on. While the handler runs, the worker renews the task's lease; if it
dies, the lease expires and another worker gets the task. Any language can do the same through
protos/flowledger/v1/worker.proto (PollTask, Heartbeat, CompleteTask, FailTask).
Options: --engine / FLOWLEDGER_ENGINE, --namespace / FLOWLEDGER_NAMESPACE, --queue.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

from flowledger.types import JsonValue
from flowledger.worker import Task, TaskWorker


async def shout(task: Task) -> list[JsonValue]:
    message = task.inputs[0]["message"]
    if not isinstance(message, str):
        raise TypeError("the input has no message")  # fails the task (error_type TypeError)
    output = {"message": message.upper()}
    print(f"task {task.task_id}: {task.step_id} attempt {task.attempt} -> {output}", flush=True)
    return [output]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default=os.environ.get("FLOWLEDGER_ENGINE", "127.0.0.1:50052"))
    parser.add_argument("--namespace", default=os.environ.get("FLOWLEDGER_NAMESPACE", "default"))
    parser.add_argument("--queue", default="shout")
    args = parser.parse_args()

    worker = TaskWorker(args.engine, args.namespace, [args.queue], shout, lease_ms=10_000)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, worker.stop)  # finish the task at hand, then exit
    print(f"worker {worker.worker_id} polls queue {args.queue!r} of namespace "
          f"{args.namespace!r} at {args.engine}; Ctrl-C stops it", flush=True)  # fmt: skip
    await worker.run()
    print(f"stopped after {worker.completed} completed, {worker.failed} failed", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
