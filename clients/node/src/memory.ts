// The in-process limiter used while Redis is unreachable: the module's
// contract (docs/commands.md: CHECK, PEEK, UNDO, CHARGE, their several-key
// forms, BLOCK and UNBLOCK; docs/gcra.md: GCRA) over a Map, exact within one
// process, as the reference model (core/src/reference.rs) states it and
// contract/corpus.jsonl shows it (test/corpus.test.mjs). Pure apart from
// the clock, which is injected. The sliding window counts in doubles, as
// the script twin does, and refuses what the twin refuses: a max or cost
// above 2^53 (the validators), and a check that would leave a key holding
// more than 2^53 units. The token bucket is the core's integer rules
// (gcra.ts), exact within its bounds. Logs and buckets are keys of two
// kinds in one keyspace: a call of one kind on a key of the other raises
// the server's WRONGTYPE.
import {
  decideGcra,
  type GcraReply,
  type GcraRule,
  type GcraSettleOp,
  type GcraSettleVerdict,
  type GcraUnits,
  type GcraVerdict,
  gcraReply,
  gcraSettleReply,
  HOLDS_TOO_MUCH,
  settleGcra,
} from "./gcra.js";
import {
  type CallOptions,
  type ChargeOptions,
  type Decision,
  EXACT,
  type GcraDecision,
  type GcraLimit,
  type GcraOptions,
  type GcraSettlement,
  type GcraSettleOptions,
  gcraDecisionOf,
  gcraSettlementOf,
  type KeyLimits,
  type Limit,
  longestWindow,
  RateLimitInputError,
  RateLimitReplyError,
  type Settlement,
  smallestMax,
  validateChargeOptions,
  validateGcraLimit,
  validateKey,
  validateKeyLimits,
  validateKeys,
  validateLimits,
  validateOptions,
  validateRefundCost,
  validateTokens,
  WRONGTYPE,
} from "./limits.js";

interface Entry {
  at: number;
  cost: number;
}

/** One sliding-window key, as a server holds it. */
interface Key {
  kind: "log";
  /** Oldest first; times never decrease. */
  entries: Entry[];
  /** The longest window any CHECK on this key has named (0 once a refund empties the log). */
  windowMs: number;
  /** The key is blocked while the time is before this (0: no block). */
  blockedUntil: number;
  /** The key exists while the clock is at most this; set by a write as a server sets a key's expiry. */
  expiresAt: number;
}

/** One token bucket key: its last charge (time, period, level in 1 / period tokens), and its expiry. */
interface Bucket {
  kind: "bucket";
  at: number;
  period: number;
  level: number;
  /** The key exists while the clock is at most this: when the bucket is empty again, at the rate of its last charge. */
  expiresAt: number;
}

/** A key of either kind. */
type Held = Key | Bucket;

/** What the fallback holds for a token bucket key (MemoryLimiter.gcraState). Times are the clock's. */
export interface MemoryBucketState {
  /** When it was last charged. */
  at: number;
  /** The period of that charge, in ms. */
  periodMs: number;
  /** The tokens it held after that charge, in 1 / periodMs tokens. */
  level: number;
  /** The last time at which the key still exists (when its bucket is empty again). */
  expiresAt: number;
}

function wrongType(): RateLimitReplyError {
  return new RateLimitReplyError(WRONGTYPE);
}

