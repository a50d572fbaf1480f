"""README.md's redis-py snippet, run by `make test` (tests/examples.rs):
    python redis_py.py PORT [2|3]   (RESP version; redis-py 8 speaks 3 by default)
"""
import os
import sys

import redis

port = int(sys.argv[1])
protocol = {"protocol": int(sys.argv[2])} if len(sys.argv) > 2 else {}
r = redis.Redis(host="127.0.0.1", port=port, **protocol)


# README:begin
def limit(user_id):
    allowed, remaining, retry_after_ms, reset_after_ms = r.execute_command(
        "RATELIMIT.CHECK", f"api:{user_id}", 60_000, 3)
    return allowed == 1, retry_after_ms
# README:end


# README:begin
# A request passes only if the user, the IP and the tenant all allow it;
# a denial charges none of them and names the keys that denied.
def limit_all(tenant, user_id, ip):
    keys = [f"{{t:{tenant}}}:user:{user_id}", f"{{t:{tenant}}}:ip:{ip}", f"{{t:{tenant}}}:all"]
    allowed, remaining, retry_after_ms, _, denied = r.execute_command(
        "RATELIMIT.MCHECK", len(keys), *keys,
        1, 60_000, 2,     # each user: 2 a minute
        1, 60_000, 3,     # each IP: 3 a minute
        1, 60_000, 100)   # the tenant: 100 a minute
    names = ["user", "ip", "tenant"]
    return {"allowed": allowed == 1, "remaining": remaining,
            "retry_after_ms": retry_after_ms, "denied": [names[i - 1] for i in denied]}
# README:end


name = f"redis-py RESP{sys.argv[2] if len(sys.argv) > 2 else 'default'}"
results = [limit(f"{name}-{os.getpid()}") for _ in range(10)]
allowed = [wait for ok, wait in results if ok]
denied = [wait for ok, wait in results if not ok]
if len(allowed) != 3 or len(denied) != 7 or not all(wait > 0 for wait in denied):
    sys.exit(f"{name}: expected 3 allowed and 7 denied with a wait, got {results}")
print(f"{name}: 3 of 10 allowed; denied ones wait {denied[0]} ms")

tenant = f"{name}-{os.getpid()}"
seen = [limit_all(tenant, user, "10.0.0.1") for user in ["u1", "u1", "u1", "u2", "u3"]]
outcomes = ["allowed" if d["allowed"] else "denied by " + "+".join(d["denied"]) for d in seen]
expected = ["allowed", "allowed", "denied by user", "allowed", "denied by ip"]
waits = [seen[2]["retry_after_ms"], seen[4]["retry_after_ms"]]
if outcomes != expected or min(waits) <= 0 or seen[3]["remaining"] != 0:
    sys.exit(f"{name}: expected {expected}, got {seen}")
print(f"{name}: MCHECK {', '.join(outcomes)}")
