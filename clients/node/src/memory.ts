// The in-process limiter used while Redis is unreachable: the module's
// contract (README "Commands", decisions of this round) over a Map, exact
// within one process. Pure apart from the clock, which is injected.
import { type CallOptions, type Decision, type Limit, longestWindow, smallestMax } from "./limits.js";

interface Entry {
  at: number;
  cost: number;
}

interface Log {
  /** The longest window any CHECK on this key has named. */
  windowMs: number;
  /** Oldest first. */
  entries: Entry[];
}

/** Keys are swept for expiry once per this many calls, so idle keys do not pile up. */
const SWEEP_EVERY = 1024;

export class MemoryLimiter {
  private readonly logs = new Map<string, Log>();
  private calls = 0;

  constructor(private readonly now: () => number = Date.now) {}

  /** Number of keys held (for tests and metrics). */
  get size(): number {
    return this.logs.size;
  }

  check(key: string, limits: readonly Limit[], options: CallOptions = {}): Decision {
    return this.decide(key, limits, options, true);
  }

  peek(key: string, limits: readonly Limit[], options: CallOptions = {}): Decision {
    return this.decide(key, limits, options, false);
  }

  /** Removes the `cost` newest units; returns how many were removed. */
  undo(key: string, cost = 1): number {
    const log = this.liveLog(key, this.now());
    if (!log) return 0;
    let removed = 0;
    while (removed < cost && log.entries.length > 0) {
      const newest = log.entries[log.entries.length - 1] as Entry;
      const take = Math.min(newest.cost, cost - removed);
      newest.cost -= take;
      removed += take;
      if (newest.cost === 0) log.entries.pop();
    }
    if (log.entries.length === 0) this.logs.delete(key);
    return removed;
  }

  delete(key: string): boolean {
    return this.logs.delete(key);
  }

  private decide(key: string, limits: readonly Limit[], options: CallOptions, record: boolean): Decision {
    this.sweepNowAndThen();
    const cost = options.cost ?? 1;
    let now = this.now();
    let log = this.liveLog(key, now);
    const newest = log?.entries[log.entries.length - 1];
    // Time never runs backwards for a key.
    if (newest && newest.at > now) now = newest.at;
    const callWindow = longestWindow(limits);
    if (record) {
      log ??= { windowMs: callWindow, entries: [] };
      log.windowMs = Math.max(log.windowMs, callWindow);
      prune(log, now);
      this.logs.set(key, log);
    }
    const entries = log?.entries ?? [];
    if (cost > smallestMax(limits)) {
      // Only reachable with a reduced fallback share: such a request can never pass here.
      return { allowed: false, remaining: 0, retryAfterMs: callWindow, resetAfterMs: resetAfter(entries, callWindow, now) };
    }
    const used = limits.map((limit) => costWithin(entries, limit.windowMs, now));
    const allowed = limits.every((limit, i) => (used[i] as number) + cost <= limit.max);
    if (allowed && record) append(entries, now, cost, options.precision ?? 1);
    const charged = allowed && record ? cost : 0;
    const remaining = Math.max(0, Math.min(...limits.map((limit, i) => limit.max - (used[i] as number) - charged)));
    const retryAfterMs = allowed ? 0 : Math.max(...limits.map((limit) => waitFor(entries, limit, cost, now)));
    if (log && log.entries.length === 0) this.logs.delete(key);
    return { allowed, remaining, retryAfterMs, resetAfterMs: resetAfter(entries, callWindow, now) };
  }

  /** The key's log, or undefined (and forgotten) once its newest entry expired. */
  private liveLog(key: string, now: number): Log | undefined {
    const log = this.logs.get(key);
    if (log && expired(log, now)) {
      this.logs.delete(key);
      return undefined;
    }
    return log;
  }

  private sweepNowAndThen(): void {
    this.calls += 1;
    if (this.calls % SWEEP_EVERY !== 0) return;
    const now = this.now();
    for (const [key, log] of this.logs) if (expired(log, now)) this.logs.delete(key);
  }
}

function expired(log: Log, now: number): boolean {
  const newest = log.entries[log.entries.length - 1];
  return !newest || newest.at + log.windowMs <= now;
}

function prune(log: Log, now: number): void {
  const firstLive = log.entries.findIndex((entry) => entry.at > now - log.windowMs);
  log.entries.splice(0, firstLive === -1 ? log.entries.length : firstLive);
}

function costWithin(entries: readonly Entry[], windowMs: number, now: number): number {
  let total = 0;
  for (let i = entries.length - 1; i >= 0 && (entries[i] as Entry).at > now - windowMs; i--) {
    total += (entries[i] as Entry).cost;
  }
  return total;
}

/** Joins the newest entry if it lies in the same precision cell, as the module does. */
function append(entries: Entry[], now: number, cost: number, precision: number): void {
  const newest = entries[entries.length - 1];
  if (newest && Math.floor(newest.at / precision) === Math.floor(now / precision)) {
    newest.at = now;
    newest.cost += cost;
  } else {
    entries.push({ at: now, cost });
  }
}

/** The wait until enough of the oldest entries in the window leave it for `cost` to fit. */
function waitFor(entries: readonly Entry[], limit: Limit, cost: number, now: number): number {
  let excess = costWithin(entries, limit.windowMs, now) + cost - limit.max;
  if (excess <= 0) return 0;
  for (const entry of entries) {
    if (entry.at <= now - limit.windowMs) continue;
    excess -= entry.cost;
    if (excess <= 0) return entry.at + limit.windowMs - now;
  }
  return limit.windowMs;
}

function resetAfter(entries: readonly Entry[], callWindow: number, now: number): number {
  const newest = entries[entries.length - 1];
  return newest && newest.at > now - callWindow ? newest.at + callWindow - now : 0;
}
