// Redis Cluster (3 masters with the module): every call reaches the key's
// master in one round trip. 400 checks on 100 keys per client, no MOVED in
// any node's INFO errorstats, and exactly 3 of 4 allowed per key.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import Redis from "ioredis";
import { createCluster } from "redis";
import { RateLimiter } from "redis-ratelimit";
import { movedCount, recorder, startCluster } from "./servers.mjs";

let cluster;
before(async () => {
  cluster = await startCluster();
});
after(() => cluster?.stop());

async function fourHundredChecks(client, name) {
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
    const { allowed, moved, limiter } = await fourHundredChecks(client, "ioredis");
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
    const { allowed, moved, limiter } = await fourHundredChecks(client, "node-redis");
    assert.equal(allowed, 300);
    assert.equal(moved, 0);
    assert.equal(limiter.backends.size, 3);
  } finally {
    await client.close();
  }
});
