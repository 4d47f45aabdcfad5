/** Small helpers the live tests share: bounded waits on a flow's status, and definitions. */
import type { FlowledgerClient, FlowView, JsonValue } from "../src/index.js";
import { FlowStatus, isFinal } from "../src/index.js";

export const DEADLINE_MS = 60_000;

/** Describes the flow until `accept` holds (bounded by DEADLINE_MS; fails on a final status). */
export async function until(
  client: FlowledgerClient, ns: string, flowId: string, accept: (view: FlowView) => boolean,
  what: string,
): Promise<FlowView> {
  const deadline = Date.now() + DEADLINE_MS;
  for (;;) {
    const view = await client.describeFlow(ns, flowId);
    if (accept(view)) return view;
    const status = view.flow!.status;
    if (isFinal(status)) throw new Error(`flow ${flowId} ended ${FlowStatus[status]}, not ${what}`);
    if (Date.now() > deadline) throw new Error(`flow ${flowId} not ${what} within ${DEADLINE_MS} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export function untilWaiting(client: FlowledgerClient, ns: string, flowId: string): Promise<FlowView> {
  return until(client, ns, flowId, (v) => v.flow!.status === FlowStatus.FLOW_STATUS_WAITING,
    "waiting");
}

/** Watches the flow to its end and describes it. */
export async function finished(client: FlowledgerClient, ns: string, flowId: string): Promise<FlowView> {
  const opts = { deadlineMs: DEADLINE_MS, closeOnly: true };
  for await (const batch of client.watchFlow(ns, flowId, opts)) {
    if (isFinal(batch.status)) break;
  }
  return until(client, ns, flowId, (v) => isFinal(v.flow!.status), "finished");
}

/** Creates and publishes `document` as `name`; returns the published version. */
export async function publish(
  client: FlowledgerClient, ns: string, name: string, document: { [key: string]: JsonValue },
): Promise<number> {
  const created = await client.createDefinition(ns, name, document);
  const version = created.version!.version;
  await client.publishDefinition(ns, name, version);
  return version;
}

/** greet -> approve (waits for signal `approved`) -> shout. */
export const APPROVAL: { [key: string]: JsonValue } = {
  steps: [
    { id: "request", type: "hello.greet" },
    { id: "approve", type: "signal", config: { name: "approved", timeout_seconds: 600 } },
    { id: "announce", type: "hello.shout" },
  ],
};

/** greet -> shout (a `task` step on `queue`, done by a worker) -> done. */
export function taskFlow(queue: string, retry?: { [key: string]: JsonValue }): { [key: string]: JsonValue } {
  return {
    steps: [
      { id: "greet", type: "hello.greet" },
      { id: "shout", type: "task", config: { queue, timeout_seconds: 120 }, ...(retry ? { retry } : {}) },
      { id: "done", type: "hello.done" },
    ],
  };
}
