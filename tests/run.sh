#!/usr/bin/env bash
# Runs threatflow's whole test suite, after installing what the tests need.
# Usage: bash tests/run.sh [extra cargo-nextest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo is not installed; install Rust from https://rustup.rs and run this again" >&2
  exit 1
fi

# cargo-nextest runs every test in its own process, in parallel, and reports slow tests.
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest..." >&2
  cargo install cargo-nextest --locked
fi

# The tests start every peer they talk to themselves (the threatflow binary, TCP syslog
# receivers), on loopback only.
exec cargo nextest run --locked --no-fail-fast "$@"