/** What the fallback holds for a key (MemoryLimiter.state). Times are the clock's (Unix ms for Date.now). */
export interface MemoryKeyState {
  /** The log's entries, oldest first, as stored: each request's (or precision cell's) time and cost. */
  entries: { at: number; cost: number }[];
  /** The longest window the log keeps (0 while it holds no entry). */
  windowMs: number;
  /** When the key's block ends (0: none). */
  blockedUntil: number;
  /** The last time at which the key still exists (as a server's key expiry). */
  expiresAt: number;
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

/** A several-key settlement (MCHARGE): CHARGE's four fields over every key, and the 0-based indexes of the keys now over a limit. */
export interface MultiSettlement {
  settlement: Settlement;
  over: number[];
}

/** One key during a call. */
interface Standing {
  name: string;
  key: Key;
  /** The key existed before the call. */
  existed: boolean;
  /** The key's log, block or window changed: its expiry is set anew. */
  changed: boolean;
  limits: readonly Limit[];
  /** The call's time for this key: the clock, never earlier than its newest entry. */
  now: number;
  used: number[];
  /** Every limit of this key allows the request. */
  fits: boolean;
  /** Blocked at the call's time, before it. */
  blocked: boolean;
}

/** Keys are swept for expiry once per this many calls, so idle keys do not pile up. */
const SWEEP_EVERY = 1024;

/** The most keys held by default; past it the least recently used key is dropped. */
export const DEFAULT_MAX_KEYS = 10_000;

/**
 * The keys and the contract's rules, without argument checks: the
 * RateLimiter's fallback (whose limits are reduced by its share, so a
 * request may cost more than a reduced max: it is then refused) and the
 * engine behind MemoryLimiter.
 */
export class Keyspace {
  /** In order of use, least recent first (a key is moved to the end when used). */
  private readonly keys = new Map<string, Held>();
  private calls = 0;

  constructor(
    private readonly clock: () => number,
    private readonly maxKeys: number,
  ) {
    if (!Number.isSafeInteger(maxKeys) || maxKeys < 1) throw new RateLimitInputError(`maxKeys must be a positive integer, got ${maxKeys}`);
  }

  get size(): number {
    return this.keys.size;
  }

  /**
   * The clock for one call (read once, before its arguments are checked,
   * as a server reads it for every command). A key past its expiry is
   * dropped when a call names it (as a server expires a key on access), and
   * idle keys are swept now and then so they do not pile up.
   */
  tick(): number {
    const now = this.clock();
    this.calls += 1;
    if (this.calls % SWEEP_EVERY === 0) this.sweep(now);
    return now;
  }

  private sweep(at: number): void {
    for (const [name, key] of this.keys) if (at > key.expiresAt) this.keys.delete(name);
  }

  /** The key if it exists at `clock` (an expired one is dropped). */
  private live(name: string, clock: number): Held | undefined {
    const key = this.keys.get(name);
    if (key && clock > key.expiresAt) {
      this.keys.delete(name);
      return undefined;
    }
    return key;
  }

  /** The sliding-window key if it exists at `clock`; WRONGTYPE for a bucket. */
  private log(name: string, clock: number): Key | undefined {
    const key = this.live(name, clock);
    if (key?.kind === "bucket") throw wrongType();
    return key;
  }

  /** Keeps the key as the most recently used if it holds anything (a bucket, an entry or a block), else forgets it. */
  private keep(name: string, key: Held): void {
    this.keys.delete(name);
    if (key.kind === "bucket" || key.entries.length > 0 || key.blockedUntil !== 0) this.keys.set(name, key);
  }

  private dropLeastRecentlyUsed(): void {
    for (const name of this.keys.keys()) {
      if (this.keys.size <= this.maxKeys) return;
      this.keys.delete(name);
    }
  }

  /** A sliding-window key's state; WRONGTYPE for a bucket. */
  state(name: string): MemoryKeyState | undefined {
    const key = this.keys.get(name);
    if (!key || this.clock() > key.expiresAt) return undefined;
    if (key.kind === "bucket") throw wrongType();
    return {
      entries: key.entries.map(({ at, cost }) => ({ at, cost })),
      windowMs: key.windowMs,
      blockedUntil: key.blockedUntil,
      expiresAt: key.expiresAt,
    };
  }

