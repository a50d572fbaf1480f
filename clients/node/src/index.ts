export type { Connection, RedisClient } from "./adapters.js";
export { type ClientRateLimitInfo, FlexibleLimiter, type FlexibleOptions, type FlexibleResult, RateLimitStore } from "./compat.js";
export { type FastifyHooks, type FastifyOptions, type FastifyRequestLike, fastifyHooks, fastifyRateLimit } from "./fastify.js";
export { type FetchOptions, fetchRateLimit } from "./fetch.js";
export {
  type GcraKeyOptions,
  gcraRateLimitHeaders,
  type LimitedInfo,
  type LimitedKey,
  type MiddlewareOptions,
  type OneKeyOptions,
  type RequestKey,
  rateLimitHeaders,
  type SeveralKeysOptions,
} from "./http.js";
export {
  type Backend,
  type ChargeResult,
  type DeniedKey,
  type FallbackOptions,
  type GcraReservation,
  type GcraReserveOptions,
  type GcraResult,
  type GcraSettleResult,
  type Logger,
  type MultiCallOptions,
  type MultiChargeResult,
  type MultiReservation,
  type MultiReserveOptions,
  type MultiResult,
  RateLimiter,
  type RateLimiterOptions,
  RateLimitReplyError,
  RateLimitUnavailableError,
  type RefundOptions,
  type Reservation,
  type ReservationHandle,
  type ReserveOptions,
  type Result,
  type SettleResult,
  type Source,
  type UnblockOptions,
} from "./limiter.js";
export {
  type CallOptions,
  type ChargeOptions,
  type Decision,
  type GcraDecision,
  type GcraLimit,
  type GcraOptions,
  type GcraSettlement,
  type GcraSettleOptions,
  type KeyLimits,
  type Limit,
  RateLimitInputError,
  type Settlement,
} from "./limits.js";
export { type MemoryBucketState, type MemoryKeyState, MemoryLimiter, type MultiDecision, type MultiSettlement } from "./memory.js";
export { type ErrorCause, type MetricOperation, type Metrics, type Outcome, prometheusMetrics } from "./metrics.js";
export {
  clientAddress,
  type ExpressRequest,
  type ExpressResponse,
  expressRateLimit,
  type HeaderFields,
  type NodeMiddlewareOptions,
  type NodeRequest,
  type NodeResponse,
  withRateLimit,
} from "./node.js";
