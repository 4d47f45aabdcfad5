"""The task-worker process of the waits benchmark: a :class:`TaskWorker` that times each task.

    python -m bench._waits_worker ENGINE_ADDR NAMESPACE QUEUE POLLERS OUT_FILE

Runs until SIGTERM, then writes one JSON line per task it handled to ``OUT_FILE``: the flow,
when the handler got the task (``delivered``) and when its CompleteTask call returned
(``reported``), both wall-clock seconds (``time.time()``), so they compare with the database's
event timestamps on the same machine. Its own process, so that the worker's CPU is not the
benchmark client's.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path

from flowledger.types import JsonValue
from flowledger.worker import Task, TaskWorker


async def shout(task: Task) -> list[JsonValue]:
    """The in-engine ``hello.shout`` step's work, done by the worker."""
    message = task.inputs[0]
    assert isinstance(message, dict)
    return [{"message": str(message["message"]).upper()}]


class TimedWorker(TaskWorker):
    """Runs :func:`shout` on the queue's tasks, ``pollers`` at a time, timing each."""

    def __init__(self, address: str, namespace: str, queue: str, pollers: int) -> None:
        super().__init__(address, namespace, [queue], shout, concurrency=pollers)
        self.timings: list[dict[str, object]] = []

    async def handle(self, task: Task) -> None:
        delivered = time.time()
        await super().handle(task)
        self.timings.append(
            {"flow_id": task.flow_id, "delivered": delivered, "reported": time.time()}
        )


async def work(address: str, namespace: str, queue: str, pollers: int) -> list[dict[str, object]]:
    """Until SIGTERM; the timings of the tasks handled."""
    worker = TimedWorker(address, namespace, queue, pollers)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, worker.stop)
    await worker.run()
    return worker.timings


if __name__ == "__main__":
    addr, ns, q, k, path = sys.argv[1:]
    timings = asyncio.run(work(addr, ns, q, int(k)))
    Path(path).write_text("".join(json.dumps(t) + "\n" for t in timings))