  /**
   * CHECK (record) or PEEK over one key or several (MCHECK, MPEEK): every
   * key decided as CHECK on it alone would decide it; allowed iff every key
   * allows, and then recorded in every key; denied, nothing is recorded,
   * each key registers the call's longest window, and with blockMs each key
   * whose own limits denied (and that was not blocked) is blocked.
   */
  decide(keys: readonly KeyedLimits[], options: CallOptions, record: boolean, clock = this.tick()): MultiDecision {
    const cost = options.cost ?? 1;
    // Every key's kind is checked before any is changed.
    const found = keys.map(({ key: name }) => this.log(name, clock));
    const standings = keys.map(({ key: name, limits }, i) => standing(name, found[i], limits, cost, clock));
    const allowed = standings.every((state) => state.fits && !state.blocked);
    if (record && allowed) holdsTooMuch(standings, cost, keys.length > 1);
    const answers = standings.map((state) => {
      if (!record) return answer(state, cost);
      if (allowed) return recordIn(state, cost, options.precision ?? 1);
      register(state);
      if (options.blockMs !== undefined && !state.fits && !state.blocked) setBlock(state, state.now + options.blockMs);
      return answer(state, cost);
    });
    for (const state of standings) {
      if (state.changed) state.key.expiresAt = ownExpiry(state.key);
      if (state.existed || state.changed) this.keep(state.name, state.key);
    }
    this.dropLeastRecentlyUsed();
    return {
      decision: {
        allowed,
        remaining: Math.min(...answers.map((a) => a.remaining)),
        retryAfterMs: allowed ? 0 : Math.max(...answers.map((a) => a.retryAfterMs)),
        resetAfterMs: Math.max(...answers.map((a) => a.resetAfterMs)),
      },
      denied: standings.flatMap((state, i) => (state.fits && !state.blocked ? [] : [i])),
    };
  }

  /**
   * CHARGE over one key or several (MCHARGE): records `cost` in every key
   * whatever its limits or a block say (a block in force stays, one that
   * ended goes; none starts), then measures each key against its limits.
   * Every key's kind, then every key's bound (more than 2^53 units kept,
   * the script twin's refusal), is checked before any key is changed.
   */
  charge(keys: readonly KeyedLimits[], options: ChargeOptions, clock = this.tick()): MultiSettlement {
    const cost = options.cost ?? 1;
    const found = keys.map(({ key: name }) => this.log(name, clock));
    const standings = keys.map(({ key: name, limits }, i) => standing(name, found[i], limits, cost, clock));
    holdsTooMuch(standings, cost, keys.length > 1);
    const each = standings.map((state) => chargeIn(state, cost, options.precision ?? 1));
    for (const state of standings) {
      state.key.expiresAt = ownExpiry(state.key);
      this.keep(state.name, state.key);
    }
    this.dropLeastRecentlyUsed();
    return {
      settlement: {
        over: Math.max(...each.map((s) => s.over)),
        remaining: Math.min(...each.map((s) => s.remaining)),
        retryAfterMs: Math.max(...each.map((s) => s.retryAfterMs)),
        resetAfterMs: Math.max(...each.map((s) => s.resetAfterMs)),
      },
      over: each.flatMap((s, i) => (s.over > 0 ? [i] : [])),
    };
  }

  /**
   * UNDO: removes the `units` newest units; returns how many were removed.
   * A block stays; the key keeps its expiry, or, emptied while blocked,
   * expires with its block; emptied and not blocked, it goes.
   */
  undo(name: string, units: number, clock = this.tick()): number {
    const key = this.log(name, clock);
    if (!key) return 0;
    const removed = refund(key, units);
    const kept = key.entries.length > 0 || timeOf(key, clock) < key.blockedUntil;
    if (key.entries.length === 0 && kept && removed > 0) key.expiresAt = key.blockedUntil;
    if (kept) this.keep(name, key);
    else this.keys.delete(name);
    return removed;
  }

  /** MUNDO: undo on each key at one time, every key's kind checked before any is refunded. */
  undoAll(names: readonly string[], units: number, clock = this.tick()): number[] {
    for (const name of names) this.log(name, clock);
    return names.map((name) => this.undo(name, units, clock));
  }

