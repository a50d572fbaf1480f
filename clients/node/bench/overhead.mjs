// What the package adds per call: N sequential CHECKs through
// RateLimiter.check against the raw command, and the same for a 3-key
// checkAll against the raw MCHECK, on the module and on the twin.
//   make -C clients/node bench   (runs in build/app, after make app)
import { Redis } from "ioredis";
import { RateLimiter } from "redis-ratelimit";
import { recorder, startServer } from "../test/servers.mjs";

const N = Number(process.env.N ?? 5000);
const LIMIT = { windowMs: 60_000, max: 1_000_000 };

async function timed(label, call) {
  for (let i = 0; i < 200; i++) await call(i); // warm up, and learn the backend
  const started = process.hrtime.bigint();
  for (let i = 0; i < N; i++) await call(i);
  const perCallUs = Number(process.hrtime.bigint() - started) / 1000 / N;
  console.log(`${label.padEnd(40)} ${perCallUs.toFixed(1)} µs per call`);
}

for (const module of [true, false]) {
  const server = await startServer({ module });
  const redis = new Redis({ host: "127.0.0.1", port: server.port });
  try {
    const limiter = new RateLimiter(redis, { logger: recorder().logger });
    const backend = module ? "module" : "twin";
    if (module) await timed("raw RATELIMIT.CHECK (module)", (i) => redis.call("RATELIMIT.CHECK", `raw:${i % 100}`, "60000", "1000000"));
    await timed(`RateLimiter.check (${backend})`, (i) => limiter.check(`pkg:${i % 100}`, LIMIT));
    const three = (i) => ["user", "ip", "tenant"].map((name) => `{t${i % 100}}:${name}`);
    if (module) {
      await timed("raw RATELIMIT.MCHECK, 3 keys (module)", (i) =>
        redis.call(
          "RATELIMIT.MCHECK",
          "3",
          ...three(i).map((key) => `raw:${key}`),
          "1",
          "60000",
          "1000000",
          "1",
          "60000",
          "1000000",
          "1",
          "60000",
          "1000000",
        ),
      );
    }
    await timed(`RateLimiter.checkAll, 3 keys (${backend})`, (i) =>
      limiter.checkAll(three(i).map((key) => ({ key: `pkg:${key}`, limits: LIMIT }))),
    );
  } finally {
    redis.disconnect();
    await server.stop();
  }
}
