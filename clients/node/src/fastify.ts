// Fastify: a plugin adding an onRequest hook (decide) and an onResponse
// hook (refund), registered without encapsulation so it covers every route
// of the instance, or the two hooks for one route's options.
import { type Actual, type Awaitable, bodyOf, judge, type LimitedInfo, type MiddlewareOptions, statusOf, type Verdict } from "./http.js";
import type { RateLimiter } from "./limiter.js";

/** The parts of a FastifyRequest the hooks and their callbacks read. */
export interface FastifyRequestLike {
  ip?: string;
  headers: Record<string, string | string[] | undefined>;
  url?: string;
  method?: string;
}

/** The parts of a FastifyReply the hooks use. */
export interface FastifyReplyLike {
  /** Node's response: its `close` settles a reservation when the client goes away mid-stream. */
  raw?: { once(event: "close", listener: () => void): unknown };
  statusCode: number;
  header(name: string, value: string): unknown;
  code(status: number): unknown;
  send(body?: unknown): unknown;
}

export type FastifyOptions<Req extends FastifyRequestLike, Reply extends FastifyReplyLike> = MiddlewareOptions<Req> & {
  /** Answers a refused request instead of the default 429 (or 503 while failing closed). */
  onLimited?: (req: Req, reply: Reply, info: LimitedInfo) => unknown;
  /**
   * Token budgets: `cost` is then an estimate reserved before the request,
   * and this gives the units it actually spent (or undefined: the estimate)
   * in the onResponse hook, once the response (a stream included) has been
   * sent; the reservation is settled with it. A response refunded by
   * `refundWhen` settles at 0 instead.
   */
  settle?: (req: Req, reply: Reply) => Awaitable<Actual>;
};

export interface FastifyHooks<Req extends FastifyRequestLike, Reply extends FastifyReplyLike> {
  onRequest: (req: Req, reply: Reply) => Promise<unknown>;
  onResponse: (req: Req, reply: Reply) => Promise<void>;
}

/**
 * `T`, but not a place TypeScript infers `T` from (TypeScript 5.4's
 * NoInfer, for older compilers too): the hooks' types come from the
 * options alone, since Fastify's route options, as a contextual type,
 * would infer `never`.
 */
type Deferred<T> = [T][T extends unknown ? 0 : never];

/** `fastify.route({ ..., ...fastifyHooks(limiter, options) })` limits one route. */
export function fastifyHooks<Req extends FastifyRequestLike = FastifyRequestLike, Reply extends FastifyReplyLike = FastifyReplyLike>(
  limiter: RateLimiter,
  options: FastifyOptions<Req, Reply>,
): FastifyHooks<Deferred<Req>, Deferred<Reply>> {
  const verdicts = new WeakMap<Req, Verdict>();
  /** The response has ended: a failure is refunded, else a reservation settled with what the app reports (once: the first call wins). */
  const ended = async (verdict: Verdict, req: Req, reply: Reply) => {
    const report = options.settle;
    if (verdict.refundWhen(reply.statusCode)) await verdict.refund();
    else if (verdict.settle && report) await verdict.settle(() => report(req, reply));
  };
  return {
    onRequest: async (req, reply) => {
      const verdict = await judge(limiter, options, req, (request) => request.ip, options.settle !== undefined);
      if (!verdict) return;
      for (const [name, value] of Object.entries(verdict.info.headers)) reply.header(name, value);
      if (verdict.pass) {
        verdicts.set(req, verdict);
        // A client gone mid-stream: Fastify runs no onResponse; the reservation is settled with what the app reports.
        if (options.settle) reply.raw?.once("close", () => void ended(verdict, req, reply));
        return;
      }
      if (options.onLimited) return options.onLimited(req, reply, verdict.info);
      reply.code(statusOf(verdict.info));
      return reply.send(bodyOf(verdict.info));
    },
    onResponse: async (req, reply) => {
      const verdict = verdicts.get(req);
      if (verdict) await ended(verdict, req, reply);
    },
  };
}

interface FastifyInstanceLike<Req, Reply> {
  addHook(name: "onRequest" | "onResponse", hook: (req: Req, reply: Reply) => Promise<unknown>): unknown;
}

/**
 * `await fastify.register(fastifyRateLimit, { limiter, limits: ... })`: limits
 * every route of the instance (the plugin skips encapsulation, as
 * fastify-plugin would).
 */
export const fastifyRateLimit = Object.assign(
  async <Req extends FastifyRequestLike, Reply extends FastifyReplyLike>(
    fastify: FastifyInstanceLike<Req, Reply>,
    options: FastifyOptions<Req, Reply> & { limiter: RateLimiter },
  ): Promise<void> => {
    const hooks = fastifyHooks(options.limiter, options);
    fastify.addHook("onRequest", hooks.onRequest);
    fastify.addHook("onResponse", hooks.onResponse);
  },
  { [Symbol.for("skip-override")]: true, [Symbol.for("fastify.display-name")]: "redis-ratelimit" },
);
