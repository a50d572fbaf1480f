// node:http and Express/Connect: the same request and response objects.

import { messageOf } from "./adapters.js";
import { type Actual, type Awaitable, bodyOf, judge, type LimitedInfo, type MiddlewareOptions, statusOf, type Verdict } from "./http.js";
import type { RateLimiter } from "./limiter.js";

/** Request header fields, as node:http gives them. */
export type HeaderFields = Record<string, string | string[] | undefined>;

/** The parts of an IncomingMessage the middleware and its callbacks read (Express's req has `ip` too). */
export interface NodeRequest {
  headers: HeaderFields;
  url?: string | undefined;
  method?: string | undefined;
  ip?: string | undefined;
  socket?: { remoteAddress?: string | undefined } | null;
}

/** The parts of a ServerResponse the middleware uses. */
export interface NodeResponse {
  statusCode: number;
  headersSent: boolean;
  setHeader(name: string, value: string): unknown;
  end(body?: string): unknown;
  once(event: "finish" | "close", listener: () => void): unknown;
}

/**
 * Express's req (4 and 5), as the callbacks see it where TypeScript cannot
 * infer the app's own type: in a route's own middleware
 * (`app.get(path, expressRateLimit(...), handler)`). Under `app.use` the
 * callbacks get the app's own Request type.
 */
export interface ExpressRequest extends NodeRequest {
  get(name: string): string | undefined;
  header(name: string): string | undefined;
  params: Record<string, string | string[]>;
  query: unknown;
  // biome-ignore lint/suspicious/noExplicitAny: Express types the parsed body as any; so does this, so `req.body.username` reads as it does in a handler.
  body: any;
  path: string;
  originalUrl: string;
}

/** Express's res (4 and 5), as an onLimited hook uses it. */
export interface ExpressResponse extends NodeResponse {
  // biome-ignore lint/suspicious/noExplicitAny: Express types res.locals as Record<string, any>; so does this, so a `settle` reads what the handler left there.
  locals: Record<string, any>;
  status(code: number): this;
  json(body: unknown): this;
  send(body?: unknown): this;
  set(field: string, value: string): this;
}

export type NodeMiddlewareOptions<Req extends NodeRequest, Res extends NodeResponse> = MiddlewareOptions<Req> & {
  /** Answers a refused request instead of the default 429 (or 503 while failing closed); what it returns is awaited and ignored (so `res.status(429).json(...)` fits). */
  onLimited?: (req: Req, res: Res, info: LimitedInfo) => unknown;
  /**
   * Token budgets: `cost` is then an estimate, reserved before the request
   * (limiter.reserve), and this gives the units the request actually spent
   * once its response has ended (`finish`, or `close` when the client went
   * away mid-stream; it may be async, to wait for what the app counts), or
   * undefined to keep the estimate. The reservation is settled with it
   * (limiter.settle). A response refunded by `refundWhen` (or a handler
   * that throws) settles at 0 instead.
   */
  settle?: (req: Req, res: Res) => Awaitable<Actual>;
};

/** The default key: Express's req.ip (which honours "trust proxy"), else the socket's address. */
export function clientAddress(req: NodeRequest): string | undefined {
  return req.ip ?? req.socket?.remoteAddress;
}

function stackOf(error: unknown): string {
  return error instanceof Error && error.stack ? error.stack : "";
}

function setHeaders(res: NodeResponse, headers: Record<string, string>): void {
  for (const [name, value] of Object.entries(headers)) res.setHeader(name, value);
}

async function refuse<Req extends NodeRequest, Res extends NodeResponse>(
  options: NodeMiddlewareOptions<Req, Res>,
  req: Req,
  res: Res,
  info: LimitedInfo,
): Promise<void> {
  if (options.onLimited) {
    await options.onLimited(req, res, info);
    return;
  }
  setHeaders(res, info.headers);
  res.statusCode = statusOf(info);
  res.setHeader("Content-Type", "text/plain; charset=utf-8");
  res.end(bodyOf(info));
}

/**
 * Refunds when the response finishes with a status the options call a
 * failure; with a reservation, else settles it with what the app reports,
 * once the response has ended (finished, or closed by the client).
 */
function refundOnFailure<Req extends NodeRequest, Res extends NodeResponse>(
  verdict: Verdict,
  options: NodeMiddlewareOptions<Req, Res>,
  req: Req,
  res: Res,
): void {
  const { settle } = verdict;
  const report = options.settle;
  if (!settle || !report) {
    res.once("finish", () => {
      if (verdict.refundWhen(res.statusCode)) void verdict.refund();
    });
    return;
  }
  let ended = false;
  const end = () => {
    if (ended) return;
    ended = true;
    if (verdict.refundWhen(res.statusCode)) void verdict.refund();
    else void settle(() => report(req, res));
  };
  res.once("finish", end);
  res.once("close", end);
}

/**
 * Express / Connect middleware: `app.use(expressRateLimit(limiter, { limits:
 * { windowMs: 60_000, max: 10 } }))`, or a route's own:
 * `app.post("/login", expressRateLimit(limiter, options), handler)`.
 */
export function expressRateLimit<Req extends NodeRequest = ExpressRequest, Res extends NodeResponse = ExpressResponse>(
  limiter: RateLimiter,
  options: NodeMiddlewareOptions<Req, Res>,
): (req: Req, res: Res, next: (error?: unknown) => void) => Promise<void> {
  return async (req, res, next) => {
    let verdict: Verdict | undefined;
    try {
      verdict = await judge(limiter, options, req, clientAddress, options.settle !== undefined);
    } catch (error) {
      next(error);
      return;
    }
    if (!verdict) return next();
    setHeaders(res, verdict.info.headers);
    if (!verdict.pass) return refuse(options, req, res, verdict.info);
    refundOnFailure(verdict, options, req, res);
    next();
  };
}

/**
 * Wraps a node:http handler. A handler that throws is refunded, answered
 * 500 and reported to the limiter's logger (rethrowing from a request
 * listener would crash the process).
 */
export function withRateLimit<Req extends NodeRequest, Res extends NodeResponse>(
  limiter: RateLimiter,
  options: NodeMiddlewareOptions<Req, Res>,
  handler: (req: Req, res: Res) => unknown,
): (req: Req, res: Res) => Promise<void> {
  return async (req, res) => {
    let verdict: Verdict | undefined;
    try {
      verdict = await judge(limiter, options, req, clientAddress, options.settle !== undefined);
      if (verdict) {
        setHeaders(res, verdict.info.headers);
        if (!verdict.pass) return await refuse(options, req, res, verdict.info);
        refundOnFailure(verdict, options, req, res);
      }
      await handler(req, res);
    } catch (error) {
      await verdict?.refund();
      // The app's own failure, so its stack (as text) goes with it.
      limiter.logger.error("redis-ratelimit: the request handler failed; answered 500", { cause: messageOf(error), stack: stackOf(error) });
      if (!res.headersSent) {
        res.statusCode = 500;
        res.end("Internal Server Error\n");
      }
    }
  };
}
