/**
 * The real services for the live tests: `python -m store_service` (DATABASE_URL=memory:) and
 * `python -m engine_service` from the repository's .venv (or $FLOWLEDGER_PYTHON), on free
 * loopback ports. The address each serves on is read from its start-up line; every wait is
 * bounded and both processes are killed at the end.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const REPO = resolve(fileURLToPath(import.meta.url), "../../../../..");
const PYTHON = process.env["FLOWLEDGER_PYTHON"] ?? resolve(REPO, ".venv/bin/python");
const START_DEADLINE_MS = 60_000;
const LISTENING = /serving gRPC on (\S+) /;

export interface Service {
  address: string;
  log(): string;
  stop(): Promise<void>;
}

function childEnv(settings: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!/^(DATABASE_|STORE_|ENGINE_|FLOWLEDGER_)/.test(k) && k !== "LOG_LEVEL") env[k] = v;
  }
  // Loopback plaintext without tokens, asked for explicitly (docs/security.md).
  return { ...env, FLOWLEDGER_INSECURE: "1", ENGINE_AUTH_DISABLED: "1", ...settings };
}

async function startService(module: string, settings: Record<string, string>): Promise<Service> {
  const child: ChildProcess = spawn(PYTHON, ["-m", module], {
    cwd: REPO, env: childEnv(settings), stdio: ["ignore", "ignore", "pipe"],
  });
  let log = "";
  const address = await new Promise<string>((resolveAddress, reject) => {
    const timer = setTimeout(() => reject(new Error(`${module} did not start:\n${log}`)),
      START_DEADLINE_MS);
    child.stderr!.setEncoding("utf8");
    child.stderr!.on("data", (chunk: string) => {
      log += chunk;
      const match = LISTENING.exec(log);
      if (match) {
        clearTimeout(timer);
        resolveAddress(match[1]!);
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${module} exited (${code}) before listening:\n${log}`));
    });
  });
  return {
    address,
    log: () => log,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = once(child, "exit");
        child.kill("SIGKILL");
        await exited;
      }
    },
  };
}

/** The store (in memory) and one engine replica in front of it. */
export async function startStack(): Promise<{ engine: Service; store: Service; stop(): Promise<void> }> {
  const store = await startService("store_service", {
    DATABASE_URL: "memory:", STORE_LISTEN: "127.0.0.1:0", STORE_METRICS_LISTEN: "127.0.0.1:0",
    STORE_SHUTDOWN_GRACE_SECONDS: "1",
  });
  try {
    const engine = await startService("engine_service", {
      STORE_ADDR: store.address, ENGINE_LISTEN: "127.0.0.1:0", ENGINE_METRICS_LISTEN: "127.0.0.1:0",
      ENGINE_POLL_MS: "100", ENGINE_SHUTDOWN_GRACE_SECONDS: "1",
      ENGINE_STEP_PLUGINS: "engine_service.samples:install",
    });
    return { engine, store, async stop() { await engine.stop(); await store.stop(); } };
  } catch (error) {
    await store.stop();
    throw error;
  }
}
