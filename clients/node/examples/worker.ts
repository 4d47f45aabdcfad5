/**
 * A Node worker for the `task` steps on queue `shout` (examples/task.yaml): the polyglot
 * counterpart of examples/worker.py. From the repository's root, after
 * `(cd clients/node && npm ci && npm run build)`:
 *
 *     flowctl up                                                 # terminal 1
 *     node clients/node/dist/examples/worker.js                  # terminal 2, until Ctrl-C
 *     flowctl run examples/task.yaml --input '{"name": "bo"}'    # terminal 3
 *
 * The engine puts the flow's `shout` step on the queue; this worker polls it, receives the step's
 * params and inputs, upper-cases the message and completes the task; its outputs become the
 * step's outputs and the flow goes on. While the handler runs, the worker renews the task's
 * lease; if it dies, the lease expires and another worker (in any language) gets the task.
 *
 * Options: --engine / FLOWLEDGER_ENGINE, --namespace / FLOWLEDGER_NAMESPACE, --queue; a secured
 * engine takes flowctl's variables: FLOWLEDGER_TOKEN (a `worker` token), FLOWLEDGER_CA_FILE, ...
 */
import { parseArgs } from "node:util";
import { connectionFromEnv, TaskWorker, type JsonValue, type Task } from "../src/index.js";

const { values } = parseArgs({
  options: {
    engine: { type: "string", default: process.env["FLOWLEDGER_ENGINE"] || "127.0.0.1:50052" },
    namespace: { type: "string", default: process.env["FLOWLEDGER_NAMESPACE"] || "default" },
    queue: { type: "string", default: "shout" },
  },
});
const { engine, namespace, queue } = values as { engine: string; namespace: string; queue: string };

function shout(task: Task): JsonValue[] {
  const message = (task.inputs[0] as { message?: unknown } | null)?.message;
  if (typeof message !== "string") {
    throw new TypeError("the input has no message"); // fails the task (errorType TypeError)
  }
  const output = { message: message.toUpperCase() };
  console.log(`task ${task.taskId}: ${task.stepId} attempt ${task.attempt} -> ${JSON.stringify(output)}`);
  return [output];
}

const worker = new TaskWorker(engine, namespace, [queue], shout,
  { ...connectionFromEnv(), leaseMs: 10_000 });
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => worker.stop()); // finish the task at hand, then exit
}
console.log(`worker ${worker.workerId} polls queue '${queue}' of namespace '${namespace}' `
  + `at ${engine}; Ctrl-C stops it`);
await worker.run();
console.log(`stopped after ${worker.completed} completed, ${worker.failed} failed`);
