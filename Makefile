# Coffer: two commands do everything on a fresh Debian 12 machine.
#   make demo   build the three appliance images, boot them side by side with the control plane,
#               show them attesting each other and the KMS co-signing the audit log, stop them
#   make test   every test: unit tests, CLI tests, and the QEMU tier that boots real images
# Both install what is missing first (scripts/install-deps.sh).

SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(CURDIR)/target
# The reference launch-digest tool (installed by scripts/install-deps.sh) for cross-check tests.
export COFFER_VENV ?= $(HOME)/.cache/coffer/venv
export PATH := $(COFFER_VENV)/bin:$(PATH)
COFFER := $(CARGO_TARGET_DIR)/debug/coffer

.PHONY: deps coffer hub images pin demo test test-unit test-qemu bench lint fuzz

deps:
	@scripts/install-deps.sh

coffer: deps
	@echo "make: building the coffer CLI"
	cargo build --locked -p coffer-cli

images: coffer
	@for role in kms client executor; do $(COFFER) image build $$role || exit 1; done

# Re-pin the launch measurements after a change that moves them (review the diff of measurements/pins/).
pin: images
	@for role in kms client executor; do $(COFFER) image pin $$role || exit 1; done

hub: deps
	@echo "make: building the control plane (coffer-hub)"
	cargo build --locked -p coffer-hub

demo: coffer hub
	@scripts/demo.sh "$(COFFER)" "$(CARGO_TARGET_DIR)/debug/coffer-hub"

# Unit and CLI tests first (fast), then the QEMU tier (boots VMs under TCG, about a minute).
test: deps
	@echo "make: unit tests (every crate; the control plane's on SQLite)"
	cargo test --locked --workspace --exclude coffer-tests
	@echo "make: the control plane's tests again, on PostgreSQL (a private server per test)"
	COFFER_HUB_TEST_DATABASE=postgres cargo test --locked -p coffer-hub --tests
	@echo "make: the KMS rollback anchor on a TPM NV counter (feature tpm, against swtpm)"
	cargo test --locked -p coffer-kms --all-features --test rollback tpm::
	@echo "make: the KMS shared store of replicated deployments (feature postgres, a private server per test)"
	cargo build --locked -p coffer-kms --features postgres --example kms-crash-writer
	cargo test --locked -p coffer-kms --features postgres --test shared_store --test crash shared
	@echo "make: CLI and QEMU tier (tests/)"
	cargo test --locked -p coffer-tests -- --test-threads 2

test-unit: deps
	cargo test --locked --workspace --exclude coffer-tests
	COFFER_HUB_TEST_DATABASE=postgres cargo test --locked -p coffer-hub --tests
	cargo test --locked -p coffer-kms --all-features --test rollback tpm::
	cargo build --locked -p coffer-kms --features postgres --example kms-crash-writer
	cargo test --locked -p coffer-kms --features postgres --test shared_store --test crash shared

test-qemu: deps
	cargo test --locked -p coffer-tests --test qemu -- --test-threads 2

bench: coffer
	cargo run --locked --release -p coffer-bench --bin boot-bench
	cargo run --locked --release -p coffer-bench --bin measure-bench
	cargo run --locked --release -p coffer-bench --bin verify-bench
	cargo run --locked --release -p coffer-bench --bin mesh-bench
	cargo run --locked --release -p coffer-bench --bin kms-bench
	cargo run --locked --release -p coffer-bench --bin witness-bench
	cargo run --locked --release -p coffer-bench --bin store-bench
	cargo run --locked --release -p coffer-bench --bin hub-bench

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --all-targets -- -D warnings

# Every fuzz target for FUZZ_SECONDS each, from the corpus kept in fuzz/corpus/<target>/.
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 enables them on our pinned stable rustc.
FUZZ_SECONDS ?= 20
fuzz: deps
	@cd fuzz && for target in $$(RUSTC_BOOTSTRAP=1 cargo fuzz list); do \
		echo "make: fuzzing $$target for $(FUZZ_SECONDS)s"; \
		RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=$(CARGO_TARGET_DIR)/fuzz cargo fuzz run $$target corpus/$$target -- \
			-max_total_time=$(FUZZ_SECONDS) -max_len=65536 -print_final_stats=1 2>&1 | grep -E '^(Done|INFO: -max_total_time|==|SUMMARY)|stat::number_of_executed_units' ; \
		test $${PIPESTATUS[0]} -eq 0 || exit 1; \
	done
