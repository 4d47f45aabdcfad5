/**
 * A thin promise-based client of the engine service:
 *
 *     const client = new FlowledgerClient("127.0.0.1:50052");
 *     const created = await client.createDefinition("shop", "hello", { steps: [...] });
 *     await client.publishDefinition("shop", "hello", created.version!.version);
 *     const { flowId } = await client.startFlow("shop", "hello", { name: "Ada" });
 *     for await (const batch of client.watchFlow("shop", flowId)) console.log(batch.status);
 *     client.close();
 *
 * Results are the generated message types (src/gen, built from protos/); every failed call
 * rejects with a typed error of ./errors.ts. For a secured engine:
 *
 *     new FlowledgerClient("engine.example:50052", { token, tls: { caFile: "ca.pem" } });
 */
import type { CallOptions, Metadata, ServiceError } from "@grpc/grpc-js";
import type { JsonValue } from "./canonical.js";
import { connect, type Connection, type ConnectionSettings } from "./connection.js";
import { fromServiceError } from "./errors.js";
import {
  BranchFlowRequest,
  CancelFlowRequest,
  TerminateFlowRequest,
  CreateDefinitionVersionRequest,
  DefinitionFormat,
  DescribeFlowRequest,
  EngineServiceClient,
  FetchArtifactsRequest,
  GetDefinitionVersionRequest,
  ListDefinitionsRequest,
  ListFlowRunsRequest,
  PublishDefinitionVersionRequest,
  ArchiveDefinitionVersionRequest,
  RollbackDefinitionRequest,
  SignalFlowRequest,
  StartFlowRequest,
  VerifyFlowRequest,
  WatchFilter,
  WatchFlowRequest,

  type BranchFlowResponse,
  type CancelFlowResponse,
  type TerminateFlowResponse,
  type CreateDefinitionVersionResponse,
  type DefinitionVersion,
  type FlowView,
  type ListDefinitionsResponse,
  type ListFlowRunsResponse,
  type SignalFlowResponse,
  type StartFlowResponse,
  type VerifyFlowResponse,
  type WatchFlowResponse,
} from "./gen/flowledger/v1/engine.js";
import { FlowStatus, type Artifact } from "./gen/flowledger/v1/common.js";

export const DEFAULT_TIMEOUT_MS = 30_000;

/** Options of a {@link FlowledgerClient}: timeout, token and TLS (./connection.ts). */
export type ClientSettings = ConnectionSettings;

const FINAL = new Set([FlowStatus.FLOW_STATUS_COMPLETED, FlowStatus.FLOW_STATUS_FAILED,
  FlowStatus.FLOW_STATUS_CANCELLED]);

/** True once a flow can no longer change (completed, failed or cancelled). */
export function isFinal(status: FlowStatus): boolean {
  return FINAL.has(status);
}

