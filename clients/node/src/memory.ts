// The in-process limiter used while Redis is unreachable: the module's
// contract (README "Commands": CHECK, PEEK, UNDO, their several-key forms,
// BLOCK and UNBLOCK) over a Map, exact within one process. Pure apart from
// the clock, which is injected.
import { type CallOptions, type Decision, type Limit, longestWindow, RateLimitInputError, smallestMax } from "./limits.js";

interface Entry {
  at: number;
  cost: number;
}

interface Log {
  /** The longest window any CHECK on this key has named. */
  windowMs: number;
  /** Oldest first. */
  entries: Entry[];
  /** The key is blocked while the time is before this (0: never blocked). */
  blockedUntil: number;
}

/** One key of a call with its limits, already validated. */
export interface KeyedLimits {
  key: string;
  limits: readonly Limit[];
}

/** A several-key answer: the combined decision and the 0-based indexes of the keys that denied. */
export interface MultiDecision {
  decision: Decision;
  denied: number[];
}

/** One key's state during a call, before the keys are combined. */
interface Standing {
  log: Log | undefined;
  entries: Entry[];
  limits: readonly Limit[];
  /** The call's time for this key: the clock, never earlier than its newest entry. */
  now: number;
  used: number[];
  /** Every limit of this key allows the request. */
  fits: boolean;
}

/** Keys are swept for expiry once per this many calls, so idle keys do not pile up. */
const SWEEP_EVERY = 1024;

/** The most keys held by default; past it the least recently used key is dropped. */
export const DEFAULT_MAX_KEYS = 10_000;

export class MemoryLimiter {
  /** In order of use, least recent first (a key is moved to the end when used). */
  private readonly logs = new Map<string, Log>();
  private calls = 0;

  /**
   * `maxKeys` bounds the memory held however many keys an outage brings:
   * past it the least recently used key is dropped, forgetting what it
   * counted (and its block).
   */
  constructor(
    private readonly now: () => number = Date.now,
    private readonly maxKeys: number = DEFAULT_MAX_KEYS,
  ) {
    if (!Number.isSafeInteger(maxKeys) || maxKeys < 1) throw new RateLimitInputError(`maxKeys must be a positive integer, got ${maxKeys}`);
  }

  /** Number of keys held (for tests and metrics). */
  get size(): number {
    return this.logs.size;
  }

  check(key: string, limits: readonly Limit[], options: CallOptions = {}): Decision {
    return this.decide([{ key, limits }], options, true).decision;
  }

  peek(key: string, limits: readonly Limit[], options: CallOptions = {}): Decision {
    return this.decide([{ key, limits }], options, false).decision;
  }

  /** All or nothing over several keys, as MCHECK. */
  checkAll(keys: readonly KeyedLimits[], options: CallOptions = {}): MultiDecision {
    return this.decide(keys, options, true);
  }

  /** As MPEEK: what checkAll would answer, recording nothing. */
  peekAll(keys: readonly KeyedLimits[], options: CallOptions = {}): MultiDecision {
    return this.decide(keys, options, false);
  }

