/**
 * External task workers: carry out the `task` steps of flows in a Node process, the
 * counterpart of the Python SDK's `flowledger.worker` (protos/flowledger/v1/worker.proto):
 *
 *     const worker = new TaskWorker("127.0.0.1:50052", "default", ["images"], async (task) => {
 *       const [image] = task.inputs as [{ url: string }];
 *       return [{ url: await makeThumbnail(image.url, task.params["width"]) }];
 *     });
 *     process.once("SIGINT", () => worker.stop());
 *     await worker.run();              // until stop()
 *
 * A step of type `task` waits on its queue until a worker polls it. The worker then holds the
 * task's lease: {@link TaskWorker} renews it by heartbeat while the handler runs, completes the
 * task with what the handler returns, and fails it when the handler throws (`errorType` = the
 * error's class name, so that a step's retry policy can name it non-retryable). A result the
 * engine refuses because the task is no longer this worker's (its lease was taken over after a
 * stall, the task timed out, its flow was cancelled) is dropped and counted in `lost`; the
 * handler's `signal` is aborted then. {@link TaskClient} is the same contract call by call.
 */
import { hostname } from "node:os";
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import type { CallOptions, Metadata, ServiceError } from "@grpc/grpc-js";
import type { JsonValue } from "./canonical.js";
import { connect, type Connection, type ConnectionSettings } from "./connection.js";
import { FailedPrecondition, Unavailable, fromServiceError } from "./errors.js";
import {
  CompleteTaskRequest,
  FailTaskRequest,
  HeartbeatRequest,
  PollTaskRequest,
  WorkerServiceClient,
} from "./gen/flowledger/v1/worker.js";

export const LEASE_LOST = "LEASE_LOST";
export const TASK_NOT_PENDING = "TASK_NOT_PENDING";
export const MIN_LEASE_MS = 1000;
const BACKOFF_MAX_MS = 2000;
const DEFAULT_TIMEOUT_MS = 30_000;

/** A leased task: one attempt of one `task` step of one flow. */
export interface Task {
  taskId: string;
  namespace: string;
  flowId: string;
  stepId: string;
  /** 1 for the first attempt. */
  attempt: number;
  queue: string;
  /** The step's `config` in the definition. */
  params: { [key: string]: JsonValue };
  /** The step's input payloads (the previous step's outputs, or the flow input). */
  inputs: JsonValue[];
  leaseToken: number;
  /** flow:step:attempt; pass it on to side effects that take an idempotency key. */
  idempotencyKey: string;
}

/**
 * Takes a {@link Task}; returns its outputs (an array is the list of outputs, each an artifact;
 * any other JSON value is the one output). Throwing fails the task. `signal` is aborted when the
 * task stops being this worker's (lease lost): stop working on it.
 */
export type TaskHandler = (task: Task, signal: AbortSignal) => unknown;

/** A handler's return value as the list of outputs. */
export function outputsOf(result: unknown): JsonValue[] {
  return (Array.isArray(result) ? result : [result ?? null]) as JsonValue[];
}

/** The engine refused a result because the task is no longer this worker's. */
export function isDropped(error: unknown): boolean {
  return error instanceof FailedPrecondition
    && (error.reason === LEASE_LOST || error.reason === TASK_NOT_PENDING);
}

function parse(text: string, empty: JsonValue): JsonValue {
  return text ? (JSON.parse(text) as JsonValue) : empty;
}

