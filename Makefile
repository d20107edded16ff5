# Top-level entry points. `make test` is what CI runs (.ci/run).
#   make deps   install the Debian packages the build, tests and local cluster need
#   make build  release build (-O2 -g) in build/
#   make test   deps + sanitizer build (ASan+UBSan) in build-asan/ + every test
#   make fuzz   libFuzzer harnesses (clang) in build-fuzz/, each run briefly
#   make bench  release build + benchmarks (figures printed, nothing asserted)
#   make run    build and start the local cluster in the foreground (Ctrl-C stops it)
#   make up / make down   the same cluster in the background / stopped
SHELL := /bin/bash
JOBS ?= $(shell nproc)
PY := /usr/bin/python3

PACKAGES := build-essential cmake pkg-config clang libclang-rt-14-dev \
	libevent-dev libssl-dev libpq-dev libprotobuf-c-dev protobuf-c-compiler \
	libnghttp2-dev libcmocka-dev libjansson-dev libargon2-dev libunbound-dev zlib1g-dev \
	python3 python3-grpcio python3-grpc-tools python3-protobuf python3-pytest \
	postgresql-15 openssl curl swaks procps iproute2

.PHONY: all deps build build-asan test unit pytest fuzz bench clean run up down

all: build

deps:
	@missing=$$(for p in $(PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq </dev/null && apt-get install -y -qq --no-install-recommends $$missing </dev/null; \
	fi

build:
	cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMAIL_SANITIZE=OFF -DMAIL_FUZZ=OFF >/dev/null
	cmake --build build -j$(JOBS)
	ln -sf build/compile_commands.json compile_commands.json

build-asan:
	cmake -S . -B build-asan -DMAIL_SANITIZE=ON -DMAIL_FUZZ=OFF >/dev/null
	cmake --build build-asan -j$(JOBS)

test: deps build build-asan
	$(MAKE) --no-print-directory unit pytest fuzz

unit:
	cd build-asan && ctest --output-on-failure -j$(JOBS)

pytest:
	@if ls tests/*/test_*.py >/dev/null 2>&1; then \
		MAIL_BUILD_DIR=$(CURDIR)/build-asan $(PY) -m pytest -q -p no:cacheprovider tests/; \
	else echo "no python tests yet"; fi

fuzz:
	CC=clang cmake -S . -B build-fuzz -DMAIL_FUZZ=ON >/dev/null
	cmake --build build-fuzz -j$(JOBS)
	@set -o pipefail; for f in build-fuzz/tests/fuzz_*; do \
		[ -x "$$f" ] || continue; name=$$(basename $$f); corpus=tests/fuzz/corpus/$${name#fuzz_}; \
		mkdir -p /tmp/mail-fuzz-$$name; \
		echo "fuzz $$name (20 s)"; \
		$$f -max_total_time=20 -max_len=65536 -artifact_prefix=/tmp/mail-fuzz-$$name- /tmp/mail-fuzz-$$name $$( [ -d $$corpus ] && echo $$corpus ) 2>&1 | tail -2 || exit 1; \
	done

# the local cluster (DESIGN.md ports; state under var/)
run: deps build
	deploy/local/cluster.sh run

up: deps build
	deploy/local/cluster.sh up

down:
	deploy/local/cluster.sh down

bench: deps build
	bench/run.sh

clean:
	rm -rf build build-asan build-fuzz compile_commands.json
