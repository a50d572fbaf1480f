// The client: check / peek / undo, on one key or several at once, and
// unblock, on the module where it is loaded and on the script twin where it
// is not (learned per server from the answer to the module's own command),
// under an explicit failure policy.
import { type Connection, connect, messageOf, type RedisClient } from "./adapters.js";
import {
  type CallOptions,
  type Decision,
  type KeyLimits,
  type Limit,
  limitArgs,
  multiLimitArgs,
  parseCount,
  parseCounts,
  parseDecision,
  parseMultiDecision,
  RateLimitInputError,
  smallestMax,
  validateKey,
  validateKeyLimits,
  validateKeys,
  validateLimits,
  validateOptions,
} from "./limits.js";
import { type KeyedLimits, MemoryLimiter, type MultiDecision } from "./memory.js";
import { keySlot } from "./slot.js";
import { TWIN_SCRIPT, TWIN_SHA1 } from "./twin.generated.js";

/** What answers on a server: the module's RATELIMIT.* commands or the Lua twin. */
export type Backend = "module" | "twin";

/** Where a decision came from. */
export type Source = "redis" | "fallback" | "failOpen" | "failClosed";

export interface Result extends Decision {
  source: Source;
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
}

/** console fits; so does a pino or winston logger wrapped as (message, details). */
export interface Logger {
  info(message: string, details?: Record<string, unknown>): void;
  warn(message: string, details?: Record<string, unknown>): void;
  error(message: string, details?: Record<string, unknown>): void;
}

export interface FallbackOptions {
  /** This process's share of each limit while Redis is unreachable (0 < share <= 1): max becomes max(1, floor(max * share)). */
  share: number;
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
  /** Receives backend detection, every failure with its cause, and recovery (default console). */
  logger?: Logger;
}

export interface RefundOptions {
  /** Units to refund from each key (default 1). */
  cost?: number;
  /** The decision refunded, so one made by the fallback is refunded there. */
  decision?: Result;
}

/** The module's RATELIMIT.<OPERATION> and the twin's operation of the same name. */
type Operation = "check" | "peek" | "undo" | "mcheck" | "mpeek" | "mundo" | "unblock";

/** Operations whose keys follow a numkeys in the module's command (the twin always takes one). */
const SEVERAL_KEYS: ReadonlySet<Operation> = new Set(["mcheck", "mpeek", "mundo"]);

type Reply = { ok: true; value: unknown } | { ok: false };

/**
 * Replies that mean "this server is not well right now", not "your call is
 * wrong"; the twin's script gets them wrapped as "ERR OOM ... script: ...".
 */
const OUTAGE_REPLY = /^(ERR )?(LOADING|READONLY|CLUSTERDOWN|TRYAGAIN|MASTERDOWN|BUSY|OOM|MOVED|ASK)\b/;
const REPLY_ERROR_NAMES = new Set(["ReplyError", "ErrorReply", "SimpleError", "BlobError"]);

/** An answer from Redis that is an error about the call itself (WRONGTYPE, a full log, ACL): thrown, never a policy. */
export class RateLimitReplyError extends Error {
  override name = "RateLimitReplyError";
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
  if (!(error instanceof Error) || OUTAGE_REPLY.test(error.message)) return false;
  for (let proto: unknown = error; proto instanceof Error; proto = Object.getPrototypeOf(proto)) {
    if (REPLY_ERROR_NAMES.has(proto.name) || REPLY_ERROR_NAMES.has(proto.constructor.name)) return true;
  }
  return false;
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
      const error = new TimeoutError(`no answer from Redis within ${ms} ms`);
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
  /** Where failures and backend changes are reported. */
  readonly logger: Logger;
  private readonly memory = new MemoryLimiter();
  private readonly learned = new Map<string, Backend>();
  /** Per server: until when calls skip it after a failure. */
  private readonly downUntil = new Map<string, number>();