  /** UNBLOCK: lifts a block in force, keeping the history; true if it lifted one. A key with nothing live left goes. */
  unblock(name: string, clock = this.tick()): boolean {
    const key = this.log(name, clock);
    if (!key) return false;
    const now = timeOf(key, clock);
    this.keep(name, key);
    if (now >= key.blockedUntil) return false;
    key.blockedUntil = 0;
    const expiresAt = ownExpiry(key);
    if (key.entries.length > 0 && expiresAt > now) key.expiresAt = expiresAt;
    else this.keys.delete(name);
    return true;
  }

  delete(name: string): boolean {
    return this.keys.delete(name);
  }

  /**
   * GCRA: a request of `tokens` (0 asks) under `rule`, charged if it fits:
   * the bucket is stored and expires when it is empty again. A limited
   * request, and one of 0 tokens, change nothing. WRONGTYPE on a
   * sliding-window key.
   */
  gcra(name: string, rule: GcraRule, tokens: number, clock = this.tick()): GcraVerdict {
    const held = this.live(name, clock);
    if (held && held.kind !== "bucket") throw wrongType();
    const verdict = decideGcra(held, clock, rule, tokens);
    if (verdict.charge) {
      const { at, period, level, expiresAt } = verdict.charge;
      this.keep(name, { kind: "bucket", at, period, level, expiresAt });
    } else if (held) {
      this.keep(name, held);
    }
    this.dropLeastRecentlyUsed();
    return verdict;
  }

  /**
   * GCRA's settlements: CHARGE (`op` "charge") records `tokens` whatever
   * the bucket holds, never limited; REFUND takes them back, deleting a
   * bucket left empty. RateLimitInputError (nothing charged) for a charge
   * that would take the bucket past 9e15 token-milliseconds; WRONGTYPE on
   * a sliding-window key.
   */
  gcraSettle(name: string, rule: GcraRule, tokens: number, op: GcraSettleOp, clock = this.tick()): GcraSettleVerdict {
    const held = this.live(name, clock);
    if (held && held.kind !== "bucket") throw wrongType();
    const verdict = settleGcra(held, clock, rule, tokens, op);
    if (!verdict) throw new RateLimitInputError(HOLDS_TOO_MUCH);
    const { write } = verdict;
    if (write === "delete") this.keys.delete(name);
    else if (write) this.keep(name, { kind: "bucket", at: write.at, period: write.period, level: write.level, expiresAt: write.expiresAt });
    else if (held) this.keep(name, held);
    this.dropLeastRecentlyUsed();
    return verdict;
  }

