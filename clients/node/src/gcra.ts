// The token bucket (GCRA) as the core decides it (core/src/gcra.rs, docs/gcra.md
// "Exact arithmetic"), for the in-process fallback: a bucket of `burst`
// tokens that drains `count` tokens per `period` ms, kept in units of
// 1 / period of a token so that the drain is `count` units a millisecond,
// an integer. Every number the bounds allow is at most 9e15, below 2^53,
// so a double holds it exactly; the few products that can pass 2^53 are
// only compared against numbers below it (see levelAt), and divisions are
// done on exact multiples. Waits stay exact (units / count ms) until a
// reply rounds them.

/** The latest time a bucket holds: 2^42 - 1 ms, in the year 2109 (the core's LATEST). */
const LATEST = 2 ** 42 - 1;

/** A limit as the fallback decides it: `burst` (max_burst + 1) tokens, `count` per `period` ms. */
export interface GcraRule {
  burst: number;
  count: number;
  period: number;
}

/** What a key stores: the time of its last charge, that charge's period, the tokens it held then in 1 / period tokens (at least 1). */
export interface StoredBucket {
  at: number;
  period: number;
  level: number;
}

/** A wait of exactly `units / count` ms. */
export interface Wait {
  units: number;
  count: number;
}

/** The five fields of RATELIMIT.GCRA's reply, before units. */
export interface GcraVerdict {
  limited: boolean;
  /** max_burst + 1. */
  burst: number;
  /** Whole tokens a request could take now (after this one, if allowed). */
  remaining: number;
  /** The wait until this request fits; undefined if allowed, or if it never fits (more tokens than the bucket). */
  retry: Wait | undefined;
  /** The wait until the bucket is empty (after this request, if allowed). */
  reset: Wait;
  /** What an allowed request of at least one token stores, and when the key then expires. */
  charge: (StoredBucket & { expiresAt: number }) | undefined;
}

/** How a reply gives its waits: redis-cell's seconds (RATELIMIT.GCRA without MS) or milliseconds rounded up (with MS). */
export type GcraUnits = "seconds" | "ms";

/** The module's reply: [limited, max_burst + 1, remaining, retry_after (-1 if allowed or never), reset_after]. */
export type GcraReply = [number, number, number, number, number];

/** a / b rounded down, for integers below 2^53 (b > 0): exact, as a double division need not be. */
function floorDiv(a: number, b: number): number {
  return (a - (a % b)) / b;
}

/** a / b rounded up, for integers below 2^53 (b > 0). */
function ceilDiv(a: number, b: number): number {
  const rest = a % b;
  return (a - rest) / b + (rest > 0 ? 1 : 0);
}

/** Whole milliseconds, rounded down. */
function floorMs(wait: Wait): number {
  return floorDiv(wait.units, wait.count);
}

/** Whole milliseconds, rounded up: the first millisecond at which the wait is over. */
function ceilMs(wait: Wait): number {
  return ceilDiv(wait.units, wait.count);
}

/**
 * A wait as a reply gives it: with MS the milliseconds rounded up; else
 * redis-cell 0.5.0's seconds (the whole seconds, plus one if the rest
 * holds a whole millisecond), which is the whole milliseconds rounded up
 * to seconds.
 */
function inUnits(wait: Wait, units: GcraUnits): number {
  return units === "ms" ? ceilMs(wait) : ceilDiv(floorMs(wait), 1000);
}

/** The module's five integers for a verdict, its waits in `units` (core Decision::reply). */
export function gcraReply(verdict: GcraVerdict, units: GcraUnits): GcraReply {
  return [
    verdict.limited ? 1 : 0,
    verdict.burst,
    verdict.remaining,
    verdict.retry === undefined ? -1 : inUnits(verdict.retry, units),
    inUnits(verdict.reset, units),
  ];
}

/** The clock within the times a bucket holds, never earlier than the key's last charge: a clock stepping back frees nothing. */
function decisionTime(stored: StoredBucket | undefined, clock: number): number {
  const now = Math.min(Math.max(clock, 1), LATEST);
  return stored ? Math.max(now, stored.at) : now;
}

/** The most a bucket holds exactly: 9e15 units (tokens x period in ms). */
export const MAX_UNITS = 9_000_000_000_000_000;

/**
 * What the bucket holds at `now` under `rule`, in 1 / rule.period tokens:
 * what it held after its last charge, even above this rule's bucket (a
 * debt persists: docs/gcra.md), under the same period its units as they
 * are, else its tokens (a partly drained one counted whole, at most the
 * whole tokens of MAX_UNITS under the new period) in the new period's
 * units; less what drained since at the rule's rate.
 */
function levelAt(stored: StoredBucket, now: number, rule: GcraRule): number {
  const held =
    stored.period === rule.period
      ? stored.level
      : Math.min(ceilDiv(stored.level, stored.period), floorDiv(MAX_UNITS, rule.period)) * rule.period;
  // May pass 2^53 (then inexact), but a product above 2^53 rounds to at least 2^53, above any level.
  const drained = (now - stored.at) * rule.count;
  return drained >= held ? 0 : held - drained;
}

