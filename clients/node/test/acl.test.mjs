// The README's least-privilege user, as the README writes it: on a server
// with the module and on one without, with ioredis and node-redis, that user
// runs every call the package makes (one key and several, the MULTI/EXEC of
// a reset and of several keys' headers, the token bucket, EVAL after the
// script cache is emptied) and is refused what could replace or remove a script or function.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { after, before, test } from "node:test";
import { Redis } from "ioredis";
import { createClient } from "redis";
import { RateLimiter } from "redis-ratelimit";
import { cli, recorder, startServer } from "./servers.mjs";

const app = new URL("..", import.meta.url).pathname;
const PASSWORD = "s3cret";
const LIMIT = { windowMs: 60_000, max: 5 };
const servers = {};

/** The README's ACL SETUSER lines, as words for redis-cli: for every server, then for one with the module. */
async function recipe() {
  const readme = await readFile(`${app}/node_modules/redis-ratelimit/README.md`, "utf8");
  const lines = readme.split("\n").filter((text) => text.startsWith("ACL SETUSER ratelimiter "));
  assert.equal(lines.length, 2, "the README has two ACL SETUSER ratelimiter lines");
  return lines.map((line) => line.replace("PASSWORD", PASSWORD).split(" "));
}

before(async () => {
  [servers.module, servers.twin] = await Promise.all([startServer(), startServer({ module: false })]);
  const [everywhere, withModule] = await recipe();
  for (const server of Object.values(servers)) assert.equal((await cli(server.port, ...everywhere)).trim(), "OK");
  assert.equal((await cli(servers.module.port, ...withModule)).trim(), "OK");
});
after(() => Promise.all(Object.values(servers).map((server) => server.stop())));

const BUILDS = {
  ioredis: (port) => {
    const client = new Redis({ host: "127.0.0.1", port, username: "ratelimiter", password: PASSWORD });
    client.on("error", () => {});
    return { client, close: () => client.disconnect() };
  },
  "node-redis": async (port) => {
    const client = createClient({ socket: { host: "127.0.0.1", port }, username: "ratelimiter", password: PASSWORD });
    client.on("error", () => {});
    await client.connect();
    return { client, close: () => client.destroy() };
  },
};

for (const backend of ["module", "twin"]) {
  for (const [build, open] of Object.entries(BUILDS)) {
    test(`the README's user, ${build} on the ${backend}: every call the package makes, and none that replaces a script`, async (t) => {
      const port = servers[backend].port;
      const { client, close } = await open(port);
      t.after(close);
      const log = recorder();
      const limiter = new RateLimiter(client, { prefix: "ratelimit:", logger: log.logger });
      const keys = [
        { key: `{u}:${build}:user`, limits: LIMIT },
        { key: `{u}:${build}:ip`, limits: LIMIT },
      ];
      const results = [
        await limiter.check(`${build}:k`, LIMIT, { blockMs: 60_000 }),
        await limiter.peek(`${build}:k`, LIMIT),
        await limiter.checkAll(keys, { perKeyRemaining: true }),
        await limiter.checkAll(keys, { perKeyRemaining: true }),
        await limiter.peekAll(keys),
      ];
      assert.deepEqual(
        results.map((result) => result.source),
        Array(5).fill("redis"),
      );
      assert.deepEqual(results[3].perKeyRemaining, [3, 3]);
      assert.equal(await limiter.undo(`${build}:k`), 1);
      assert.deepEqual(await limiter.undoAll(keys), [1, 1]);
      assert.equal(await limiter.unblock(`${build}:k`, { reset: true }), false);
      assert.equal(await limiter.delete(`{u}:${build}:user`), true);
      const bucket = { maxBurst: 1, count: 1, periodMs: 60_000 };
      assert.deepEqual(
        [await limiter.gcra(`${build}:g`, bucket), await limiter.gcra(`${build}:g`, bucket, { tokens: 0 })].map((r) => [
          r.source,
          r.remaining,
        ]),
        [
          ["redis", 1],
          ["redis", 1],
        ],
      );
      await cli(port, "SCRIPT", "FLUSH");
      assert.equal((await limiter.gcra(`${build}:g2`, bucket)).source, "redis", "gcra by EVAL, after the script cache was emptied");
      await cli(port, "SCRIPT", "FLUSH");
      assert.equal((await limiter.check(`${build}:k`, LIMIT)).source, "redis", "EVAL, after the script cache was emptied");
      assert.deepEqual(
        log.lines.filter((line) => line.level === "error"),
        [],
      );
      assert.equal(limiter.backend, backend);
      const refused = [
        [
          "FUNCTION",
          "LOAD",
          "REPLACE",
          "#!lua name=ratelimit\nredis.register_function('ratelimit_check', function() return {1,999,0,0} end)",
        ],
        ["FUNCTION", "DELETE", "ratelimit"],
        ["FUNCTION", "FLUSH"],
        ["SCRIPT", "FLUSH"],
      ];
      for (const command of refused) {
        const answer = await (client.call ? client.call(...command) : client.sendCommand(command)).then(
          () => "accepted",
          (error) => error.message,
        );
        assert.match(answer, /^NOPERM /, command.slice(0, 2).join(" "));
      }
    });
  }
}
