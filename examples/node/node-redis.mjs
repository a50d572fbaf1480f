// README.md's node-redis snippet, run by `make test` (tests/examples.rs):
//   node node-redis.mjs PORT [2|3]   (RESP version; node-redis 6 speaks 3 by default)
import { createClient } from "redis";
import { tenCallsAgainstThree } from "./ten-calls.mjs";

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

await tenCallsAgainstThree(`node-redis RESP${protocol || "default"}`, limit);
await client.close();
