# redis-ratelimit: build, run and test the module.
#   make run    start redis-server with the module on 127.0.0.1:$(PORT)
#   make test   unit + integration tests against real servers
#   make lint   rustfmt and clippy, as CI runs them

PORT ?= 6379
MODULE := target/release/libredis_ratelimit.so
APT_PACKAGES := redis-server redis-tools libclang-dev

.PHONY: all build run test unit lint deps clean

all: build

# Installs what is missing on Debian/Ubuntu: apt as root, otherwise the
# exact command to run.
deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server redis-tools"; \
	command -v redis-cli >/dev/null 2>&1 || missing="$$missing redis-tools"; \
	ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/*/libclang*.so* >/dev/null 2>&1 || missing="$$missing libclang-dev"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing:$$missing"; echo "run: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

build: deps
	cargo build --release

# redis.conf loads the module by a path relative to this directory.
run: build
	redis-server redis.conf --port $(PORT)

test: build
	cargo test --release

lint:
	cargo fmt --all -- --check
	cargo clippy --release --all-targets -- -D warnings

clean:
	cargo clean
