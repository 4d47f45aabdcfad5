/**
 * The README's Node worker block (section "Waits, signals, sagas and workers", the ```sh block),
 * run as written from the repository's root: examples/worker.ts serves the `task` step of
 * examples/task.yaml, started with the real `flowctl run`; and examples/hello.ts, run twice on the
 * engine FLOWLEDGER_ENGINE names. (The build it names first is what
 * `npm test` has just done.) `flowctl` is the repository's .venv/bin/flowctl.
 */
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { once } from "node:events";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { after, before, describe, it } from "node:test";
import { DEADLINE_MS } from "./flows.js";
import { cleanEnv, REPO, startStack } from "./services.js";

/** The block's commands as argv lists (simple quoting only: '...' and bare words). */
function readmeBlock(): string[][] {
  const text = readFileSync(resolve(REPO, "README.md"), "utf8");
  const section = text.split("## Waits, signals, sagas and workers\n")[1]!.split("\n## ")[0]!;
  const block = /```sh\n([\s\S]*?)```/.exec(section);
  assert.ok(block, "the section lost its Node worker block");
  return block[1]!.split("\n").filter((l) => l.trim()).map((line) => {
    const words = line.replace(/\s+#.*$/, "").match(/'[^']*'|\S+/g) ?? [];
    return words.map((w) => (w.startsWith("'") ? w.slice(1, -1) : w));
  });
}

/** A long-running command whose stdout lines are collected. */
class Background {
  readonly child: ChildProcess;
  out = "";
  err = "";
  readonly #closed: Promise<unknown>;
  constructor(argv: string[], env: NodeJS.ProcessEnv) {
    this.child = spawn(argv[0]!, argv.slice(1), { cwd: REPO, env, stdio: ["ignore", "pipe", "pipe"] });
    this.#closed = once(this.child, "close"); // after the exit and the end of its output
    this.child.stdout!.setEncoding("utf8").on("data", (c: string) => { this.out += c; });
    this.child.stderr!.setEncoding("utf8").on("data", (c: string) => { this.err += c; });
  }
  async waitFor(pattern: RegExp): Promise<RegExpExecArray> {
    const deadline = Date.now() + DEADLINE_MS;
    for (;;) {
      const match = pattern.exec(this.out);
      if (match) return match;
      assert.equal(this.child.exitCode, null, `ended without ${pattern}:\n${this.out}${this.err}`);
      assert.ok(Date.now() < deadline, `no ${pattern} within ${DEADLINE_MS} ms:\n${this.out}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  /** Waits for the command to end and its output to be read (after `signal`, when given). */
  async finish(signal?: NodeJS.Signals): Promise<number | null> {
    if (signal && this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill(signal);
    }
    const timer = setTimeout(() => this.child.kill("SIGKILL"), DEADLINE_MS);
    await this.#closed;
    clearTimeout(timer);
    return this.child.exitCode;
  }
}

describe("the README's Node worker block", { timeout: 180_000 }, () => {
  let stack: Awaited<ReturnType<typeof startStack>>;
  const ns = `node-readme-${randomUUID().slice(0, 8)}`;

  before(async () => {
    stack = await startStack();
  });
  after(async () => {
    await stack?.stop();
  });

  it("serves the task step of examples/task.yaml", async () => {
    const [workerArgv, runArgv] = readmeBlock();
    assert.deepEqual(workerArgv, ["node", "clients/node/dist/examples/worker.js"]);
    assert.deepEqual(runArgv!.slice(0, 3), ["flowctl", "run", "examples/task.yaml"]);
    const env = { ...cleanEnv(), FLOWLEDGER_ENGINE: stack.engine.address, FLOWLEDGER_NAMESPACE: ns };
    const worker = new Background([process.execPath, ...workerArgv!.slice(1)], env);
    let code: number | null;
    try {
      await worker.waitFor(/polls queue 'shout'/);
      const run = new Background([resolve(REPO, ".venv/bin/flowctl"), ...runArgv!.slice(1)], env);
      assert.equal(await run.finish(), 0, run.out + run.err);
      assert.match(run.out, /^variants:\s+ISFSQFSFC$/m);
      await worker.waitFor(/-> \{"message":"HELLO, BO"\}/);
    } finally {
      code = await worker.finish("SIGINT");
    }
    assert.equal(code, 0, worker.out + worker.err);
    assert.match(worker.out, /stopped after 1 completed, 0 failed/);
  });

  it("runs examples/hello.ts against FLOWLEDGER_ENGINE, twice", async () => {
    const env = {
      ...cleanEnv(), FLOWLEDGER_ENGINE: stack.engine.address, FLOWLEDGER_NAMESPACE: `${ns}-hello`,
    };
    const fingerprints: string[] = [];
    for (const round of [1, 2]) {
      const hello = new Background([process.execPath, "clients/node/dist/examples/hello.js"], env);
      assert.equal(await hello.finish(), 0, `run ${round}:\n${hello.out}${hello.err}`);
      const engine = /^engine ([0-9a-f]{64})$/m.exec(hello.out);
      assert.ok(engine, hello.out);
      assert.match(hello.out, new RegExp(`^node   ${engine[1]}$`, "m"));
      fingerprints.push(engine[1]!);
    }
    // The second run found the same definition version (published already) and gave the same
    // flow fingerprint.
    assert.equal(fingerprints[0], fingerprints[1]);
  });
});
