// The examples the README shows (examples/*.mjs), word for word, each run
// as a program against real servers and driven over real HTTP: the Express
// quick start, the login lockout an administrator lifts (module and twin),
// Prometheus metrics scraped from /metrics with a limit in shadow mode, the
// token bucket (module and twin), and the token budget in front of a
// streaming OpenAI-style upstream (module and twin).
import assert from "node:assert/strict";
import { readdir, readFile } from "node:fs/promises";
import { after, before, test } from "node:test";
import { Redis } from "ioredis";
import { RateLimiter } from "redis-ratelimit";
import { listen, pseudoRandom, recorder, runApp, startServer } from "./servers.mjs";

const app = new URL("..", import.meta.url).pathname;
const servers = {};
before(async () => {
  [servers.module, servers.twin] = await Promise.all([startServer(), startServer({ module: false })]);
});
after(() => Promise.all(Object.values(servers).map((server) => server.stop())));

const redisUrl = (server) => `redis://127.0.0.1:${server.port}`;

async function request(url, init = {}) {
  const response = await fetch(url, init);
  const body = await response.text();
  return { status: response.status, body, headers: response.headers };
}

test("the README shows every example as it is in examples/", async () => {
  const readme = await readFile(`${app}/node_modules/redis-ratelimit/README.md`, "utf8");
  const files = await readdir(`${app}/examples`);
  assert.deepEqual(files.sort(), ["login-lockout.mjs", "metrics.mjs", "quickstart.mjs", "token-bucket.mjs", "token-budget.mjs"]);
  for (const file of files) {
    const text = await readFile(`${app}/examples/${file}`, "utf8");
    assert.ok(readme.includes(`\`\`\`js\n${text}\`\`\``), `the README shows examples/${file} as it is`);
  }
  const quickStart = await readFile(`${app}/examples/quickstart.mjs`, "utf8");
  const lines = quickStart.split("\n").filter((line) => line.trim() !== "");
  assert.ok(lines.length <= 10, `the quick start is ${lines.length} lines of app code`);
});

test("the Express quick start: 10 requests a minute per user, the 11th refused with Retry-After", async (t) => {
  const { url } = await runApp(t, "examples/quickstart.mjs", { cwd: app, env: { REDIS_URL: redisUrl(servers.module) } });
  const answers = [];
  for (let i = 0; i < 11; i++) answers.push(await request(`${url}/`, { headers: { "x-user-id": "newcomer" } }));
  assert.deepEqual(
    answers.map((answer) => answer.status),
    [...Array(10).fill(200), 429],
  );
  assert.equal(answers[0].body, "hello\n");
  assert.equal(answers[9].headers.get("ratelimit"), '"default";r=0;t=60');
  assert.ok(Number(answers[10].headers.get("retry-after")) >= 59);
  assert.equal((await request(`${url}/`, { headers: { "x-user-id": "someone-else" } })).status, 200);
});

for (const backend of ["module", "twin"]) {
  test(`the login lockout on the ${backend}: locked after 5 failures for an hour, lifted by an administrator with the failures forgotten`, async (t) => {
    const { url } = await runApp(t, "examples/login-lockout.mjs", { cwd: app, env: { REDIS_URL: redisUrl(servers[backend]) } });
    const user = `alice`;
    const login = (password) => request(`${url}/login`, { method: "POST", body: new URLSearchParams({ username: user, password }) });
    const unlock = async () => JSON.parse((await request(`${url}/admin/unlock/${user}`, { method: "POST" })).body);
    assert.equal((await login("correct horse")).status, 200, "a successful login does not count");
    const failures = [];
    for (let i = 0; i < 5; i++) failures.push((await login("wrong")).status);
    assert.deepEqual(failures, Array(5).fill(401));
    const locked = await login("correct horse");
    assert.deepEqual(
      [locked.status, locked.headers.get("retry-after"), locked.headers.get("ratelimit")],
      [429, "3600", '"login";r=0;t=3600'],
    );
    assert.deepEqual(await unlock(), { wasLocked: true });
    assert.equal((await login("correct horse")).status, 200, "let in at once: the failures are forgotten");
    assert.deepEqual(await unlock(), { wasLocked: false });
    const again = [];
    for (let i = 0; i < 6; i++) again.push((await login("wrong")).status);
    assert.deepEqual(again, [...Array(5).fill(401), 429], "5 fresh failures before the next lockout");
  });
}

