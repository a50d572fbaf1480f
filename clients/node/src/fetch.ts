// The Fetch API: `(Request) => Response | Promise<Response>`, as Hono,
// Next.js route handlers, Deno and Supabase Edge Functions use.
import { bodyOf, type GcraKeyOptions, judge, type LimitedInfo, type OneKeyOptions, type SeveralKeysOptions, statusOf } from "./http.js";
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
};

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
    const verdict = await judge(limiter, options, req, () => undefined);
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
    if (verdict.refundWhen(response.status)) await verdict.refund();
    return withHeaders(response, verdict.info.headers);
  };
}