  /** A bucket key's state; WRONGTYPE for a sliding-window key. */
  gcraState(name: string): MemoryBucketState | undefined {
    const key = this.keys.get(name);
    if (!key || this.clock() > key.expiresAt) return undefined;
    if (key.kind !== "bucket") throw wrongType();
    return { at: key.at, periodMs: key.period, level: key.level, expiresAt: key.expiresAt };
  }
}

/** A token bucket limit as the fallback decides it. */
export function gcraRule(limit: GcraLimit): GcraRule {
  return { burst: limit.maxBurst + 1, count: limit.count, period: limit.periodMs };
}

/** Reads one key for a call (a new, empty one if it does not exist). */
function standing(name: string, found: Key | undefined, limits: readonly Limit[], cost: number, clock: number): Standing {
  const key: Key = found ?? { kind: "log", entries: [], windowMs: 0, blockedUntil: 0, expiresAt: 0 };
  const now = timeOf(key, clock);
  const used = limits.map((limit) => costWithin(key.entries, limit.windowMs, now));
  // `cost <= max - used`: no sum above 2^53, where doubles stop being exact. A
  // cost above a reduced fallback limit can never pass.
  const fits = cost <= smallestMax(limits) && limits.every((limit, i) => cost <= limit.max - (used[i] as number));
  return { name, key, existed: found !== undefined, changed: false, limits, now, used, fits, blocked: now < key.blockedUntil };
}

/**
 * The script twin's refusal, before anything is recorded: an allowed check
 * that would leave a key holding more than 2^53 units (what it keeps under
 * its longest window, and this cost), which doubles cannot count exactly.
 */
function holdsTooMuch(standings: readonly Standing[], cost: number, several: boolean): void {
  for (const { name, key, now, limits } of standings) {
    const window = Math.max(key.windowMs, longestWindow(limits));
    if (costWithin(key.entries, window, now) > EXACT - cost) {
      const about = several ? `key '${name}': ` : "";
      throw new RateLimitInputError(
        `${about}this key would hold more than 9007199254740992 units of cost, which cannot be counted exactly in doubles: nothing was recorded (use smaller units)`,
      );
    }
  }
}

/** Time never runs backwards for a key: the clock, or its newest entry's time if later. */
function timeOf(key: Key, clock: number): number {
  const newest = key.entries[key.entries.length - 1];
  return newest && newest.at > clock ? newest.at : clock;
}

/** The expiry a write sets: the log's own (its newest entry's time plus its window) or the block's end, whichever is later. */
function ownExpiry(key: Key): number {
  const newest = key.entries[key.entries.length - 1];
  return Math.max(newest ? newest.at + key.windowMs : 0, key.blockedUntil);
}

/** A denied CHECK registers its longest window on a log that holds entries. */
function register(state: Standing): void {
  const window = longestWindow(state.limits);
  if (state.key.entries.length > 0 && window > state.key.windowMs) {
    state.key.windowMs = window;
    state.changed = true;
  }
}

function setBlock(state: Standing, until: number): void {
  if (state.key.blockedUntil === until) return;
  state.key.blockedUntil = until;
  state.blocked = true;
  state.changed = true;
}

/**
 * Records an allowed request at the call's time: the window grows, what
 * expired under it goes, and the cost joins the newest entry if it lies in
 * the same precision cell (which takes this time), else is a new entry. A
 * block that ended is cleared. Returns the key's answer after it.
 */
function recordIn(state: Standing, cost: number, precision: number): Decision {
  const { key, now, limits } = state;
  key.windowMs = Math.max(key.windowMs, longestWindow(limits));
  const firstLive = key.entries.findIndex((entry) => entry.at > now - key.windowMs);
  key.entries.splice(0, firstLive === -1 ? key.entries.length : firstLive);
  const newest = key.entries[key.entries.length - 1];
  if (newest && Math.floor(newest.at / precision) === Math.floor(now / precision)) {
    newest.at = now;
    newest.cost += cost;
  } else {
    key.entries.push({ at: now, cost });
  }
  key.blockedUntil = 0;
  state.changed = true;
  // Each limit now holds its cost more: what the prune took lay outside the key's window (so outside every
  // window of the call), and an entry the cost joined lies within p ms of now, so within every window of the call.
  return {
    allowed: true,
    remaining: Math.min(...limits.map((limit, i) => limit.max - (state.used[i] as number) - cost)),
    retryAfterMs: 0,
    resetAfterMs: longestWindow(limits),
  };
}

/**
 * Records a settlement at the call's time, whatever the limits say (as an
 * allowed request is recorded, but a block in force stays), and answers
 * CHARGE's four fields for this key: how far over its limits, the room
 * left, the wait until a request of cost 1 fits again, and the wait until
 * the call's longest window is empty (its whole length: the charge is the
 * newest entry).
 */
function chargeIn(state: Standing, cost: number, precision: number): Settlement {
  const { key, now, limits } = state;
  key.windowMs = Math.max(key.windowMs, longestWindow(limits));
  const firstLive = key.entries.findIndex((entry) => entry.at > now - key.windowMs);
  key.entries.splice(0, firstLive === -1 ? key.entries.length : firstLive);
  const newest = key.entries[key.entries.length - 1];
  if (newest && Math.floor(newest.at / precision) === Math.floor(now / precision)) {
    newest.at = now;
    newest.cost += cost;
  } else {
    key.entries.push({ at: now, cost });
  }
  if (key.blockedUntil <= now) key.blockedUntil = 0;
  state.changed = true;
  // As in recordIn, each limit now holds its cost more; no sum passes 2^53 (holdsTooMuch).
  const after = limits.map((_, i) => (state.used[i] as number) + cost);
  return {
    over: Math.max(0, ...limits.map((limit, i) => (after[i] as number) - limit.max)),
    remaining: Math.min(...limits.map((limit, i) => Math.max(0, limit.max - (after[i] as number)))),
    retryAfterMs: Math.max(...limits.map((limit) => waitFor(key.entries, limit, 1, now))),
    resetAfterMs: longestWindow(limits),
  };
}

/** One key's four fields as it stands; a blocked key answers the rest of its block where that is longer. */
function answer(state: Standing, cost: number): Decision {
  const { key, limits, now, used, fits } = state;
  const callWindow = longestWindow(limits);
  const wait = fits
    ? 0
    : cost > smallestMax(limits)
      ? callWindow
      : Math.max(...limits.map((limit) => waitFor(key.entries, limit, cost, now)));
  const reset = resetAfter(key.entries, callWindow, now);
  if (now < key.blockedUntil) {
    const rest = key.blockedUntil - now;
    return { allowed: false, remaining: 0, retryAfterMs: Math.max(rest, wait), resetAfterMs: Math.max(rest, reset) };
  }
  const remaining = Math.min(...limits.map((limit, i) => Math.max(0, limit.max - (used[i] as number))));
  return { allowed: fits, remaining, retryAfterMs: wait, resetAfterMs: reset };
}

/**
 * Removes `units` from the newest entries back. An emptied log keeps no
 * window. What is left of the newest entry joins the one before when they
 * share a millisecond (only a cost sum too large for one entry parts them).
 */
function refund(key: Key, units: number): number {
  let removed = 0;
  while (removed < units && key.entries.length > 0) {
    const newest = key.entries[key.entries.length - 1] as Entry;
    // `removed + cost` is at most what the key holds (2^53); `units` may be up to 2^63.
    const take = removed + newest.cost <= units ? newest.cost : units - removed;
    newest.cost -= take;
    removed += take;
    if (newest.cost === 0) key.entries.pop();
  }
  const [previous, newest] = key.entries.slice(-2);
  if (previous && newest && previous.at === newest.at) {
    key.entries.pop();
    previous.cost += newest.cost;
  }
  if (key.entries.length === 0) key.windowMs = 0;
  return removed;
}

/** The cost of the entries in `(now - windowMs, now]` (every entry is at most `now`). */
function costWithin(entries: readonly Entry[], windowMs: number, now: number): number {
  let total = 0;
  for (let i = entries.length - 1; i >= 0 && (entries[i] as Entry).at > now - windowMs; i--) {
    total += (entries[i] as Entry).cost;
  }
  return total;
}

/** The wait until enough of the oldest entries in the limit's window leave it for `cost` to fit (cost at most max). */
function waitFor(entries: readonly Entry[], limit: Limit, cost: number, now: number): number {
  // used + cost - max, without a sum above 2^53.
  let excess = costWithin(entries, limit.windowMs, now) - (limit.max - cost);
  if (excess <= 0) return 0;
  for (const entry of entries) {
    if (entry.at <= now - limit.windowMs) continue;
    excess -= entry.cost;
    if (excess <= 0) return entry.at + limit.windowMs - now;
  }
  return limit.windowMs;
}

/** The wait until the call's longest window holds nothing of this key. */
function resetAfter(entries: readonly Entry[], callWindow: number, now: number): number {
  const newest = entries[entries.length - 1];
  return newest && newest.at > now - callWindow ? newest.at + callWindow - now : 0;
}

/**
 * The fallback's engine on its own, as the module's contract with the
 * script twin's bounds: every call's arguments are checked as RateLimiter
 * checks them (RateLimitInputError), and a check that would leave a key
 * holding more than 2^53 units is refused, recording nothing.
 */
export class MemoryLimiter {
  private readonly keys: Keyspace;

