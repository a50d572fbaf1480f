// The client: check / peek / undo / charge, on one key or several at once,
// reserve and settle (a cost known after the response, over a sliding
// window or a token bucket), unblock, and gcra (the token bucket, with its
// settlements gcraCharge and gcraRefund), on the module where it is loaded and on the
// script twin where it is not (learned per server from the answer to the
// module's own command), under an explicit failure policy. What it logs and
// how it names an outage's cause are contract/transport.json's.
import { type Connection, connect, messageOf, type RedisClient } from "./adapters.js";
import { type GcraRule, gcraReply, gcraSettleReply } from "./gcra.js";
import {
  type CallOptions,
  type ChargeOptions,
  type Decision,
  digits,
  type GcraDecision,
  type GcraLimit,
  type GcraOptions,
  type GcraSettlement,
  type GcraSettleOptions,
  gcraArgs,
  gcraDecisionOf,
  gcraSettlementOf,
  type KeyLimits,
  type Limit,
  limitArgs,
  multiLimitArgs,
  parseCount,
  parseCounts,
  parseDecision,
  parseGcraReply,
  parseGcraSettlement,
  parseMultiDecision,
  parseMultiSettlement,
  parseSettlement,
  RateLimitInputError,
  RateLimitReplyError,
  type Settlement,
  smallestMax,
  UnexpectedReplyError,
  validateActual,
  validateChargeOptions,
  validateEstimate,
  validateGcraActual,
  validateGcraEstimate,
  validateGcraLimit,
  validateKey,
  validateKeyLimits,
  validateKeys,
  validateLimits,
  validateOptions,
  validateRefundCost,
  validateTokens,
} from "./limits.js";
import { DEFAULT_MAX_KEYS, gcraRule, type KeyedLimits, Keyspace, type MultiDecision, type MultiSettlement } from "./memory.js";
import type { ErrorCause, MetricOperation, Metrics } from "./metrics.js";
import { keySlot } from "./slot.js";
import { TWIN_SCRIPT, TWIN_SHA1 } from "./twin.generated.js";

/** What answers on a server: the module's RATELIMIT.* commands or the Lua twin. */
export type Backend = "module" | "twin";

/** Where a decision came from. */
export type Source = "redis" | "fallback" | "failOpen" | "failClosed";

export interface Result extends Decision {
  source: Source;
}

/** A token bucket's answer (gcra), and where it came from. */
export interface GcraResult extends GcraDecision {
  source: Source;
}

/** A token bucket settlement's answer (gcraCharge, gcraRefund, settle): how the bucket stands after it, and where it was recorded. */
export interface GcraSettleResult extends GcraSettlement {
  /** "redis", or "fallback" (Redis unreachable, recorded in this process's fallback). */
  source: "redis" | "fallback";
}

/** Options of reserveGcra(): a gcra call whose tokens are the estimate. */
export interface GcraReserveOptions {
  /** The tokens to reserve now (1 to the bucket's maxBurst + 1). */
  estimate: number;
}

/** A reservation on a token bucket: gcra's answer for the estimate, and the handle to settle it with. */
export interface GcraReservation extends GcraResult {
  handle: ReservationHandle;
}

/** A key that denied a several-key call: as given (without the limiter's prefix), and its 0-based index in the call. */
export interface DeniedKey {
  key: string;
  index: number;
}

/** A several-key answer: the single-key fields over every key, and which keys denied. */
export interface MultiResult extends Result {
  /**
   * The keys that denied, by their limits or by a block, in the order given;
   * empty when allowed, and when no key was asked (failOpen, failClosed).
   */
  denied: DeniedKey[];
  /**
   * With `perKeyRemaining`: each key's own remaining after the call, in the
   * order given (from Redis or the fallback); else, and when no key was
   * asked, empty.
   */
  perKeyRemaining: number[];
}

/** Options of a several-key call. */
export interface MultiCallOptions extends CallOptions {
  /**
   * Also read each key's own remaining after the call (a PEEK of each key
   * in the same MULTI/EXEC), as the middleware does to name the binding key.
   */
  perKeyRemaining?: boolean;
}

/**
 * console fits; so does a pino or winston logger wrapped as (message,
 * details). Details hold strings only (never an error object, so never a
 * stack).
 */
export interface Logger {
  info(message: string, details?: Record<string, string>): void;
  warn(message: string, details?: Record<string, string>): void;
  error(message: string, details?: Record<string, string>): void;
}

export interface FallbackOptions {
  /**
   * This process's share of each limit while Redis is unreachable (0 < share <= 1): max becomes max(1, floor(max * share));
   * a token bucket's burst and count likewise.
   */
  share: number;
  /** The most keys the fallback holds (default 10,000); past it the least recently used key is dropped. */
  maxKeys?: number;
}

export interface RateLimiterOptions {
  /** Prepended to every key (default ""). */
  prefix?: string;
  /** The longest a call waits for Redis before the failure policy applies (default 250 ms). */
  timeoutMs?: number;
  /** While Redis is unreachable and there is no fallback: allow (true) or deny (false, the default). */
  failOpen?: boolean;
  /** An in-process limiter with the same contract, used while Redis is unreachable. */
  fallback?: FallbackOptions;
  /** After a failure, calls skip Redis for this long before trying it again (default 1000 ms; 0 tries every call). */
  retryAfterFailureMs?: number;
  /** Receives one line per change: backend learned, Redis down (with its cause), Redis back (default console). */
  logger?: Logger;
  /** Receives decisions, errors and round-trip times (see prometheusMetrics); none by default. */
  metrics?: Metrics;
  /**
   * How long settle() keeps trying a settlement while Redis is unreachable
   * (default 5000 ms; retried after 50 ms, then twice as long each time, at
   * most 1 s apart); then it is logged with its amount, as an error.
   */
  settleRetryMs?: number;
}

/** A settlement's answer (CHARGE): how the key stands against its limits after it, and where it was recorded. */
export interface ChargeResult extends Settlement {
  /** "redis", or "fallback" (Redis unreachable, recorded in this process's fallback). */
  source: "redis" | "fallback";
}

/** A several-key settlement's answer (MCHARGE): CHARGE's fields over every key, and the keys now over a limit. */
export interface MultiChargeResult extends ChargeResult {
  /** The keys now over a limit, as given, with their 0-based index, in the order given (empty when none is). */
  overKeys: DeniedKey[];
}

/** Options of reserve(): a check whose cost is the estimate. */
export interface ReserveOptions extends Omit<CallOptions, "cost"> {
  /** The units to reserve now (1 to the smallest max): the check's cost. */
  estimate: number;
}

/** Options of reserve() over several keys. */
export interface MultiReserveOptions extends ReserveOptions {
  /** As checkAll's: each key's own remaining after the call. */
  perKeyRemaining?: boolean;
}

/**
 * What settle() takes: one reservation, settled at most once. `keys` are
 * as given (without the limiter's prefix).
 */
