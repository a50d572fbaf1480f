// Redis Cluster (3 masters): every call reaches the key's master in one
// round trip. 400 checks on 100 keys per client, no MOVED in any node's INFO
// errorstats, and exactly 3 of 4 allowed per key; on a cluster where only
// one node loads the module, the twin answers on the others (the token
// bucket too).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import Redis from "ioredis";
import { createCluster } from "redis";
import { RateLimiter, RateLimitInputError, RateLimitReplyError } from "redis-ratelimit";
import { movedCount, recorder, startCluster } from "./servers.mjs";

let cluster;
let mixed;
before(async () => {
  [cluster, mixed] = await Promise.all([startCluster(), startCluster([true, false, false])]);
});
after(() => Promise.all([cluster?.stop(), mixed?.stop()]));

async function fourHundredChecks(cluster, client, name) {
  const limiter = new RateLimiter(client, { logger: recorder().logger });
  const movedBefore = (await Promise.all(cluster.nodes.map((node) => movedCount(node.port)))).reduce((a, b) => a + b);
  let allowed = 0;
  for (let i = 0; i < 100; i++) {
    for (let call = 0; call < 4; call++) {
      if ((await limiter.check(`${name}:${i}`, { windowMs: 60_000, max: 3 })).allowed) allowed += 1;
    }
  }
  const movedAfter = (await Promise.all(cluster.nodes.map((node) => movedCount(node.port)))).reduce((a, b) => a + b);
  return { allowed, moved: movedAfter - movedBefore, limiter };
}

test("ioredis Cluster: 400 calls on 100 keys, 0 MOVED", async () => {
  const client = new Redis.Cluster([{ host: "127.0.0.1", port: cluster.nodes[0].port }]);
  await new Promise((resolve) => client.once("ready", resolve));
  try {
    const { allowed, moved, limiter } = await fourHundredChecks(cluster, client, "ioredis");
    assert.equal(allowed, 300);
    assert.equal(moved, 0);
    assert.equal(limiter.backend, "module");
    assert.equal(limiter.backends.size, 3);
  } finally {
    client.disconnect();
  }
});

test("node-redis cluster: 400 calls on 100 keys, 0 MOVED", async () => {
  const client = await createCluster({ rootNodes: [{ socket: { host: "127.0.0.1", port: cluster.nodes[0].port } }] }).connect();
  try {
    const { allowed, moved, limiter } = await fourHundredChecks(cluster, client, "node-redis");
    assert.equal(allowed, 300);
    assert.equal(moved, 0);
    assert.equal(limiter.backends.size, 3);
  } finally {
    await client.close();
  }
});

const CLUSTER_CLIENTS = [
  [
    "ioredis",
    async (port) => {
      const client = new Redis.Cluster([{ host: "127.0.0.1", port }]);
      await new Promise((resolve) => client.once("ready", resolve));
      return { client, close: () => client.disconnect() };
    },
  ],
  [
    "node-redis",
    async (port) => {
      const client = await createCluster({ rootNodes: [{ socket: { host: "127.0.0.1", port } }] }).connect();
      return { client, close: () => client.close() };
    },
  ],
];

for (const [name, open] of CLUSTER_CLIENTS) {
  test(`${name}: a cluster with the module on one node of three uses the twin on the others, 0 MOVED`, async () => {
    const { client, close } = await open(mixed.nodes[0].port);
    try {
      const { allowed, moved, limiter } = await fourHundredChecks(mixed, client, `mixed-${name}`);
      assert.equal(allowed, 300);
      assert.equal(moved, 0);
      assert.equal(limiter.backend, "mixed");
      const backends = [...limiter.backends.entries()].sort();
      const expected = mixed.nodes.map((node, i) => [`127.0.0.1:${node.port}`, i === 0 ? "module" : "twin"]).sort();
      assert.deepEqual(backends, expected);
      // Several hash-tagged keys per call on every node: the module's MCHECK on one, the twin's mcheck on the others.
      const tenants = Array.from({ length: 30 }, (_, i) => `{mixed-${name}-${i}}`);
      for (const tenant of tenants) {
        const request = [
          { key: `${tenant}:user`, limits: { windowMs: 60_000, max: 1 } },
          { key: `${tenant}:ip`, limits: { windowMs: 60_000, max: 5 } },
        ];
        assert.ok((await limiter.checkAll(request)).allowed, tenant);
        // With each key's own remaining: the PEEKs in the MCHECK's MULTI/EXEC on the key's master (ioredis), after it (node-redis).
        const refused = await limiter.checkAll(request, { perKeyRemaining: true });
        assert.deepEqual([refused.denied, refused.perKeyRemaining], [[{ key: `${tenant}:user`, index: 0 }], [0, 4]], tenant);
      }
    } finally {
      await close();
    }
  });
}

