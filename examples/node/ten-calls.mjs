// What every client example must show: against a limit of 3, exactly 3 of
// 10 calls are allowed, and every denied one says how long to wait.
// `limit(user)` returns { allowed: boolean, retryAfterMs: number }.
export async function tenCallsAgainstThree(name, limit) {
  const user = `${name}-${process.pid}-${Date.now()}`;
  const results = [];
  for (let i = 0; i < 10; i++) {
    results.push(await limit(user));
  }
  const allowed = results.filter((r) => r.allowed === true).length;
  const denied = results.filter((r) => r.allowed === false);
  if (allowed !== 3 || denied.length !== 7 || !denied.every((r) => r.retryAfterMs > 0)) {
    console.error(`${name}: expected 3 allowed and 7 denied with a wait, got`, results);
    process.exitCode = 1;
    return;
  }
  console.log(`${name}: 3 of 10 allowed; denied ones wait ${denied[0].retryAfterMs} ms`);
}
