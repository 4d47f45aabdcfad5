/**
 * Against the real services: create and publish a definition, start a flow, watch its events to
 * the end, read the fingerprint and recompute it in Node; typed errors from status details.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import {
  artifactHash, FlowledgerClient, FlowStatus, InvalidArgument, NotFound, recomputeFingerprints,
  StepStatus, type JsonValue,
} from "../src/index.js";
import { startStack } from "./services.js";

const HELLO: { [key: string]: JsonValue } = {
  steps: [
    { id: "greet", type: "hello.greet", config: { name: "world" } },
    { id: "shout", type: "hello.shout" },
    { id: "done", type: "hello.done" },
  ],
};

describe("live services", { timeout: 120_000 }, () => {
  let stack: Awaited<ReturnType<typeof startStack>>;
  let client: FlowledgerClient;
  const ns = `node-${randomUUID().slice(0, 12)}`;

  before(async () => {
    stack = await startStack();
    client = new FlowledgerClient(stack.engine.address, { timeoutMs: 30_000 });
  });
  after(async () => {
    client?.close();
    await stack?.stop();
  });

  it("runs a flow and agrees on its fingerprint", async () => {
    const created = await client.createDefinition(ns, "hello", HELLO, { changeNote: "from node" });
    const version = created.version!.version;
    const published = await client.publishDefinition(ns, "hello", version);
    assert.equal(published.version, version);

    const input = { name: "Ada", note: "\u00e9\u{1F600}", n: 1.5 };
    const { flowId } = await client.startFlow(ns, "hello", input, { idempotencyKey: "node-1" });
    const again = await client.startFlow(ns, "hello", input, { idempotencyKey: "node-1" });
    assert.equal(again.flowId, flowId);
    assert.equal(again.existed, true);

    const kinds: string[] = [];
    let last = FlowStatus.FLOW_STATUS_UNSPECIFIED;
    for await (const batch of client.watchFlow(ns, flowId, { deadlineMs: 60_000 })) {
      for (const event of batch.events) kinds.push(JSON.parse(event.payloadJson).kind);
      last = batch.status;
    }
    assert.equal(last, FlowStatus.FLOW_STATUS_COMPLETED);
    assert.equal(kinds[0], "FlowInitialized");
    assert.equal(kinds.at(-1), "FlowCompleted");
    assert.equal(kinds.filter((k) => k === "StepFinished").length, 3);

    // Close-only: one message holding just the event that ended the flow.
    const closing = [];
    for await (const batch of client.watchFlow(ns, flowId, { deadlineMs: 60_000, closeOnly: true })) {
      closing.push(batch);
    }
    assert.equal(closing.length, 1);
    assert.equal(closing[0]!.status, FlowStatus.FLOW_STATUS_COMPLETED);
    assert.deepEqual(closing[0]!.events.map((e) => JSON.parse(e.payloadJson).kind),
      ["FlowCompleted"]);

    const view = await client.describeFlow(ns, flowId);
    assert.equal(view.flow!.status, FlowStatus.FLOW_STATUS_COMPLETED);
    assert.match(view.flowFingerprint, /^[0-9a-f]{64}$/);
    assert.ok(view.steps.every((s) => s.status === StepStatus.STEP_STATUS_FINISHED_OK));

    const mine = await recomputeFingerprints(client, ns, flowId);
    assert.equal(mine.flowFingerprint, view.flowFingerprint);
    assert.equal(mine.recordedFlowFingerprint, view.flowFingerprint);
    assert.equal(mine.definitionHash, view.definitionHash);
    assert.deepEqual(mine.stepFingerprints.map((s) => s.fingerprint),
      view.steps.map((s) => s.fingerprint));
    assert.ok(mine.artifactsChecked >= 4);

    // The input artifact's hash, computed in Node, is the one the engine stored.
    const fetched = await client.fetchArtifacts(ns, [artifactHash(input)]);
    assert.deepEqual(fetched.missing, []);
    assert.deepEqual(JSON.parse(fetched.artifacts[0]!.payloadJson), input);

    const verified = await client.verifyFlow(ns, flowId);
    assert.equal(verified.ok, true);
  });

  it("throws typed errors from the status details", async () => {
    await assert.rejects(
      client.createDefinition(ns, "bad", { steps: [{ id: "x", type: "no.such.type" }] }),
      (error: unknown) => {
        assert.ok(error instanceof InvalidArgument, String(error));
        assert.equal(error.domain, "flowledger.dev");
        assert.ok(error.fieldViolations.length > 0);
        assert.match(error.fieldViolations[0]!.field, /^document\.steps\[0\]/);
        return true;
      },
    );
    await assert.rejects(client.describeFlow(ns, randomUUID()), (error: unknown) => {
      assert.ok(error instanceof NotFound, String(error));
      assert.notEqual(error.reason, "");
      return true;
    });
  });
});
