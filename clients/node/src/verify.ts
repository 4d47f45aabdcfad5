/**
 * Recomputes a finished flow's fingerprints in Node from what the engine serves (its events and
 * artifacts), independently of the engine's own VerifyFlow: every artifact is re-hashed here, the
 * inputs of each step are derived (flow input for the first step, the previous step's outputs
 * after it), and the step and flow fingerprints follow decision 0003.
 *
 * Covers linear flows whose steps all finished (the engine's shape today); a skipped step or a
 * flow that did not complete is reported, not guessed at.
 */
import { contentHash, parseJson, type JsonValue } from "./canonical.js";
import type { FlowledgerClient } from "./client.js";
import { definitionHash, flowFingerprint, stepFingerprint } from "./fingerprint.js";

type JsonObject = { [key: string]: JsonValue };

/** What the recomputation found. */
export interface Recomputed {
  definitionHash: string;
  stepFingerprints: { stepId: string; fingerprint: string }[];
  flowFingerprint: string;
  /** The flow fingerprint the engine recorded in FlowCompleted. */
  recordedFlowFingerprint: string;
  artifactsChecked: number;
}

export class RecomputeError extends Error {}

export async function recomputeFingerprints(
  client: FlowledgerClient, namespace: string, flowId: string,
): Promise<Recomputed> {
  const payloads: JsonObject[] = [];
  for await (const batch of client.watchFlow(namespace, flowId)) {
    for (const event of batch.events) {
      payloads.push(parseJson(event.payloadJson) as JsonObject);
    }
  }
  const init = payloads.find((p) => p["kind"] === "FlowInitialized");
  const completed = payloads.find((p) => p["kind"] === "FlowCompleted");
  if (init === undefined || completed === undefined) {
    throw new RecomputeError(`flow ${flowId} has not completed`);
  }
  if (payloads.some((p) => p["kind"] === "StepSkipped")) {
    throw new RecomputeError("flows with skipped steps are not supported by this recomputation");
  }
  const steps = init["steps"] as { id: string; config: JsonObject }[];
  const params = new Map(steps.map((s) => [s.id, s.config]));
  const finished = new Map<string, JsonObject>();
  for (const p of payloads) {
    if (p["kind"] === "PropertyPreferenceAssigned") {
      for (const [stepId, replaced] of Object.entries(p["params"] as Record<string, JsonObject>)) {
        params.set(stepId, replaced);
      }
    } else if (p["kind"] === "StepFinished") {
      finished.set(p["step_id"] as string, p);
    }
  }

  const dhash = definitionHash(steps.map((s) => s.id));
  if (dhash !== init["definition_hash"]) {
    throw new RecomputeError(`definition hash ${dhash} != recorded ${String(init["definition_hash"])}`);
  }
  const firstInputs = [init["input_hash"] as string];
  if (typeof init["variables_hash"] === "string") {
    firstInputs.push(init["variables_hash"]);
  }
  const wanted = new Set<string>(firstInputs);
  for (const p of finished.values()) {
    for (const h of p["output_hashes"] as string[]) wanted.add(h);
  }
  const { artifacts, missing } = await client.fetchArtifacts(namespace, [...wanted]);
  if (missing.length > 0) {
    throw new RecomputeError(`missing artifacts: ${missing.join(", ")}`);
  }
  for (const artifact of artifacts) {
    const rehashed = contentHash(parseJson(artifact.payloadJson));
    if (rehashed !== artifact.hash) {
      throw new RecomputeError(`artifact ${artifact.hash} re-hashes to ${rehashed}`);
    }
  }

  let inputs = firstInputs;
  const stepFingerprints: { stepId: string; fingerprint: string }[] = [];
  for (const step of steps) {
    const record = finished.get(step.id);
    if (record === undefined) {
      throw new RecomputeError(`step ${step.id} did not finish`);
    }
    const recordedInputs = [...(record["input_hashes"] as string[])].sort();
    if (JSON.stringify(recordedInputs) !== JSON.stringify([...inputs].sort())) {
      throw new RecomputeError(`step ${step.id}: recorded inputs differ from the derived ones`);
    }
    const fingerprint = stepFingerprint({
      stepId: step.id, inputHashes: inputs, params: params.get(step.id) ?? {},
      definitionHash: dhash, engineVersion: init["engine_version"] as string,
    });
    stepFingerprints.push({ stepId: step.id, fingerprint });
    inputs = record["output_hashes"] as string[];
  }
  return {
    definitionHash: dhash,
    stepFingerprints,
    flowFingerprint: flowFingerprint(stepFingerprints.map((s) => s.fingerprint)),
    recordedFlowFingerprint: completed["flow_fingerprint"] as string,
    artifactsChecked: artifacts.length,
  };
}
