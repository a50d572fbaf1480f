// Thin skins over the Redis clients people already run. Each sends one
// command (or one MULTI/EXEC) to the master that owns the key, in one round
// trip, and names that server so the backend (module or twin) is learned
// per server. The clients are recognised by shape, so none of them is a
// dependency.
import { keySlot } from "./slot.js";

/** What the limiter needs from a Redis client; pass your own for other clients. */
export interface Connection {
  /**
   * Sends `args` (a whole command) to the server owning `key`; resolves with
   * the reply or rejects with the error. `signal` aborts when the limiter
   * stops waiting: a command not yet sent by then must never be sent. An
   * error reply must reject with an error named "ReplyError" (as ioredis
   * names its own), so it is told apart from a failed connection.
   */
  send(key: string, args: readonly string[], signal?: AbortSignal): Promise<unknown>;
  /** Names the server owning `key` ("host:port"); the backend is learned once per name. */
  serverFor(key: string): string;
  /**
   * Sends `commands` to the server owning `key` in one MULTI/EXEC; resolves
   * with their replies, or rejects with the first error among them.
   * Optional: without it, the commands are sent one after another.
   */
  transaction?(key: string, commands: readonly (readonly string[])[], signal?: AbortSignal): Promise<unknown[]>;
  /**
   * While the client cannot reach the key's server: the error of its last
   * attempt (so an outage is reported as ECONNREFUSED, not as a timeout).
   * Optional.
   */
  connectionError?(key: string): unknown;
  /**
   * True when keys live on several Redis Cluster nodes: a call on several
   * keys whose hash slots differ is then refused before it is sent (else
   * the server answers CROSSSLOT).
   */
  readonly cluster?: boolean;
}

interface ChainLike {
  exec(): Promise<unknown>;
}

interface IoredisLike {
  call(command: string, ...args: string[]): Promise<unknown>;
  multi(commands: unknown[][]): ChainLike;
  options?: { host?: string; port?: number; path?: string };
}

interface IoredisClusterLike extends IoredisLike {
  isCluster: true;
  slots: string[][];
  nodes(role: "master"): IoredisLike[];
  refreshSlotsCache(callback?: () => void): void;
}

interface NodeRedisMultiLike extends ChainLike {
  addCommand(args: string[]): NodeRedisMultiLike;
}

interface NodeRedisLike {
  sendCommand(args: string[]): Promise<unknown>;
  multi(): NodeRedisMultiLike;
  options?: { socket?: { host?: string; port?: number; path?: string } };
}

interface NodeRedisClusterLike {
  sendCommand(firstKey: string, isReadonly: boolean, args: string[]): Promise<unknown>;
  slots: ({ master?: { host: string; port: number } } | undefined)[];
}

const STANDALONE = "server";

/** The events of a client that the adapters listen to. */
interface ClientEvents {
  on(event: string | symbol, listener: (error?: unknown) => void): unknown;
  once(event: "ready", listener: () => void): unknown;
  off(event: string | symbol, listener: (error?: unknown) => void): unknown;
}

/** A client's connection, as the adapters follow it. */
interface Watch {
  /** The error of the last attempt to connect, until the client is ready again. */
  error: unknown;
  /** Where 'error' events can be seen without handling them; undefined for a client that is no EventEmitter. */
  monitor: symbol | undefined;
}

const watches = new WeakMap<object, Watch>();

/**
 * Follows a client's connection errors through EventEmitter.errorMonitor,
 * which sees 'error' events without handling them: the client behaves as
 * it did (node-redis still throws an error nobody listens to; ioredis
 * still prints its "Unhandled error event", and emits nothing else until
 * the app listens for 'error', as the README's examples do). One watch per
 * client, however many limiters share it.
 */
function watch(client: object): Watch {
  const known = watches.get(client);
  if (known) return known;
  const monitor = (client.constructor as { errorMonitor?: unknown }).errorMonitor;
  const state: Watch = { error: undefined, monitor: typeof monitor === "symbol" ? monitor : undefined };
  watches.set(client, state);
  if (state.monitor) {
    const events = client as ClientEvents;
    events.on(state.monitor, (error) => {
      state.error = error;
    });
    events.on("ready", () => {
      state.error = undefined;
    });
  }
  return state;
}

