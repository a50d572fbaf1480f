// The package as TypeScript and CommonJS users see it.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { join } from "node:path";
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

// The quick start of the README that ships in the tarball, compiled as a
// user would paste it: the Express block as it stands, then the Fetch line
// with the handler it names.
test("the README's quick start compiles under tsc --strict", async () => {
  const readme = await readFile(new URL("../node_modules/redis-ratelimit/README.md", import.meta.url), "utf8");
  const quickStart = readme.slice(readme.indexOf("## Quick start"), readme.indexOf("## Reference"));
  const blocks = [...quickStart.matchAll(/```js\n([\s\S]*?)```/g)].map((match) => match[1]);
  assert.equal(blocks.length, 2, "an Express block and a Fetch block");
  const [expressBlock, fetchBlock] = blocks;
  const source = [
    expressBlock,
    'import { fetchRateLimit } from "redis-ratelimit";',
    "declare const handler: (request: Request) => Promise<Response>;",
    fetchBlock,
  ].join("\n");
  const dir = await mkdtemp(join(app, "readme-"));
  try {
    await writeFile(join(dir, "quick-start.mts"), source);
    const tsc = new URL("../node_modules/typescript/bin/tsc", import.meta.url).pathname;
    const args = ["--strict", "--noEmit", "--module", "nodenext", "--moduleResolution", "nodenext", "--target", "es2022"];
    await run(process.execPath, [tsc, ...args, join(dir, "quick-start.mts")], { cwd: app }).catch((error) => {
      assert.fail(`the README's quick start does not compile:\n${error.stdout}${error.stderr}\n${source}`);
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