export interface ReservationHandle {
  readonly keys: readonly string[];
  readonly estimate: number;
  /** True once settle() has been called on it. */
  readonly settled: boolean;
}

/** A reservation: check's answer for the estimate, and the handle to settle it with. */
export interface Reservation extends Result {
  handle: ReservationHandle;
}

/** A several-key reservation: checkAll's answer for the estimate, and the handle to settle it with. */
export interface MultiReservation extends MultiResult {
  handle: ReservationHandle;
}

/** What settle() did. */
export interface SettleResult {
  /** actual - estimate. */
  difference: number;
  /**
   * "refund": the unused units given back (UNDO/MUNDO of -difference);
   * "charge": the units spent beyond the estimate recorded (CHARGE/MCHARGE
   * of difference, never denied); "none": nothing to do (no difference, or
   * the reservation recorded nothing: denied, failOpen, failClosed).
   */
  action: "none" | "refund" | "charge";
  /** Where it was done: "redis", "fallback", or "none" for action "none". */
  source: "redis" | "fallback" | "none";
  /** For a refund, the units removed from each key, in the order given; else empty. */
  refunded: number[];
  /** For a charge, how the keys stand after it (over, remaining, retryAfterMs, resetAfterMs, overKeys). */
  charged?: MultiChargeResult;
  /**
   * For a reservation on a token bucket (reserveGcra), how the bucket
   * stands after the charge or refund (over, burst, remaining,
   * retryAfterMs, resetAfterMs, source); `refunded` and `charged` are then
   * not given.
   */
  bucket?: GcraSettleResult;
}

export interface RefundOptions {
  /** Units to refund from each key (default 1). */
  cost?: number;
  /** The decision refunded, so one made by the fallback is refunded there. */
  decision?: Result;
}

export interface UnblockOptions {
  /**
   * Also forget what the key counted (its log): the user starts afresh. The
   * key is deleted in the same MULTI/EXEC as the unblock.
   */
  reset?: boolean;
}

/** The module's RATELIMIT.<OPERATION> and the twin's operation of the same name. */
type Operation = MetricOperation;

/** One command of a round trip: an operation on its keys, or the DEL of a reset. */
interface Step {
  operation: Operation | "delete";
  keys: readonly string[];
  args: readonly string[];
}

/** Operations whose keys follow a numkeys in the module's command (the twin always takes one). */
const SEVERAL_KEYS: ReadonlySet<Step["operation"]> = new Set(["mcheck", "mpeek", "mundo", "mcharge"]);

/** What a reservation keeps for its settlement. */
interface Reserved {
  limiter: RateLimiter;
  handle: { keys: readonly string[]; estimate: number; settled: boolean };
  /** Prefixed, with each key's limits (a token bucket's: none). */
  keyed: readonly KeyedLimits[];
  /** A reservation on a token bucket: its limit. */
  gcra?: GcraLimit;
  several: boolean;
  precision: number | undefined;
  allowed: boolean;
  source: Source;
}

/** The handles reserve() gave out, with what their settlement needs. */
const RESERVATIONS = new WeakMap<object, Reserved>();

/** A settlement's answer: the units each key refunded, how the keys stand after a charge, or how a bucket stands after either. */
type Settled = number[] | MultiSettlement | GcraSettlement;

interface SettlementSteps {
  step: Step;
  parse: (replies: unknown[]) => Settled;
  /** The steps that undo an answer, for a settlement that ran twice. */
  undo: (value: Settled) => Step[];
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** The operations every version of the module has: an "unknown command" to any other may come from an older module. */
const FIRST_OPERATIONS: ReadonlySet<Step["operation"]> = new Set(["check", "peek", "undo"]);

type Reply<T> = { ok: true; value: T } | { ok: false; cause: string };

/** What an error on a Redis call is: its kind (for metrics) and its text (for logs and errors). */
interface Failure {
  kind: ErrorCause;
  text: string;
}

/**
 * Error replies that say the server is not well right now, or will not let
 * this user run what the package needs: the failure policy applies. Any
 * other error reply (WRONGTYPE, a full log, a script error) is about the
 * call and is raised to the caller.
 */
const OUTAGE_REPLIES = new Map<string, ErrorCause>([
  ["BUSY", "busy"],
  ["NOPERM", "noperm"],
  ["OOM", "oom"],
  ["LOADING", "loading"],
  ["READONLY", "readonly"],
  ["CLUSTERDOWN", "cluster"],
  ["TRYAGAIN", "cluster"],
  ["MASTERDOWN", "cluster"],
  ["MOVED", "cluster"],
  ["ASK", "cluster"],
]);

/**
 * How a server answers a script whose user may not run a command it calls
 * (TIME): a NOPERM in all but name (Redis 7.0; Redis 7.2+ and Valkey).
 */
const SCRIPT_NOPERM = /^(The user executing the script can't run|ACL failure in script: )/;

/** What Redis appends to an error met inside a script: " script: <sha>, on @user_script:<line>." (Valkey: no sha). */
const SCRIPT_SUFFIX = / script: (?:[0-9a-f]{40}, )?on @user_(?:script|function):\d+\.?$/;

const REPLY_ERROR_NAMES = new Set(["ReplyError", "ErrorReply", "SimpleError", "BlobError"]);

export { RateLimitReplyError };

/** Redis could not be asked (unblock while it is unreachable); the message names the cause. */
export class RateLimitUnavailableError extends Error {
  override name = "RateLimitUnavailableError";
}

class TimeoutError extends Error {
  override name = "TimeoutError";
}

/**
 * ioredis names its error answers "ReplyError"; node-redis's classes
 * (ErrorReply, SimpleError, BlobError) keep Error's name, so their class
 * chain is read too.
 */
function isReplyError(error: unknown): boolean {
  for (let proto: unknown = error; proto instanceof Error; proto = Object.getPrototypeOf(proto)) {
    if (REPLY_ERROR_NAMES.has(proto.name) || REPLY_ERROR_NAMES.has(proto.constructor.name)) return true;
  }
  return false;
}

/** The server's answer that RATELIMIT.* does not exist (Redis and Valkey say "unknown command"). */
function isUnknownCommand(error: unknown): boolean {
  return isReplyError(error) && /unknown command/i.test(messageOf(error));
}

/**
 * An outage reply's text as logged: the server's own, without the "ERR "
 * (twice, from a script's error on Redis 7.0) and the " script: <sha>, on
 * @user_script:<line>." that Redis wraps around an error met inside a
 * script. Undefined for a call error.
 */
function outageOf(message: string): Failure | undefined {
  const text = message
    .replace(/^(ERR )+/, "")
    .replace(SCRIPT_SUFFIX, "")
    .trim();
  const kind = SCRIPT_NOPERM.test(text) ? "noperm" : OUTAGE_REPLIES.get(text.split(" ")[0] as string);
  return kind && { kind, text };
}

/** A failed connection: its errno name (ECONNREFUSED) where it has one, else its message. */
function connectionFailure(error: unknown): Failure {
  const code = (error as { code?: unknown } | undefined)?.code;
  if (typeof code === "string" && /^E[A-Z0-9_]+$/.test(code)) return { kind: "connection", text: code };
  const text = messageOf(error);
  return { kind: /clos|connect|socket|stream|offline/i.test(text) ? "connection" : "other", text };
}

/**
 * Runs `work` for at most `ms`; its signal aborts when the wait ends, so
 * what it has not sent yet it never sends. What was sent may still be
 * answered after that: `late` gets that answer.
 */
function withTimeout<T>(work: (signal: AbortSignal) => Promise<T>, ms: number, late?: (value: T) => void): Promise<T> {
  const controller = new AbortController();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const error = new TimeoutError(`timeout: no answer within ${ms} ms`);
      controller.abort(error);
      reject(error);
    }, ms);
  });
  const running = work(controller.signal);
  if (late) timeout.catch(() => running.then(late, () => undefined));
  return Promise.race([running, timeout]).finally(() => clearTimeout(timer));
}

