# The two commands (see README.md):
#   make demo   install host packages, build Fledge, build the example initramfs
#   make test   run the whole test suite (what CI runs through .ci/run)
#   make stress the stress tests at full strength (tests/stress.rs; make test runs a reduced set)

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
FLEDGE := target/release/fledge
DEMO := examples/hello
OUT := out

.PHONY: all deps build demo test stress bench fuzz lint clean

all: build

deps:
	@scripts/install-deps.sh

build: deps
	$(CARGO) build --release --locked --workspace

# A static hello-world mapped to /usr/bin/hello, and a stub agent that needs no download.
$(DEMO)/build/hello: $(DEMO)/hello.c
	@mkdir -p $(@D)
	cc -static -Os -s -o $@ $<

$(DEMO)/build/stub-agent: $(DEMO)/stub-agent.c
	@mkdir -p $(@D)
	cc -static -Os -s -o $@ $<

demo: build $(DEMO)/build/hello $(DEMO)/build/stub-agent
	$(FLEDGE) build -c $(DEMO)/fledge.toml -o $(OUT)/hello.cpio.gz
	@echo
	@echo "== $(OUT)/hello.cpio.gz (key entries)"
	@gzip -dc $(OUT)/hello.cpio.gz | cpio -itv --quiet | grep -E ' (init|bin/busybox|bin/kestrel|usr/bin/hello|bin/sh -> busybox)$$'
	@echo
	@echo "== $(OUT)/hello.manifest.json"
	@cat $(OUT)/hello.manifest.json
	@echo
	@echo "== fledge kernel build (Debian's linux-source; minutes the first time, cached after)"
	$(FLEDGE) kernel build
	@echo
	@echo "== fledge run $(OUT)/hello.cpio.gz"
	$(FLEDGE) run $(OUT)/hello.cpio.gz

# The boot tests need kernels: Debian's cloud kernel, downloaded once, and Fledge's own,
# built by `fledge kernel build` (cached by its inputs' hash); the build tests a Debian
# minbase image made with debootstrap (cached by suite and mirror). All live under
# FLEDGE_TEST_CACHE (default ~/.cache/fledge-test). A test that cannot run records itself
# in $(SKIPS) (with CI set it fails instead, unless tests/allowed-skips.txt lists it); the
# skipped tests are listed, and the last line totals every test binary with them counted
# as skipped, not passed. The exit status is cargo test's.
TEST_CACHE ?= $(or $(FLEDGE_TEST_CACHE),$(HOME)/.cache/fledge-test)
SKIPS := $(CURDIR)/target/test-skips
test: deps
	@mkdir -p target
	$(CARGO) build --locked --workspace
	CARGO=$(CARGO) scripts/check-skips.sh
	FLEDGE_STATE_DIR=$(TEST_CACHE)/kernel-state target/debug/fledge kernel build
	rm -rf $(SKIPS) && mkdir -p $(SKIPS)
	kernel=$$(scripts/fetch-test-kernel.sh); \
	debian=$$(FLEDGE_TEST_CACHE=$(TEST_CACHE) scripts/test-debian-image.sh); \
	status=0; \
	FLEDGE_TEST_SKIPS=$(SKIPS) FLEDGE_TEST_KERNEL=$$kernel FLEDGE_TEST_KERNEL_STATE=$(TEST_CACHE)/kernel-state FLEDGE_TEST_DEBIAN_LAYOUT=$$debian \
		$(CARGO) test --locked --workspace --no-fail-fast 2>&1 | tee target/test.log || status=$$?; \
	scripts/test-total.sh target/test.log $(SKIPS); \
	exit $$status

# Issue 14's stress tests at full strength: 20 runs of 3-5 concurrent builds and a prune on
# one store, and every kill point (tests/stress.rs). Same caches and variables as make test.
stress: deps
	$(CARGO) build --locked --workspace
	FLEDGE_STATE_DIR=$(TEST_CACHE)/kernel-state target/debug/fledge kernel build
	FLEDGE_STRESS=full FLEDGE_TEST_KERNEL_STATE=$(TEST_CACHE)/kernel-state \
		$(CARGO) test --locked --test stress -- --nocapture --test-threads 1

bench: build
	bench/initramfs-pack.sh
	bench/oci-rootfs.sh 3
	bench/rootfs-writers.sh 5
	bench/memory.sh
	bench/boot.sh 10

# A long fuzzing run (`make test` runs a short one, fuzz/tests/harness.rs): FUZZ_RUNS inputs
# per target at low priority; crashing inputs are saved under fuzz/crashes/.
FUZZ_RUNS ?= 40000
FUZZ_SEED ?= $(shell date +%s)
fuzz:
	$(CARGO) build --locked -p fledge-fuzz
	nice -n 19 target/debug/fledge-fuzz all --runs $(FUZZ_RUNS) --seed $(FUZZ_SEED)

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf $(OUT) $(DEMO)/build
