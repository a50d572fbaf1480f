// contract/transport.json, as written: every scenario under every failure
// policy, on real servers wherever the condition can be made real (a stub
// only for an older module, which no server of this repository is), with
// ioredis 6 (RESP3) and node-redis 6 (RESP2) built as the README shows
// them (default reconnection, an 'error' listener). Each run is a fresh
// limiter on one key 'k' (its own prefix, so runs share servers), and
// asserts the outcome and the log lines, text and level, exactly.
import assert from "node:assert/strict";
import { once } from "node:events";
import { readFileSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import { Redis } from "ioredis";
import { createClient } from "redis";
import { RateLimiter, RateLimitReplyError, RateLimitUnavailableError } from "redis-ratelimit";
import { cli, freePort, recorder, startServer } from "./servers.mjs";

const contract = JSON.parse(readFileSync(`${process.env.RATELIMIT_REPO}/contract/transport.json`, "utf8"));
const LIMIT = { windowMs: 60_000, max: 5 };
const HOST = "127.0.0.1";
const LEVELS = { info: "info", warning: "warn", error: "error" };
const POLICIES = {
  fail_closed: {},
  fail_open: { failOpen: true },
  fallback: { fallback: { share: 1 } },
};
const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** The two client builds, as the README builds them; `auth` for an ACL user. */
const CLIENTS = {
  "ioredis 6 (RESP3)": (port, auth = {}) => {
    const client = new Redis({ host: HOST, port, ...auth });
    client.on("error", () => {});
    return { client, connected: () => client.status === "ready", close: () => client.disconnect() };
  },
  "node-redis 6 (RESP2)": (port, auth = {}) => {
    const client = createClient({ socket: { host: HOST, port }, RESP: 2, ...auth });
    client.on("error", () => {});
    client.connect().catch(() => {});
    return { client, connected: () => client.isReady, close: () => client.destroy() };
  },
};

async function ready(run) {
  if (!run.connected()) await once(run.client, "ready");
}

/**
 * A command's answer, or its error's text, as the server words it (by
 * redis-cli, which needs no handshake, so it is answered while a script
 * keeps the server busy).
 */
async function answer(port, args, { username, password } = {}) {
  const auth = username ? ["--user", username, "--pass", password, "--no-auth-warning"] : [];
  return (await cli(port, ...auth, ...args)).trim();
}

const servers = {};
before(async () => {
  const extras = { busy: ["--busy-reply-threshold", "20"] };
  const started = await Promise.all([
    startServer(),
    startServer({ module: false }),
    startServer({ extra: extras.busy }),
    startServer(),
    startServer({ module: false }),
    startServer(),
  ]);
  [servers.module, servers.twin, servers.busy, servers.oom, servers.oomTwin, servers.stopped] = started;
  await cli(servers.module.port, "ACL", "SETUSER", "nocheck", "on", ">pw", "~*", "&*", "+@all", "-ratelimit.check");
  await cli(servers.twin.port, "ACL", "SETUSER", "notime", "on", ">pw", "~*", "&*", "+@all", "-time");
});
after(() => Promise.all(Object.values(servers).map((server) => server.stop())));

/** One fresh limiter per client build and policy, over a client of that build. */
function runsOf(scenario, port, { auth, options = {}, connection } = {}) {
  return Object.entries(CLIENTS).flatMap(([clientName, open]) =>
    Object.entries(POLICIES).map(([policy, policyOptions]) => {
      const opened = open(port, auth);
      const log = recorder();
      const limiterOptions = { logger: log.logger, prefix: `${scenario}:${clientName}:${policy}:`, ...policyOptions, ...options };
      const limiter = new RateLimiter(connection ? connection(opened.client, clientName) : opened.client, limiterOptions);
      return { ...opened, clientName, policy, log, limiter, limiterOptions, name: `${scenario}, ${clientName}, ${policy}` };
    }),
  );
}

/** The policy's text as the logs name it. */
function policyText(run) {
  return contract.policy_texts[run.policy].replace("{share}", String(run.limiterOptions.fallback?.share));
}

/**
 * The contract's log lines for a scenario, filled in for one run: only the
 * entries for its policy (an entry's `policies`, if it has them); `keys` as
 * the package names keys in its lines, with the run's prefix.
 */
function expectedLines(events, run, server, causes) {
  return events
    .filter((event) => !event.policies || event.policies.includes(run.policy))
    .map((event) => {
      const { level, text } = contract.logs[event.event];
      const fill = {
        ...event,
        server,
        cause: causes[event.event] ?? event.cause,
        policy: policyText(run),
        keys: event.keys
          ?.split(", ")
          .map((key) => (run.limiterOptions.prefix ?? "") + key)
          .join(", "),
      };
      return {
        level: LEVELS[level],
        message: text.replace(/\{(\w+)\}/g, (_, name) => {
          assert.ok(fill[name] !== undefined, `${run.name}: the contract's {${name}} is filled in`);
          return fill[name];
        }),
      };
    });
}

function assertLogs(run, expected) {
  assert.deepEqual(
    run.log.lines.map(({ level, message }) => ({ level, message })),
    expected,
    run.name,
  );
  for (const { details } of run.log.lines) {
    for (const [field, value] of Object.entries(details ?? {})) assert.equal(typeof value, "string", `${run.name}: details.${field}`);
  }
}

/** Asserts what a call gave (a result, or the error it rejected with) against the contract's outcome. */
function assertOutcome(outcome, got, run, scenario) {
  const name = run.name;
  if (outcome === "call_error" || outcome === "unavailable_error") {
    const expected = outcome === "call_error" ? RateLimitReplyError : RateLimitUnavailableError;
    assert.ok(got instanceof expected, `${name}: rejects with ${expected.name}, got ${got}`);
    if (scenario.error_contains) assert.ok(got.message.includes(scenario.error_contains), `${name}: ${got.message}`);
    const cause = scenario.logs.find((event) => event.event === "down")?.cause;
    if (outcome === "unavailable_error" && cause) assert.ok(got.message.includes(cause), `${name}: names the cause: ${got.message}`);
    return;
  }
  assert.ok(!(got instanceof Error), `${name}: resolves, got ${got}`);
  if (got && "action" in got) {
    // A settlement (settle's answer): where it was recorded.
    assert.ok(outcome === "redis" || outcome === "fallback", `${name}: outcome ${outcome} is known to the test for a settlement`);
    assert.equal(got.source, outcome, name);
    assert.equal(got.charged?.source, outcome, name);
    return;
  }
  const expected = {
    redis: { allowed: true, remaining: LIMIT.max - 1, retryAfterMs: 0, source: "redis" },
    fail_closed: {
      allowed: false,
      remaining: 0,
      retryAfterMs: run.limiterOptions.retryAfterFailureMs ?? 1000,
      resetAfterMs: 0,
      source: "failClosed",
    },
    fail_open: { allowed: true, remaining: LIMIT.max - 1, retryAfterMs: 0, resetAfterMs: 0, source: "failOpen" },
    fallback: { allowed: true, remaining: LIMIT.max - 1, retryAfterMs: 0, resetAfterMs: LIMIT.windowMs, source: "fallback" },
  }[outcome];
  assert.ok(expected, `${name}: outcome ${outcome} is known to the test`);
  const { resetAfterMs, ...rest } = got;
  if (outcome === "redis")
    assert.ok(resetAfterMs > LIMIT.windowMs - 5000 && resetAfterMs <= LIMIT.windowMs, `${name}: resetAfterMs ${resetAfterMs}`);
  else rest.resetAfterMs = resetAfterMs;
  assert.deepEqual(rest, expected, name);
}

const settled = (promise) =>
  promise.then(
    (value) => value,
    (error) => error,
  );
const check = (run) => settled(run.limiter.check("k", LIMIT));

/** cmdstat_<command>'s calls from INFO commandstats. */
async function calls(port, command) {
  const match = (await cli(port, "INFO", "commandstats")).match(new RegExp(`cmdstat_${command}:calls=(\\d+)`));
  return match ? Number(match[1]) : 0;
}

/**
 * Each scenario of the contract, made real: `act` runs the scenario's call
 * for every run and resolves what each got (in run order); `server` names
 * the server as the logs do; `causes` fills in causes the server words
 * itself.
 */
const SCENARIOS = {
  async module(scenario) {
    const runs = runsOf(scenario.name, servers.module.port);
    return { runs, server: `${HOST}:${servers.module.port}`, got: await sequential(runs, check) };
  },

  async "no-module"(scenario) {
    const runs = runsOf(scenario.name, servers.twin.port);
    return { runs, server: `${HOST}:${servers.twin.port}`, got: await sequential(runs, check) };
  },

  // A stub Connection: MCHECK goes to a server without the module, which
  // answers "unknown command" as an older module would; the rest goes to
  // the server with the module, which answers PEEK.
  async "older-module"(scenario) {
    const sent = new Map();
    const olders = [];
    const routed = (client, clientName) => {
      const opened = CLIENTS[clientName](servers.twin.port);
      olders.push(opened);
      const older = opened.client;
      const send = (target, args) => (target.call ? target.call(...args) : target.sendCommand([...args]));
      return {
        send: async (_key, args) => {
          sent.set(client, [...(sent.get(client) ?? []), args[0]]);
          return send(args[0] === "RATELIMIT.MCHECK" ? older : client, args);
        },
        serverFor: () => `${HOST}:${servers.module.port}`,
      };
    };
    const runs = runsOf(scenario.name, servers.module.port, { connection: routed });
    for (const run of runs) await ready(run);
    const keys = [
      { key: "k1", limits: LIMIT },
      { key: "k2", limits: LIMIT },
    ];
    const got = await sequential(runs, (run) => settled(run.limiter.checkAll(keys)));
    for (const run of runs) {
      sent.set(run.client, []);
      const following = await check(run);
      assert.equal(following.source, "redis", `${run.name}: ${scenario.after}`);
      assert.deepEqual(sent.get(run.client), ["RATELIMIT.CHECK"], `${run.name}: ${scenario.after}`);
      assert.equal(run.limiter.backend, "module", run.name);
    }
    for (const opened of olders) await opened.close();
    return { runs, server: `${HOST}:${servers.module.port}`, got };
  },

  async noscript(scenario) {
    const port = servers.twin.port;
    const runs = runsOf(scenario.name, port);
    const got = [];
    for (const run of runs) {
      await cli(port, "SCRIPT", "FLUSH");
      const evals = await calls(port, "eval");
      got.push(await check(run));
      const evalshas = await calls(port, "evalsha");
      assert.equal((await run.limiter.check("k2", LIMIT)).source, "redis", run.name);
      assert.equal(await calls(port, "eval"), evals + 1, `${run.name}: EVAL once, after the NOSCRIPT`);
      assert.equal(await calls(port, "evalsha"), evalshas + 1, `${run.name}: EVALSHA again for the next call`);
    }
    return { runs, server: `${HOST}:${port}`, got };
  },

  // A long script from a second connection; the server answers BUSY past busy-reply-threshold (20 ms here).
  async busy(scenario) {
    const port = servers.busy.port;
    const runs = runsOf(scenario.name, port);
    for (const run of runs) await ready(run);
    const looping = new Redis({ host: HOST, port });
    const done = settled(looping.call("EVAL", "while true do end", "0"));
    let text;
    for (let i = 0; i < 100 && !text?.startsWith("BUSY"); i++) {
      await pause(20);
      text = await answer(port, ["PING"]);
    }
    try {
      assert.match(text, /^BUSY /);
      return { runs, server: `${HOST}:${port}`, got: await sequential(runs, check), causes: { down: text } };
    } finally {
      await answer(port, ["SCRIPT", "KILL"]);
      await done;
      looping.disconnect();
    }
  },

  // A user without +time: the twin answers NOPERM naming TIME and the ACL
  // fix (contract). A twin from before that (twin/ratelimit.lua, issue 23)
  // gets the server's own refusal inside a script ("ERR ERR The user
  // executing the script can't run this command ..." on Redis 7.0, "ERR ERR
  // ACL failure in script: User notime has no permissions to run the 'time'
  // command ..." on 7.2+ and Valkey), which is the same outage; the test
  // below holds the package to the contract's text on a stub meanwhile.
  async "noperm-time"(scenario, t) {
    const port = servers.twin.port;
    const auth = { username: "notime", password: "pw" };
    const text = await answer(port, ["EVAL", twinScript(), "1", "k", "check", "60000", "5"], auth);
    const template = new RegExp(`^${scenario.logs[0].cause.replace(/[.*+?^${}()|[\]\\]/g, "\\$&").replace("<user>", ".+")}$`);
    if (template.test(text)) t.diagnostic("the twin answers the contract's NOPERM");
    else t.diagnostic(`the twin does not answer the contract's NOPERM yet: ${JSON.stringify(text)}`);
    const runs = runsOf(scenario.name, port, { auth });
    return { runs, server: `${HOST}:${port}`, got: await sequential(runs, check), causes: { down: unwrapped(text) } };
  },

  async "noperm-command"(scenario) {
    const port = servers.module.port;
    const auth = { username: "nocheck", password: "pw" };
    const text = await answer(port, ["RATELIMIT.CHECK", "k", "60000", "5"], auth);
    // Redis 7.0 words it "NOPERM this user has no permissions to run the 'ratelimit.check' command".
    assert.match(text, /^NOPERM (User nocheck|this user) has no permissions to run the 'ratelimit\.check' command$/);
    const runs = runsOf(scenario.name, port, { auth });
    return { runs, server: `${HOST}:${port}`, got: await sequential(runs, check), causes: { down: text } };
  },

  async wrongtype(scenario) {
    const runs = runsOf(scenario.name, servers.module.port);
    for (const run of runs) await cli(servers.module.port, "SET", `${run.limiterOptions.prefix}k`, "hello");
    return { runs, server: `${HOST}:${servers.module.port}`, got: await sequential(runs, check) };
  },

  // maxmemory 1 with noeviction: the module answers OOM; the twin's form
  // comes wrapped ("... script: <sha>, on @user_script:<line>.") and is
  // logged unwrapped, the same line.
  async oom(scenario) {
    const outcomes = [];
    for (const server of [servers.oom, servers.oomTwin]) {
      const runs = runsOf(`${scenario.name}:${server.port}`, server.port);
      for (const run of runs) await ready(run);
      await cli(server.port, "CONFIG", "SET", "maxmemory", "1");
      try {
        outcomes.push({ runs, server: `${HOST}:${server.port}`, got: await sequential(runs, check) });
      } finally {
        await cli(server.port, "CONFIG", "SET", "maxmemory", "0");
      }
    }
    return outcomes;
  },

  // A server stopped with SIGSTOP: it accepts and never answers.
  async timeout(scenario) {
    const server = servers.stopped;
    const runs = runsOf(scenario.name, server.port, { options: { timeoutMs: 250 } });
    for (const run of runs) await ready(run);
    process.kill(server.pid, "SIGSTOP");
    try {
      const got = await sequential(runs, check);
      // The logs as the calls left them: the late refunds are logged after SIGCONT.
      return { runs, server: `${HOST}:${server.port}`, got, snapshot: runs.map((run) => [...run.log.lines]) };
    } finally {
      process.kill(server.pid, "SIGCONT");
    }
  },

  async "connection-refused"(scenario) {
    const port = await freePort();
    const runs = runsOf(scenario.name, port);
    return { runs, server: `${HOST}:${port}`, got: await sequential(runs, check) };
  },

  async reconnect(scenario) {
    let server = await startServer();
    const port = server.port;
    try {
      const runs = runsOf(scenario.name, port, { options: { retryAfterFailureMs: 200 } });
      for (const run of runs) await ready(run);
      for (const run of runs) assert.equal((await run.limiter.check("before", LIMIT)).source, "redis", run.name);
      await server.stop();
      for (const run of runs) {
        for (let i = 0; i < 200 && run.connected(); i++) await pause(10);
      }
      for (const run of runs) assertOutcome(scenario.outcome_while_down[run.policy], await check(run), run, scenario);
      server = await startServer({ port });
      const got = [];
      for (const run of runs) {
        let result = await check(run);
        for (let i = 0; i < 100 && result.source !== "redis"; i++) {
          await pause(50);
          result = await run.limiter.check("k", LIMIT);
        }
        got.push(result);
      }
      return { runs, server: `${HOST}:${port}`, got };
    } finally {
      await server.stop();
    }
  },

  async "unblock-while-down"(scenario) {
    const port = await freePort();
    const runs = runsOf(scenario.name, port);
    const got = [];
    for (const run of runs) {
      if (run.policy === "fallback") {
        // A block in the fallback, lifted by the unblock that then rejects.
        for (let i = 0; i <= LIMIT.max; i++) await run.limiter.check("k", LIMIT, { blockMs: 3_600_000 });
        assert.ok((await run.limiter.peek("k", LIMIT)).retryAfterMs > LIMIT.windowMs, `${run.name}: blocked in the fallback`);
      }
      got.push(await settled(run.limiter.unblock("k")));
      if (run.policy === "fallback") {
        const after = await run.limiter.peek("k", LIMIT);
        assert.equal(after.source, "fallback");
        assert.ok(after.retryAfterMs <= LIMIT.windowMs, `${run.name}: the fallback's block was lifted`);
      }
    }
    return { runs, server: `${HOST}:${port}`, got };
  },

  // reserve(k, estimate 3) answered by Redis, the server stopped, then
  // settle(handle, 5): a charge of 2 units that cannot reach Redis within
  // settleRetryMs 300.
  async "settle-while-down"(scenario) {
    let server = await startServer();
    const port = server.port;
    try {
      const runs = runsOf(scenario.name, port, { options: { settleRetryMs: 300 } });
      for (const run of runs) await ready(run);
      const handles = [];
      for (const run of runs) {
        const reservation = await run.limiter.reserve("k", LIMIT, { estimate: 3 });
        assert.deepEqual([reservation.allowed, reservation.source], [true, "redis"], run.name);
        handles.push(reservation.handle);
      }
      await server.stop();
      server = undefined;
      for (const run of runs) {
        for (let i = 0; i < 200 && run.connected(); i++) await pause(10);
      }
      const got = [];
      for (const [i, run] of runs.entries()) {
        const result = await settled(run.limiter.settle(handles[i], 5));
        if (!(result instanceof Error)) assert.deepEqual([result.difference, result.action], [2, "charge"], run.name);
        got.push(result);
      }
      return { runs, server: `${HOST}:${port}`, got };
    } finally {
      await server?.stop();
    }
  },
};

async function sequential(runs, act) {
  const got = [];
  for (const run of runs) got.push(await act(run));
  return got;
}

/** An error met in a script as the contract logs it: without "ERR " (twice from a script's own error) and the " script: ..." that the server adds. */
function unwrapped(text) {
  return text.replace(/^(ERR )+/, "").replace(/ script: (?:[0-9a-f]{40}, )?on @user_script:\d+\.$/, "");
}

/** The twin's EVAL text, as the package embeds it (twin/ratelimit.lua without its first line). */
function twinScript() {
  const source = readFileSync(process.env.RATELIMIT_TWIN ?? `${process.env.RATELIMIT_REPO}/twin/ratelimit.lua`, "utf8");
  return source.slice(source.indexOf("\n") + 1);
}

describe("contract/transport.json", () => {
  test("every scenario of the contract is made real here", () => {
    assert.deepEqual(
      contract.scenarios.map((scenario) => scenario.name).filter((name) => !SCENARIOS[name]),
      [],
    );
    assert.deepEqual(Object.keys(contract.policies).sort(), Object.keys(POLICIES).sort());
  });

  for (const scenario of contract.scenarios) {
    test(`${scenario.name}: ${scenario.setup}`, async (t) => {
      const made = await SCENARIOS[scenario.name]?.(scenario, t);
      if (!made) return;
      try {
        for (const { runs, server, got, causes = {}, snapshot } of [made].flat()) {
          assert.equal(runs.length, Object.keys(CLIENTS).length * Object.keys(POLICIES).length);
          for (const [i, run] of runs.entries()) {
            assertOutcome(scenario.outcome[run.policy], got[i], run, scenario);
            const lines = snapshot ? { ...run, log: { lines: snapshot[i] } } : run;
            assertLogs(lines, expectedLines(scenario.logs, run, server, causes));
          }
        }
      } finally {
        for (const { runs } of [made].flat()) for (const run of runs) await run.close();
      }
    });
  }
});

// A user without TIME, until the twin answers NOPERM on a real server: a
// stub answers as the contract says the twin will (on EVALSHA; the module's
// command is unknown there), and the package must take it as an outage.
test("noperm-time on a stub: the twin's NOPERM is an outage, logged once with its text, under every policy", async () => {
  const scenario = contract.scenarios.find((s) => s.name === "noperm-time");
  const text = scenario.logs[0].cause;
  class ReplyError extends Error {}
  const stub = {
    send: async (_key, [command]) => {
      throw new ReplyError(command === "RATELIMIT.CHECK" ? "ERR unknown command 'RATELIMIT.CHECK', with args beginning with: 'k'" : text);
    },
    serverFor: () => "stub:6379",
  };
  for (const [policy, options] of Object.entries(POLICIES)) {
    const log = recorder();
    const run = { name: `noperm-time stub, ${policy}`, policy, log, limiterOptions: options };
    const limiter = new RateLimiter(stub, { logger: log.logger, ...options });
    assertOutcome(scenario.outcome[policy], await check({ limiter }), run, scenario);
    assertOutcome(scenario.outcome[policy], await settled(limiter.check("k2", LIMIT)), run, scenario);
    assertLogs(run, expectedLines(scenario.logs, run, "stub:6379", {}));
  }
});