type Unary<Req, Res> = (
  request: Req, metadata: Metadata, options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => unknown;

/** The WorkerService calls, typed; failures are the errors of ./errors.ts. */
export class TaskClient {
  readonly #stub: WorkerServiceClient;
  readonly #connection: Connection;
  readonly timeoutMs: number;

  constructor(address: string, settings: ConnectionSettings = {}) {
    this.timeoutMs = settings.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.#connection = connect(address, settings);
    this.#stub = new WorkerServiceClient(address, this.#connection.credentials,
      this.#connection.options);
  }

  close(): void {
    this.#stub.close();
  }

  #call<Req, Res>(method: Unary<Req, Res>, request: Req, extraMs = 0): Promise<Res> {
    return new Promise<Res>((resolve, reject) => {
      method.call(this.#stub, request, this.#connection.metadata(),
        { deadline: Date.now() + this.timeoutMs + extraMs },
        (error, response) => (error ? reject(fromServiceError(error)) : resolve(response)));
    });
  }

  /** Leases a task of `queues`, waiting up to `waitMs` for one; null when none came. */
  async poll(
    namespace: string, queues: readonly string[], workerId: string,
    opts: { leaseMs?: number; waitMs?: number } = {},
  ): Promise<Task | null> {
    const waitMs = opts.waitMs ?? 0;
    const resp = await this.#call(this.#stub.pollTask, PollTaskRequest.fromPartial({
      namespace, queues: [...queues], workerId, leaseMs: opts.leaseMs ?? 0, waitMs,
    }), waitMs);
    const p = resp.task;
    if (p === undefined) return null;
    const params = parse(p.paramsJson, {});
    const inputs = parse(p.inputsJson, []);
    return {
      taskId: p.taskId, namespace: p.namespace, flowId: p.flowId, stepId: p.stepId,
      attempt: p.attempt, queue: p.queue, leaseToken: p.leaseToken,
      idempotencyKey: p.idempotencyKey,
      params: params !== null && typeof params === "object" && !Array.isArray(params) ? params : {},
      inputs: Array.isArray(inputs) ? inputs : [inputs],
    };
  }

  /** Records `outputs` as the step's; true when this completion was already recorded. */
  async complete(task: Task, outputs: readonly JsonValue[]): Promise<boolean> {
    const resp = await this.#call(this.#stub.completeTask, CompleteTaskRequest.fromPartial({
      namespace: task.namespace, flowId: task.flowId, taskId: task.taskId,
      leaseToken: task.leaseToken, outputsJson: outputs.map((o) => JSON.stringify(o)),
    }));
    return resp.duplicate;
  }

  /** Records the attempt's failure; true when the step will be attempted again. */
  async fail(task: Task, reason: string, errorType = ""): Promise<boolean> {
    const resp = await this.#call(this.#stub.failTask, FailTaskRequest.fromPartial({
      namespace: task.namespace, flowId: task.flowId, taskId: task.taskId,
      leaseToken: task.leaseToken, reason, errorType,
    }));
    return resp.willRetry;
  }

  /** Renews the task's lease for `leaseMs` from now (0: the engine's default). */
  async heartbeat(task: Task, workerId: string, leaseMs = 0): Promise<void> {
    await this.#call(this.#stub.heartbeat, HeartbeatRequest.fromPartial({
      namespace: task.namespace, flowId: task.flowId, taskId: task.taskId,
      leaseToken: task.leaseToken, leaseMs, workerId,
    }));
  }
}

/** Options of a {@link TaskWorker}, besides the connection's. */
export interface WorkerSettings extends ConnectionSettings {
  workerId?: string;
  /** Lease asked for each task (ms, at least 1000), renewed every third of it. Default 30 s. */
  leaseMs?: number;
  /** How long one poll waits for a task (ms). Default 2 s; `stop()` may wait that long. */
  pollWaitMs?: number;
  /** Tasks handled at once. Default 1. */
  concurrency?: number;
  /** Where warnings go (default: console.warn). */
  log?: (level: "info" | "warn", message: string) => void;
}

export function defaultWorkerId(): string {
  return `${hostname()}-${process.pid}-${randomUUID().slice(0, 6)}`;
}

function errorType(error: unknown): string {
  if (error instanceof Error) {
    const cls = error.constructor?.name;
    return (cls && cls !== "Error" ? cls : error.name).slice(0, 128);
  }
  return typeof error;
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message || error.name : String(error);
}

/**
 * Polls `queues` and runs `handler` on each task, `concurrency` at a time.
 *
 * `stop()` ends it gracefully: no new poll starts, a poll under way is answered (a task it
 * brings is still handled, as it is leased to this worker) and running handlers finish and
 * report. Transient errors (the engine restarting) are retried with backoff; others end it:
 * `run()` rejects with them.
 */
export class TaskWorker {
  readonly namespace: string;
  readonly queues: readonly string[];
  readonly workerId: string;
  readonly leaseMs: number;
  readonly pollWaitMs: number;
  completed = 0;
  failed = 0;
  /** Tasks whose result the engine refused: taken over, timed out, or cancelled. */
  lost = 0;
  readonly #handler: TaskHandler;
  readonly #client: TaskClient;
  readonly #concurrency: number;
  readonly #stopping = new AbortController();
  readonly #log: NonNullable<WorkerSettings["log"]>;
  #running: Promise<void> | undefined;

