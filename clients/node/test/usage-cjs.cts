// The CommonJS face of the package under `tsc --strict` (test/types.test.mjs).
import ratelimit = require("redis-ratelimit");

const connection: ratelimit.Connection = { send: async () => [1, 0, 0, 0], serverFor: () => "server" };
const limiter = new ratelimit.RateLimiter(connection, { failOpen: true });
const decided: Promise<ratelimit.Result> = limiter.check("key", { windowMs: 1000, max: 1 });
export = decided;
