// Servers for the tests: each started on a free 127.0.0.1 port with its own
// directory, stopped by PID (also when a test fails, via t.after / process
// exit). RATELIMIT_SERVER names the binary (default redis-server),
// RATELIMIT_MODULE the module (loaded unless { module: false }).
import { execFile, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before } from "node:test";
import { promisify } from "node:util";
import { Redis } from "ioredis";
import { RateLimiter } from "redis-ratelimit";

export const SERVER = process.env.RATELIMIT_SERVER || "redis-server";
export const MODULE = process.env.RATELIMIT_MODULE;
const CLI = process.env.RATELIMIT_CLI || "redis-cli";
const run = promisify(execFile);
const running = new Set();

process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

export async function freePort() {
  const probe = net.createServer();
  await new Promise((resolve) => probe.listen(0, "127.0.0.1", resolve));
  const { port } = probe.address();
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

function listening(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    socket.once("error", () => resolve(false));
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
  });
}

async function answersPing(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    socket.once("error", () => resolve(false));
    socket.once("connect", () => socket.write("PING\r\n"));
    socket.once("data", (data) => {
      socket.destroy();
      resolve(data.toString().startsWith("+PONG"));
    });
  });
}

/** Starts a server; `module: false` for one without the module (the twin's case). */
export async function startServer({ module = true, port, extra = [] } = {}) {
  if (module && !MODULE) throw new Error("set RATELIMIT_MODULE to the built module (libredis_ratelimit.so)");
  const chosen = port ?? (await freePort());
  const dir = mkdtempSync(join(tmpdir(), "rl-node-"));
  const args = ["--port", String(chosen), "--bind", "127.0.0.1", "--dir", dir, "--save", "", "--appendonly", "no", ...extra];
  if (module) args.push("--loadmodule", MODULE);
  const child = spawn(SERVER, args, { stdio: ["ignore", "ignore", "inherit"] });
  running.add(child);
  const exited = new Promise((resolve) => child.once("exit", resolve));
  for (let i = 0; i < 200 && child.exitCode === null; i++) {
    if (await answersPing(chosen)) {
      return {
        port: chosen,
        pid: child.pid,
        async stop() {
          if (child.exitCode === null) child.kill("SIGKILL");
          await exited;
          running.delete(child);
          rmSync(dir, { recursive: true, force: true });
        },
      };
    }
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  child.kill("SIGKILL");
  throw new Error(`${SERVER} did not answer on port ${chosen} (exit ${child.exitCode})`);
}

export async function cli(port, ...args) {
  const { stdout } = await run(CLI, ["-h", "127.0.0.1", "-p", String(port), ...args]);
  return stdout;
}

/** errorstat_MOVED from INFO errorstats (0 when the server never answered MOVED). */
export async function movedCount(port) {
  const match = (await cli(port, "INFO", "errorstats")).match(/errorstat_MOVED:count=(\d+)/);
  return match ? Number(match[1]) : 0;
}

/** Three masters created with redis-cli --cluster create; `modules[i]` says whether node i loads the module. */
export async function startCluster(modules = [true, true, true]) {
  const nodes = [];
  try {
    for (const module of modules) {
      nodes.push(await startServer({ module, extra: ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"] }));
    }
    await run(CLI, ["--cluster", "create", ...nodes.map((node) => `127.0.0.1:${node.port}`), "--cluster-yes"]);
    for (let i = 0; i < 200; i++) {
      const states = await Promise.all(nodes.map((node) => cli(node.port, "CLUSTER", "INFO")));
      if (states.every((state) => state.includes("cluster_state:ok"))) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  } catch (error) {
    await Promise.all(nodes.map((node) => node.stop()));
    throw error;
  }
  return { nodes, stop: () => Promise.all(nodes.map((node) => node.stop())) };
}

/** The four client builds the package supports, each as a factory. */
export async function clients() {
  const [{ default: Ioredis6 }, { default: Ioredis5 }, redis6, redis5] = await Promise.all([
    import("ioredis"),
    import("ioredis5"),
    import("redis"),
    import("redis5"),
  ]);
  const ioredis = (Redis, protocol) => async (port) => {
    const options = { host: "127.0.0.1", port, maxRetriesPerRequest: 0, enableOfflineQueue: false, lazyConnect: true };
    const client = new Redis(protocol === undefined ? options : { ...options, protocol });
    await client.connect();
    return { client, close: () => client.disconnect() };
  };
  const nodeRedis = (redis, RESP) => async (port) => {
    const options = { socket: { host: "127.0.0.1", port, reconnectStrategy: false } };
    const client = await redis.createClient(RESP === undefined ? options : { ...options, RESP }).connect();
    return { client, close: () => client.destroy() };
  };
  return {
    "ioredis 6 (RESP3 default)": ioredis(Ioredis6),
    "ioredis 6 RESP2": ioredis(Ioredis6, 2),
    "ioredis 5": ioredis(Ioredis5),
    "node-redis 6 (RESP3 default)": nodeRedis(redis6),
    "node-redis 6 RESP2": nodeRedis(redis6, 2),
    "node-redis 5": nodeRedis(redis5),
  };
}

/** xorshift32 from `seed`: next(bound) is in 0..bound-1, the same sequence on every run. */
export function pseudoRandom(seed) {
  let state = seed;
  return (bound) => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) % bound;
  };
}

/** Serves `handler` (node:http's shape) on a free 127.0.0.1 port until the test `t` ends; resolves its URL. */
export async function listen(t, handler) {
  const listening = http.createServer(handler).listen(0, "127.0.0.1");
  await new Promise((resolve) => listening.once("listening", resolve));
  t.after(() => {
    listening.closeAllConnections();
    listening.close();
  });
  return `http://127.0.0.1:${listening.address().port}`;
}

/** A logger that keeps what it is told. */
export function recorder() {
  const lines = [];
  const keep = (level) => (message, details) => lines.push({ level, message, details });
  return { lines, logger: { info: keep("info"), warn: keep("warn"), error: keep("error") } };
}

/** For a test file: a server with the module and a limiter over an ioredis client, both stopped after the file. */
export function sharedLimiter() {
  const shared = {};
  before(async () => {
    shared.server = await startServer();
    shared.redis = new Redis({ host: "127.0.0.1", port: shared.server.port });
    shared.limiter = new RateLimiter(shared.redis, { logger: recorder().logger });
  });
  after(async () => {
    shared.redis?.disconnect();
    await shared.server?.stop();
  });
  return shared;
}

/**
 * Runs an app as a program (`node file`, in `cwd`) with PORT set to a free
 * port and `env`, until the test `t` ends (stopped by PID); resolves its URL
 * once it accepts connections (no request is sent: none is counted), and
 * what it has printed so far, on demand.
 */
export async function runApp(t, file, { cwd, env = {} } = {}) {
  const port = await freePort();
  const child = spawn(process.execPath, [file], {
    cwd,
    env: { ...process.env, ...env, PORT: String(port) },
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.add(child);
  let printed = "";
  for (const stream of [child.stdout, child.stderr]) stream.on("data", (data) => (printed += data));
  const exited = new Promise((resolve) => child.once("exit", resolve));
  t.after(async () => {
    if (child.exitCode === null) child.kill("SIGKILL");
    await exited;
    running.delete(child);
  });
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 400 && child.exitCode === null; i++) {
    if (await listening(port)) return { url, printed: () => printed };
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error(`${file} did not answer on port ${port} (exit ${child.exitCode}):\n${printed}`);
}