for (const [name, open] of CLUSTER_CLIENTS) {
  test(`${name}: several hash-tagged keys per call reach their master (0 MOVED); keys in different slots are refused, before sending (or by CROSSSLOT over a Connection of one's own)`, async () => {
    const { client, close } = await open(cluster.nodes[0].port);
    try {
      const limiter = new RateLimiter(client, { logger: recorder().logger });
      const movedBefore = (await Promise.all(cluster.nodes.map((node) => movedCount(node.port)))).reduce((a, b) => a + b);
      const request = (tenant, user) => [
        { key: `{tenant:${tenant}}:user:${user}`, limits: { windowMs: 60_000, max: 2 } },
        { key: `{tenant:${tenant}}:ip:10.0.0.1`, limits: { windowMs: 60_000, max: 100 } },
        { key: `{tenant:${tenant}}:all`, limits: { windowMs: 60_000, max: 1000 } },
      ];
      let allowed = 0;
      for (let tenant = 0; tenant < 30; tenant++) {
        for (let call = 0; call < 3; call++) if ((await limiter.checkAll(request(`${name}-${tenant}`, "42"))).allowed) allowed += 1;
        assert.deepEqual(await limiter.undoAll(request(`${name}-${tenant}`, "42")), [1, 1, 1]);
      }
      const movedAfter = (await Promise.all(cluster.nodes.map((node) => movedCount(node.port)))).reduce((a, b) => a + b);
      assert.equal(allowed, 60);
      assert.equal(movedAfter - movedBefore, 0);
      assert.equal(limiter.backends.size, 3, "the tenants spread over every master");
      const spread = [
        { key: "user:42", limits: { windowMs: 60_000, max: 2 } },
        { key: "ip:10.0.0.1", limits: { windowMs: 60_000, max: 2 } },
      ];
      await assert.rejects(
        limiter.checkAll(spread),
        (error) =>
          error instanceof RateLimitInputError &&
          /must share a hash slot on a cluster: 'user:42' is in slot \d+, 'ip:10\.0\.0\.1' in slot \d+/.test(error.message),
      );
      await assert.rejects(limiter.undoAll(["user:42", "ip:10.0.0.1"]), RateLimitInputError);
      // Over a Connection of one's own, which does not say it is a cluster, the server refuses them.
      const node = new Redis({ host: "127.0.0.1", port: cluster.nodes[0].port });
      try {
        const own = new RateLimiter(
          { send: (_key, [command, ...args]) => node.call(command, ...args), serverFor: () => "own" },
          { logger: recorder().logger },
        );
        await assert.rejects(own.checkAll(spread), (error) => error instanceof RateLimitReplyError && /^CROSSSLOT/.test(error.message));
      } finally {
        node.disconnect();
      }
    } finally {
      await close();
    }
  });
}

for (const [name, open] of CLUSTER_CLIENTS) {
  test(`${name}: blocks on hash-tagged keys, on the module's node and the twin's`, async () => {
    const { client, close } = await open(mixed.nodes[0].port);
    try {
      const limiter = new RateLimiter(client, { logger: recorder().logger });
      const tenants = Array.from({ length: 12 }, (_, i) => `{block-${name}-${i}}`);
      for (const tenant of tenants) {
        const request = [
          { key: `${tenant}:user`, limits: { windowMs: 60_000, max: 1 } },
          { key: `${tenant}:ip`, limits: { windowMs: 60_000, max: 5 } },
        ];
        assert.ok((await limiter.checkAll(request, { blockMs: 600_000 })).allowed, tenant);
        const blocked = await limiter.checkAll(request, { blockMs: 600_000 });
        assert.deepEqual(blocked.denied, [{ key: `${tenant}:user`, index: 0 }], tenant);
        assert.ok(blocked.retryAfterMs > 599_000, tenant);
        assert.ok((await limiter.peek(`${tenant}:user`, { windowMs: 1000, max: 100 })).retryAfterMs > 599_000, "held by the block");
        assert.equal(await limiter.unblock(`${tenant}:user`, { reset: true }), true, tenant);
        assert.equal(
          (await limiter.peek(`${tenant}:user`, { windowMs: 60_000, max: 1 })).remaining,
          1,
          `${tenant}: reset forgets the count`,
        );
      }
      assert.equal(limiter.backend, "mixed");
    } finally {
      await close();
    }
  });
}

for (const [name, open] of CLUSTER_CLIENTS) {
  test(`${name}: the token bucket on every master, the module's node and the twin's: 3 calls on a bucket of 2 over 60 keys, 0 MOVED`, async () => {
    const { client, close } = await open(mixed.nodes[0].port);
    try {
      const limiter = new RateLimiter(client, { logger: recorder().logger });
      const movedBefore = (await Promise.all(mixed.nodes.map((node) => movedCount(node.port)))).reduce((a, b) => a + b);
      const bucket = { maxBurst: 1, count: 1, periodMs: 600_000 };
      let allowed = 0;
      for (let i = 0; i < 60; i++) {
        for (let call = 0; call < 3; call++) if ((await limiter.gcra(`gcra-${name}:${i}`, bucket)).allowed) allowed += 1;
      }
      const movedAfter = (await Promise.all(mixed.nodes.map((node) => movedCount(node.port)))).reduce((a, b) => a + b);
      assert.equal(allowed, 120);
      assert.equal(movedAfter - movedBefore, 0);
      assert.equal(limiter.backend, "mixed");
      assert.equal(limiter.backends.size, 3);
    } finally {
      await close();
    }
  });
}
