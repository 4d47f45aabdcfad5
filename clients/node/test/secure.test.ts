/**
 * Token and TLS options against a secured engine (TLS with a certificate of a test CA, bearer
 * tokens from a static token file; a second one that also requires client certificates): the
 * right token works, a missing or wrong one is Unauthenticated, a role may only do its share,
 * and a TaskWorker with a `worker` token completes a task.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  connect, connectionFromEnv, FlowledgerClient, FlowStatus, isLoopback, PermissionDenied,
  TaskWorker, Unauthenticated, Unavailable,
} from "../src/index.js";
import { finished, publish, taskFlow } from "./flows.js";
import { makePki, startStack, writeTokenFile, type Pki } from "./services.js";

const MANAGER = `manager-${randomUUID()}`;
const WORKER = `worker-${randomUUID()}`;
const VIEWER = `viewer-${randomUUID()}`;

describe("a secured engine", { timeout: 180_000 }, () => {
  let pki: Pki;
  let tokenFile: string;
  let stack: Awaited<ReturnType<typeof startStack>>;
  const ns = `node-secure-${randomUUID().slice(0, 8)}`;
  const clients: FlowledgerClient[] = [];
  const make = (settings: ConstructorParameters<typeof FlowledgerClient>[1]) => {
    const client = new FlowledgerClient(stack.engine.address, { timeoutMs: 10_000, ...settings });
    clients.push(client);
    return client;
  };

  before(async () => {
    pki = await makePki();
    tokenFile = await writeTokenFile(join(pki.dir, "tokens.yaml"), [
      { token: MANAGER, subject: "node-manager", role: "manager", namespaces: [ns] },
      { token: WORKER, subject: "node-worker", role: "worker", namespaces: [ns] },
      { token: VIEWER, subject: "node-viewer", role: "viewer", namespaces: [ns] },
    ]);
    stack = await startStack({ pki, tokenFile });
  });
  after(async () => {
    for (const client of clients) client.close();
    await stack?.stop();
  });

  it("runs a flow with the CA and a manager token, and a worker with a worker token", async () => {
    const client = make({ token: MANAGER, tls: { caFile: pki.caFile } });
    const queue = `secure-${randomUUID().slice(0, 8)}`;
    await publish(client, ns, "secure-task", taskFlow(queue));
    const worker = new TaskWorker(stack.engine.address, ns, [queue],
      (task) => [{ message: String((task.inputs[0] as { message: string }).message).toUpperCase() }],
      { token: WORKER, tls: { caFile: pki.caFile }, leaseMs: 5_000, pollWaitMs: 500 });
    const running = worker.run();
    try {
      const { flowId } = await client.startFlow(ns, "secure-task", { name: "tls" },
        { startedBy: "someone else" });
      const view = await finished(client, ns, flowId);
      assert.equal(view.flow!.status, FlowStatus.FLOW_STATUS_COMPLETED);
      // With authentication on, the engine records the token's subject, whatever was sent.
      assert.equal(view.flow!.createdBy, "node-manager");
    } finally {
      worker.stop();
      await running;
    }
    assert.equal(worker.completed, 1);
  });

  it("is Unauthenticated without a token or with a wrong one", async () => {
    for (const token of [undefined, "not-a-token"]) {
      const client = make({ token, tls: { caFile: pki.caFile } });
      await assert.rejects(client.listFlowRuns(ns), (error: unknown) => {
        assert.ok(error instanceof Unauthenticated, String(error));
        assert.match(error.reason, /^TOKEN_/);
        return true;
      });
    }
  });

  it("lets a viewer read but not start", async () => {
    const client = make({ token: VIEWER, tls: { caFile: pki.caFile } });
    await client.listFlowRuns(ns);
    await assert.rejects(client.startFlow(ns, "secure-task", null),
      (error: unknown) => error instanceof PermissionDenied);
  });

  it("takes the settings from flowctl's variables", async () => {
    const settings = connectionFromEnv({ FLOWLEDGER_TOKEN: VIEWER, FLOWLEDGER_CA_FILE: pki.caFile });
    assert.deepEqual(settings, { token: VIEWER, tls: { caFile: pki.caFile } });
    await make(settings).listFlowRuns(ns);
    assert.deepEqual(connectionFromEnv({ FLOWLEDGER_TLS: "0" }), { token: undefined, tls: false });
    assert.throws(() => connectionFromEnv({ FLOWLEDGER_TLS: "0", FLOWLEDGER_CA_FILE: "ca.pem" }));
  });

  it("does not trust a certificate of another CA, nor speak plaintext to a TLS engine", async () => {
    for (const tls of [{ caFile: pki.otherCaFile }, undefined]) {
      const client = make({ token: MANAGER, tls, timeoutMs: 5_000 });
      await assert.rejects(client.listFlowRuns(ns), (error: unknown) => {
        assert.ok(error instanceof Unavailable, String(error));
        return true;
      });
    }
  });

  it("never sends a token in plaintext beyond loopback", () => {
    assert.throws(() => connect("192.0.2.1:50052", { token: MANAGER, tls: false }),
      /refusing to send the token in plaintext/);
    assert.doesNotThrow(() => connect("127.0.0.1:50052", { token: MANAGER }));
    assert.ok(isLoopback("127.0.0.1:1") && isLoopback("localhost:1") && isLoopback("[::1]:1"));
    assert.ok(!isLoopback("engine.example:443") && !isLoopback("10.0.0.1:50052"));
  });
});

describe("an engine that requires client certificates", { timeout: 120_000 }, () => {
  let pki: Pki;
  let stack: Awaited<ReturnType<typeof startStack>>;
  const ns = `node-mtls-${randomUUID().slice(0, 8)}`;

  before(async () => {
    pki = await makePki();
    const tokenFile = await writeTokenFile(join(pki.dir, "tokens.yaml"),
      [{ token: VIEWER, subject: "node-viewer", role: "viewer", namespaces: [ns] }]);
    stack = await startStack({ pki, tokenFile, clientCaFile: pki.caFile });
  });
  after(async () => {
    await stack?.stop();
  });

  it("answers only a client with a certificate of its CA", async () => {
    const withCert = new FlowledgerClient(stack.engine.address, {
      token: VIEWER, timeoutMs: 5_000,
      tls: { caFile: pki.caFile, certFile: pki.clientCertFile, keyFile: pki.clientKeyFile },
    });
    const without = new FlowledgerClient(stack.engine.address, {
      token: VIEWER, timeoutMs: 5_000, tls: { caFile: pki.caFile },
    });
    try {
      await withCert.listFlowRuns(ns);
      await assert.rejects(without.listFlowRuns(ns), (error: unknown) => error instanceof Unavailable);
    } finally {
      withCert.close();
      without.close();
    }
  });
});
