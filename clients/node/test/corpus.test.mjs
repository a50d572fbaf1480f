// contract/corpus.jsonl (issue 24), the contract as data written from the
// reference model, run against this package: its in-process fallback
// (MemoryLimiter, the engine of `fallback`) and its argument validators, as
// the package's own calls reach them. Node counts in doubles, so it follows
// the script twin's flavour: the expected answer is `twin_reply` or
// `twin_error` where the corpus has one, else `reply` or `error`; the
// expected state `twin_state` where present, else `state`.
//
// Each case runs on a fresh MemoryLimiter (no share: the limits as given)
// whose injected clock reads epoch + `at` at each step (it may step back).
// Every step's words are translated into the API call they stand for
// (CHECK/PEEK -> check/peek, MCHECK/MPEEK -> checkAll/peekAll, UNDO/MUNDO
// -> undo/undoAll, CHARGE/MCHARGE -> charge/chargeAll, UNBLOCK -> unblock,
// with limits, cost, precision and blockMs (a settlement takes no BLOCK:
// an unknown option to it); GCRA -> gcra with { maxBurst, count, periodMs } and tokens, the
// period word read as the module reads it: seconds in whole milliseconds;
// GCRA ... CHARGE / REFUND -> gcraCharge / gcraRefund, and on the fallback
// without MS gcraReply with { charge: true } / { refund: true }; CHARGE
// and REFUND together is not expressible: two methods),
// and then:
//
// - Words the API's types cannot express are the server's own parsing: a
//   number that is not a decimal numeral (a '+', a leading zero, an
//   exponent, a letter, a NUL or a space inside, the empty word), a period
//   outside the module's grammar (`.5`, `1.`, `1e3`, `+1`, `00.5`), a
//   window without its max, arity, an unknown or repeated option (GCRA's
//   TOKENS and MS included), a count of keys or pairs the words do not
//   follow. For those the runner asserts that the corpus answers an error,
//   calls nothing, and counts them ("not expressible", printed at the end
//   with their reasons). A period in the grammar with digits past the
//   milliseconds (`0.0001`) is a periodMs that is no integer (0.1), which
//   the validators refuse.
// - A numeral that no double holds exactly (all of them between 2^53 and
//   2^63 in the corpus) is passed as the nearest double strictly between
//   2^53 and 2^63, so it stays on the same side of every bound the contract
//   draws there (the twin's 2^53, the module's 2^63 - 1) and the twin's
//   answer is the same; counted and printed too.
// - Everything else: the fallback throws RateLimitInputError iff the
//   expected answer is an ERR error (the twin's refusals above 2^53
//   included: a max or COST above 2^53, and a check that would leave a key
//   holding more than 2^53 units, which records nothing), and
//   RateLimitReplyError with the server's exact text iff it is WRONGTYPE
//   (a bucket given to the sliding window, or a log to GCRA). Otherwise its
//   answer equals the corpus exactly: all four fields, the denied keys'
//   1-based positions for several keys (for a charge: over, remaining and
//   the waits, and the 1-based positions of the keys now over), the units each refund removed,
//   unblock's answer; for GCRA all five integers in the corpus's units:
//   with MS through the public gcra() (ms, read back as the module's
//   five), without it through MemoryLimiter.gcraReply (redis-cell's
//   seconds), both from the fallback's exact waits.
// - After every step (expressible or not, error or not) the state the
//   fallback holds for every key the corpus names equals the corpus's
//   exactly (MemoryLimiter.state, gcraState): the entries, oldest first, as
//   stored (time and cost), the longest window kept, when the block ends
//   and when the key expires; a bucket's last charge, period and level and
//   its expiry; and the key is absent (or expired: held no longer) iff the
//   corpus says null. Nothing is left out.
// - The same call through a RateLimiter over a Connection that answers
//   the corpus's reply: the limiter throws RateLimitInputError before
//   sending anything iff the expected answer is an error about the call's
//   arguments; a state-dependent refusal (the twin's "would hold more
//   than 2^53 units") is sent and its error answer rejects as
//   RateLimitReplyError, and so is WRONGTYPE; otherwise exactly one command
//   is sent, whose words translate back to the same call (so the numbers
//   are sent with their exact digits; GCRA always with MS), and the
//   corpus's reply is read as the same answer.
//
// What the corpus leaves out (README: a full log, a key of another type)
// no engine without a server shows. The fallback's LRU cap (maxKeys) and
// the limiter's failure policies are tested in client.test.mjs and
// failure.test.mjs. RATELIMIT_CORPUS names another corpus file (a
// hand-edited copy, to see this runner fail).
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { after, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { MemoryLimiter, RateLimiter, RateLimitInputError, RateLimitReplyError } from "redis-ratelimit";

const WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value";

/** contract/corpus.jsonl, found from this file upward (clients/node/test, or the scratch app's copy under clients/node/build). */
function corpusPath() {
  if (process.env.RATELIMIT_CORPUS) return process.env.RATELIMIT_CORPUS;
  for (let dir = dirname(fileURLToPath(import.meta.url)); ; dir = dirname(dir)) {
    const candidate = join(dir, "contract", "corpus.jsonl");
    if (existsSync(candidate)) return candidate;
    if (dirname(dir) === dir) break;
  }
  if (process.env.RATELIMIT_REPO) return join(process.env.RATELIMIT_REPO, "contract", "corpus.jsonl");
  throw new Error(`no contract/corpus.jsonl above ${fileURLToPath(import.meta.url)}`);
}

/** JSON.parse's reviver sees a number's source text (Node 21+); else integers are rewritten as {"$int": "digits"} first. */
const REVIVER_HAS_SOURCE = (() => {
  let source;
  JSON.parse("1", (_key, value, context) => {
    source = context?.source;
    return value;
  });
  return source === "1";
})();

/** The corpus's numbers go up to 2^63 - 1: every integer is read as a BigInt, from its own digits. */
function parseExact(line) {
  if (REVIVER_HAS_SOURCE) {
    return JSON.parse(line, (_key, value, context) => {
      if (typeof value !== "number") return value;
      assert.match(context.source, /^-?\d+$/, "the corpus holds integers only");
      return BigInt(context.source);
    });
  }
  return JSON.parse(integersAsObjects(line), (_key, value) =>
    value !== null &&
    typeof value === "object" &&
    !Array.isArray(value) &&
    Object.keys(value).length === 1 &&
    typeof value.$int === "string"
      ? BigInt(value.$int)
      : value,
  );
}

/** Rewrites every number outside a string as {"$int":"<digits>"} (a state map's values are objects or null, never strings, so this reads back unambiguously). */
function integersAsObjects(text) {
  let out = "";
  for (let i = 0; i < text.length; ) {
    const c = text[i];
    if (c === '"') {
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
      out += text.slice(i, j + 1);
      i = j + 1;
    } else if (c === "-" || (c >= "0" && c <= "9")) {
      let j = i + 1;
      while (j < text.length && /[0-9.eE+-]/.test(text[j])) j++;
      const token = text.slice(i, j);
      assert.match(token, /^-?\d+$/, "the corpus holds integers only");
      out += `{"$int":"${token}"}`;
      i = j;
    } else {
      out += c;
      i++;
    }
  }
  return out;
}

const EXACT = 2n ** 53n;
const I64_LIMIT = 2n ** 63n;

const totals = {
  cases: 0,
  steps: 0,
  expressible: 0,
  expressibleErrors: 0,
  stateKeysCompared: 0,
  nearestDouble: 0,
  notExpressible: new Map(),
  byCommand: new Map(),
  gcra: {
    cases: 0,
    steps: 0,
    expressible: 0,
    refused: 0,
    wrongType: 0,
    wrongTypeSliding: 0,
    repliesInSeconds: 0,
    repliesInMs: 0,
    notExpressible: new Map(),
    bucketStates: 0,
  },
};
const bump = (map, key) => map.set(key, (map.get(key) ?? 0) + 1);

class NotExpressible extends Error {}
const notExpressible = (reason) => {
  throw new NotExpressible(reason);
};

/** A decimal numeral as Redis writes it, as the number the API takes (see the header on numerals no double holds). */
function numeral(word, what) {
  if (!/^(0|-?[1-9][0-9]*)$/.test(word)) notExpressible(`${what}: not a decimal numeral`);
  const exact = BigInt(word);
  let value = Number(exact);
  if (BigInt(value) !== exact) {
    totals.nearestDouble += 1;
    if (exact > EXACT && exact < I64_LIMIT) value = Math.min(Math.max(value, 2 ** 53 + 2), 2 ** 63 - 1024);
  }
  return value;
}

/** Named options after `from`, each once, with its value: the API's option object. */
function optionsOf(words, from, names) {
  const options = {};
  for (let i = from; i < words.length; i += 2) {
    const field = names[words[i].toUpperCase()];
    if (!field) notExpressible("an unknown option");
    if (i + 1 >= words.length) notExpressible("an option without its value");
    if (field in options) notExpressible("an option given twice");
    options[field] = numeral(words[i + 1], words[i].toUpperCase());
  }
  return options;
}

const LIMIT_OPTIONS = { COST: "cost", PRECISION: "precision", BLOCK: "blockMs" };
const REFUND_OPTIONS = { COST: "cost" };
const CHARGE_OPTIONS = { COST: "cost", PRECISION: "precision" };

/** `count` window/max pairs from `from` (count undefined: as many as the words give, as the server reads them). */
function pairsOf(words, from, count) {
  const limits = [];
  let at = from;
  while (count === undefined ? at < words.length && (at === from || /^[0-9-]/.test(words[at])) : limits.length < count) {
    if (at + 1 >= words.length) notExpressible("a window without its max, or too few words");
    limits.push({ windowMs: numeral(words[at], "window"), max: numeral(words[at + 1], "max") });
    at += 2;
  }
  return { limits, next: at };
}

/**
 * A period word as the module reads it (digits, an optional fraction; no
 * sign, exponent, leading dot or leading zero) as the periodMs it stands
 * for: an integer unless it has non-zero digits past the milliseconds.
 */
function periodOf(word) {
  const match = /^(0|[1-9][0-9]*)(?:\.([0-9]+))?$/.exec(word);
  if (!match) notExpressible("period: not in the module's grammar");
  const [, whole, fraction = ""] = match;
  const milliseconds = `${fraction}000`.slice(0, 3);
  const beyond = fraction.slice(3);
  return Number(BigInt(whole) * 1000n + BigInt(milliseconds)) + (beyond === "" ? 0 : Number(`0.${beyond}`));
}

/**
 * GCRA's options: TOKENS n and the flags MS, CHARGE and REFUND, each at
 * most once, in any case; CHARGE and REFUND are two methods (gcraCharge,
 * gcraRefund), so both at once is not expressible.
 */
function gcraOptionsOf(words, from) {
  const options = {};
  let ms = false;
  let settle;
  let settles = 0;
  for (let i = from; i < words.length; i++) {
    const word = words[i].toUpperCase();
    if (word === "MS") {
      if (ms) notExpressible("an option given twice");
      ms = true;
    } else if (word === "CHARGE" || word === "REFUND") {
      if (settle === word.toLowerCase()) notExpressible("an option given twice");
      settle = word.toLowerCase();
      settles += 1;
    } else if (word === "TOKENS") {
      if (i + 1 >= words.length) notExpressible("an option without its value");
      if ("tokens" in options) notExpressible("an option given twice");
      options.tokens = numeral(words[++i], "TOKENS");
    } else {
      notExpressible("an unknown option");
    }
  }
  if (settles > 1) notExpressible("CHARGE and REFUND together");
  return { options, ms, settle };
}

/** numkeys and the keys after it. */
function keysOf(words) {
  if (words.length < 2) notExpressible("arity");
  const count = numeral(words[1], "numkeys");
  if (count < 0 || 2 + count > words.length) notExpressible("numkeys: more keys than words");
  return words.slice(2, 2 + count);
}

/** The API call a command's words stand for; throws NotExpressible for the server's own parsing. */
function translate(words) {
  const [command, ...rest] = words;
  switch (command.toUpperCase()) {
    case "RATELIMIT.CHECK":
    case "RATELIMIT.PEEK": {
      if (rest.length < 3) notExpressible("arity");
      const { limits, next } = pairsOf(words, 2);
      const op = command.toUpperCase() === "RATELIMIT.CHECK" ? "check" : "peek";
      return { op, key: words[1], limits, options: optionsOf(words, next, LIMIT_OPTIONS) };
    }
    case "RATELIMIT.CHARGE": {
      if (rest.length < 3) notExpressible("arity");
      const { limits, next } = pairsOf(words, 2);
      return { op: "charge", key: words[1], limits, options: optionsOf(words, next, CHARGE_OPTIONS) };
    }
    case "RATELIMIT.MCHARGE":
    case "RATELIMIT.MCHECK":
    case "RATELIMIT.MPEEK": {
      const keys = keysOf(words);
      let at = 2 + keys.length;
      const entries = keys.map((key, i) => {
        if (at >= words.length) notExpressible("arity: a key without its npairs");
        const npairs = numeral(words[at], `npairs of key ${i + 1}`);
        if (npairs < 0) notExpressible("npairs below 0");
        const { limits, next } = pairsOf(words, at + 1, npairs);
        at = next;
        return { key, limits };
      });
      const op = { "RATELIMIT.MCHECK": "checkAll", "RATELIMIT.MPEEK": "peekAll", "RATELIMIT.MCHARGE": "chargeAll" }[command.toUpperCase()];
      return { op, keys: entries, options: optionsOf(words, at, op === "chargeAll" ? CHARGE_OPTIONS : LIMIT_OPTIONS) };
    }
    case "RATELIMIT.UNDO":
      if (rest.length < 1) notExpressible("arity");
      return { op: "undo", key: words[1], options: optionsOf(words, 2, REFUND_OPTIONS) };
    case "RATELIMIT.MUNDO": {
      const keys = keysOf(words);
      return { op: "undoAll", keys, options: optionsOf(words, 2 + keys.length, REFUND_OPTIONS) };
    }
    case "RATELIMIT.UNBLOCK":
      if (rest.length !== 1) notExpressible("arity");
      return { op: "unblock", key: words[1] };
    case "RATELIMIT.GCRA": {
      if (rest.length < 4) notExpressible("arity");
      const limit = { maxBurst: numeral(words[2], "max_burst"), count: numeral(words[3], "count"), periodMs: periodOf(words[4]) };
      const { options, ms, settle } = gcraOptionsOf(words, 5);
      const op = { charge: "gcraCharge", refund: "gcraRefund" }[settle] ?? "gcra";
      return { op, key: words[1], limit, options, ms };
    }
    default:
      throw new Error(`a command this runner does not know: ${command}`);
  }
}

/** A GcraDecision (waits in ms) as the module's five integers: limited first, retry_after -1 when allowed. */
function gcraFields(d) {
  return [d.allowed ? 0n : 1n, BigInt(d.burst), BigInt(d.remaining), d.allowed ? -1n : BigInt(d.retryAfterMs), BigInt(d.resetAfterMs)];
}

/**
 * A GcraSettlement as the module's five integers, retry_after 0 for "a
 * token fits now" (the named form's 0; the module's -1): a reply in ms
 * never has a 0 wait, so with MS nothing is lost; a reply in seconds may
 * round a wait to 0, read as 0 too. Compared against the corpus's reply
 * through settledForm.
 */
function gcraSettledFields(s) {
  return [BigInt(s.over), BigInt(s.burst), BigInt(s.remaining), BigInt(s.retryAfterMs), BigInt(s.resetAfterMs)];
}

/** A settlement's reply with retry_after -1 as 0 (see gcraSettledFields); any other reply as it is. */
function settledForm(call, reply) {
  if ((call.op !== "gcraCharge" && call.op !== "gcraRefund") || !Array.isArray(reply)) return reply;
  return reply.map((value, i) => (i === 3 && value === -1n ? 0n : value));
}

/** The call on the fallback, its answer in the corpus's shape (BigInts). */
function onFallback(memory, call) {
  const decision = (d) => [d.allowed ? 1n : 0n, BigInt(d.remaining), BigInt(d.retryAfterMs), BigInt(d.resetAfterMs)];
  const joint = ({ decision: d, denied }) => [...decision(d), denied.map((index) => BigInt(index + 1))];
  switch (call.op) {
    case "charge":
      return settled(memory.charge(call.key, call.limits, call.options));
    case "chargeAll": {
      const { settlement, over } = memory.chargeAll(call.keys, call.options);
      return [...settled(settlement), over.map((index) => BigInt(index + 1))];
    }
    case "check":
      return decision(memory.check(call.key, call.limits, call.options));
    case "peek":
      return decision(memory.peek(call.key, call.limits, call.options));
    case "checkAll":
      return joint(memory.checkAll(call.keys, call.options));
    case "peekAll":
      return joint(memory.peekAll(call.keys, call.options));
    case "undo":
      return BigInt(memory.undo(call.key, call.options.cost));
    case "undoAll":
      return memory.undoAll(call.keys, call.options.cost).map(BigInt);
    case "unblock":
      return memory.unblock(call.key) ? 1n : 0n;
    case "gcra":
      if (call.ms) return gcraFields(memory.gcra(call.key, call.limit, call.options));
      return memory.gcraReply(call.key, call.limit, call.options).map(BigInt);
    case "gcraCharge":
    case "gcraRefund": {
      if (call.ms) return gcraSettledFields(memory[call.op](call.key, call.limit, call.options));
      // Without MS: the module's own five (retry_after -1 kept), through gcraReply.
      const flag = call.op === "gcraCharge" ? { charge: true } : { refund: true };
      return memory.gcraReply(call.key, call.limit, { ...call.options, ...flag }).map(BigInt);
    }
  }
}

/** CHARGE's four fields, as the corpus writes them. */
const settled = (s) => [BigInt(s.over), BigInt(s.remaining), BigInt(s.retryAfterMs), BigInt(s.resetAfterMs)];

/** The same call through a RateLimiter; its answer in the corpus's shape. */
async function onLimiter(limiter, call) {
  const decision = (d) => [d.allowed ? 1n : 0n, BigInt(d.remaining), BigInt(d.retryAfterMs), BigInt(d.resetAfterMs)];
  switch (call.op) {
    case "charge": {
      const result = await limiter.charge(call.key, call.limits, call.options);
      assert.equal(result.source, "redis");
      return settled(result);
    }
    case "chargeAll": {
      const result = await limiter.chargeAll(call.keys, call.options);
      assert.deepEqual(
        result.overKeys.map(({ key }) => key),
        result.overKeys.map(({ index }) => call.keys[index].key),
      );
      return [...settled(result), result.overKeys.map(({ index }) => BigInt(index + 1))];
    }
    case "check":
      return decision(await limiter.check(call.key, call.limits, call.options));
    case "peek":
      return decision(await limiter.peek(call.key, call.limits, call.options));
    case "checkAll":
    case "peekAll": {
      const result = await limiter[call.op](call.keys, call.options);
      return [...decision(result), result.denied.map(({ index }) => BigInt(index + 1))];
    }
    case "undo":
      return BigInt(await limiter.undo(call.key, call.options));
    case "undoAll":
      return (await limiter.undoAll(call.keys, call.options)).map(BigInt);
    case "unblock":
      return (await limiter.unblock(call.key)) ? 1n : 0n;
    case "gcra":
      return gcraFields(await limiter.gcra(call.key, call.limit, call.options));
    case "gcraCharge":
    case "gcraRefund": {
      const result = await limiter[call.op](call.key, call.limit, call.options);
      assert.equal(result.source, "redis");
      return gcraSettledFields(result);
    }
  }
}

/** A call as compared with the words sent: the limiter always asks GCRA for milliseconds. */
function sentForm(call) {
  if (!call.op.startsWith("gcra")) return call;
  const { ms: _ms, ...rest } = call;
  return rest;
}

/** What the fallback holds for `key`, in the corpus's terms (times relative to the epoch); null when it holds nothing. */
function stateOf(memory, key, epoch) {
  const relative = (t) => BigInt(t) - epoch;
  let held;
  try {
    held = memory.state(key);
  } catch (error) {
    if (!(error instanceof RateLimitReplyError) || error.message !== WRONGTYPE) throw error;
    // A bucket: the sliding window's state() refuses it as the server would.
    const bucket = memory.gcraState(key);
    assert.throws(() => memory.state(key), RateLimitReplyError);
    totals.gcra.bucketStates += 1;
    return { bucket: [relative(bucket.at), BigInt(bucket.periodMs), BigInt(bucket.level)], expires: relative(bucket.expiresAt) };
  }
  if (held === undefined) {
    assert.equal(memory.gcraState(key), undefined, `${key}: no bucket either`);
    return null;
  }
  assert.throws(() => memory.gcraState(key), RateLimitReplyError, "a log is no bucket");
  return {
    entries: held.entries.map(({ at, cost }) => [relative(at), BigInt(cost)]),
    window: BigInt(held.windowMs),
    blocked_until: held.blockedUntil === 0 ? 0n : relative(held.blockedUntil),
    expires: relative(held.expiresAt),
  };
}

/** The answer a double-counting engine gives: the twin's where the corpus has one. */
function expectedOf(step) {
  if ("twin_error" in step) return { error: step.twin_error };
  if ("twin_reply" in step) return { reply: step.twin_reply };
  if ("error" in step) return { error: step.error };
  return { reply: step.reply };
}

/** The twin's refusal that depends on what the key holds: no validator can see it, so the limiter sends the call. */
const HOLDS_TOO_MUCH = /would hold more than (9007199254740992 units|9000000000000000 token-milliseconds)/;

/** An error answer that depends on what the keys hold, not on the call's words: sent, and rejected as the server's answer. */
const isStateError = (error) => HOLDS_TOO_MUCH.test(error) || error === WRONGTYPE;

class ReplyError extends Error {
  name = "ReplyError";
}

/** A RateLimiter over a Connection that answers what `answer.next` holds and keeps what was sent. */
function answeringLimiter() {
  const answer = { next: undefined, sent: [] };
  const connection = {
    send: async (_key, args) => {
      answer.sent.push(args);
      if (answer.next.error !== undefined) throw new ReplyError(answer.next.error);
      return answer.next.reply;
    },
    serverFor: () => "server",
  };
  const quiet = { info() {}, warn() {}, error() {} };
  return { limiter: new RateLimiter(connection, { logger: quiet }), answer };
}

const text = readFileSync(corpusPath(), "utf8");
const cases = text
  .split("\n")
  .filter((line) => line.trim() !== "")
  .map(parseExact);

describe("contract/corpus.jsonl on the in-process fallback and the validators", () => {
  after(() => {
    const reasons = [...totals.notExpressible].map(([reason, n]) => `${n} ${reason}`).join("; ");
    const commands = [...totals.byCommand].map(([command, n]) => `${command} ${n}`).join(", ");
    console.log(
      `corpus: ${totals.cases} cases, ${totals.steps} steps (${commands}); ` +
        `${totals.expressible} expressible (${totals.expressibleErrors} of them refused with RateLimitInputError), ` +
        `${totals.steps - totals.expressible} not expressible (${reasons}); ` +
        `${totals.nearestDouble} numerals passed as the nearest double; ${totals.stateKeysCompared} key states compared`,
    );
    const g = totals.gcra;
    const gcraReasons = [...g.notExpressible].map(([reason, n]) => `${n} ${reason}`).join("; ");
    console.log(
      `corpus, GCRA: ${g.cases} cases with RATELIMIT.GCRA, ${g.steps} GCRA steps; ${g.expressible} expressible ` +
        `(${g.repliesInMs} replies compared in ms through gcra(), ${g.repliesInSeconds} in redis-cell seconds through gcraReply(), ` +
        `${g.refused} refused with RateLimitInputError, ${g.wrongType} WRONGTYPE on a log), ` +
        `${g.steps - g.expressible} not expressible (${gcraReasons}); ` +
        `${g.wrongTypeSliding} sliding-window steps WRONGTYPE on a bucket; ${g.bucketStates} bucket states compared`,
    );
  });

  for (const corpusCase of cases) {
    test(`${corpusCase.name}: ${corpusCase.about}`, async () => {
      totals.cases += 1;
      if (corpusCase.steps.some((step) => step.call[0].toUpperCase() === "RATELIMIT.GCRA")) totals.gcra.cases += 1;
      const epoch = corpusCase.epoch;
      let clock = 0;
      const memory = new MemoryLimiter(() => clock);
      const { limiter, answer } = answeringLimiter();
      for (const [index, step] of corpusCase.steps.entries()) {
        totals.steps += 1;
        const words = step.call;
        bump(totals.byCommand, words[0].toUpperCase());
        const where = `${corpusCase.name}, step ${index} at ${step.at}: ${JSON.stringify(words)}`;
        const isGcra = words[0].toUpperCase() === "RATELIMIT.GCRA";
        if (isGcra) totals.gcra.steps += 1;
        clock = Number(epoch + step.at);
        const expected = expectedOf(step);
        let call;
        try {
          call = translate(words);
        } catch (error) {
          if (!(error instanceof NotExpressible)) throw error;
          bump(totals.notExpressible, error.message);
          if (isGcra) bump(totals.gcra.notExpressible, error.message);
          assert.ok(expected.error !== undefined, `${where}: not expressible (${error.message}), yet the corpus answers ${expected.reply}`);
        }
        if (call) {
          totals.expressible += 1;
          if (isGcra) totals.gcra.expressible += 1;
          const stateError = expected.error !== undefined && isStateError(expected.error);
          // The fallback.
          if (expected.error === WRONGTYPE) {
            assert.throws(
              () => onFallback(memory, call),
              (error) => error instanceof RateLimitReplyError && error.message === WRONGTYPE,
              `${where}: the corpus answers ${expected.error}`,
            );
            if (isGcra) totals.gcra.wrongType += 1;
            else totals.gcra.wrongTypeSliding += 1;
          } else if (expected.error !== undefined) {
            assert.throws(() => onFallback(memory, call), RateLimitInputError, `${where}: the corpus answers ${expected.error}`);
            if (!stateError) totals.expressibleErrors += 1;
            if (isGcra) totals.gcra.refused += 1;
          } else {
            let got;
            assert.doesNotThrow(() => {
              got = onFallback(memory, call);
            }, where);
            const want = call.ms ? settledForm(call, expected.reply) : expected.reply;
            assert.deepEqual(got, want, `${where}: the fallback's answer`);
            if (isGcra && call.ms) totals.gcra.repliesInMs += 1;
            if (isGcra && !call.ms) totals.gcra.repliesInSeconds += 1;
          }
          // The limiter's validators, its arguments and its reading of the reply.
          answer.next = expected;
          answer.sent = [];
          if (expected.error !== undefined && !stateError) {
            await assert.rejects(onLimiter(limiter, call), RateLimitInputError, `${where}: the limiter refuses`);
            assert.deepEqual(answer.sent, [], `${where}: nothing sent`);
          } else if (expected.error !== undefined) {
            await assert.rejects(onLimiter(limiter, call), RateLimitReplyError, `${where}: the server's answer`);
          } else {
            const want = settledForm(call, expected.reply);
            assert.deepEqual(await onLimiter(limiter, call), want, `${where}: the limiter's reading of the reply`);
          }
          if (expected.error === undefined || stateError) {
            assert.equal(answer.sent.length, 1, `${where}: one command sent`);
            const sent = translate(answer.sent[0].map(String));
            if (isGcra) assert.equal(sent.ms, true, `${where}: GCRA is asked in milliseconds`);
            assert.deepEqual(sentForm(sent), sentForm(call), `${where}: the words sent are the call's`);
          }
        }
        // The state of every key the corpus names.
        for (const [key, want] of Object.entries(step.twin_state ?? step.state)) {
          totals.stateKeysCompared += 1;
          assert.deepEqual(stateOf(memory, key, epoch), want, `${where}: the state of ${JSON.stringify(key)}`);
        }
      }
    });
  }
});