  constructor(
    address: string, namespace: string, queues: readonly string[], handler: TaskHandler,
    settings: WorkerSettings = {},
  ) {
    this.leaseMs = settings.leaseMs ?? 30_000;
    if (this.leaseMs < MIN_LEASE_MS) throw new RangeError(`leaseMs must be at least ${MIN_LEASE_MS}`);
    this.#concurrency = settings.concurrency ?? 1;
    if (this.#concurrency < 1) throw new RangeError("concurrency must be at least 1");
    this.namespace = namespace;
    this.queues = [...queues];
    this.workerId = settings.workerId ?? defaultWorkerId();
    this.pollWaitMs = settings.pollWaitMs ?? 2_000;
    this.#handler = handler;
    this.#log = settings.log ?? ((level, message) => {
      if (level === "warn") console.warn(`flowledger worker: ${message}`);
    });
    this.#client = new TaskClient(address, settings);
  }

  /** Works until {@link stop}; closes the connection at the end. Once only. */
  run(): Promise<void> {
    this.#running ??= this.#work();
    return this.#running;
  }

  /** Asks the worker to stop (safe from a signal handler). */
  stop(): void {
    this.#stopping.abort();
  }

  get stopping(): boolean {
    return this.#stopping.signal.aborted;
  }

  async #work(): Promise<void> {
    try {
      const slots = Array.from({ length: this.#concurrency }, () => this.#loop().catch((error) => {
        this.stop(); // one slot's fatal error ends the others after their task at hand
        throw error;
      }));
      const results = await Promise.allSettled(slots);
      const failure = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
      if (failure) throw failure.reason;
    } finally {
      this.#client.close();
    }
  }

  async #pause(ms: number): Promise<void> {
    try {
      await sleep(ms, undefined, { signal: this.#stopping.signal });
    } catch {
      // stopped while waiting
    }
  }

  async #loop(): Promise<void> {
    let failures = 0;
    while (!this.stopping) {
      let task: Task | null;
      try {
        task = await this.#client.poll(this.namespace, this.queues, this.workerId,
          { leaseMs: this.leaseMs, waitMs: this.pollWaitMs });
      } catch (error) {
        if (!(error instanceof Unavailable)) throw error;
        failures += 1;
        const delay = Math.min(100 * 2 ** failures, BACKOFF_MAX_MS);
        this.#log("warn", `poll failed (${error.message}); again in ${delay} ms`);
        await this.#pause(delay);
        continue;
      }
      failures = 0;
      if (task !== null) await this.handle(task);
    }
  }

  /** Runs the handler on one leased task, renewing its lease, and reports the outcome. */
  async handle(task: Task): Promise<void> {
    const lease = new AbortController(); // aborted when the task is no longer ours
    const done = new AbortController(); // ends the heartbeats
    const beats = this.#heartbeats(task, lease, done.signal);
    const lost = new Promise<"lost">((resolve) => {
      lease.signal.addEventListener("abort", () => resolve("lost"), { once: true });
    });
    let outcome: { outputs: JsonValue[] } | { error: unknown } | "lost";
    try {
      outcome = await Promise.race([this.#invoke(task, lease.signal), lost, beats.then(() => lost)]);
    } finally {
      done.abort();
    }
    await beats; // rethrows a heartbeat failure that is neither transient nor a lost lease
    if (outcome === "lost" || lease.signal.aborted) {
      this.lost += 1;
      this.#log("warn", `lease of task ${task.taskId} lost: its result is dropped`);
      return;
    }
    try {
      if ("outputs" in outcome) {
        const outputs = outcome.outputs;
        await this.#report(() => this.#client.complete(task, outputs));
        this.completed += 1;
      } else {
        const reason = describe(outcome.error).slice(0, 4096);
        const willRetry = await this.#report(
          () => this.#client.fail(task, reason, errorType(outcome.error)));
        this.failed += 1;
        this.#log("info", `task ${task.taskId} failed (${reason}); retried: ${willRetry}`);
      }
    } catch (error) {
      if (!isDropped(error)) throw error;
      this.lost += 1;
      this.#log("warn", `task ${task.taskId} was not ours any more: ${describe(error)}`);
    }
  }

  async #invoke(task: Task, signal: AbortSignal): Promise<{ outputs: JsonValue[] } | { error: unknown }> {
    try {
      const outputs = outputsOf(await this.#handler(task, signal));
      outputs.forEach((o, i) => {
        // JSON.stringify throws on BigInt and cycles and returns undefined for functions.
        if (typeof JSON.stringify(o) !== "string") throw new TypeError(`output ${i} is not JSON`);
      });
      return { outputs };
    } catch (error) {
      return { error }; // the handler's failure is the task's outcome
    }
  }

  async #heartbeats(task: Task, lease: AbortController, done: AbortSignal): Promise<void> {
    const period = this.leaseMs / 3;
    for (;;) {
      try {
        await sleep(period, undefined, { signal: done });
      } catch {
        return; // the handler finished
      }
      try {
        await this.#client.heartbeat(task, this.workerId, this.leaseMs);
      } catch (error) {
        if (error instanceof Unavailable) {
          this.#log("warn", `heartbeat of task ${task.taskId} failed (${error.message})`);
          continue;
        }
        lease.abort(); // the handler's signal: stop working on it
        if (isDropped(error)) return;
        throw error;
      }
    }
  }

  /** A completion or failure, retried while the engine is unreachable (it is idempotent
   * under the task's token), for at most one lease period. */
  async #report<T>(call: () => Promise<T>): Promise<T> {
    const deadline = Date.now() + this.leaseMs;
    let delay = 100;
    for (;;) {
      try {
        return await call();
      } catch (error) {
        if (!(error instanceof Unavailable) || Date.now() + delay > deadline) throw error;
        await sleep(delay);
        delay = Math.min(delay * 2, BACKOFF_MAX_MS);
      }
    }
  }
}