  constructor(client: RedisClient, options: RateLimiterOptions = {}) {
    this.connection = connect(client);
    this.prefix = options.prefix ?? "";
    this.timeoutMs = options.timeoutMs ?? 250;
    this.failOpen = options.failOpen ?? false;
    this.retryAfterFailureMs = options.retryAfterFailureMs ?? 1000;
    this.logger = options.logger ?? console;
    const share = options.fallback?.share;
    if (share !== undefined && !(share > 0 && share <= 1)) {
      throw new RateLimitInputError(`fallback.share must be above 0 and at most 1, got ${share}`);
    }
    this.share = share;
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
  checkAll(keys: readonly KeyLimits[], options: CallOptions = {}): Promise<MultiResult> {
    return this.decideAll("mcheck", keys, options);
  }

  /** Would checkAll allow this request now? Records nothing. */
  peekAll(keys: readonly KeyLimits[], options: CallOptions = {}): Promise<MultiResult> {
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
   * Lifts the key's block, keeping its history (what it recorded still
   * counts); resolves true if it was blocked. While Redis is unreachable it
   * lifts the fallback's block, and resolves what that one says.
   */
  async unblock(key: string): Promise<boolean> {
    const fullKey = this.prefix + validateKey(key);
    const local = this.memory.unblock(fullKey);
    const reply = await this.call("unblock", [fullKey], []);
    return reply.ok ? parseCount(reply.value, "RATELIMIT.UNBLOCK") === 1 : local;
  }

  /** Deletes the key: its log and its block (both backends store one key per limiter). */
  async delete(key: string): Promise<boolean> {
    const fullKey = this.prefix + validateKey(key);
    this.memory.delete(fullKey);
    const reply = await this.guarded("delete", [fullKey], undefined, (signal) => this.connection.send(fullKey, ["DEL", fullKey], signal));
    return reply.ok && parseCount(reply.value, "DEL") > 0;
  }

  /** UNDO or MUNDO where the refunded decision was made: Redis, the fallback, or nowhere (the policy's answers counted nothing). */
  private async refund(operation: "undo" | "mundo", keys: readonly string[], options: RefundOptions): Promise<number[]> {
    const cost = validateCost(options.cost);
    const source = options.decision?.source;
    if (source === "fallback") return keys.map((key) => this.memory.undo(key, cost));
    if (source === "failOpen" || source === "failClosed") return keys.map(() => 0);
    const reply = await this.call(operation, keys, options.cost === undefined ? [] : ["COST", String(cost)]);
    if (reply.ok) return operation === "undo" ? [parseCount(reply.value, "RATELIMIT.UNDO")] : parseCounts(reply.value, keys.length);
    return keys.map((key) => (this.share === undefined ? 0 : this.memory.undo(key, cost)));
  }

  private async decide(operation: "check" | "peek", key: string, limits: Limit | readonly Limit[], options: CallOptions): Promise<Result> {
    const fullKey = this.prefix + validateKey(key);
    const list = validateLimits(limits);
    const cost = validateOptions(list, options);
    const late = operation === "check" ? this.lateRefund("undo", [fullKey], cost, (value) => parseDecision(value).allowed) : undefined;
    const reply = await this.call(operation, [fullKey], limitArgs(list, options), late);
    if (reply.ok) return { ...parseDecision(reply.value), source: "redis" };
    const { decision, source } = this.whileUnavailable(operation === "check", [{ key: fullKey, limits: list }], { ...options, cost });
    return { ...decision, source };
  }

  private async decideAll(operation: "mcheck" | "mpeek", entries: readonly KeyLimits[], options: CallOptions): Promise<MultiResult> {
    const { keys, limits } = validateKeyLimits(entries);
    const fullKeys = this.keysOfOneCall(keys);
    const cost = validateOptions(limits.flat(), options);
    const allowed = (value: unknown) => parseMultiDecision(value, keys.length).decision.allowed;
    const late = operation === "mcheck" ? this.lateRefund("mundo", fullKeys, cost, allowed) : undefined;
    const reply = await this.call(operation, fullKeys, multiLimitArgs(limits, options), late);
    const keyed = fullKeys.map((key, i) => ({ key, limits: limits[i] as readonly Limit[] }));
    const { decision, denied, source } = reply.ok
      ? { ...parseMultiDecision(reply.value, keys.length), source: "redis" as const }
      : this.whileUnavailable(operation === "mcheck", keyed, { ...options, cost });
    return { ...decision, source, denied: denied.map((index) => ({ key: keys[index] as string, index })) };
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

  /** The failure policy's answer over the call's keys. */
  private whileUnavailable(record: boolean, keys: readonly KeyedLimits[], options: CallOptions): MultiDecision & { source: Source } {
    if (this.share !== undefined) {
      const share = this.share;
      const local = keys.map(({ key, limits }) => ({
        key,
        limits: limits.map((limit) => ({ ...limit, max: Math.max(1, Math.floor(limit.max * share)) })),
      }));
      return { ...(record ? this.memory.checkAll(local, options) : this.memory.peekAll(local, options)), source: "fallback" };
    }
    const cost = options.cost ?? 1;
    if (this.failOpen) {
      const remaining = Math.min(...keys.map(({ limits }) => smallestMax(limits))) - cost;
      return { decision: { allowed: true, remaining, retryAfterMs: 0, resetAfterMs: 0 }, denied: [], source: "failOpen" };
    }
    const retryAfterMs = Math.max(this.retryAfterFailureMs, 1);
    return { decision: { allowed: false, remaining: 0, retryAfterMs, resetAfterMs: 0 }, denied: [], source: "failClosed" };
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
  ): (value: unknown) => Promise<void> {
    const label = keys.join(", ");
    return async (value) => {
      try {
        if (!allowed(value)) return;
        // Not through the failure policy: the server has just answered, though it is still marked down.
        await withTimeout((signal) => this.send(undo, keys, ["COST", String(cost)], signal), this.timeoutMs);
        this.logger.warn(`redis-ratelimit: check on ${label} ran after its timeout; its charge was refunded`, { keys, cost });
      } catch (error) {
        this.logger.error(`redis-ratelimit: check on ${label} ran after its timeout; its refund failed: ${messageOf(error)}`, {
          keys,
          cause: error,
        });
      }
    };
  }

  /** One operation on the server of the keys (the first key's) under the timeout and the failure policy. */
  private call(operation: Operation, keys: readonly string[], args: string[], late?: (value: unknown) => void): Promise<Reply> {
    return this.guarded(operation, keys, late, (signal) => this.send(operation, keys, args, signal));
  }

  /** One operation on the keys' server, by the backend learned for it. */
  private async send(operation: Operation, keys: readonly string[], args: string[], signal: AbortSignal): Promise<unknown> {
    const first = keys[0] as string;
    const server = this.connection.serverFor(first);
    if (this.learned.get(server) !== "twin") {
      const named = SEVERAL_KEYS.has(operation) ? [String(keys.length), ...keys] : keys;
      try {
        const value = await this.connection.send(first, [`RATELIMIT.${operation.toUpperCase()}`, ...named, ...args], signal);
        this.learn(server, "module");
        return value;
      } catch (error) {
        if (!/unknown command/i.test(messageOf(error))) throw error;
        this.learn(server, "twin");
      }
    }
    return this.twin(operation, keys, args, signal);
  }

  /** The script form of the twin: EVALSHA, and EVAL once the server answers NOSCRIPT. */
  private async twin(operation: Operation, keys: readonly string[], args: string[], signal: AbortSignal): Promise<unknown> {
    const first = keys[0] as string;
    const tail = [String(keys.length), ...keys, operation, ...args];
    try {
      return await this.connection.send(first, ["EVALSHA", TWIN_SHA1, ...tail], signal);
    } catch (error) {
      if (!messageOf(error).startsWith("NOSCRIPT")) throw error;
      return this.connection.send(first, ["EVAL", TWIN_SCRIPT, ...tail], signal);
    }
  }

  private learn(server: string, backend: Backend): void {
    const before = this.learned.get(server);
    if (before === backend) return;
    this.learned.set(server, backend);
    const how = backend === "module" ? "the redis-ratelimit module" : "the Lua script twin (the module is not loaded there)";
    this.logger.info(`redis-ratelimit: ${server} answers with ${how}`, { server, backend });
  }

  /**
   * Runs one Redis round trip under the timeout and the failure policy:
   * resolves { ok: false } when Redis is unreachable (logged with its
   * cause), rejects when Redis answered that the call itself is wrong.
   */
  private async guarded(
    operation: string,
    keys: readonly string[],
    late: ((value: unknown) => void) | undefined,
    send: (signal: AbortSignal) => Promise<unknown>,
  ): Promise<Reply> {
    const server = this.connection.serverFor(keys[0] as string);
    const key = keys.join(", ");
    if (Date.now() < (this.downUntil.get(server) ?? 0)) return { ok: false };
    try {
      const value = await withTimeout(send, this.timeoutMs, late);
      this.recovered(server);
      return { ok: true, value };
    } catch (error) {
      if (isReplyError(error)) {
        this.logger.error(`redis-ratelimit: ${operation} on ${key} refused: ${messageOf(error)}`, { key, keys, operation, cause: error });
        throw new RateLimitReplyError(messageOf(error), { cause: error });
      }
      this.failed(server, operation, key, error);
      return { ok: false };
    }
  }

  private failed(server: string, operation: string, key: string, cause: unknown): void {
    this.downUntil.set(server, Date.now() + this.retryAfterFailureMs);
    const policy = this.share !== undefined ? `in-process fallback (share ${this.share})` : this.failOpen ? "fail open" : "fail closed";
    this.logger.error(`redis-ratelimit: Redis (${server}) unavailable for ${operation} on ${key}: ${messageOf(cause)}; ${policy}`, {
      server,
      key,
      operation,
      policy,
      cause,
    });
  }

  private recovered(server: string): void {
    if (!this.downUntil.delete(server)) return;
    this.logger.info(`redis-ratelimit: ${server} answers again; its keys are decided by Redis again`, { server });
  }
}

function validateCost(cost: number | undefined): number {
  if (cost === undefined) return 1;
  if (!Number.isSafeInteger(cost) || cost < 1) throw new RateLimitInputError(`cost must be a positive integer, got ${cost}`);
  return cost;
}
