// The package as TypeScript and CommonJS users see it: every documented
// form (test/usage.ts) and the examples the README shows compile under
// `tsc --strict`, with Express 5's types and with Express 4's.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { join } from "node:path";
import { test } from "node:test";
import { promisify } from "node:util";

const run = promisify(execFile);
const app = new URL("..", import.meta.url).pathname;
const tsc = join(app, "node_modules/typescript/bin/tsc");

/**
 * Runs tsc --strict over `files` (relative to the app), `express` naming
 * the types "express" resolves to; `libraries` also checks every .d.ts
 * (the package's own among them: once is enough, they name no Express).
 */
async function typeCheck(files, express, libraries) {
  const dir = await mkdtemp(join(app, "types-"));
  try {
    const config = {
      compilerOptions: {
        strict: true,
        noEmit: true,
        module: "nodenext",
        moduleResolution: "nodenext",
        target: "es2022",
        skipLibCheck: !libraries,
        allowJs: true,
        checkJs: true,
        types: ["node"],
        paths: { express: [join(app, "node_modules", express, "index.d.ts")] },
      },
      files: files.map((file) => join(app, file)),
    };
    await writeFile(join(dir, "tsconfig.json"), JSON.stringify(config));
    const { stdout } = await run(process.execPath, [tsc, "-p", dir], { cwd: app }).catch((error) => {
      assert.fail(`tsc failed against ${express}:\n${error.stdout}${error.stderr}`);
    });
    assert.equal(stdout, "");
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const examples = (await readdir(join(app, "examples"))).map((file) => `examples/${file}`);

for (const [express, major] of [
  ["@types/express", 5],
  ["@types/express4", 4],
]) {
  test(`tsc --strict compiles every documented form and the examples against ${express} (Express ${major})`, async () => {
    assert.ok(examples.length >= 3, examples.join(", "));
    await typeCheck(["test/usage.ts", "test/usage-cjs.cts", ...examples], express, major === 5);
  });
}

test("require() and import give the same API", async () => {
  const required = createRequire(import.meta.url)("redis-ratelimit");
  const imported = await import("redis-ratelimit");
  assert.equal(typeof required.RateLimiter, "function");
  assert.deepEqual(Object.keys(required).sort(), Object.keys(imported).sort());
});
