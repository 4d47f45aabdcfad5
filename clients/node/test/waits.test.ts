/**
 * Durable waits from Node against the real services: a signal resumes a `signal` step, a cancel
 * ends a waiting flow, and a Node TaskWorker carries out the `task` step of a flow started from
 * Node (completing it, failing an attempt that is then retried, and losing a lease to another
 * worker).
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import {
  artifactHash, FailedPrecondition, FlowledgerClient, FlowStatus, isDropped, LEASE_LOST,
  TaskClient, TaskWorker, type Task,
} from "../src/index.js";
import { APPROVAL, finished, publish, taskFlow, untilWaiting } from "./flows.js";
import { startStack } from "./services.js";

describe("waits, signals and workers", { timeout: 180_000 }, () => {
  let stack: Awaited<ReturnType<typeof startStack>>;
  let client: FlowledgerClient;
  const ns = `node-waits-${randomUUID().slice(0, 8)}`;

  before(async () => {
    stack = await startStack();
    client = new FlowledgerClient(stack.engine.address, { timeoutMs: 30_000 });
    await publish(client, ns, "approval", APPROVAL);
  });
  after(async () => {
    client?.close();
    await stack?.stop();
  });

  it("resumes a signal step with the signal's payload", async () => {
    const { flowId } = await client.startFlow(ns, "approval", { name: "order 7" });
    const waiting = await untilWaiting(client, ns, flowId);
    assert.equal(waiting.variants, "ISFST");

    const payload = { message: "approved by ada" };
    const sent = await client.signalFlow(ns, flowId, "approved", payload, { requestId: "r-1" });
    assert.equal(sent.resumed, true);
    assert.equal(sent.duplicate, false);
    const again = await client.signalFlow(ns, flowId, "approved", payload, { requestId: "r-1" });
    assert.equal(again.duplicate, true);

    const view = await finished(client, ns, flowId);
    assert.equal(view.flow!.status, FlowStatus.FLOW_STATUS_COMPLETED);
    assert.equal(view.variants, "ISFSTNFSFC");
    // The payload became the approve step's output: an artifact with the hash Node computes.
    const { missing } = await client.fetchArtifacts(ns, [artifactHash(payload)]);
    assert.deepEqual(missing, []);

    await assert.rejects(client.signalFlow(ns, flowId, "approved", payload), (error: unknown) => {
      assert.ok(error instanceof FailedPrecondition, String(error));
      assert.equal(error.reason, "FLOW_ENDED");
      return true;
    });
  });

  it("cancels a waiting flow", async () => {
    const { flowId } = await client.startFlow(ns, "approval", { name: "order 8" });
    await untilWaiting(client, ns, flowId);
    const cancelled = await client.cancelFlow(ns, flowId, { reason: "out of stock" });
    assert.equal(cancelled.already, false);
    const again = await client.cancelFlow(ns, flowId, { reason: "out of stock" });
    assert.equal(again.already, true);
    const view = await finished(client, ns, flowId);
    assert.equal(view.flow!.status, FlowStatus.FLOW_STATUS_CANCELLED);
  });

  it("terminates a waiting flow at once, without compensations", async () => {
    const { flowId } = await client.startFlow(ns, "approval", { name: "order 9" });
    await untilWaiting(client, ns, flowId);
    const ended = await client.terminateFlow(ns, flowId, { reason: "stuck", terminatedBy: "ops" });
    assert.equal(ended.already, false);
    const view = await client.describeFlow(ns, flowId);  // ended by that very call
    assert.equal(view.flow!.status, FlowStatus.FLOW_STATUS_CANCELLED);
    assert.ok(view.variants.endsWith("K"), view.variants);
    const again = await client.terminateFlow(ns, flowId, { reason: "stuck" });
    assert.equal(again.already, true);
  });

  it("runs a task step in a Node worker", async () => {
    const queue = `shout-${randomUUID().slice(0, 8)}`;
    await publish(client, ns, "shout-task", taskFlow(queue));
    const seen: Task[] = [];
    const worker = new TaskWorker(stack.engine.address, ns, [queue], (task) => {
      seen.push(task);
      const [input] = task.inputs as [{ message: string }];
      return [{ message: input.message.toUpperCase() }];
    }, { leaseMs: 5_000, pollWaitMs: 500 });
    const running = worker.run();
    try {
      const { flowId } = await client.startFlow(ns, "shout-task", { name: "bo" });
      const view = await finished(client, ns, flowId);
      assert.equal(view.flow!.status, FlowStatus.FLOW_STATUS_COMPLETED);
      assert.equal(view.variants, "ISFSQFSFC");
      assert.equal(seen.length, 1);
      assert.equal(seen[0]!.flowId, flowId);
      assert.equal(seen[0]!.stepId, "shout");
      assert.equal(seen[0]!.attempt, 1);
      assert.deepEqual(seen[0]!.params, { queue, timeout_seconds: 120 });
      assert.equal(seen[0]!.idempotencyKey, `${flowId}:shout:1`);
      const { missing } = await client.fetchArtifacts(ns, [artifactHash({ message: "HELLO, BO" })]);
      assert.deepEqual(missing, []);
    } finally {
      worker.stop();
      await running;
    }
    assert.deepEqual([worker.completed, worker.failed, worker.lost], [1, 0, 0]);
  });

  it("fails an attempt with the error's class name, then the retry completes", async () => {
    const queue = `flaky-${randomUUID().slice(0, 8)}`;
    await publish(client, ns, "flaky-task",
      taskFlow(queue, { max_attempts: 2, initial_interval_ms: 100 }));
    class PaymentDeclined extends Error {}
    const worker = new TaskWorker(stack.engine.address, ns, [queue], async (task) => {
      if (task.attempt === 1) throw new PaymentDeclined("card declined");
      return { message: "PAID" };
    }, { leaseMs: 5_000, pollWaitMs: 500 });
    const running = worker.run();
    try {
      const { flowId } = await client.startFlow(ns, "flaky-task", { name: "cy" });
      const view = await finished(client, ns, flowId);
      assert.equal(view.flow!.status, FlowStatus.FLOW_STATUS_COMPLETED);
      const failures: { [key: string]: unknown }[] = [];
      for await (const batch of client.watchFlow(ns, flowId)) {
        for (const e of batch.events) {
          const payload = JSON.parse(e.payloadJson) as { [key: string]: unknown };
          if (payload["kind"] === "StepAttemptFailed") failures.push(payload);
        }
      }
      assert.equal(failures.length, 1);
      assert.equal(failures[0]!["error_type"], "PaymentDeclined");
      assert.equal(failures[0]!["reason"], "card declined");
    } finally {
      worker.stop();
      await running;
    }
    assert.deepEqual([worker.completed, worker.failed], [1, 1]);
  });

  it("refuses a completion from a worker whose lease was taken over", async () => {
    const queue = `lease-${randomUUID().slice(0, 8)}`;
    await publish(client, ns, "lease-task", taskFlow(queue));
    const tasks = new TaskClient(stack.engine.address);
    try {
      const { flowId } = await client.startFlow(ns, "lease-task", { name: "di" });
      const first = await tasks.poll(ns, [queue], "stalled", { leaseMs: 1_000, waitMs: 10_000 });
      assert.ok(first !== null && first.flowId === flowId);
      // No heartbeat: once the lease expires the task is another worker's (the poll waits).
      let second = null;
      for (let i = 0; i < 10 && second === null; i++) {
        second = await tasks.poll(ns, [queue], "fresh", { leaseMs: 10_000, waitMs: 5_000 });
      }
      assert.ok(second !== null && second.taskId === first.taskId);
      assert.notEqual(second.leaseToken, first.leaseToken);
      await assert.rejects(tasks.complete(first, [{ message: "late" }]), (error: unknown) => {
        assert.ok(error instanceof FailedPrecondition, String(error));
        assert.equal(error.reason, LEASE_LOST);
        assert.ok(isDropped(error));
        return true;
      });
      assert.equal(await tasks.complete(second, [{ message: "ON TIME" }]), false);
      assert.equal(await tasks.complete(second, [{ message: "ON TIME" }]), true); // duplicate
      const view = await finished(client, ns, flowId);
      assert.equal(view.flow!.status, FlowStatus.FLOW_STATUS_COMPLETED);
    } finally {
      tasks.close();
    }
  });

  it("stops while a poll waits, without a task", async () => {
    const worker = new TaskWorker(stack.engine.address, ns, [`idle-${randomUUID().slice(0, 8)}`],
      () => assert.fail("no task was queued"), { pollWaitMs: 1_000 });
    const running = worker.run();
    worker.stop();
    await running;
    assert.deepEqual([worker.completed, worker.failed, worker.lost], [0, 0, 0]);
  });
});