export class RateLimiter {
  private readonly connection: Connection;
  private readonly prefix: string;
  private readonly timeoutMs: number;
  private readonly failOpen: boolean;
  private readonly share: number | undefined;
  private readonly retryAfterFailureMs: number;
  private readonly settleRetryMs: number;
  /** Where backend changes and outages are reported. */
  readonly logger: Logger;
  /** Where decisions, errors and round trips are counted, if anywhere. */
  readonly metrics: Metrics | undefined;
  /** The fallback's keys (MemoryLimiter's engine), with the limits reduced by the share. */
  private readonly memory: Keyspace;
  private readonly learned = new Map<string, Backend>();
  /** The backend each server was last logged with. */
  private readonly announced = new Map<string, Backend>();
  /** The servers that failed their last call: until when calls skip each, and why. */
  private readonly down = new Map<string, { retryAt: number; cause: string }>();

  constructor(client: RedisClient, options: RateLimiterOptions = {}) {
    this.connection = connect(client);
    this.prefix = options.prefix ?? "";
    this.timeoutMs = options.timeoutMs ?? 250;
    this.failOpen = options.failOpen ?? false;
    this.retryAfterFailureMs = options.retryAfterFailureMs ?? 1000;
    this.settleRetryMs = options.settleRetryMs ?? 5000;
    if (!(this.settleRetryMs >= 0)) throw new RateLimitInputError(`settleRetryMs must be 0 or more, got ${this.settleRetryMs}`);
    this.logger = options.logger ?? console;
    this.metrics = options.metrics;
    const share = options.fallback?.share;
    if (share !== undefined && !(share > 0 && share <= 1)) {
      throw new RateLimitInputError(`fallback.share must be above 0 and at most 1, got ${share}`);
    }
    this.share = share;
    this.memory = new Keyspace(Date.now, options.fallback?.maxKeys ?? DEFAULT_MAX_KEYS);
  }

  /**
   * The backend learned so far: "module" or "twin" when every server seen
   * agrees, "mixed" when cluster nodes differ, undefined before the first call.
   */
  get backend(): Backend | "mixed" | undefined {
    const kinds = new Set(this.learned.values());
    if (kinds.size > 1) return "mixed";
    return kinds.values().next().value;
  }

  /** The backend learned for each server ("host:port", or "server" for a standalone client without one). */
  get backends(): ReadonlyMap<string, Backend> {
    return this.learned;
  }

  /** Decides a request and records it if every limit allows it. */
  check(key: string, limits: Limit | readonly Limit[], options: CallOptions = {}): Promise<Result> {
    return this.decide("check", key, limits, options);
  }

  /** Would check allow this request now? Records nothing. */
  peek(key: string, limits: Limit | readonly Limit[], options: CallOptions = {}): Promise<Result> {
    return this.decide("peek", key, limits, options);
  }

  /**
   * Decides one request against several keys (1 to 16), each with its own
   * limits, in one atomic call: allowed iff every key allows, then recorded
   * in every key; if any key denies, recorded in none. On a cluster the keys
   * must share a hash slot (one hash tag).
   */
  checkAll(keys: readonly KeyLimits[], options: MultiCallOptions = {}): Promise<MultiResult> {
    return this.decideAll("mcheck", keys, options);
  }

  /** Would checkAll allow this request now? Records nothing. */
  peekAll(keys: readonly KeyLimits[], options: MultiCallOptions = {}): Promise<MultiResult> {
    return this.decideAll("mpeek", keys, options);
  }

  /**
   * Refunds the `cost` newest units (default 1); resolves with the number
   * removed. Give the decision being refunded so a fallback decision is
   * refunded in the fallback. A block stays.
   */
  async undo(key: string, options: RefundOptions = {}): Promise<number> {
    const [removed] = await this.refund("undo", [this.prefix + validateKey(key)], options);
    return removed as number;
  }

  /**
   * Refunds the `cost` newest units (default 1) in each key, as undo on
   * each, in one call; takes the keys (or the array given to checkAll) and
   * resolves with the units removed per key.
   */
  async undoAll(keys: readonly (string | { key: string })[], options: RefundOptions = {}): Promise<number[]> {
    const given = validateKeys(Array.isArray(keys) ? keys.map((item) => (typeof item === "string" ? item : item?.key)) : keys);
    return this.refund("mundo", this.keysOfOneCall(given), options);
  }

  /**
   * Records a settlement of `cost` units (default 1; up to 2^53, above any
   * max if need be) whatever the limits say, never denied (CHARGE), and
   * resolves how the key stands against its limits after it. While Redis
   * is unreachable it is recorded in the fallback if there is one, else it
   * rejects with RateLimitUnavailableError (nothing was recorded).
   */
  async charge(key: string, limits: Limit | readonly Limit[], options: ChargeOptions = {}): Promise<ChargeResult> {
    const fullKey = this.prefix + validateKey(key);
    const list = validateLimits(limits);
    validateChargeOptions(list, options);
    const { overKeys: _, ...result } = await this.chargeOnce([{ key: fullKey, limits: list }], [key], false, options);
    return result;
  }

  /** As charge, on several keys (1 to 16) each with its own limits, in one call (MCHARGE); `overKeys` names the keys now over. */
  async chargeAll(keys: readonly KeyLimits[], options: ChargeOptions = {}): Promise<MultiChargeResult> {
    const { keys: given, limits } = validateKeyLimits(keys);
    const fullKeys = this.keysOfOneCall(given);
    validateChargeOptions(limits.flat(), options);
    const keyed = fullKeys.map((key, i) => ({ key, limits: limits[i] as readonly Limit[] }));
    return this.chargeOnce(keyed, given, true, options);
  }

  /** One CHARGE or MCHARGE under the failure policy: the fallback, or RateLimitUnavailableError. */
  private async chargeOnce(
    keyed: readonly KeyedLimits[],
    given: readonly string[],
    several: boolean,
    options: ChargeOptions,
  ): Promise<MultiChargeResult> {
    const reply = await this.call([chargeStep(keyed, several, options)], ([value]) => readSettlement(value, several, keyed.length));
    if (reply.ok) return chargeResultOf(reply.value, given, "redis");
    if (this.share === undefined) {
      throw new RateLimitUnavailableError(`Redis at ${this.connection.serverFor(keyed[0]?.key as string)} is unavailable (${reply.cause})`);
    }
    return chargeResultOf(this.chargeInFallback(keyed, options), given, "fallback");
  }