for (const backend of ["module", "twin"]) {
  test(`the token bucket on the ${backend}: bursts of 16 at 30 a minute, batches weighed, the quota read without spending`, async (t) => {
    const { url } = await runApp(t, "examples/token-bucket.mjs", { cwd: app, env: { REDIS_URL: redisUrl(servers[backend]) } });
    const quota = async (key) => JSON.parse((await request(`${url}/quota`, { headers: { "x-api-key": key } })).body);
    assert.deepEqual(await quota("k1"), { remaining: 16, resetAfterMs: 0 });
    const answers = [];
    for (let i = 0; i < 17; i++) answers.push(await request(`${url}/`, { headers: { "x-api-key": "k1" } }));
    assert.deepEqual(
      answers.map((answer) => answer.status),
      [...Array(16).fill(200), 429],
    );
    for (const [i, answer] of answers.entries()) {
      assert.equal(answer.headers.get("ratelimit-policy"), '"api";q=16;w=32', "16 tokens, 32 s to refill them all");
      if (i < 16) assert.equal(answer.headers.get("ratelimit"), `"api";r=${15 - i};t=${2 * (i + 1)}`);
    }
    assert.deepEqual([answers[16].headers.get("ratelimit"), answers[16].headers.get("retry-after")], ['"api";r=0;t=32', "2"]);
    assert.equal((await quota("k1")).remaining, 0);
    const batch = (items) => request(`${url}/batch`, { method: "POST", headers: { "x-api-key": "k2", "x-items": String(items) } });
    const never = await batch(17);
    assert.deepEqual([never.status, never.headers.get("retry-after"), never.headers.get("ratelimit")], [429, null, '"api";r=16;t=0']);
    const ten = await batch(10);
    assert.deepEqual([ten.status, ten.body, ten.headers.get("ratelimit")], [200, "10 items\n", '"api";r=6;t=20']);
    const left = await quota("k2");
    assert.equal(left.remaining, 6);
    assert.ok(left.resetAfterMs > 19_000 && left.resetAfterMs <= 20_000, `reset ${left.resetAfterMs}`);
  });
}

/** The samples of a Prometheus text exposition, keyed as `name{label="value",...}` with the labels sorted. */
function samples(text) {
  const parsed = new Map();
  for (const line of text.split("\n")) {
    const match = line.match(/^(\w+)(?:\{(.*)\})? (\S+)$/);
    if (!match) continue;
    const labels = [...(match[2] ?? "").matchAll(/(\w+)="([^"]*)"/g)].map(([, name, value]) => `${name}="${value}"`).sort();
    parsed.set(`${match[1]}{${labels.join(",")}}`, Number(match[3]));
  }
  return parsed;
}

test("metrics: decisions by policy and outcome (shadow mode included), errors by cause and Redis round trips, scraped over HTTP", async (t) => {
  const redis = await startServer();
  t.after(() => redis.stop());
  const { url, printed } = await runApp(t, "examples/metrics.mjs", { cwd: app, env: { REDIS_URL: redisUrl(redis) } });
  const statuses = [];
  for (let i = 0; i < 12; i++) statuses.push((await request(`${url}/`, { headers: { "x-user-id": "m" } })).status);
  assert.deepEqual(statuses, [...Array(10).fill(200), 429, 429], "api-next, in shadow mode, refuses nothing");
  let scraped = samples((await request(`${url}/metrics`)).body);
  const decisions = (policy, outcome) => scraped.get(`ratelimit_decisions_total{outcome="${outcome}",policy="${policy}"}`);
  assert.deepEqual(
    [decisions("api", "allowed"), decisions("api", "denied"), decisions("api-next", "allowed"), decisions("api-next", "shadow_denied")],
    [10, 2, 5, 5],
  );
  assert.equal(scraped.get('ratelimit_redis_duration_seconds_count{operation="check"}'), 22);
  for (const cause of ["timeout", "connection", "noperm", "busy", "oom", "loading", "readonly", "cluster", "reply", "other"]) {
    assert.equal(scraped.get(`ratelimit_errors_total{cause="${cause}"}`), 0, cause);
  }
  const shadowLines = printed()
    .split("\n")
    .filter((line) => line.startsWith("redis-ratelimit: shadow mode: api-next would have denied"));
  assert.equal(shadowLines.length, 5);

  await redis.stop();
  assert.equal((await request(`${url}/`, { headers: { "x-user-id": "n" } })).status, 503);
  scraped = samples((await request(`${url}/metrics`)).body);
  assert.equal(decisions("api", "fail_closed"), 1);
  // A refused connection, or, on a loaded machine, a call that times out
  // before the client has seen the refusal: one error, by either cause.
  const errors = (cause) => scraped.get(`ratelimit_errors_total{cause="${cause}"}`);
  assert.equal(errors("connection") + errors("timeout"), 1);
  assert.ok(!/ratelimit_\w+\{[^}]*"m"/.test((await request(`${url}/metrics`)).body), "no label holds a key");
});

