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


name = f"redis-py RESP{sys.argv[2] if len(sys.argv) > 2 else 'default'}"
results = [limit(f"{name}-{os.getpid()}") for _ in range(10)]
allowed = [wait for ok, wait in results if ok]
denied = [wait for ok, wait in results if not ok]
if len(allowed) != 3 or len(denied) != 7 or not all(wait > 0 for wait in denied):
    sys.exit(f"{name}: expected 3 allowed and 7 denied with a wait, got {results}")
print(f"{name}: 3 of 10 allowed; denied ones wait {denied[0]} ms")
