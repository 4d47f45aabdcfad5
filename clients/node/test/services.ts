/**
 * The real services for the live tests: `python -m store_service` (DATABASE_URL=memory:) and
 * `python -m engine_service` from the repository's .venv (or $FLOWLEDGER_PYTHON), on free
 * loopback ports. The address each serves on is read from its start-up line; every wait is
 * bounded and both processes are killed at the end. With `secure`, the engine serves TLS and
 * takes bearer tokens from a static token file (docs/security.md); certificates come from the
 * security suite's helper (tests/security/certs.py, the `cryptography` library).
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { once } from "node:events";
import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

export const REPO = resolve(fileURLToPath(import.meta.url), "../../../../..");
export const PYTHON = process.env["FLOWLEDGER_PYTHON"] ?? resolve(REPO, ".venv/bin/python");
const START_DEADLINE_MS = 60_000;
const LISTENING = /serving gRPC on (\S+) /;

export interface Service {
  address: string;
  log(): string;
  stop(): Promise<void>;
}

/** This process's environment without settings that would redirect a service or a client. */
export function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!/^(DATABASE_|STORE_|ENGINE_|FLOWLEDGER_)/.test(k) && k !== "LOG_LEVEL") env[k] = v;
  }
  return env;
}

function childEnv(settings: Record<string, string>): NodeJS.ProcessEnv {
  // Loopback plaintext, and no tokens unless `settings` configure them: asked for explicitly
  // (docs/security.md). With ENGINE_TLS_* set the engine serves TLS to clients all the same.
  const open = "ENGINE_AUTH_TOKEN_FILE" in settings ? {} : { ENGINE_AUTH_DISABLED: "1" };
  return { ...cleanEnv(), FLOWLEDGER_INSECURE: "1", ...open, ...settings };
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

/** Test certificates: a CA, the engine's server certificate for loopback, a client certificate,
 * and a CA that signed nothing of ours. */
export interface Pki {
  dir: string;
  caFile: string;
  otherCaFile: string;
  engineCertFile: string;
  engineKeyFile: string;
  clientCertFile: string;
  clientKeyFile: string;
}

const MAKE_PKI = `
import sys
from pathlib import Path
from tests.security.certs import Authority
d = Path(sys.argv[1])
ca = Authority(d, "node")
ca.issue("engine", ("localhost", "127.0.0.1"))
ca.issue("client", ("node-client.example",), server=False)
Authority(d, "other")
`;

export async function makePki(): Promise<Pki> {
  const dir = await mkdtemp(join(tmpdir(), "flowledger-node-pki-"));
  await promisify(execFile)(PYTHON, ["-c", MAKE_PKI, dir], { cwd: REPO, timeout: 60_000 });
  return {
    dir, caFile: join(dir, "node-ca.pem"), otherCaFile: join(dir, "other-ca.pem"),
    engineCertFile: join(dir, "node-engine.pem"), engineKeyFile: join(dir, "node-engine-key.pem"),
    clientCertFile: join(dir, "node-client.pem"), clientKeyFile: join(dir, "node-client-key.pem"),
  };
}

/** The static token file (docs/security.md): each token's SHA-256, subject, role, namespaces. */
export async function writeTokenFile(
  path: string, entries: { token: string; subject: string; role: string; namespaces: string[] }[],
): Promise<string> {
  const lines = ["tokens:"];
  for (const e of entries) {
    lines.push(`  - sha256: ${createHash("sha256").update(e.token).digest("hex")}`,
      `    subject: ${e.subject}`, `    role: ${e.role}`,
      `    namespaces: ${JSON.stringify(e.namespaces)}`);
  }
  await writeFile(path, lines.join("\n") + "\n");
  return path;
}

/** TLS and tokens for the engine; `clientCaFile` also requires client certificates. */
export interface Secure {
  pki: Pki;
  tokenFile: string;
  clientCaFile?: string;
}

/** The store (in memory) and one engine replica in front of it. */
export async function startStack(
  secure?: Secure,
): Promise<{ engine: Service; store: Service; stop(): Promise<void> }> {
  const store = await startService("store_service", {
    DATABASE_URL: "memory:", STORE_LISTEN: "127.0.0.1:0", STORE_METRICS_LISTEN: "127.0.0.1:0",
    STORE_SHUTDOWN_GRACE_SECONDS: "1",
  });
  try {
    const engine = await startService("engine_service", {
      STORE_ADDR: store.address, ENGINE_LISTEN: "127.0.0.1:0", ENGINE_METRICS_LISTEN: "127.0.0.1:0",
      ENGINE_POLL_MS: "100", ENGINE_SHUTDOWN_GRACE_SECONDS: "1",
      ENGINE_STEP_PLUGINS: "engine_service.definitions.samples:install",
      ...(secure === undefined ? {} : {
        ENGINE_TLS_CERT_FILE: secure.pki.engineCertFile,
        ENGINE_TLS_KEY_FILE: secure.pki.engineKeyFile,
        ENGINE_AUTH_TOKEN_FILE: secure.tokenFile,
        ...(secure.clientCaFile === undefined ? {} : { ENGINE_TLS_CLIENT_CA_FILE: secure.clientCaFile }),
      }),
    });
    return { engine, store, async stop() { await engine.stop(); await store.stop(); } };
  } catch (error) {
    await store.stop();
    throw error;
  }
}
