// docs/clients.md's ioredis snippet, run by `make test` (tests/examples.rs):
//   node ioredis.mjs PORT [2|3]   (RESP version; ioredis 6 speaks 3 by default)
import Redis from "ioredis";
import { allOrNothing, tenCallsAgainstThree } from "./ten-calls.mjs";

const [port, protocol] = process.argv.slice(2).map(Number);
const redis = new Redis({ host: "127.0.0.1", port, ...(protocol ? { protocol } : {}) });

// README:begin
async function limit(userId) {
  const [allowed, remaining, retryAfterMs] =
    await redis.call("RATELIMIT.CHECK", `api:${userId}`, 60000, 3);
  return { allowed: allowed === 1, remaining, retryAfterMs };
}
// README:end

// README:begin
// A request passes only if the user, the IP and the tenant all allow it;
// a denial charges none of them and names the keys that denied.
async function limitAll(tenant, userId, ip) {
  const keys = [`{t:${tenant}}:user:${userId}`, `{t:${tenant}}:ip:${ip}`, `{t:${tenant}}:all`];
  const [allowed, remaining, retryAfterMs, , denied] = await redis.call(
    "RATELIMIT.MCHECK", keys.length, ...keys,
    1, 60000, 2, // each user: 2 a minute
    1, 60000, 3, // each IP: 3 a minute
    1, 60000, 100, // the tenant: 100 a minute
  );
  const names = ["user", "ip", "tenant"];
  return { allowed: allowed === 1, remaining, retryAfterMs, denied: denied.map((i) => names[i - 1]) };
}
// README:end

const name = `ioredis RESP${protocol || "default"}`;
await tenCallsAgainstThree(name, limit);
await allOrNothing(name, limitAll);
redis.disconnect();
