export type { Connection, RedisClient } from "./adapters.js";
export { type ClientRateLimitInfo, FlexibleLimiter, type FlexibleResult, RateLimitStore } from "./compat.js";
export { type FastifyHooks, type FastifyOptions, fastifyHooks, fastifyRateLimit } from "./fastify.js";
export { type FetchOptions, fetchRateLimit } from "./fetch.js";
export { type LimitedInfo, type MiddlewareOptions, rateLimitHeaders } from "./http.js";
export {
  type Backend,
  type FallbackOptions,
  type Logger,
  RateLimiter,
  type RateLimiterOptions,
  RateLimitReplyError,
  type Result,
  type Source,
} from "./limiter.js";
export { type CallOptions, type Decision, type Limit, RateLimitInputError } from "./limits.js";
export { MemoryLimiter } from "./memory.js";
export { clientAddress, expressRateLimit, type NodeMiddlewareOptions, type NodeRequest, type NodeResponse, withRateLimit } from "./node.js";
