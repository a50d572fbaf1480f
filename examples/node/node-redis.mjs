// docs/clients.md's node-redis snippet, run by `make test` (tests/examples.rs):
//   node node-redis.mjs PORT [2|3]   (RESP version; node-redis 6 speaks 3 by default)
import { createClient } from "redis";
import { allOrNothing, tenCallsAgainstThree } from "./ten-calls.mjs";

const [port, protocol] = process.argv.slice(2).map(Number);
const client = await createClient({
  socket: { host: "127.0.0.1", port },
  ...(protocol ? { RESP: protocol } : {}),
}).connect();

// README:begin
async function limit(userId) {
  const [allowed, remaining, retryAfterMs] =
    await client.sendCommand(["RATELIMIT.CHECK", `api:${userId}`, "60000", "3"]);
  return { allowed: allowed === 1, remaining, retryAfterMs };
}
// README:end

// README:begin
// A request passes only if the user, the IP and the tenant all allow it;
// a denial charges none of them and names the keys that denied.
async function limitAll(tenant, userId, ip) {
  const keys = [`{t:${tenant}}:user:${userId}`, `{t:${tenant}}:ip:${ip}`, `{t:${tenant}}:all`];
  const [allowed, remaining, retryAfterMs, , denied] = await client.sendCommand([
    "RATELIMIT.MCHECK", String(keys.length), ...keys,
    "1", "60000", "2", // each user: 2 a minute
    "1", "60000", "3", // each IP: 3 a minute
    "1", "60000", "100", // the tenant: 100 a minute
  ]);
  const names = ["user", "ip", "tenant"];
  return { allowed: allowed === 1, remaining, retryAfterMs, denied: denied.map((i) => names[i - 1]) };
}
// README:end

const name = `node-redis RESP${protocol || "default"}`;
await tenCallsAgainstThree(name, limit);
await allOrNothing(name, limitAll);
await client.close();