/**
 * Resolves once the client is connected, so no command waits in its offline
 * queue: a queued command is sent when the client reconnects, long after the
 * limiter gave up on it, and a request already refused would then be
 * charged. A failed attempt to connect during the wait rejects with its
 * error; an abort of `signal` ends the wait. Either way nothing is sent.
 */
function whenReady(client: object, ready: boolean, signal: AbortSignal | undefined): Promise<void> {
  if (ready) return Promise.resolve();
  const events = client as ClientEvents;
  const { monitor } = watch(client);
  return new Promise((resolve, reject) => {
    const stop = () => {
      events.off("ready", onReady);
      if (monitor) events.off(monitor, onError);
      signal?.removeEventListener("abort", onAbort);
    };
    const onReady = () => {
      stop();
      resolve();
    };
    const onError = (error: unknown) => {
      stop();
      reject(error);
    };
    const onAbort = () => {
      stop();
      reject(signal?.reason);
    };
    if (signal?.aborted) return onAbort();
    events.once("ready", onReady);
    if (monitor) events.on(monitor, onError);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * ioredis queues a command in every status but "ready" and "end" (which
 * rejects at once); "wait" (lazyConnect) connects on the first command, so
 * the adapter starts the connection itself before waiting for it.
 */
function ioredisReady(client: object, signal: AbortSignal | undefined): Promise<void> {
  const status = field(client, "status");
  if (typeof status !== "string") return Promise.resolve();
  if (status === "wait") (field(client, "connect") as () => Promise<void>).call(client).catch(() => undefined);
  return whenReady(client, status === "ready" || status === "end", signal);
}

function ioredisConnected(client: object): boolean {
  const status = field(client, "status");
  return typeof status !== "string" || status === "ready";
}

/** node-redis queues while it reconnects (open but not ready); a closed client rejects at once. */
function nodeRedisReady(client: object, signal: AbortSignal | undefined): Promise<void> {
  return whenReady(client, nodeRedisConnected(client) || field(client, "isOpen") !== true, signal);
}

function nodeRedisConnected(client: object): boolean {
  return field(client, "isReady") !== false;
}

/** The client's last connection error while it is not connected. */
function connectionErrorOf(client: object, connected: (client: object) => boolean): unknown {
  return connected(client) ? undefined : watch(client).error;
}

function isFunction(value: unknown): boolean {
  return typeof value === "function";
}

function field(client: object, name: string): unknown {
  return (client as Record<string, unknown>)[name];
}

function address(options: { host?: string; port?: number; path?: string } | undefined): string {
  if (options?.path) return options.path;
  return options?.host && options.port ? `${options.host}:${options.port}` : STANDALONE;
}

/**
 * ioredis answers a MULTI/EXEC as [error, reply] pairs, and rejects one the
 * server discarded (EXECABORT) with the errors that made it do so.
 */
async function ioredisTransaction(client: IoredisLike, commands: readonly (readonly string[])[]): Promise<unknown[]> {
  let pairs: [unknown, unknown][];
  try {
    pairs = (await client.multi(commands.map((command) => ["call", ...command])).exec()) as [unknown, unknown][];
  } catch (error) {
    const [queued] = (error as { previousErrors?: unknown[] }).previousErrors ?? [];
    throw queued ?? error;
  }
  const failed = pairs.find(([error]) => error);
  if (failed) throw failed[0];
  return pairs.map(([, reply]) => reply);
}

/** node-redis rejects a MULTI/EXEC holding an error reply with all of them (MultiErrorReply): the first is thrown. */
async function nodeRedisTransaction(client: NodeRedisLike, commands: readonly (readonly string[])[]): Promise<unknown[]> {
  const multi = commands.reduce((chain, command) => chain.addCommand([...command]), client.multi());
  try {
    return (await multi.exec()) as unknown[];
  } catch (error) {
    const { replies, errorIndexes } = error as { replies?: unknown[]; errorIndexes?: number[] };
    throw replies && errorIndexes?.length ? replies[errorIndexes[0] as number] : error;
  }
}

function ioredis(client: IoredisLike): Connection {
  watch(client);
  return {
    send: async (_key, [command, ...args], signal) => {
      await ioredisReady(client, signal);
      return client.call(command as string, ...args);
    },
    transaction: async (_key, commands, signal) => {
      await ioredisReady(client, signal);
      return ioredisTransaction(client, commands);
    },
    connectionError: () => connectionErrorOf(client, ioredisConnected),
    serverFor: () => address(client.options),
  };
}

/**
 * ioredis's cluster client does not know where a module command's key is
 * and would send it to any master and follow the MOVED: send it to the
 * key's master instead, and fall back to the cluster client when the slot
 * map is stale (docs/cluster.md).
 */
function ioredisCluster(cluster: IoredisClusterLike): Connection {
  const ownerAddress = (key: string) => cluster.slots[keySlot(key)]?.[0];
  const owner = (key: string) => cluster.nodes("master").find((node) => address(node.options) === ownerAddress(key));
  /** Runs `work` on the key's master, or on the cluster client when the slot map does not name one or is stale. */
  const onOwner = async <T>(key: string, signal: AbortSignal | undefined, work: (client: IoredisLike) => Promise<T>): Promise<T> => {
    const node = owner(key);
    if (!node) {
      await ioredisReady(cluster, signal);
      return work(cluster);
    }
    await ioredisReady(node, signal);
    try {
      return await work(node);
    } catch (error) {
      if (!messageOf(error).startsWith("MOVED")) throw error;
      cluster.refreshSlotsCache();
      return work(cluster);
    }
  };
  return {
    send: (key, [command, ...args], signal) => onOwner(key, signal, (client) => client.call(command as string, ...args)),
    transaction: (key, commands, signal) => onOwner(key, signal, (client) => ioredisTransaction(client, commands)),
    serverFor: (key) => ownerAddress(key) ?? "cluster",
    cluster: true,
  };
}

function nodeRedis(client: NodeRedisLike): Connection {
  watch(client);
  return {
    send: async (_key, args, signal) => {
      await nodeRedisReady(client, signal);
      return client.sendCommand([...args]);
    },
    transaction: async (_key, commands, signal) => {
      await nodeRedisReady(client, signal);
      return nodeRedisTransaction(client, commands);
    },
    connectionError: () => connectionErrorOf(client, nodeRedisConnected),
    serverFor: () => address(client.options?.socket),
  };
}

/** node-redis's cluster client routes by the key it is given: one round trip. */
function nodeRedisCluster(cluster: NodeRedisClusterLike): Connection {
  return {
    send: (key, args) => cluster.sendCommand(key, false, [...args]),
    serverFor: (key) => {
      const master = cluster.slots[keySlot(key)]?.master;
      return master ? `${master.host}:${master.port}` : "cluster";
    },
    cluster: true,
  };
}

/** ioredis 5/6 (standalone or Cluster), node-redis 5/6 (client or cluster), or a Connection. */
export type RedisClient =
  | Pick<IoredisLike, "call">
  | Pick<IoredisClusterLike, "call" | "isCluster" | "slots" | "nodes" | "refreshSlotsCache">
  | Pick<NodeRedisLike, "sendCommand">
  | NodeRedisClusterLike
  | Connection;

export function connect(client: RedisClient): Connection {
  if (isFunction(field(client, "serverFor")) && isFunction(field(client, "send"))) return client as Connection;
  if (isFunction(field(client, "call"))) {
    return field(client, "isCluster") === true && isFunction(field(client, "nodes"))
      ? ioredisCluster(client as IoredisClusterLike)
      : ioredis(client as IoredisLike);
  }
  if (isFunction(field(client, "sendCommand"))) {
    return Array.isArray(field(client, "slots")) && isFunction(field(client, "getSlotMaster"))
      ? nodeRedisCluster(client as NodeRedisClusterLike)
      : nodeRedis(client as NodeRedisLike);
  }
  throw new TypeError("redis-ratelimit: pass an ioredis or node-redis client (standalone or cluster), or a Connection");
}

export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
