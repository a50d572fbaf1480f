// The package as TypeScript and CommonJS users see it.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createRequire } from "node:module";
import { test } from "node:test";
import { promisify } from "node:util";

const run = promisify(execFile);
const app = new URL("..", import.meta.url).pathname;

test("tsc --strict compiles typed usage files (ESM and CommonJS) against the installed package", async () => {
  const tsc = new URL("../node_modules/typescript/bin/tsc", import.meta.url).pathname;
  const args = [
    "--strict",
    "--noEmit",
    "--module",
    "nodenext",
    "--moduleResolution",
    "nodenext",
    "--target",
    "es2022",
    "--skipLibCheck",
    "false",
  ];
  const { stdout } = await run(process.execPath, [tsc, ...args, "test/usage.ts", "test/usage-cjs.cts"], { cwd: app }).catch((error) => {
    assert.fail(`tsc failed:\n${error.stdout}${error.stderr}`);
  });
  assert.equal(stdout, "");
});

test("require() and import give the same API", async () => {
  const required = createRequire(import.meta.url)("redis-ratelimit");
  const imported = await import("redis-ratelimit");
  assert.equal(typeof required.RateLimiter, "function");
  assert.deepEqual(Object.keys(required).sort(), Object.keys(imported).sort());
});
