/**
 * Canonical JSON (RFC 8785, via the `canonicalize` library) and content hashes: the same bytes
 * and the same sha256 as the Python engine's `flowledger.canonical` (tests/vectors/canonical.json).
 */
import { createHash } from "node:crypto";
import canonicalize from "canonicalize";

/** A value that `JSON.parse` can return. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/**
 * The RFC 8785 canonical text of `value`. Non-finite numbers are refused. Integers beyond
 * +-(2^53 - 1) cannot be told from doubles once parsed, so unlike Python (which refuses such
 * integer literals, see `rejected` in tests/vectors/canonical.json) they are not refused here;
 * the store never accepts such a payload, so no stored artifact can hash differently.
 */
export function canonicalJson(value: JsonValue): string {
  assertInDomain(value);
  const text = canonicalize(value);
  if (text === undefined) {
    throw new TypeError("value has no JSON form");
  }
  return text;
}

/** The UTF-8 bytes of the canonical text. */
export function canonicalBytes(value: JsonValue): Buffer {
  return Buffer.from(canonicalJson(value), "utf8");
}

/** Lower-case hex sha256 of the canonical form: the artifact hash. */
export function contentHash(value: JsonValue): string {
  return sha256Hex(canonicalBytes(value));
}

/** Lower-case hex sha256 of bytes or of a string's UTF-8 encoding. */
export function sha256Hex(data: Buffer | string): string {
  return createHash("sha256").update(data).digest("hex");
}

/** Parses JSON text as the engine sent it (`*_json` fields). */
export function parseJson(text: string): JsonValue {
  return JSON.parse(text) as JsonValue;
}

function assertInDomain(value: JsonValue): void {
  if (typeof value === "number") {
    if (!Number.isFinite(value)) {
      throw new RangeError(`${value} is not valid JSON`);
    }
  } else if (Array.isArray(value)) {
    value.forEach(assertInDomain);
  } else if (value !== null && typeof value === "object") {
    Object.values(value).forEach(assertInDomain);
  }
}