  /** A charge in the fallback, against the limits reduced by the share. */
  private chargeInFallback(keyed: readonly KeyedLimits[], options: ChargeOptions): MultiSettlement {
    const share = this.share ?? 1;
    const local = keyed.map(({ key, limits }) => ({
      key,
      limits: limits.map((limit) => ({ ...limit, max: Math.max(1, Math.floor(limit.max * share)) })),
    }));
    return this.memory.charge(local, options);
  }

  /**
   * Reserves `estimate` units for a request whose cost is known only after
   * it (a check of cost `estimate`: check, or checkAll for several keys),
   * and resolves its answer with a `handle` for settle(). Denied, it
   * recorded nothing and its handle settles to nothing.
   */
  reserve(key: string, limits: Limit | readonly Limit[], options: ReserveOptions): Promise<Reservation>;
  reserve(keys: readonly KeyLimits[], options: MultiReserveOptions): Promise<MultiReservation>;
  async reserve(
    target: string | readonly KeyLimits[],
    second: Limit | readonly Limit[] | MultiReserveOptions,
    third?: ReserveOptions,
  ): Promise<Reservation | MultiReservation> {
    if (typeof target === "string") {
      const list = validateLimits(second as Limit | readonly Limit[]);
      const { estimate, ...rest } = third ?? ({} as ReserveOptions);
      validateEstimate(list, estimate);
      const result = await this.check(target, list, { ...rest, cost: estimate });
      const keyed = [{ key: this.prefix + target, limits: list }];
      return { ...result, handle: this.handleOf([target], keyed, false, estimate, rest.precision, result) };
    }
    const { estimate, ...rest } = (second ?? {}) as MultiReserveOptions;
    const { keys, limits } = validateKeyLimits(target);
    validateEstimate(limits.flat(), estimate);
    const result = await this.checkAll(target, { ...rest, cost: estimate });
    const keyed = this.keysOfOneCall(keys).map((key, i) => ({ key, limits: limits[i] as readonly Limit[] }));
    return { ...result, handle: this.handleOf(keys, keyed, true, estimate, rest.precision, result) };
  }

  private handleOf(
    keys: readonly string[],
    keyed: readonly KeyedLimits[],
    several: boolean,
    estimate: number,
    precision: number | undefined,
    result: { allowed: boolean; source: Source },
    gcra?: GcraLimit,
  ): ReservationHandle {
    const handle = { keys: [...keys], estimate, settled: false };
    const view: ReservationHandle = Object.freeze({
      keys: handle.keys,
      estimate,
      get settled() {
        return handle.settled;
      },
    });
    RESERVATIONS.set(view, {
      limiter: this,
      handle,
      keyed,
      several,
      precision,
      allowed: result.allowed,
      source: result.source,
      ...(gcra ? { gcra } : {}),
    });
    return view;
  }

  /**
   * Settles a reservation with the units the request actually cost:
   * `actual - estimate` below 0 is refunded (UNDO/MUNDO), above 0 charged
   * (CHARGE/MCHARGE with the same limits: recorded even past them, never
   * denied), 0 changes nothing. Where the reservation was made: Redis, or
   * the fallback. A reservation that recorded nothing (denied, failOpen,
   * failClosed) settles to nothing. Settling a handle twice rejects with
   * RateLimitInputError. While Redis is unreachable it retries for
   * `settleRetryMs`; then it is recorded in the fallback if there is one
   * (logged as a warning, with its amount: the contract's settle_fallback),
   * else it rejects with RateLimitUnavailableError (logged as an error:
   * settle_lost). An error answer (an older module without CHARGE,
   * WRONGTYPE) is a call error: not logged, it rejects as
   * RateLimitReplyError with the server's text and the amount not recorded.
   */
  async settle(handle: ReservationHandle, actual: number): Promise<SettleResult> {
    const reserved = RESERVATIONS.get(handle);
    if (!reserved || reserved.limiter !== this)
      throw new RateLimitInputError("settle takes the handle of a reservation made by this limiter");
    if (reserved.gcra) validateGcraActual(actual);
    else validateActual(actual);
    if (reserved.handle.settled) throw new RateLimitInputError(`this reservation on ${reserved.handle.keys.join(", ")} is already settled`);
    reserved.handle.settled = true;
    const difference = actual - reserved.handle.estimate;
    const nothing: SettleResult = { difference, action: "none", source: "none", refunded: [] };
    if (difference === 0 || !reserved.allowed || (reserved.source !== "redis" && reserved.source !== "fallback")) return nothing;
    const action = difference < 0 ? "refund" : "charge";
    const units = Math.abs(difference);
    const done = (source: "redis" | "fallback", value: Settled): SettleResult => {
      if (Array.isArray(value)) return { difference, action, source, refunded: value };
      if ("burst" in value) return { difference, action, source, refunded: [], bucket: { ...value, source } };
      return { difference, action, source, refunded: [], charged: chargeResultOf(value, reserved.handle.keys, source) };
    };
    if (reserved.source === "fallback") return done("fallback", this.settleInFallback(reserved, action, units));
    const label = reserved.keyed.map(({ key }) => key).join(", ");
    const what = `a ${action} of ${units} units`;
    const details = { keys: label, action, units: String(units) };
    let outcome: Reply<Settled>;
    try {
      outcome = await this.settleInRedis(reserved, action, units);
    } catch (error) {
      // A call error (contract/transport.json): raised with its amount, not logged.
      if (!(error instanceof RateLimitReplyError)) throw error;
      throw new RateLimitReplyError(`${error.message}; the settlement on ${label} (${what}) was not recorded`, { cause: error });
    }
    if (outcome.ok) return done("redis", outcome.value);
    const { cause } = outcome;
    // contract/transport.json, settle_lost and settle_fallback: once per lost settlement.
    const lost = `a settlement on ${label} (${action} of ${units} units) could not reach Redis within ${this.settleRetryMs} ms (${cause})`;
    const lostDetails = { ...details, ms: String(this.settleRetryMs), cause };
    if (this.share === undefined) {
      this.logger.error(`redis-ratelimit: ${lost}; it was not recorded`, lostDetails);
      throw new RateLimitUnavailableError(`${lost}; it was not recorded`);
    }
    this.logger.warn(`redis-ratelimit: ${lost}; it was recorded in this process's fallback only`, lostDetails);
    return done("fallback", this.settleInFallback(reserved, action, units));
  }

  private settleInFallback(reserved: Reserved, action: "refund" | "charge", units: number): Settled {
    const keys = reserved.keyed.map(({ key }) => key);
    if (reserved.gcra) return this.gcraSettleInFallback(keys[0] as string, reserved.gcra, units, action);
    if (action === "refund") return this.memory.undoAll(keys, units);
    return this.chargeInFallback(reserved.keyed, { cost: units, precision: reserved.precision });
  }

