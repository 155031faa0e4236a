# Furnace: the two commands a fresh machine needs are `make demo` and `make test`.
# Both install what they need first and are safe to run again.

CARGO      ?= cargo
BIN_DIR    := $(CURDIR)/target/release
SHIM_DIR   := $(CURDIR)/target/furnace-shim
FURNACE    := $(BIN_DIR)/furnace

.PHONY: demo test deps build kernel images bench fuzz install lint fmt clean

demo:
	bash scripts/demo.sh

test: build kernel
	FURNACE_BIN_DIR=$(BIN_DIR) bash scripts/test.sh

deps:
	bash scripts/install-deps.sh

# One release build serves the binaries, the tests and the benchmarks; the
# shim is built once more, for size and static (scripts/build-shim.sh).
build: deps
	$(CARGO) build --release --workspace --all-targets
	bash scripts/build-shim.sh >/dev/null

# Debian's current cloud kernel, its -dbg package and the ISF profile, cached in /var/cache/furnace.
kernel: build
	$(FURNACE) guest fetch-kernel >/dev/null

# Our Dockerfiles built with buildah into OCI archives (target/images/*.tar),
# imported into the running containerd, if any, as furnace/<name>:dev, and
# built with `docker build` into a Docker engine for tenants' own builds.
images: build
	bash scripts/images.sh --import --docker

bench: build kernel images
	FURNACE_BIN_DIR=$(BIN_DIR) $(CARGO) bench -p furnace-tests
	$(CARGO) bench -p furnace-operator --features mock-api --bench create_to_pod

# Every fuzz target for FUZZ_SECONDS each (`make test` runs it too); longer: FUZZ_SECONDS=600 make fuzz.
fuzz: deps
	bash scripts/fuzz.sh

# Puts the binaries on PATH (PREFIX=/usr/local by default).
PREFIX ?= /usr/local
install: build
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(BIN_DIR)/furnace $(BIN_DIR)/furnace-vmi-sidecar $(SHIM_DIR)/containerd-shim-furnace-v1 $(SHIM_DIR)/furnace-init $(SHIM_DIR)/furnace-fac-relay $(BIN_DIR)/furnace-launch-helper $(DESTDIR)$(PREFIX)/bin/

# --release shares build scripts and proc macros with `make build`.
lint: deps
	$(CARGO) fmt --all -- --check
	cd fuzz && $(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
	$(CARGO) clippy --release -p furnace-operator --features mock-api --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
