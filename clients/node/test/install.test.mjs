// The newcomer's path, as the package README prints it: from a fresh copy
// of the repository (the files a clone has: git's tracked files, nothing it
// ignores, so no dist/ and no node_modules/), the README's install commands
// run as written in a new app beside it, the package then imports both
// ways, and the README's Express quick start, saved as app.mjs and started
// with the README's command, serves with its exact limit.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { promisify } from "node:util";
import { runApp, startServer } from "./servers.mjs";

const run = promisify(execFile);
const REPO = process.env.RATELIMIT_REPO;

/** The README section under `heading` (up to the next heading of its level). */
function section(readme, heading) {
  const start = readme.indexOf(`\n${heading}\n`);
  assert.ok(start !== -1, `the README has "${heading}"`);
  const level = heading.split(" ")[0];
  const end = readme.indexOf(`\n${level} `, start + heading.length + 2);
  return readme.slice(start, end === -1 ? undefined : end);
}

/** The code blocks of a README section, by language. */
function blocks(text, language) {
  return [...text.matchAll(new RegExp(`\`\`\`${language}\\n([\\s\\S]*?)\`\`\``, "g"))].map((match) => match[1]);
}

/** The commands of a shell block: its lines without comments. */
function commands(block) {
  return block
    .split("\n")
    .map((line) => line.replace(/\s+#.*$/, "").trim())
    .filter((line) => line !== "" && !line.startsWith("#"));
}

async function freshCopy(destination) {
  const { stdout } = await run("git", ["-C", REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard"]);
  for (const file of stdout.split("\0").filter(Boolean)) {
    await mkdir(dirname(join(destination, file)), { recursive: true });
    await cp(join(REPO, file), join(destination, file)).catch((error) => {
      // A file deleted in the work tree but not yet in git's index is not in a clone of it either.
      if (error.code !== "ENOENT") throw error;
    });
  }
}

test("the README's install commands, run as written from a fresh copy, install a package that imports; its Express quick start serves 10 a minute", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "rl-install-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const clone = join(dir, "redis-ratelimit");
  const app = join(dir, "my-app");
  await freshCopy(clone);
  await mkdir(app);
  await writeFile(join(app, "package.json"), JSON.stringify({ name: "my-app", private: true, type: "module" }));

  const readme = await readFile(join(clone, "clients/node/README.md"), "utf8");
  const install = section(readme, "## Install");
  const [fromRepository] = blocks(install, "sh");
  const steps = commands(fromRepository);
  assert.ok(steps.length >= 2, fromRepository);
  for (const command of steps) {
    await run("sh", ["-c", command], { cwd: app }).catch((error) => assert.fail(`"${command}" failed:\n${error.stdout}${error.stderr}`));
  }
  const imported = await run(
    process.execPath,
    ["--input-type=module", "-e", 'import("redis-ratelimit").then((m) => console.log(typeof m.RateLimiter))'],
    { cwd: app },
  );
  const required = await run(process.execPath, ["-e", 'console.log(typeof require("redis-ratelimit").expressRateLimit)'], { cwd: app });
  assert.deepEqual([imported.stdout, required.stdout], ["function\n", "function\n"]);

  const quickStart = section(readme, "## Quick start");
  const [prepare, start] = blocks(quickStart, "sh").map(commands);
  const [code] = blocks(quickStart, "js");
  for (const command of prepare) await run("sh", ["-c", command], { cwd: app });
  await writeFile(join(app, "app.mjs"), code);
  assert.deepEqual(start, ["node app.mjs"], "the README starts the quick start with `node app.mjs`");

  const redis = await startServer();
  t.after(() => redis.stop());
  const { url } = await runApp(t, "app.mjs", { cwd: app, env: { REDIS_URL: `redis://127.0.0.1:${redis.port}` } });
  const statuses = [];
  for (let i = 0; i < 11; i++) {
    const response = await fetch(`${url}/`, { headers: { "x-user-id": "newcomer" } });
    await response.text();
    statuses.push(response.status);
  }
  assert.deepEqual(statuses, [...Array(10).fill(200), 429]);
});