  /** Removes the `cost` newest units; returns how many were removed. A block stays. */
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
    this.forgetIfEmpty(key, log, this.now());
    return removed;
  }

  /** Lifts the key's block, keeping its history; true if it was blocked. */
  unblock(key: string): boolean {
    const clock = this.now();
    const log = this.liveLog(key, clock);
    if (!log || timeOf(log, clock) >= log.blockedUntil) return false;
    log.blockedUntil = 0;
    if (expired(log, timeOf(log, clock))) this.logs.delete(key);
    return true;
  }

  delete(key: string): boolean {
    return this.logs.delete(key);
  }

  private decide(keys: readonly KeyedLimits[], options: CallOptions, record: boolean): MultiDecision {
    this.sweepNowAndThen();
    const cost = options.cost ?? 1;
    const clock = this.now();
    const standings = keys.map(({ key, limits }) => this.standing(key, limits, cost, clock, record));
    const blocked = (state: Standing) => state.now < (state.log?.blockedUntil ?? 0);
    const allowed = standings.every((state) => state.fits && !blocked(state));
    if (record && allowed) {
      for (const state of standings) recordIn(state, cost, options.precision ?? 1);
    }
    if (record && !allowed && options.blockMs !== undefined) {
      // A block starts on each key its own limits denied, unless one already runs there.
      for (const state of standings) if (!state.fits && !blocked(state) && state.log) state.log.blockedUntil = state.now + options.blockMs;
    }
    const charged = record && allowed ? cost : 0;
    const answers = standings.map((state) => answer(state, cost, charged, blocked(state)));
    keys.forEach(({ key }, i) => {
      const state = standings[i] as Standing;
      if (state.log) this.forgetIfEmpty(key, state.log, state.now);
    });
    const denied = standings.flatMap((state, i) => (state.fits && !blocked(state) ? [] : [i]));
    this.dropLeastRecentlyUsed();
    return {
      decision: {
        allowed,
        remaining: Math.min(...answers.map((a) => a.remaining)),
        retryAfterMs: allowed ? 0 : Math.max(...answers.map((a) => a.retryAfterMs)),
        resetAfterMs: Math.max(...answers.map((a) => a.resetAfterMs)),
      },
      denied,
    };
  }

  /** Reads one key for a call; a check (record) registers the call's longest window on it. */
  private standing(key: string, limits: readonly Limit[], cost: number, clock: number, record: boolean): Standing {
    let log = this.liveLog(key, clock);
    const now = log ? timeOf(log, clock) : clock;
    if (record) {
      log ??= { windowMs: 0, entries: [], blockedUntil: 0 };
      log.windowMs = Math.max(log.windowMs, longestWindow(limits));
      prune(log, now);
      this.use(key, log);
    }
    const entries = log?.entries ?? [];
    const used = limits.map((limit) => costWithin(entries, limit.windowMs, now));
    // A cost above a reduced fallback limit can never pass here.
    const fits = cost <= smallestMax(limits) && limits.every((limit, i) => (used[i] as number) + cost <= limit.max);
    return { log, entries, limits, now, used, fits };
  }

  /** Forgets a key with nothing live and no running block. */
  private forgetIfEmpty(key: string, log: Log, now: number): void {
    if (log.entries.length === 0 && log.blockedUntil <= now) this.logs.delete(key);
  }

  /** The key's log, or undefined (and forgotten) once its newest entry and its block expired; a live one counts as used. */
  private liveLog(key: string, now: number): Log | undefined {
    const log = this.logs.get(key);
    if (log && expired(log, now)) {
      this.logs.delete(key);
      return undefined;
    }
    if (log) this.use(key, log);
    return log;
  }

  /** Holds the key's log as the most recently used (a Map keeps its keys in insertion order). */
  private use(key: string, log: Log): void {
    this.logs.delete(key);
    this.logs.set(key, log);
  }

  private dropLeastRecentlyUsed(): void {
    for (const key of this.logs.keys()) {
      if (this.logs.size <= this.maxKeys) return;
      this.logs.delete(key);
    }
  }

  private sweepNowAndThen(): void {
    this.calls += 1;
    if (this.calls % SWEEP_EVERY !== 0) return;
    const now = this.now();
    for (const [key, log] of this.logs) if (expired(log, now)) this.logs.delete(key);
  }
}

/** Time never runs backwards for a key. */
function timeOf(log: Log, clock: number): number {
  const newest = log.entries[log.entries.length - 1];
  return newest && newest.at > clock ? newest.at : clock;
}

/** Records an allowed request; an entry at or after a block's end clears the block. */
function recordIn(state: Standing, cost: number, precision: number): void {
  append(state.entries, state.now, cost, precision);
  if (state.log) state.log.blockedUntil = 0;
}

/** One key's four fields; a blocked key answers the rest of its block where that is longer. */
function answer(state: Standing, cost: number, charged: number, blocked: boolean): Decision {
  const { entries, limits, now, used } = state;
  const callWindow = longestWindow(limits);
  const wait = cost > smallestMax(limits) ? callWindow : Math.max(...limits.map((limit) => waitFor(entries, limit, cost, now)));
  const reset = resetAfter(entries, callWindow, now);
  if (blocked) {
    const rest = (state.log?.blockedUntil ?? 0) - now;
    return { allowed: false, remaining: 0, retryAfterMs: Math.max(rest, wait), resetAfterMs: Math.max(rest, reset) };
  }
  const remaining =
    cost > smallestMax(limits) ? 0 : Math.max(0, Math.min(...limits.map((limit, i) => limit.max - (used[i] as number) - charged)));
  return { allowed: state.fits, remaining, retryAfterMs: state.fits ? 0 : wait, resetAfterMs: reset };
}

function expired(log: Log, now: number): boolean {
  const newest = log.entries[log.entries.length - 1];
  return (!newest || newest.at + log.windowMs <= now) && log.blockedUntil <= now;
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
