/**
 * Runs the sample "hello" flow against an engine and checks its fingerprint in Node:
 *   node dist/examples/hello.js [address] [namespace]
 * The address defaults to FLOWLEDGER_ENGINE, else 127.0.0.1:50052; the namespace to
 * FLOWLEDGER_NAMESPACE, else "examples" (as worker.ts). Runs again as often as you like: the same
 * document is the same definition version, published once.
 */
import {
  DefinitionState, FlowledgerClient, recomputeFingerprints, type JsonValue,
} from "../src/index.js";

const [
  address = process.env["FLOWLEDGER_ENGINE"] || "127.0.0.1:50052",
  namespace = process.env["FLOWLEDGER_NAMESPACE"] || "examples",
] = process.argv.slice(2);
const document: { [key: string]: JsonValue } = {
  steps: [
    { id: "greet", type: "hello.greet", config: { name: "world" } },
    { id: "shout", type: "hello.shout" },
    { id: "done", type: "hello.done" },
  ],
};

const client = new FlowledgerClient(address);
try {
  const created = await client.createDefinition(namespace, "hello", document);
  if (created.version!.state !== DefinitionState.DEFINITION_STATE_PUBLISHED) {
    await client.publishDefinition(namespace, "hello", created.version!.version);
  }
  const { flowId } = await client.startFlow(namespace, "hello", { name: "Ada" });
  for await (const batch of client.watchFlow(namespace, flowId)) {
    for (const event of batch.events) console.log(event.version, JSON.parse(event.payloadJson).kind);
  }
  const view = await client.describeFlow(namespace, flowId);
  const mine = await recomputeFingerprints(client, namespace, flowId);
  console.log(`engine ${view.flowFingerprint}\nnode   ${mine.flowFingerprint}`);
  process.exitCode = view.flowFingerprint === mine.flowFingerprint ? 0 : 1;
} finally {
  client.close();
}