  /**
   * `now` is the clock (Unix ms by default). `maxKeys` bounds the memory
   * held however many keys an outage brings: past it the least recently
   * used key is dropped, forgetting what it counted (and its block).
   */
  constructor(now: () => number = Date.now, maxKeys: number = DEFAULT_MAX_KEYS) {
    this.keys = new Keyspace(now, maxKeys);
  }

  /** Number of keys held (for tests and metrics; expired ones until they are swept). */
  get size(): number {
    return this.keys.size;
  }

  check(key: string, limits: Limit | readonly Limit[], options: CallOptions = {}): Decision {
    const clock = this.keys.tick();
    return this.keys.decide([oneKey(key, limits, options)], options, true, clock).decision;
  }

  peek(key: string, limits: Limit | readonly Limit[], options: CallOptions = {}): Decision {
    const clock = this.keys.tick();
    return this.keys.decide([oneKey(key, limits, options)], options, false, clock).decision;
  }

  /** All or nothing over several keys (1 to 16, each at most once), as MCHECK. */
  checkAll(keys: readonly KeyLimits[], options: CallOptions = {}): MultiDecision {
    const clock = this.keys.tick();
    return this.keys.decide(severalKeys(keys, options), options, true, clock);
  }

  /** As MPEEK: what checkAll would answer, recording nothing. */
  peekAll(keys: readonly KeyLimits[], options: CallOptions = {}): MultiDecision {
    const clock = this.keys.tick();
    return this.keys.decide(severalKeys(keys, options), options, false, clock);
  }

