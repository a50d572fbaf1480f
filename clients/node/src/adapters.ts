// Thin skins over the Redis clients people already run. Each sends one
// command to the master that owns the key, in one round trip, and names
// that server so the backend (module or twin) is learned per server. The
// clients are recognised by shape, so none of them is a dependency.
import { keySlot } from "./slot.js";

/** What the limiter needs from a Redis client; pass your own for other clients. */
export interface Connection {
  /**
   * Sends `args` (a whole command) to the server owning `key`; resolves with
   * the reply or rejects with the error. `signal` aborts when the limiter
   * stops waiting: a command not yet sent by then must never be sent.
   */
  send(key: string, args: readonly string[], signal?: AbortSignal): Promise<unknown>;
  /** Names the server owning `key` ("host:port"); the backend is learned once per name. */
  serverFor(key: string): string;
  /**
   * True when keys live on several Redis Cluster nodes: a call on several
   * keys whose hash slots differ is then refused before it is sent (else
   * the server answers CROSSSLOT).
   */
  readonly cluster?: boolean;
}

interface IoredisLike {
  call(command: string, ...args: string[]): Promise<unknown>;
  options?: { host?: string; port?: number };
}

interface IoredisClusterLike extends IoredisLike {
  isCluster: true;
  slots: string[][];
  nodes(role: "master"): IoredisLike[];
  refreshSlotsCache(callback?: () => void): void;
}

interface NodeRedisLike {
  sendCommand(args: string[]): Promise<unknown>;
}

interface NodeRedisClusterLike {
  sendCommand(firstKey: string, isReadonly: boolean, args: string[]): Promise<unknown>;
  slots: ({ master?: { host: string; port: number } } | undefined)[];
}

const STANDALONE = "server";

/** The one event of a client that the adapters listen to. */
interface ReadyEvents {
  once(event: "ready", listener: () => void): unknown;
  off(event: "ready", listener: () => void): unknown;
}

/**
 * Resolves once the client is connected, so no command waits in its offline
 * queue: a queued command is sent when the client reconnects, long after the
 * limiter gave up on it, and a request already refused would then be
 * charged. An abort of `signal` ends the wait, and nothing is sent.
 */
function whenReady(client: object, ready: boolean, signal: AbortSignal | undefined): Promise<void> {
  if (ready) return Promise.resolve();
  const events = client as ReadyEvents;
  return new Promise((resolve, reject) => {
    const onReady = () => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    };
    const onAbort = () => {
      events.off("ready", onReady);
      reject(signal?.reason);
    };
    if (signal?.aborted) return onAbort();
    events.once("ready", onReady);
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

/** node-redis queues while it reconnects (open but not ready); a closed client rejects at once. */
function nodeRedisReady(client: object, signal: AbortSignal | undefined): Promise<void> {
  return whenReady(client, field(client, "isReady") !== false || field(client, "isOpen") !== true, signal);
}

function isFunction(value: unknown): boolean {
  return typeof value === "function";
}

function field(client: object, name: string): unknown {
  return (client as Record<string, unknown>)[name];
}

function address(options: { host?: string; port?: number } | undefined): string {
  return options?.host && options.port ? `${options.host}:${options.port}` : STANDALONE;
}

function ioredis(client: IoredisLike): Connection {
  return {
    send: async (_key, [command, ...args], signal) => {
      await ioredisReady(client, signal);
      return client.call(command as string, ...args);
    },
    serverFor: () => address(client.options),
  };
}

/**
 * ioredis's cluster client does not know where a module command's key is
 * and would send it to any master and follow the MOVED: send it to the
 * key's master instead, and fall back to the cluster client when the slot
 * map is stale (README "Running on Redis Cluster").
 */
function ioredisCluster(cluster: IoredisClusterLike): Connection {
  const ownerAddress = (key: string) => cluster.slots[keySlot(key)]?.[0];
  const owner = (key: string) => cluster.nodes("master").find((node) => address(node.options) === ownerAddress(key));
  return {
    send: async (key, [command, ...args], signal) => {
      const node = owner(key);
      if (!node) {
        await ioredisReady(cluster, signal);
        return cluster.call(command as string, ...args);
      }
      await ioredisReady(node, signal);
      try {
        return await node.call(command as string, ...args);
      } catch (error) {
        if (!messageOf(error).startsWith("MOVED")) throw error;
        cluster.refreshSlotsCache();
        return cluster.call(command as string, ...args);
      }
    },
    serverFor: (key) => ownerAddress(key) ?? "cluster",
    cluster: true,
  };
}

function nodeRedis(client: NodeRedisLike): Connection {
  return {
    send: async (_key, args, signal) => {
      await nodeRedisReady(client, signal);
      return client.sendCommand([...args]);
    },
    serverFor: () => STANDALONE,
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
export type RedisClient = IoredisLike | IoredisClusterLike | NodeRedisLike | NodeRedisClusterLike | Connection;

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
