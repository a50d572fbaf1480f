// Every middleware with real HTTP requests, on the module and on the twin.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { after, before, describe, test } from "node:test";
import { FRAMEWORKS, LIMIT, startApp } from "./app.mjs";
import { startServer } from "./servers.mjs";

const servers = {};
before(async () => {
  [servers.module, servers.twin] = await Promise.all([startServer(), startServer({ module: false })]);
});
after(async () => {
  await Promise.all(Object.values(servers).map((server) => server.stop()));
});

async function get(url, user) {
  const response = await fetch(url, { headers: { "x-user": user } });
  await response.text();
  return response;
}

function fields(response) {
  const header = response.headers.get("ratelimit") ?? "";
  const number = (name) => Number(header.match(new RegExp(`;${name}=(\\d+)`))?.[1]);
  return { r: number("r"), t: number("t") };
}

/** Starts an app in its own process; resolves with its URL and the child (stopped by PID by the caller). */
async function appProcess(framework, redisPort) {
  const child = spawn(process.execPath, [new URL("./app.mjs", import.meta.url).pathname, framework, String(redisPort)], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const [line] = await once(child.stdout, "data");
  return { url: line.toString().trim(), child };
}

for (const backend of ["module", "twin"]) {
  for (const framework of FRAMEWORKS) {
    describe(`${framework} on the ${backend}`, () => {
      let app;
      before(async () => {
        app = await startApp(framework, servers[backend].port);
      });
      after(() => app.close());

      test("30 requests at max 10: 10 × 200 then 20 × 429, with consistent IETF headers", async () => {
        const responses = [];
        for (let i = 0; i < 30; i++) responses.push(await get(`${app.url}/`, `thirty-${framework}`));
        assert.deepEqual(
          responses.map((r) => r.status),
          [...Array(10).fill(200), ...Array(20).fill(429)],
        );
        assert.deepEqual(
          responses.slice(0, 10).map((r) => fields(r).r),
          [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
        );
        for (const response of responses) {
          assert.equal(response.headers.get("ratelimit-policy"), `"default";q=${LIMIT.max};w=${LIMIT.windowMs / 1000}`);
          const { r, t } = fields(response);
          assert.ok(t >= 1 && t <= 60, `t=${t}`);
          if (response.status === 429) {
            assert.equal(r, 0);
            const retryAfter = Number(response.headers.get("retry-after"));
            assert.ok(retryAfter >= 1 && retryAfter <= 60, `Retry-After ${retryAfter}`);
            assert.equal(retryAfter, t);
          } else {
            assert.equal(response.headers.get("retry-after"), null);
          }
        }
        assert.equal(app.limiter.backend, backend);
      });

      test("failed requests are refunded: 5 failures, then 10 requests still pass", async () => {
        const user = `refund-${framework}`;
        for (let i = 0; i < 5; i++) assert.equal((await get(`${app.url}/fail`, user)).status, 500);
        const statuses = [];
        for (let i = 0; i < 11; i++) statuses.push((await get(`${app.url}/`, user)).status);
        assert.deepEqual(statuses, [...Array(10).fill(200), 429]);
      });

      test("50 concurrent requests for one user from two app processes admit exactly the limit", async () => {
        const apps = await Promise.all([appProcess(framework, servers[backend].port), appProcess(framework, servers[backend].port)]);
        try {
          const user = `concurrent-${framework}-${backend}`;
          const responses = await Promise.all(Array.from({ length: 50 }, (_, i) => get(`${apps[i % 2].url}/`, user)));
          const ok = responses.filter((r) => r.status === 200).length;
          assert.equal(ok, LIMIT.max);
          assert.equal(responses.filter((r) => r.status === 429).length, 50 - LIMIT.max);
        } finally {
          for (const { child } of apps) child.kill("SIGKILL");
        }
      });
    });
  }
}
