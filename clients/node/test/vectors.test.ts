/** The shared cross-language vectors (tests/vectors/) hold for the Node client. */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { describe, it } from "node:test";
import {
  artifactHash, canonicalJson, contentHash, definitionHash, ENGINE_VERSION, flowFingerprint,
  parseJson, sha256Hex, stepFingerprint, type JsonValue,
} from "../src/index.js";
import { REPO } from "./services.js";

function load(name: string): any {
  return JSON.parse(readFileSync(resolve(REPO, "tests/vectors", name), "utf8"));
}

const canonical = load("canonical.json");
const fingerprints = load("fingerprints.json");

describe("canonical JSON vectors", () => {
  it("has cases", () => assert.ok(canonical.cases.length >= 15));
  for (const c of canonical.cases) {
    it(c.name, () => {
      const value = parseJson(c.input);
      assert.equal(canonicalJson(value), c.canonical);
      assert.equal(contentHash(value), c.sha256);
      assert.equal(sha256Hex(c.canonical), c.sha256);
    });
  }
  it("refuses non-finite numbers", () => {
    assert.throws(() => canonicalJson([Number.NaN]), RangeError);
    assert.throws(() => canonicalJson({ a: Number.POSITIVE_INFINITY }), RangeError);
  });
});

describe("fingerprint vectors", () => {
  it("uses the same scheme", () => assert.equal(fingerprints.engine_version, ENGINE_VERSION));
  it("artifact hashes", () => {
    for (const a of fingerprints.artifact_hashes) {
      assert.equal(artifactHash(a.payload as JsonValue), a.hash);
    }
  });
  it("definition hashes", () => {
    for (const d of fingerprints.definition_hashes) assert.equal(definitionHash(d.step_ids), d.hash);
  });
  for (const s of fingerprints.step_fingerprints) {
    it(`step fingerprint: ${s.name}`, () => {
      assert.equal(stepFingerprint({
        stepId: s.step_id, inputHashes: s.input_hashes, params: s.params,
        definitionHash: s.definition_hash, engineVersion: s.engine_version,
      }), s.fingerprint);
    });
  }
  it("flow fingerprints", () => {
    for (const f of fingerprints.flow_fingerprints) {
      assert.equal(flowFingerprint(f.step_fingerprints), f.fingerprint);
    }
  });
});