  /** The settlement's step, the way to read its answer, and the step that undoes an answer (for one that ran twice). */
  private settlementSteps(reserved: Reserved, action: "refund" | "charge", units: number): SettlementSteps {
    const { keyed, several, precision, gcra } = reserved;
    const keys = keyed.map(({ key }) => key);
    if (gcra) {
      const bucketStep = (settle: "charge" | "refund", tokens: number): Step => ({
        operation: "gcra",
        keys,
        args: gcraArgs(gcra, tokens, settle),
      });
      const parse = ([value]: unknown[]) => parseGcraSettlement(value);
      // Ran twice: a charge is refunded; a refund charged back, unless it emptied the bucket (then what it took is not known, at most `units`).
      const undo = (value: Settled) =>
        action === "charge"
          ? [bucketStep("refund", units)]
          : (value as GcraSettlement).resetAfterMs > 0
            ? [bucketStep("charge", units)]
            : [];
      return { step: bucketStep(action, units), parse, undo };
    }
    if (action === "refund") {
      const step: Step = { operation: several ? "mundo" : "undo", keys, args: ["COST", digits(units)] };
      const parse = ([value]: unknown[]) => (several ? parseCounts(value, keys.length) : [parseCount(value, "RATELIMIT.UNDO")]);
      // Refunded twice: charge each key what the second refund removed.
      const undo = (value: Settled) => {
        const removed = value as number[];
        return keyed.flatMap((one, i) =>
          (removed[i] ?? 0) > 0 ? [chargeStep([one], false, { cost: removed[i] as number, precision })] : [],
        );
      };
      return { step, parse, undo };
    }
    const step = chargeStep(keyed, several, { cost: units, precision });
    const parse = ([value]: unknown[]) => readSettlement(value, several, keyed.length);
    const undo = () => [{ operation: several ? ("mundo" as const) : ("undo" as const), keys, args: ["COST", digits(units)] }];
    return { step, parse, undo };
  }

  /**
   * The settlement on Redis, retried while Redis is unreachable for
   * settleRetryMs (backing off from 50 ms to 1 s). An attempt that timed
   * out may still run later: its late answer stops the retries, and if
   * another attempt ran too, the second is undone (logged).
   */
  private async settleInRedis(reserved: Reserved, action: "refund" | "charge", units: number): Promise<Reply<Settled>> {
    const { step, parse, undo } = this.settlementSteps(reserved, action, units);
    const label = step.keys.join(", ");
    const deadline = Date.now() + this.settleRetryMs;
    // The first answer that ran (on time or late); any other ran twice.
    const first: { value?: Settled } = {};
    const land = (value: Settled): void => {
      if (first.value === undefined) first.value = value;
      else void this.undoDuplicate(label, undo(value));
    };
    const late = (replies: unknown[]) => {
      try {
        land(parse(replies));
      } catch {
        // An answer that cannot be read: nothing known to undo.
      }
    };
    let delay = 50;
    let cause = "";
    for (;;) {
      if (first.value !== undefined) return { ok: true, value: first.value };
      const reply = await this.call([step], parse, late, true);
      if (reply.ok) {
        land(reply.value);
        return { ok: true, value: first.value ?? reply.value };
      }
      cause = reply.cause;
      const wait = Math.min(delay, deadline - Date.now());
      if (wait <= 0) return first.value !== undefined ? { ok: true, value: first.value } : { ok: false, cause };
      await sleep(wait);
      delay = Math.min(delay * 2, 1000);
    }
  }

  /** Undoes a settlement that ran twice (an attempt answered after its timeout, and another); logged. */
  private async undoDuplicate(label: string, steps: Step[]): Promise<void> {
    try {
      for (const step of steps) await withTimeout((signal) => this.send([step], signal), this.timeoutMs);
      this.logger.warn(`redis-ratelimit: a settlement on ${label} was answered after its timeout and ran twice; the second was undone`, {
        keys: label,
      });
    } catch (error) {
      const cause = this.failureOf(error, steps[0]?.keys[0] as string).text;
      this.logger.error(
        `redis-ratelimit: a settlement on ${label} was answered after its timeout and ran twice; undoing the second failed (${cause})`,
        { keys: label, cause },
      );
    }
  }

  /**
   * Lifts the key's block; resolves true if it was blocked. Without
   * `reset` it keeps the history (what it recorded still counts); with
   * `reset: true` it also deletes the key, so its count starts afresh (a
   * lockout's failures are forgotten). The fallback's own block (and, on
   * reset, its count) is lifted too. Rejects with RateLimitUnavailableError
   * while Redis is unreachable, under every failure policy: an
   * administrator must know the lift did not reach Redis.
   */
  async unblock(key: string, options: UnblockOptions = {}): Promise<boolean> {
    const fullKey = this.prefix + validateKey(key);
    try {
      this.memory.unblock(fullKey);
    } catch (error) {
      // The fallback holds a bucket under this name: no block to lift there. Redis answers for itself.
      if (!(error instanceof RateLimitReplyError)) throw error;
    }
    if (options.reset) this.memory.delete(fullKey);
    const steps: Step[] = [{ operation: "unblock", keys: [fullKey], args: [] }];
    if (options.reset) steps.push({ operation: "delete", keys: [fullKey], args: [] });
    const reply = await this.call(steps, (replies) => parseCount(replies[0], "RATELIMIT.UNBLOCK") === 1);
    if (!reply.ok) throw new RateLimitUnavailableError(`Redis at ${this.connection.serverFor(fullKey)} is unavailable (${reply.cause})`);
    return reply.value;
  }

  /** Deletes the key: its log and its block, or its bucket (both backends store one key per limiter). */
  async delete(key: string): Promise<boolean> {
    const fullKey = this.prefix + validateKey(key);
    this.memory.delete(fullKey);
    const reply = await this.call([{ operation: "delete", keys: [fullKey], args: [] }], (replies) => parseCount(replies[0], "DEL") > 0);
    return reply.ok && reply.value;
  }

  /** UNDO or MUNDO where the refunded decision was made: Redis, the fallback, or nowhere (the policy's answers counted nothing). */
  private async refund(operation: "undo" | "mundo", keys: readonly string[], options: RefundOptions): Promise<number[]> {
    const cost = validateRefundCost(options.cost);
    const source = options.decision?.source;
    if (source === "fallback") return this.memory.undoAll(keys, cost);
    if (source === "failOpen" || source === "failClosed") return keys.map(() => 0);
    const args = options.cost === undefined ? [] : ["COST", digits(cost)];
    const reply = await this.call([{ operation, keys, args }], ([value]) =>
      operation === "undo" ? [parseCount(value, "RATELIMIT.UNDO")] : parseCounts(value, keys.length),
    );
    if (reply.ok) return reply.value;
    return this.share === undefined ? keys.map(() => 0) : this.memory.undoAll(keys, cost);
  }

