// docs/cluster.md's snippets, run by `make test` (tests/cluster.rs) on a
// real cluster: each client reaches the key's master in one round trip.
//   node cluster.mjs SEED_PORT ioredis|node-redis|ioredis-plain
// (ioredis-plain: `cluster.call` as is, which the test shows is redirected)
import calculateSlot from "cluster-key-slot";
import Redis from "ioredis";
import { createCluster } from "redis";

// README:begin ioredis
// ioredis does not know where the key of a module command is, so it sends
// it to any master and follows the MOVED. This sends it to the key's
// master, and falls back to the cluster client if the slot map is stale.
function ownerOf(cluster, key) {
  const [master] = cluster.slots[calculateSlot(key)] ?? [];
  return cluster
    .nodes("master")
    .find((node) => `${node.options.host}:${node.options.port}` === master);
}

async function checkOnCluster(cluster, key, windowMs, max) {
  const command = ["RATELIMIT.CHECK", key, windowMs, max];
  const owner = ownerOf(cluster, key);
  if (!owner) return cluster.call(...command);
  return owner.call(...command).catch((error) => {
    if (!error.message.startsWith("MOVED")) throw error;
    cluster.refreshSlotsCache();
    return cluster.call(...command);
  });
}
// README:end

const [seedPort, client] = [Number(process.argv[2]), process.argv[3]];
const seed = { host: "127.0.0.1", port: seedPort };

async function withIoredis(keys, check) {
  const cluster = new Redis.Cluster([seed]);
  await new Promise((resolve) => cluster.once("ready", resolve));
  const replies = [];
  for (const key of keys) replies.push(await check(cluster, key, 60000, 3));
  cluster.disconnect();
  return replies;
}

const plainCall = (cluster, key, windowMs, max) =>
  cluster.call("RATELIMIT.CHECK", key, windowMs, max);

async function withNodeRedis(keys) {
  const cluster = await createCluster({ rootNodes: [{ socket: seed }] }).connect();
  const replies = [];
  for (const key of keys) {
    // README:begin node-redis
    // node-redis routes by the key it is given: one round trip.
    const reply = await cluster.sendCommand(key, false, ["RATELIMIT.CHECK", key, "60000", "3"]);
    // README:end
    replies.push(reply);
  }
  await cluster.close();
  return replies;
}

// 100 keys over every slot range, 4 calls each against a limit of 3.
const keys = [];
for (let i = 0; i < 100; i++) keys.push(...Array(4).fill(`${client}:${process.pid}:${i}`));
const run = {
  ioredis: () => withIoredis(keys, checkOnCluster),
  "ioredis-plain": () => withIoredis(keys, plainCall),
  "node-redis": () => withNodeRedis(keys),
};
const replies = await run[client]();
const allowed = replies.filter((reply) => reply[0] === 1).length;
if (allowed !== 300 || replies.length !== 400) {
  console.error(`${client}: expected 300 of 400 allowed, got ${allowed}`);
  process.exitCode = 1;
} else {
  console.log(`${client}: 300 of 400 allowed, 3 per key`);
}
