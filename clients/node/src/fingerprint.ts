/**
 * The fingerprint formulas of docs/decisions/0003-fingerprints.md, so a client can check a
 * finished flow's fingerprints itself: every value is sha256 over RFC 8785 canonical JSON.
 */
import { contentHash, type JsonValue } from "./canonical.js";

/** The fingerprint scheme hashed into every step fingerprint (not the package version). */
export const ENGINE_VERSION = "flowledger-fp/1";

/** The content hash of an artifact payload. */
export function artifactHash(payload: JsonValue): string {
  return contentHash(payload);
}

/** sha256 of the canonical JSON array of the ordered step ids. */
export function definitionHash(stepIds: readonly string[]): string {
  return contentHash([...stepIds]);
}

/** The inputs of one step fingerprint. */
export interface StepFingerprintInput {
  stepId: string;
  /** Hashes of the artifacts the step received, in any order (they are sorted; duplicates kept). */
  inputHashes: readonly string[];
  /** The step's effective params (its config). */
  params: { [key: string]: JsonValue };
  definitionHash: string;
  engineVersion?: string;
}

/** sha256 of the canonical JSON object of the five fingerprint fields. */
export function stepFingerprint(input: StepFingerprintInput): string {
  return contentHash({
    engine_version: input.engineVersion ?? ENGINE_VERSION,
    step_id: input.stepId,
    // Plain code-unit sort, like Python's sorted() on these lower-case hex strings.
    inputs: [...input.inputHashes].sort(),
    params: input.params,
    definition_hash: input.definitionHash,
  });
}

/** sha256 of the canonical JSON array of the step fingerprints, in step order. */
export function flowFingerprint(stepFingerprints: readonly string[]): string {
  return contentHash([...stepFingerprints]);
}