/**
 * An OpenAI-style streaming upstream: POST /v1/chat/completions answers
 * server-sent events, a few content chunks and a last one carrying
 * usage.total_tokens (random, from 50 to twice max_tokens: some requests
 * cost less than their estimate, some more), then `data: [DONE]`. Keeps
 * every total it answered.
 */
async function fakeUpstream(t, random) {
  const totals = [];
  const asked = [];
  const url = await listen(t, async (req, res) => {
    let body = "";
    for await (const chunk of req) body += chunk;
    const request = JSON.parse(body);
    assert.equal(req.url, "/v1/chat/completions");
    assert.deepEqual([request.stream, request.stream_options], [true, { include_usage: true }]);
    const total = 50 + random(2 * request.max_tokens - 49);
    totals.push(total);
    asked.push(request.max_tokens);
    res.writeHead(200, { "content-type": "text/event-stream" });
    const chunks = 2 + random(4);
    for (let i = 0; i < chunks; i++) {
      // Split across writes, as a network splits them: the proxy reads lines, not writes.
      const event = `data: ${JSON.stringify({ choices: [{ delta: { content: `part ${i} ` } }] })}\n\n`;
      res.write(event.slice(0, 7));
      await new Promise((resolve) => setTimeout(resolve, 2));
      res.write(event.slice(7));
    }
    res.write(
      `data: ${JSON.stringify({ choices: [], usage: { prompt_tokens: 10, completion_tokens: total - 10, total_tokens: total } })}\n\n`,
    );
    res.end("data: [DONE]\n\n");
  });
  return { url, totals, asked };
}

for (const backend of ["module", "twin"]) {
  test(`the token budget on the ${backend}: 10,000 tokens a minute per user, reserved from max_tokens, settled to the upstream's usage.total_tokens`, async (t) => {
    const random = pseudoRandom(backend === "module" ? 27 : 72);
    const upstream = await fakeUpstream(t, random);
    const { url, printed } = await runApp(t, "examples/token-budget.mjs", {
      cwd: app,
      env: { REDIS_URL: redisUrl(servers[backend]), UPSTREAM_URL: upstream.url },
    });
    const redis = new Redis({ host: "127.0.0.1", port: servers[backend].port });
    t.after(() => redis.disconnect());
    const reader = new RateLimiter(redis, { logger: recorder().logger });
    // What the window holds: RATELIMIT.PEEK (or the twin's peek) with a max no key reaches.
    const recorded = async () => 1_000_000_000 - (await reader.peek("tokens:alice", { windowMs: 60_000, max: 1_000_000_000 })).remaining;
    const sum = (totals) => totals.reduce((a, b) => a + b, 0);
    const ask = (maxTokens) =>
      fetch(`${url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", "x-user": "alice" },
        body: JSON.stringify({ model: "m", messages: [{ role: "user", content: "hi" }], max_tokens: maxTokens }),
      });
    let admitted = 0;
    let refusedOnceSpent = 0;
    for (let i = 0; i < 60 && refusedOnceSpent < 5; i++) {
      const before = await recorded();
      const estimate = before >= 10_000 ? 1 + random(50) : 100 + random(2900);
      const response = await ask(estimate);
      const text = await response.text();
      if (response.status === 200) {
        admitted += 1;
        assert.ok(before + estimate <= 10_000, `admitted with ${before} recorded and ${estimate} reserved`);
        assert.ok(text.endsWith("data: [DONE]\n\n"), "the stream is passed through whole");
        assert.match(
          response.headers.get("ratelimit") ?? "",
          new RegExp(`^"tokens";r=${10_000 - before - estimate};t=60$`),
          "the budget after the reservation",
        );
        // The settlement follows the end of the response.
        for (let wait = 0; wait < 200 && (await recorded()) !== sum(upstream.totals); wait++)
          await new Promise((resolve) => setTimeout(resolve, 10));
        assert.equal(await recorded(), sum(upstream.totals), "the window holds exactly the upstream's total_tokens");
      } else {
        assert.equal(response.status, 429);
        assert.ok(before + estimate > 10_000, `refused with ${before} recorded and ${estimate} reserved`);
        if (before >= 10_000) refusedOnceSpent += 1;
      }
    }
    assert.equal(refusedOnceSpent, 5, "once the budget is spent, every request is refused");
    assert.equal(admitted, upstream.totals.length, "refused requests never reach the upstream");
    assert.ok(admitted >= 4, `${admitted} admitted`);
    assert.ok(
      upstream.asked.some((maxTokens, i) => upstream.totals[i] > maxTokens),
      "some cost more than their estimate (charged)",
    );
    assert.ok(
      upstream.asked.some((maxTokens, i) => upstream.totals[i] < maxTokens),
      "some cost less (refunded)",
    );
    assert.ok(!/settling/.test(printed()), printed());
  });
}
