// README.md's ioredis snippet, run by `make test` (tests/examples.rs):
//   node ioredis.mjs PORT [2|3]   (RESP version; ioredis 6 speaks 3 by default)
import Redis from "ioredis";
import { tenCallsAgainstThree } from "./ten-calls.mjs";

const [port, protocol] = process.argv.slice(2).map(Number);
const redis = new Redis({ host: "127.0.0.1", port, ...(protocol ? { protocol } : {}) });

// README:begin
async function limit(userId) {
  const [allowed, remaining, retryAfterMs] =
    await redis.call("RATELIMIT.CHECK", `api:${userId}`, 60000, 3);
  return { allowed: allowed === 1, remaining, retryAfterMs };
}
// README:end

await tenCallsAgainstThree(`ioredis RESP${protocol || "default"}`, limit);
redis.disconnect();
