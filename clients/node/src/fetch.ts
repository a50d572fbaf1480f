// The Fetch API: `(Request) => Response | Promise<Response>`, as Hono,
// Next.js route handlers, Deno and Supabase Edge Functions use.
import {
  type Actual,
  type Awaitable,
  bodyOf,
  type GcraKeyOptions,
  judge,
  type LimitedInfo,
  type OneKeyOptions,
  type SeveralKeysOptions,
  statusOf,
  type Verdict,
} from "./http.js";
import type { RateLimiter } from "./limiter.js";

/** Who is limited; required, since a Request carries no peer address. */
type RequestKeyOf = (req: Request) => string | undefined | Promise<string | undefined>;

export type FetchOptions = (
  | (OneKeyOptions<Request> & { key: RequestKeyOf })
  | SeveralKeysOptions<Request>
  | (GcraKeyOptions<Request> & { key: RequestKeyOf })
) & {
  /** Answers a refused request instead of the default 429 (or 503 while failing closed). */
  onLimited?: (req: Request, info: LimitedInfo) => Response | Promise<Response>;
  /**
   * Token budgets: `cost` is then an estimate reserved before the request,
   * and this gives the units it actually spent (or undefined: the
   * estimate), called once the handler's Response body has been read to its
   * end, has failed, or was cancelled (the client went away); it may be
   * async, to wait for what the app counts. The reservation is settled with
   * it. A response refunded by `refundWhen` (or a handler that throws)
   * settles at 0 instead.
   */
  settle?: (req: Request, response: Response) => Awaitable<Actual>;
};

/**
 * The response with its body passed through a stream that calls `ended`
 * once it has been read to its end, has failed, or was cancelled (at once
 * for a response without a body).
 */
function onBodyEnd(response: Response, ended: () => void): Response {
  if (!response.body) {
    ended();
    return response;
  }
  const reader = response.body.getReader();
  let called = false;
  const end = () => {
    if (called) return;
    called = true;
    ended();
  };
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const { done, value } = await reader.read();
        if (done) {
          controller.close();
          end();
        } else {
          controller.enqueue(value);
        }
      } catch (error) {
        controller.error(error);
        end();
      }
    },
    async cancel(reason) {
      await reader.cancel(reason).catch(() => undefined);
      end();
    },
  });
  return new Response(body, { status: response.status, statusText: response.statusText, headers: response.headers });
}

/** Settles the reservation once the response's body has ended (or refunds it, for a failure status). */
function settled(verdict: Verdict, options: FetchOptions, req: Request, response: Response): Response {
  const { settle } = verdict;
  const report = options.settle;
  if (!settle || !report) return response;
  return onBodyEnd(response, () => void settle(() => report(req, response)));
}

/** Adds header fields, copying the response when its headers are immutable (as fetch() results are). */
function withHeaders(response: Response, headers: Record<string, string>): Response {
  const fields = Object.entries(headers);
  if (fields.length === 0) return response;
  try {
    for (const [name, value] of fields) response.headers.set(name, value);
    return response;
  } catch {
    const copy = new Response(response.body, response);
    for (const [name, value] of fields) copy.headers.set(name, value);
    return copy;
  }
}

/**
 * Wraps a Fetch handler. A handler that throws is refunded and the error
 * rethrown to the framework; a response with a failure status is refunded.
 */
export function fetchRateLimit<Args extends unknown[]>(
  limiter: RateLimiter,
  options: FetchOptions,
  handler: (req: Request, ...rest: Args) => Response | Promise<Response>,
): (req: Request, ...rest: Args) => Promise<Response> {
  return async (req, ...rest) => {
    const verdict = await judge(limiter, options, req, () => undefined, options.settle !== undefined);
    if (!verdict) return handler(req, ...rest);
    if (!verdict.pass) {
      if (options.onLimited) return options.onLimited(req, verdict.info);
      return new Response(bodyOf(verdict.info), { status: statusOf(verdict.info), headers: verdict.info.headers });
    }
    let response: Response;
    try {
      response = await handler(req, ...rest);
    } catch (error) {
      await verdict.refund();
      throw error;
    }
    if (verdict.refundWhen(response.status)) {
      await verdict.refund();
      return withHeaders(response, verdict.info.headers);
    }
    return withHeaders(settled(verdict, options, req, response), verdict.info.headers);
  };
}