/**
 * A request of `tokens` (0 asks without charging) under `rule` against
 * the key's bucket (undefined for a key that does not exist), at `clock`.
 * A bucket holding more than this rule's (a debt, or a larger burst's
 * holding) fits nothing until it has drained under it.
 */
export function decideGcra(stored: StoredBucket | undefined, clock: number, rule: GcraRule, tokens: number): GcraVerdict {
  const now = decisionTime(stored, clock);
  const level = stored ? levelAt(stored, now, rule) : 0;
  // Negative while the bucket holds more than this rule's: both terms at most 9e15, so exact.
  const room = rule.burst * rule.period - level;
  const wait = (units: number): Wait => ({ units, count: rule.count });
  // More tokens than a full bucket never fit.
  const need = tokens <= rule.burst ? tokens * rule.period : undefined;
  if (need !== undefined && need <= room) {
    const after = level + need;
    return {
      limited: false,
      burst: rule.burst,
      remaining: floorDiv(room - need, rule.period),
      retry: undefined,
      reset: wait(after),
      charge: need > 0 ? { at: now, period: rule.period, level: after, expiresAt: now + ceilDiv(after, rule.count) } : undefined,
    };
  }
  return {
    limited: true,
    burst: rule.burst,
    remaining: floorDiv(Math.max(0, room), rule.period),
    // level + need - cap: at most level, so at most 9e15.
    retry: need === undefined ? undefined : wait(need - room),
    reset: wait(level),
    charge: undefined,
  };
}

/** A settlement of a token bucket: CHARGE (recorded whatever the bucket holds) or REFUND. */
export type GcraSettleOp = "charge" | "refund";

/** The five fields of a settlement's reply (RATELIMIT.GCRA ... CHARGE or REFUND), before units. */
export interface GcraSettleVerdict {
  /** Whole tokens above the bucket after it, rounded up (0 when it fits). */
  over: number;
  /** max_burst + 1. */
  burst: number;
  /** Whole tokens a request could take after it (0 when full or over). */
  remaining: number;
  /** The wait until one more token fits; undefined if one fits now. */
  retry: Wait | undefined;
  /** The wait until the bucket is empty. */
  reset: Wait;
  /** What the key becomes: a bucket (with its expiry), deleted ("delete"), or unchanged (undefined). */
  write: (StoredBucket & { expiresAt: number }) | "delete" | undefined;
}

/** Thrown (by the caller's choice of error) when a charge would take a bucket past MAX_UNITS: nothing is charged. */
export const HOLDS_TOO_MUCH =
  "this key would hold more than 9000000000000000 token-milliseconds (its tokens times the period in milliseconds, the most a bucket holds exactly): nothing was charged";

/**
 * CHARGE or REFUND of `tokens` under `rule` (docs/gcra.md, core
 * gcra::charge and gcra::refund): a charge adds them to what the bucket
 * holds now, never refused for the limit (undefined when the bucket would
 * hold more than MAX_UNITS: refused whole); a refund takes them off, to
 * nothing at least, and a bucket left empty is deleted. TOKENS 0, and a
 * refund on no key, write nothing.
 */
export function settleGcra(
  stored: StoredBucket | undefined,
  clock: number,
  rule: GcraRule,
  tokens: number,
  op: GcraSettleOp,
): GcraSettleVerdict | undefined {
  const now = decisionTime(stored, clock);
  const level = stored ? levelAt(stored, now, rule) : 0;
  // Above 2^53 only when far above MAX_UNITS, and then it rounds to at least 2^53.
  const units = tokens * rule.period;
  let after: number;
  let write: GcraSettleVerdict["write"];
  if (op === "charge") {
    if (units > MAX_UNITS - level) return undefined;
    after = level + units;
    if (tokens > 0) write = { at: now, period: rule.period, level: after, expiresAt: now + ceilDiv(after, rule.count) };
  } else {
    after = units >= level ? 0 : level - units;
    if (tokens > 0 && stored) {
      write = after === 0 ? "delete" : { at: now, period: rule.period, level: after, expiresAt: now + ceilDiv(after, rule.count) };
    }
  }
  const cap = rule.burst * rule.period;
  const wait = (value: number): Wait => ({ units: value, count: rule.count });
  // At most 9e15 + 7.776e9: exact.
  const untilOne = after + rule.period - cap;
  return {
    over: after > cap ? ceilDiv(after - cap, rule.period) : 0,
    burst: rule.burst,
    remaining: after < cap ? floorDiv(cap - after, rule.period) : 0,
    retry: untilOne > 0 ? wait(untilOne) : undefined,
    reset: wait(after),
    write,
  };
}

/** A settlement's five integers, its waits in `units`: [over, max_burst + 1, remaining, retry_after (-1 if a token fits now), reset_after]. */
export function gcraSettleReply(verdict: GcraSettleVerdict, units: GcraUnits): GcraReply {
  return [
    verdict.over,
    verdict.burst,
    verdict.remaining,
    verdict.retry === undefined ? -1 : inUnits(verdict.retry, units),
    inUnits(verdict.reset, units),
  ];
}
