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

// What every client's MCHECK example must show: with 2 a minute per user,
// 3 per IP and 100 per tenant, a user's third call is denied by the user's
// limit alone and charges neither the IP nor the tenant (a second user on
// that IP still gets the IP's third call); the next user is denied by the
// IP. `limitAll(tenant, user, ip)` returns { allowed, remaining,
// retryAfterMs, denied: the names of the keys that denied }.
export async function allOrNothing(name, limitAll) {
  const tenant = `${name}-${process.pid}-${Date.now()}`;
  const results = [];
  for (const user of ["u1", "u1", "u1", "u2", "u3"]) {
    results.push(await limitAll(tenant, user, "10.0.0.1"));
  }
  const seen = results.map((r) => `${r.allowed ? "allowed" : `denied by ${r.denied.join("+")}`}`);
  const expected = ["allowed", "allowed", "denied by user", "allowed", "denied by ip"];
  const waits = [results[2], results[4]].every((r) => r.retryAfterMs > 0);
  if (seen.join() !== expected.join() || !waits || results[3].remaining !== 0) {
    console.error(`${name}: expected ${expected}, got`, results);
    process.exitCode = 1;
    return;
  }
  console.log(`${name}: MCHECK ${seen.join(", ")}`);
}
