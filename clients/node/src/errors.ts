/**
 * Typed errors from the services' google.rpc.Status (the `grpc-status-details-bin` trailer):
 * the class follows the gRPC code, `reason`/`domain`/`metadata` come from google.rpc.ErrorInfo and
 * `fieldViolations` from google.rpc.BadRequest — the same vocabulary as the Python SDK's
 * `flowledger.errors`.
 */
import { status as GrpcStatus, type ServiceError } from "@grpc/grpc-js";
import { BadRequest, ErrorInfo } from "./gen/google/rpc/error_details.js";
import { Status } from "./gen/google/rpc/status.js";

const DETAILS_KEY = "grpc-status-details-bin";
const TYPE_PREFIX = "type.googleapis.com/";

/** One offending request field, e.g. `document.steps[1].config.count`. */
export interface FieldViolation {
  field: string;
  description: string;
}

/** Base of every error the client throws for a failed call. */
export class FlowledgerError extends Error {
  constructor(
    message: string,
    /** The gRPC status code. */
    readonly code: GrpcStatus,
    /** Stable machine-readable reason (google.rpc.ErrorInfo.reason); match on this. */
    readonly reason: string,
    /** ErrorInfo.domain ("flowledger.dev" for the services' own errors). */
    readonly domain: string,
    /** ErrorInfo.metadata (string values). */
    readonly metadata: Readonly<Record<string, string>>,
    /** BadRequest field violations (INVALID_ARGUMENT). */
    readonly fieldViolations: readonly FieldViolation[],
  ) {
    super(message);
    this.name = new.target.name;
  }
}

export class InvalidArgument extends FlowledgerError {}
export class NotFound extends FlowledgerError {}
export class AlreadyExists extends FlowledgerError {}
export class FailedPrecondition extends FlowledgerError {}
export class Aborted extends FlowledgerError {}
export class ResourceExhausted extends FlowledgerError {}
export class Unavailable extends FlowledgerError {}
export class DeadlineExceeded extends FlowledgerError {}
export class Cancelled extends FlowledgerError {}
export class Unauthenticated extends FlowledgerError {}
export class PermissionDenied extends FlowledgerError {}
export class InternalError extends FlowledgerError {}

type ErrorClass = new (...args: ConstructorParameters<typeof FlowledgerError>) => FlowledgerError;

const BY_CODE: Partial<Record<GrpcStatus, ErrorClass>> = {
  [GrpcStatus.INVALID_ARGUMENT]: InvalidArgument,
  [GrpcStatus.NOT_FOUND]: NotFound,
  [GrpcStatus.ALREADY_EXISTS]: AlreadyExists,
  [GrpcStatus.FAILED_PRECONDITION]: FailedPrecondition,
  [GrpcStatus.ABORTED]: Aborted,
  [GrpcStatus.RESOURCE_EXHAUSTED]: ResourceExhausted,
  [GrpcStatus.UNAVAILABLE]: Unavailable,
  [GrpcStatus.DEADLINE_EXCEEDED]: DeadlineExceeded,
  [GrpcStatus.CANCELLED]: Cancelled,
  [GrpcStatus.UNAUTHENTICATED]: Unauthenticated,
  [GrpcStatus.PERMISSION_DENIED]: PermissionDenied,
};

/** The typed error of a failed gRPC call (anything else is returned unchanged). */
export function fromServiceError(error: unknown): unknown {
  if (!isServiceError(error)) {
    return error;
  }
  let reason = GrpcStatus[error.code] ?? "UNKNOWN";
  let domain = "";
  let metadata: Record<string, string> = {};
  const violations: FieldViolation[] = [];
  let message = error.details || error.message;
  const raw = error.metadata?.get(DETAILS_KEY)[0];
  if (raw instanceof Buffer) {
    const status = Status.decode(raw);
    message = status.message || message;
    for (const any of status.details) {
      const type = any.typeUrl.startsWith(TYPE_PREFIX) ? any.typeUrl.slice(TYPE_PREFIX.length) : "";
      if (type === "google.rpc.ErrorInfo") {
        const info = ErrorInfo.decode(any.value);
        reason = info.reason || reason;
        domain = info.domain;
        metadata = { ...info.metadata };
      } else if (type === "google.rpc.BadRequest") {
        for (const v of BadRequest.decode(any.value).fieldViolations) {
          violations.push({ field: v.field, description: v.description });
        }
      }
    }
  }
  const cls = BY_CODE[error.code] ?? InternalError;
  return new cls(message, error.code, reason, domain, metadata, violations);
}

function isServiceError(error: unknown): error is ServiceError {
  return error instanceof Error && typeof (error as Partial<ServiceError>).code === "number"
    && "metadata" in error;
}