  /**
   * Decides a request of `tokens` (default 1; 0 asks without charging)
   * against a token bucket (GCRA: RATELIMIT.GCRA, the twin's gcra), and
   * charges it if it fits. More tokens than the bucket never fit: the
   * answer is limited with retryAfterMs -1. A token bucket has no refund:
   * a call answered after its timeout stays charged.
   */
  async gcra(key: string, limit: GcraLimit, options: GcraOptions = {}): Promise<GcraResult> {
    const fullKey = this.prefix + validateKey(key);
    validateGcraLimit(limit);
    const tokens = validateTokens(options.tokens);
    const reply = await this.call([{ operation: "gcra", keys: [fullKey], args: gcraArgs(limit, options.tokens) }], ([value]) =>
      parseGcraReply(value),
    );
    if (reply.ok) return { ...reply.value, source: "redis" };
    if (this.share !== undefined) {
      return { ...gcraDecisionOf(gcraReply(this.memory.gcra(fullKey, this.localGcraRule(limit), tokens), "ms")), source: "fallback" };
    }
    const burst = limit.maxBurst + 1;
    if (this.failOpen) {
      return { allowed: true, burst, remaining: Math.max(0, burst - tokens), retryAfterMs: 0, resetAfterMs: 0, source: "failOpen" };
    }
    return {
      allowed: false,
      burst,
      remaining: 0,
      retryAfterMs: Math.max(this.retryAfterFailureMs, 1),
      resetAfterMs: 0,
      source: "failClosed",
    };
  }

  /** A token bucket's limit in the fallback: its burst and count reduced by the share. */
  private localGcraRule(limit: GcraLimit): GcraRule {
    const share = this.share ?? 1;
    const rule = gcraRule(limit);
    return { ...rule, burst: Math.max(1, Math.floor(rule.burst * share)), count: Math.max(1, Math.floor(rule.count * share)) };
  }

  /**
   * Records `tokens` (default 1; 0 records nothing) in a token bucket
   * whatever it holds, never limited (RATELIMIT.GCRA ... CHARGE, the
   * twin's gcra with CHARGE): past full it is a debt, which later requests
   * wait out as it drains. Resolves how the bucket stands after it. A
   * charge that would take the bucket past 9e15 token-milliseconds is
   * refused whole (RateLimitReplyError). While Redis is unreachable it is
   * recorded in the fallback if there is one, else it rejects with
   * RateLimitUnavailableError (nothing was recorded).
   */
  gcraCharge(key: string, limit: GcraLimit, options: GcraSettleOptions = {}): Promise<GcraSettleResult> {
    return this.gcraSettle("charge", key, limit, options);
  }

  /**
   * Gives `tokens` (default 1; 0 changes nothing) back to a token bucket
   * (RATELIMIT.GCRA ... REFUND): takes them off what it holds now, to
   * nothing at least; a bucket left empty is deleted. Resolves how it
   * stands after. While Redis is unreachable, as gcraCharge.
   */
  gcraRefund(key: string, limit: GcraLimit, options: GcraSettleOptions = {}): Promise<GcraSettleResult> {
    return this.gcraSettle("refund", key, limit, options);
  }

  private async gcraSettle(
    action: "charge" | "refund",
    key: string,
    limit: GcraLimit,
    options: GcraSettleOptions,
  ): Promise<GcraSettleResult> {
    const fullKey = this.prefix + validateKey(key);
    validateGcraLimit(limit);
    const tokens = validateTokens(options.tokens);
    const step: Step = { operation: "gcra", keys: [fullKey], args: gcraArgs(limit, options.tokens, action) };
    const reply = await this.call([step], ([value]) => parseGcraSettlement(value));
    if (reply.ok) return { ...reply.value, source: "redis" };
    if (this.share === undefined) {
      throw new RateLimitUnavailableError(`Redis at ${this.connection.serverFor(fullKey)} is unavailable (${reply.cause})`);
    }
    return { ...this.gcraSettleInFallback(fullKey, limit, tokens, action), source: "fallback" };
  }

  /** A token bucket's settlement in the fallback, under the limit reduced by the share. */
  private gcraSettleInFallback(fullKey: string, limit: GcraLimit, tokens: number, action: "charge" | "refund"): GcraSettlement {
    return gcraSettlementOf(gcraSettleReply(this.memory.gcraSettle(fullKey, this.localGcraRule(limit), tokens, action), "ms"));
  }

  /**
   * Reserves `estimate` tokens of a token bucket for a request whose cost
   * is known only after it (a gcra call of `estimate` tokens), and
   * resolves its answer with a `handle` for settle(): the difference is
   * then charged (GCRA ... CHARGE: never limited, past full a debt) or
   * refunded (GCRA ... REFUND). Limited, it recorded nothing and its handle
   * settles to nothing.
   */
  async reserveGcra(key: string, limit: GcraLimit, options: GcraReserveOptions): Promise<GcraReservation> {
    validateKey(key);
    validateGcraLimit(limit);
    const estimate = options?.estimate;
    validateGcraEstimate(limit, estimate);
    const result = await this.gcra(key, limit, { tokens: estimate });
    const keyed = [{ key: this.prefix + key, limits: [] }];
    const handle = this.handleOf([key], keyed, false, estimate, undefined, result, limit);
    return { ...result, handle };
  }

  private async decide(operation: "check" | "peek", key: string, limits: Limit | readonly Limit[], options: CallOptions): Promise<Result> {
    const fullKey = this.prefix + validateKey(key);
    const list = validateLimits(limits);
    const cost = validateOptions(list, options);
    const late = operation === "check" ? this.lateRefund("undo", [fullKey], cost, (value) => parseDecision(value).allowed) : undefined;
    const reply = await this.call(
      [{ operation, keys: [fullKey], args: limitArgs(list, options) }],
      ([value]) => parseDecision(value),
      late,
    );
    if (reply.ok) return { ...reply.value, source: "redis" };
    const { decision, source } = this.whileUnavailable(
      operation === "check",
      [{ key: fullKey, limits: list }],
      { ...options, cost },
      false,
    );
    return { ...decision, source };
  }

