// What the limiter and the middleware report to a metrics backend: nothing
// unless the limiter is given one (`metrics`). prometheusMetrics() is the
// one for prom-client; anything with these three methods fits (OpenTelemetry,
// StatsD). No report carries a key, so the series stay as few as the policies.

/** How a request was decided (ratelimit_decisions_total{outcome}). */
export type Outcome = "allowed" | "denied" | "shadow_denied" | "fallback_allowed" | "fallback_denied" | "fail_open" | "fail_closed";

/** What an error met on a Redis call counts as (ratelimit_errors_total{cause}). */
export type ErrorCause = "timeout" | "connection" | "noperm" | "busy" | "oom" | "loading" | "readonly" | "cluster" | "reply" | "other";

/** A Redis round trip, by the operation it carried (ratelimit_redis_duration_seconds{operation}). */
export type MetricOperation = "check" | "peek" | "undo" | "mcheck" | "mpeek" | "mundo" | "unblock" | "gcra" | "charge" | "mcharge";

export interface Metrics {
  /** One request decided by a middleware, under its binding policy's name (the one `RateLimit` names). */
  decision(policy: string, outcome: Outcome): void;
  /** One error met on a Redis call. */
  error(cause: ErrorCause): void;
  /** One Redis round trip, answered or failed. */
  roundTrip(operation: MetricOperation, seconds: number): void;
}

const CAUSES: readonly ErrorCause[] = [
  "timeout",
  "connection",
  "noperm",
  "busy",
  "oom",
  "loading",
  "readonly",
  "cluster",
  "reply",
  "other",
];

/** A round trip takes from a tenth of a millisecond (same host) to the limiter's timeout (250 ms by default). */
const BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1];

/** The parts of prom-client used here (it is an optional peer dependency, loaded on demand). */
interface Labelled {
  labels(...values: string[]): { inc(value?: number): void; observe(value: number): void };
}

interface PromClient {
  Counter: new (configuration: object) => Labelled;
  Histogram: new (configuration: object) => Labelled;
}

/**
 * The package's Prometheus metrics, registered in `registry` (prom-client's
 * `register`, or a `new Registry()`): `new RateLimiter(redis, { metrics:
 * await prometheusMetrics(register) })`. Loads prom-client, which the app
 * installs (`npm install prom-client`).
 */
export async function prometheusMetrics(registry: object): Promise<Metrics> {
  // A name held in a variable: bundlers and the type checker leave the optional dependency alone.
  const name = "prom-client";
  const loaded = (await import(name)) as PromClient & { default?: PromClient };
  const prom = loaded.Counter ? loaded : (loaded.default as PromClient);
  const registers = [registry];
  const decisions = new prom.Counter({
    name: "ratelimit_decisions_total",
    help: "Requests decided by the rate-limit middleware, by binding policy and outcome.",
    labelNames: ["policy", "outcome"],
    registers,
  });
  const errors = new prom.Counter({
    name: "ratelimit_errors_total",
    help: "Errors met on Redis calls by the rate limiter, by cause.",
    labelNames: ["cause"],
    registers,
  });
  const durations = new prom.Histogram({
    name: "ratelimit_redis_duration_seconds",
    help: "Redis round trips of the rate limiter, by operation.",
    labelNames: ["operation"],
    buckets: BUCKETS,
    registers,
  });
  // Every cause shows from the start, so a rate over it starts at 0.
  for (const cause of CAUSES) errors.labels(cause).inc(0);
  return {
    decision: (policy, outcome) => decisions.labels(policy, outcome).inc(),
    error: (cause) => errors.labels(cause).inc(),
    roundTrip: (operation, seconds) => durations.labels(operation).observe(seconds),
  };
}