type Unary<Req, Res> = (
  request: Req, metadata: Metadata, options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => unknown;

/** A client of one engine address (any replica; they are interchangeable). */
export class FlowledgerClient {
  readonly #stub: EngineServiceClient;
  readonly #timeoutMs: number;
  readonly #connection: Connection;

  constructor(address: string, settings: ClientSettings = {}) {
    this.#timeoutMs = settings.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.#connection = connect(address, settings);
    this.#stub = new EngineServiceClient(
      address, this.#connection.credentials, this.#connection.options,
    );
  }

  /** Closes the channel; calls in flight are cancelled. */
  close(): void {
    this.#stub.close();
  }

  #call<Req, Res>(method: Unary<Req, Res>, request: Req): Promise<Res> {
    return new Promise<Res>((resolve, reject) => {
      method.call(this.#stub, request, this.#connection.metadata(), { deadline: Date.now() + this.#timeoutMs },
        (error, response) => (error ? reject(fromServiceError(error)) : resolve(response)));
    });
  }

  // -- definitions ---------------------------------------------------------------------------

  /** Stores a new DRAFT version; `document` is JSON/YAML text or an object (sent as JSON). */
  createDefinition(
    namespace: string, name: string, document: string | { [key: string]: JsonValue },
    opts: { format?: "json" | "yaml"; changeNote?: string; createdBy?: string; requestId?: string } = {},
  ): Promise<CreateDefinitionVersionResponse> {
    const text = typeof document === "string" ? document : JSON.stringify(document);
    const format = typeof document === "string" && opts.format === "yaml"
      ? DefinitionFormat.DEFINITION_FORMAT_YAML : DefinitionFormat.DEFINITION_FORMAT_JSON;
    return this.#call(this.#stub.createDefinitionVersion, CreateDefinitionVersionRequest.fromPartial({
      namespace, name, document: text, format, changeNote: opts.changeNote ?? "",
      createdBy: opts.createdBy ?? "", requestId: opts.requestId ?? "",
    }));
  }

  async publishDefinition(
    namespace: string, name: string, version: number, opts: { changeNote?: string; actor?: string } = {},
  ): Promise<DefinitionVersion> {
    const resp = await this.#call(this.#stub.publishDefinitionVersion,
      PublishDefinitionVersionRequest.fromPartial({ namespace, name, version, ...opts }));
    return required(resp.version, "version");
  }

  async archiveDefinition(
    namespace: string, name: string, version: number, opts: { changeNote?: string; actor?: string } = {},
  ): Promise<DefinitionVersion> {
    const resp = await this.#call(this.#stub.archiveDefinitionVersion,
      ArchiveDefinitionVersionRequest.fromPartial({ namespace, name, version, ...opts }));
    return required(resp.version, "version");
  }

  async rollbackDefinition(
    namespace: string, name: string, version: number, opts: { changeNote?: string; actor?: string } = {},
  ): Promise<DefinitionVersion> {
    const resp = await this.#call(this.#stub.rollbackDefinition,
      RollbackDefinitionRequest.fromPartial({ namespace, name, version, ...opts }));
    return required(resp.version, "version");
  }

  /** One version; 0 = the latest published. */
  async getDefinition(namespace: string, name: string, version = 0): Promise<DefinitionVersion> {
    const resp = await this.#call(this.#stub.getDefinitionVersion,
      GetDefinitionVersionRequest.fromPartial({ namespace, name, version }));
    return required(resp.version, "version");
  }

  listDefinitions(
    namespace: string, name = "", opts: { pageSize?: number; pageToken?: string } = {},
  ): Promise<ListDefinitionsResponse> {
    return this.#call(this.#stub.listDefinitions,
      ListDefinitionsRequest.fromPartial({ namespace, name, ...opts }));
  }

  // -- flows ---------------------------------------------------------------------------------

  /** Starts a flow of a published version (0 = latest); idempotent by `idempotencyKey`. */
  startFlow(
    namespace: string, definitionName: string, input: JsonValue = null,
    opts: { version?: number; idempotencyKey?: string; startedBy?: string } = {},
  ): Promise<StartFlowResponse> {
    return this.#call(this.#stub.startFlow, StartFlowRequest.fromPartial({
      namespace, definitionName, inputJson: JSON.stringify(input), ...opts,
    }));
  }

  async describeFlow(namespace: string, flowId: string): Promise<FlowView> {
    const resp = await this.#call(this.#stub.describeFlow,
      DescribeFlowRequest.fromPartial({ namespace, flowId }));
    return required(resp.flow, "flow");
  }

  listFlowRuns(
    namespace: string,
    opts: { statuses?: FlowStatus[]; definitionName?: string; parentFlowId?: string;
      pageSize?: number; pageToken?: string } = {},
  ): Promise<ListFlowRunsResponse> {
    return this.#call(this.#stub.listFlowRuns, ListFlowRunsRequest.fromPartial({ namespace, ...opts }));
  }

  /**
   * The flow's events from `afterVersion`: catch-up, then live until the flow ends. With
   * `closeOnly` only the event that ends the flow comes, in one message with the final status
   * (none when that event is at or before `afterVersion`). Breaking out of the loop cancels the
   * stream; a failed stream throws the typed error.
   */
  async *watchFlow(
    namespace: string, flowId: string,
    opts: { afterVersion?: number; deadlineMs?: number; closeOnly?: boolean } = {},
  ): AsyncGenerator<WatchFlowResponse, void, undefined> {
    const filter = opts.closeOnly === true
      ? WatchFilter.WATCH_FILTER_CLOSE_EVENT : WatchFilter.WATCH_FILTER_UNSPECIFIED;
    const call = this.#stub.watchFlow(
      WatchFlowRequest.fromPartial({
        namespace, flowId, afterVersion: opts.afterVersion ?? 0, filter,
      }),
      this.#connection.metadata(),
      opts.deadlineMs === undefined ? {} : { deadline: Date.now() + opts.deadlineMs },
    );
    try {
      for await (const message of call) {
        yield message as WatchFlowResponse;
      }
    } catch (error) {
      throw fromServiceError(error);
    } finally {
      call.cancel();
    }
  }

  /** Artifacts by hash; unknown hashes are in `missing`. */
  async fetchArtifacts(
    namespace: string, hashes: readonly string[],
  ): Promise<{ artifacts: Artifact[]; missing: string[] }> {
    return this.#call(this.#stub.fetchArtifacts,
      FetchArtifactsRequest.fromPartial({ namespace, hashes: [...hashes] }));
  }

  /** Branches a finished flow before step `atStep`, optionally with changed params. */
  branchFlow(
    namespace: string, flowId: string, atStep: string,
    opts: { params?: Record<string, { [key: string]: JsonValue }>; idempotencyKey?: string;
      startedBy?: string } = {},
  ): Promise<BranchFlowResponse> {
    const paramsJson = Object.fromEntries(
      Object.entries(opts.params ?? {}).map(([step, p]) => [step, JSON.stringify(p)]));
    return this.#call(this.#stub.branchFlow, BranchFlowRequest.fromPartial({
      namespace, flowId, atStep, paramsJson, idempotencyKey: opts.idempotencyKey ?? "",
      startedBy: opts.startedBy ?? "",
    }));
  }

  /** Replays the flow and recomputes every hash and fingerprint on the engine. */
  verifyFlow(namespace: string, flowId: string): Promise<VerifyFlowResponse> {
    return this.#call(this.#stub.verifyFlow, VerifyFlowRequest.fromPartial({ namespace, flowId }));
  }

  /**
   * Delivers signal `name` with `payload` (the waiting `signal` step's output). A signal sent
   * before the step waits is kept for it; `requestId` makes retries deliver it once.
   * FailedPrecondition (reason FLOW_ENDED) when the flow has ended.
   */
  signalFlow(
    namespace: string, flowId: string, name: string, payload: JsonValue = null,
    opts: { requestId?: string; sentBy?: string } = {},
  ): Promise<SignalFlowResponse> {
    return this.#call(this.#stub.signalFlow, SignalFlowRequest.fromPartial({
      namespace, flowId, name, payloadJson: JSON.stringify(payload),
      requestId: opts.requestId ?? "", sentBy: opts.sentBy ?? "",
    }));
  }

  /**
   * Cancels a flow: no further step starts, the compensations of its finished steps run, then
   * it is CANCELLED (watch it to see that). Idempotent (`already`); FailedPrecondition (reason
   * FLOW_ENDED) for a completed or failed flow.
   */
  cancelFlow(
    namespace: string, flowId: string, opts: { reason?: string; cancelledBy?: string } = {},
  ): Promise<CancelFlowResponse> {
    return this.#call(this.#stub.cancelFlow, CancelFlowRequest.fromPartial({
      namespace, flowId, reason: opts.reason ?? "", cancelledBy: opts.cancelledBy ?? "",
    }));
  }

  /** Ends a flow now, CANCELLED, without compensations (recorded with who and why). */
  terminateFlow(
    namespace: string, flowId: string, opts: { reason?: string; terminatedBy?: string } = {},
  ): Promise<TerminateFlowResponse> {
    return this.#call(this.#stub.terminateFlow, TerminateFlowRequest.fromPartial({
      namespace, flowId, reason: opts.reason ?? "", terminatedBy: opts.terminatedBy ?? "",
    }));
  }
}

function required<T>(value: T | undefined, what: string): T {
  if (value === undefined) {
    throw new TypeError(`the engine's response has no ${what}`);
  }
  return value;
}