  private async decideAll(operation: "mcheck" | "mpeek", entries: readonly KeyLimits[], options: MultiCallOptions): Promise<MultiResult> {
    const { keys, limits } = validateKeyLimits(entries);
    const fullKeys = this.keysOfOneCall(keys);
    const cost = validateOptions(limits.flat(), options);
    const allowed = (value: unknown) => parseMultiDecision(value, keys.length).decision.allowed;
    const late = operation === "mcheck" ? this.lateRefund("mundo", fullKeys, cost, allowed) : undefined;
    const steps: Step[] = [{ operation, keys: fullKeys, args: multiLimitArgs(limits, options) }];
    // Each key's own remaining as it stands right after the call: a PEEK of its own limits in the same transaction.
    if (options.perKeyRemaining) {
      steps.push(
        ...fullKeys.map((key, i) => ({ operation: "peek" as const, keys: [key], args: limitArgs(limits[i] as readonly Limit[], {}) })),
      );
    }
    const reply = await this.call(
      steps,
      ([value, ...peeks]) => ({
        ...parseMultiDecision(value, keys.length),
        perKeyRemaining: peeks.map((peeked) => parseDecision(peeked).remaining),
      }),
      late,
    );
    const keyed = fullKeys.map((key, i) => ({ key, limits: limits[i] as readonly Limit[] }));
    const { decision, denied, perKeyRemaining, source } = reply.ok
      ? { ...reply.value, source: "redis" as const }
      : this.whileUnavailable(operation === "mcheck", keyed, { ...options, cost }, options.perKeyRemaining === true);
    return { ...decision, source, perKeyRemaining, denied: denied.map((index) => ({ key: keys[index] as string, index })) };
  }

  /**
   * The prefixed keys of one several-key call. On a cluster they must share
   * a hash slot; refused here, before anything is sent, rather than by the
   * server's CROSSSLOT.
   */
  private keysOfOneCall(keys: readonly string[]): string[] {
    const fullKeys = keys.map((key) => this.prefix + key);
    if (!this.connection.cluster) return fullKeys;
    const slots = fullKeys.map(keySlot);
    const other = slots.findIndex((slot) => slot !== slots[0]);
    if (other !== -1) {
      throw new RateLimitInputError(
        `the keys of one call must share a hash slot on a cluster: '${fullKeys[0]}' is in slot ${slots[0]}, '${fullKeys[other]}' in slot ${slots[other]}; give them one hash tag, as {tenant:7}:user:42 and {tenant:7}:ip:10.0.0.1`,
      );
    }
    return fullKeys;
  }

  /** The failure policy's answer over the call's keys (and, when asked, each key's remaining in the fallback). */
  private whileUnavailable(
    record: boolean,
    keys: readonly KeyedLimits[],
    options: CallOptions,
    perKeyRemaining: boolean,
  ): MultiDecision & { perKeyRemaining: number[]; source: Source } {
    if (this.share !== undefined) {
      const share = this.share;
      const local = keys.map(({ key, limits }) => ({
        key,
        limits: limits.map((limit) => ({ ...limit, max: Math.max(1, Math.floor(limit.max * share)) })),
      }));
      const answer = this.memory.decide(local, options, record);
      const remaining = perKeyRemaining ? local.map((key) => this.memory.decide([key], {}, false).decision.remaining) : [];
      return { ...answer, perKeyRemaining: remaining, source: "fallback" };
    }
    const cost = options.cost ?? 1;
    if (this.failOpen) {
      const remaining = Math.min(...keys.map(({ limits }) => smallestMax(limits))) - cost;
      return {
        decision: { allowed: true, remaining, retryAfterMs: 0, resetAfterMs: 0 },
        denied: [],
        perKeyRemaining: [],
        source: "failOpen",
      };
    }
    const retryAfterMs = Math.max(this.retryAfterFailureMs, 1);
    return {
      decision: { allowed: false, remaining: 0, retryAfterMs, resetAfterMs: 0 },
      denied: [],
      perKeyRemaining: [],
      source: "failClosed",
    };
  }

  /**
   * For a check answered after its timeout: if it ran on Redis and was
   * recorded there, though the caller got the failure policy's answer,
   * refund it (UNDO, or MUNDO over every key of a checkAll).
   */
  private lateRefund(
    undo: "undo" | "mundo",
    keys: readonly string[],
    cost: number,
    allowed: (value: unknown) => boolean,
  ): (replies: unknown[]) => Promise<void> {
    const label = keys.join(", ");
    return async ([value]) => {
      try {
        if (!allowed(value)) return;
        // Not through the failure policy: the server has just answered, though it is still marked down.
        await withTimeout((signal) => this.send([{ operation: undo, keys, args: ["COST", digits(cost)] }], signal), this.timeoutMs);
        this.logger.warn(`redis-ratelimit: a check on ${label} was answered after its timeout; its charge was refunded`, { keys: label });
      } catch (error) {
        const cause = this.failureOf(error, keys[0] as string).text;
        this.logger.error(`redis-ratelimit: a check on ${label} was answered after its timeout; its refund failed (${cause})`, {
          keys: label,
          cause,
        });
      }
    };
  }

  /**
   * One round trip to the server of the first step's keys, under the
   * timeout and the failure policy: resolves { ok: false } when Redis is
   * unreachable (logged once, as the server goes down), rejects when Redis
   * answered that the call itself is wrong or its reply cannot be read.
   */
  private async call<T>(
    steps: readonly Step[],
    parse: (replies: unknown[]) => T,
    late?: (replies: unknown[]) => void,
    evenIfDown = false,
  ): Promise<Reply<T>> {
    const [first] = steps as [Step];
    const key = first.keys[0] as string;
    const server = this.connection.serverFor(key);
    const down = this.down.get(server);
    if (down && Date.now() < down.retryAt && !evenIfDown) return { ok: false, cause: down.cause };
    const started = performance.now();
    try {
      const replies = await withTimeout((signal) => this.send(steps, signal), this.timeoutMs, late);
      this.answered(server);
      return { ok: true, value: parse(replies) };
    } catch (error) {
      const failure = this.failureOf(error, key);
      this.metrics?.error(failure.kind);
      if (failure.kind === "reply") {
        this.answered(server);
        throw error instanceof RateLimitReplyError || error instanceof UnexpectedReplyError
          ? error
          : new RateLimitReplyError(failure.text, { cause: error });
      }
      this.unavailable(server, failure.text);
      return { ok: false, cause: failure.text };
    } finally {
      if (first.operation !== "delete") this.metrics?.roundTrip(first.operation, (performance.now() - started) / 1000);
    }
  }

  /** What an error on a call to `key`'s server is: a call error ("reply"), or an outage with its cause. */
  private failureOf(error: unknown, key: string): Failure {
    if (error instanceof RateLimitReplyError || error instanceof UnexpectedReplyError) return { kind: "reply", text: error.message };
    if (error instanceof TimeoutError) {
      // Still waiting for a client that cannot connect: its own error says why.
      const connection = this.connection.connectionError?.(key);
      return connection ? connectionFailure(connection) : { kind: "timeout", text: error.message };
    }
    if (isReplyError(error)) return outageOf(messageOf(error)) ?? { kind: "reply", text: messageOf(error) };
    return connectionFailure(error);
  }

  /**
   * Sends the steps to the server of their keys. Several are sent in one
   * MULTI/EXEC once the server's backend is known and the client can; else
   * one after another (the first call to a server learns its backend).
   */
  private async send(steps: readonly Step[], signal: AbortSignal): Promise<unknown[]> {
    const key = (steps[0] as Step).keys[0] as string;
    const backend = this.learned.get(this.connection.serverFor(key));
    if (steps.length > 1 && backend && this.connection.transaction) {
      try {
        const replies = await this.inTransaction(backend, key, steps, signal);
        this.learn(this.connection.serverFor(key), backend);
        return replies;
      } catch (error) {
        // The server discarded the transaction: an older module tells itself apart one step at a time.
        if (!isUnknownCommand(error)) throw error;
      }
    }
    const replies: unknown[] = [];
    for (const step of steps) replies.push(await this.sendStep(step, signal));
    return replies;
  }