  /**
   * As CHARGE: records a settlement of `cost` units (default 1; may be above
   * any max, up to 2^53) whatever the limits say, never denied, and answers
   * how the key stands against them: { over, remaining, retryAfterMs,
   * resetAfterMs }. A block in force stays; none is started.
   */
  charge(key: string, limits: Limit | readonly Limit[], options: ChargeOptions = {}): Settlement {
    const clock = this.keys.tick();
    const list = validateLimits(limits);
    validateChargeOptions(list, options);
    return this.keys.charge([{ key: validateKey(key), limits: list }], options, clock).settlement;
  }

  /** As MCHARGE: charge on every key (1 to 16, each at most once) with its own limits; `over` lists the 0-based indexes of the keys now over. */
  chargeAll(keys: readonly KeyLimits[], options: ChargeOptions = {}): MultiSettlement {
    const clock = this.keys.tick();
    const { keys: names, limits } = validateKeyLimits(keys);
    validateChargeOptions(limits.flat(), options);
    return this.keys.charge(
      names.map((key, i) => ({ key, limits: limits[i] as readonly Limit[] })),
      options,
      clock,
    );
  }

  /** Removes the `cost` newest units (default 1); returns how many were removed. A block stays. */
  undo(key: string, cost?: number): number {
    const clock = this.keys.tick();
    return this.keys.undo(validateKey(key), validateRefundCost(cost), clock);
  }

  /** As MUNDO: undo on each key (1 to 16, each at most once), at one time; the units removed per key. */
  undoAll(keys: readonly string[], cost?: number): number[] {
    const clock = this.keys.tick();
    const names = validateKeys(keys);
    const units = validateRefundCost(cost);
    return this.keys.undoAll(names, units, clock);
  }

  /** Lifts the key's block, keeping its history; true if it was blocked. */
  unblock(key: string): boolean {
    const clock = this.keys.tick();
    return this.keys.unblock(validateKey(key), clock);
  }

  /** Forgets the key: its log and its block, or its bucket. */
  delete(key: string): boolean {
    return this.keys.delete(validateKey(key));
  }