  /**
   * The steps in one MULTI/EXEC. The twin goes by EVALSHA, then EVAL after
   * a NOSCRIPT (nothing ran then, so the retry charges nothing twice);
   * with a DEL beside it, by EVAL at once, as a NOSCRIPT would leave the
   * DEL done and the unblock's answer lost.
   */
  private async inTransaction(backend: Backend, key: string, steps: readonly Step[], signal: AbortSignal): Promise<unknown[]> {
    const transaction = (commands: string[][]) => this.connection.transaction?.(key, commands, signal) as Promise<unknown[]>;
    const form = steps.some((step) => step.operation === "delete") ? "EVAL" : "EVALSHA";
    try {
      return await transaction(steps.map((step) => commandOf(step, backend, form)));
    } catch (error) {
      if (backend === "module" || form === "EVAL" || !messageOf(error).startsWith("NOSCRIPT")) throw error;
      // EVAL caches the script for the EVALSHAs after it in the same transaction.
      return transaction(steps.map((step, i) => commandOf(step, backend, i === 0 ? "EVAL" : "EVALSHA")));
    }
  }

  /** One step on its keys' server, by the backend learned for it (learning it on the first). */
  private async sendStep(step: Step, signal: AbortSignal): Promise<unknown> {
    const key = step.keys[0] as string;
    const server = this.connection.serverFor(key);
    if (step.operation === "delete") return this.connection.send(key, commandOf(step, "module"), signal);
    if (this.learned.get(server) !== "twin") {
      try {
        const value = await this.connection.send(key, commandOf(step, "module"), signal);
        this.learn(server, "module");
        return value;
      } catch (error) {
        if (!isUnknownCommand(error)) throw error;
        if (!FIRST_OPERATIONS.has(step.operation) && (await this.hasModule(key, signal))) {
          this.learn(server, "module");
          throw new RateLimitReplyError(`the server's RATELIMIT module is older than this call needs: ${messageOf(error)}`, {
            cause: error,
          });
        }
        // Logged once the twin answers: a server that refuses it too (a user without TIME) has no backend at work yet.
        this.learned.set(server, "twin");
      }
    }
    const value = await this.sendTwin(step, signal);
    this.learn(server, "twin");
    return value;
  }

  /**
   * A command added to the module later (MCHECK, UNBLOCK) is unknown to an
   * older module too: RATELIMIT.PEEK, which every version has, tells the two
   * apart. Taking an older module for none would send the server's keys to
   * the twin, which cannot read them.
   */
  private async hasModule(key: string, signal: AbortSignal): Promise<boolean> {
    try {
      await this.connection.send(key, ["RATELIMIT.PEEK", key, "1", "1"], signal);
      return true;
    } catch (error) {
      if (!isReplyError(error)) throw error;
      return !isUnknownCommand(error);
    }
  }

  /** The script form of the twin: EVALSHA, and EVAL once the server answers NOSCRIPT. */
  private async sendTwin(step: Step, signal: AbortSignal): Promise<unknown> {
    const key = step.keys[0] as string;
    try {
      return await this.connection.send(key, commandOf(step, "twin"), signal);
    } catch (error) {
      if (!messageOf(error).startsWith("NOSCRIPT")) throw error;
      return this.connection.send(key, commandOf(step, "twin", "EVAL"), signal);
    }
  }

  /** Holds the server's backend, logged the first time it answers there. */
  private learn(server: string, backend: Backend): void {
    this.learned.set(server, backend);
    if (this.announced.get(server) === backend) return;
    this.announced.set(server, backend);
    if (backend === "module") this.logger.info(`redis-ratelimit: ${server} has the RATELIMIT module; using it`, { server, backend });
    else this.logger.warn(`redis-ratelimit: ${server} has no RATELIMIT module; using the Lua script twin`, { server, backend });
  }

  /** The failure policy, as the logs name it. */
  private policyText(): string {
    if (this.share !== undefined) return `deciding in this process (fallback, share ${this.share})`;
    return this.failOpen ? "failing open (allowing every request)" : "failing closed (denying every request)";
  }

  /** Marks the server down until the retry interval ends; logged once, as it goes down. */
  private unavailable(server: string, cause: string): void {
    const wasDown = this.down.has(server);
    this.down.set(server, { retryAt: Date.now() + this.retryAfterFailureMs, cause });
    if (wasDown) return;
    const policy = this.policyText();
    this.logger.error(`redis-ratelimit: Redis at ${server} is unavailable (${cause}); ${policy} until it answers`, {
      server,
      cause,
      policy,
    });
  }

  private answered(server: string): void {
    if (!this.down.delete(server)) return;
    this.logger.warn(`redis-ratelimit: Redis at ${server} answers again; decisions are made there again`, { server });
  }
}

/** CHARGE on one key, or MCHARGE on several, with each key's limits. */
function chargeStep(keyed: readonly KeyedLimits[], several: boolean, options: ChargeOptions): Step {
  const keys = keyed.map(({ key }) => key);
  const given: CallOptions = {
    ...(options.cost === undefined ? {} : { cost: options.cost }),
    ...(options.precision === undefined ? {} : { precision: options.precision }),
  };
  if (several)
    return {
      operation: "mcharge",
      keys,
      args: multiLimitArgs(
        keyed.map(({ limits }) => limits),
        given,
      ),
    };
  return { operation: "charge", keys, args: limitArgs((keyed[0] as KeyedLimits).limits, given) };
}

/** CHARGE's or MCHARGE's answer as the fallback gives it. */
function readSettlement(value: unknown, several: boolean, keys: number): MultiSettlement {
  return several ? parseMultiSettlement(value, keys) : { settlement: parseSettlement(value), over: [] };
}

function chargeResultOf({ settlement, over }: MultiSettlement, given: readonly string[], source: "redis" | "fallback"): MultiChargeResult {
  return { ...settlement, source, overKeys: over.map((index) => ({ key: given[index] as string, index })) };
}

/** A step as a command for the backend: the module's RATELIMIT.*, or the twin by EVALSHA or EVAL. */
function commandOf(step: Step, backend: Backend, form: "EVAL" | "EVALSHA" = "EVALSHA"): string[] {
  if (step.operation === "delete") return ["DEL", ...step.keys];
  if (backend === "module") {
    const named = SEVERAL_KEYS.has(step.operation) ? [String(step.keys.length), ...step.keys] : step.keys;
    return [`RATELIMIT.${step.operation.toUpperCase()}`, ...named, ...step.args];
  }
  return [form, form === "EVAL" ? TWIN_SCRIPT : TWIN_SHA1, String(step.keys.length), ...step.keys, step.operation, ...step.args];
}