  /**
   * As RATELIMIT.GCRA: a request of `tokens` (default 1; 0 asks without
   * charging) against a token bucket, charged if it fits. More tokens than
   * the bucket holds never fit: `retryAfterMs` -1.
   */
  gcra(key: string, limit: GcraLimit, options: GcraOptions = {}): GcraDecision {
    return gcraDecisionOf(this.gcraReply(key, limit, { ...options, ms: true }));
  }

  /**
   * RATELIMIT.GCRA's own reply for the same request, the five integers
   * [limited, maxBurst + 1, remaining, retry_after (-1 if allowed or
   * never), reset_after]: waits in redis-cell's whole seconds as the
   * module answers without MS, or in milliseconds rounded up with `ms:
   * true` (what gcra() gives). With `charge: true` or `refund: true`, the
   * settlement's reply instead: [over, maxBurst + 1, remaining,
   * retry_after (-1 if a token fits now), reset_after]. For tests and
   * diagnostics.
   */
  gcraReply(key: string, limit: GcraLimit, options: GcraOptions & { ms?: boolean; charge?: boolean; refund?: boolean } = {}): GcraReply {
    const clock = this.keys.tick();
    const name = validateKey(key);
    if (options.charge && options.refund)
      throw new RateLimitInputError("charge and refund cannot both be given: a call charges or refunds");
    const rule = gcraRule(validateGcraLimit(limit));
    const tokens = validateTokens(options.tokens);
    const units: GcraUnits = options.ms ? "ms" : "seconds";
    const op = options.charge ? "charge" : options.refund ? "refund" : undefined;
    if (op) return gcraSettleReply(this.keys.gcraSettle(name, rule, tokens, op, clock), units);
    return gcraReply(this.keys.gcra(name, rule, tokens, clock), units);
  }

  /**
   * As RATELIMIT.GCRA ... CHARGE: records `tokens` (default 1; 0 records
   * nothing) in the bucket whatever it holds, never limited (past full it
   * is a debt that later requests wait out), and answers how the bucket
   * stands after it. RateLimitInputError if the bucket would hold more
   * than 9e15 token-milliseconds (nothing charged).
   */
  gcraCharge(key: string, limit: GcraLimit, options: GcraSettleOptions = {}): GcraSettlement {
    return gcraSettlementOf(this.gcraReply(key, limit, { ...options, ms: true, charge: true }));
  }

  /**
   * As RATELIMIT.GCRA ... REFUND: takes `tokens` (default 1) back from
   * what the bucket holds now (to nothing at least; an empty bucket's key
   * goes), and answers how it stands after.
   */
  gcraRefund(key: string, limit: GcraLimit, options: GcraSettleOptions = {}): GcraSettlement {
    return gcraSettlementOf(this.gcraReply(key, limit, { ...options, ms: true, refund: true }));
  }

  /** What is held for a sliding-window key now (undefined when nothing is: never seen, forgotten, or expired); WRONGTYPE (RateLimitReplyError) for a bucket. For tests and diagnostics. */
  state(key: string): MemoryKeyState | undefined {
    return this.keys.state(validateKey(key));
  }

  /** What is held for a token bucket key now (undefined when nothing is); WRONGTYPE (RateLimitReplyError) for a sliding-window key. For tests and diagnostics. */
  gcraState(key: string): MemoryBucketState | undefined {
    return this.keys.gcraState(validateKey(key));
  }
}

function oneKey(key: string, limits: Limit | readonly Limit[], options: CallOptions): KeyedLimits {
  const list = validateLimits(limits);
  validateOptions(list, options);
  return { key: validateKey(key), limits: list };
}

function severalKeys(entries: readonly KeyLimits[], options: CallOptions): KeyedLimits[] {
  const { keys, limits } = validateKeyLimits(entries);
  validateOptions(limits.flat(), options);
  return keys.map((key, i) => ({ key, limits: limits[i] as readonly Limit[] }));
}
