#!/usr/bin/env bash
# Everything the test suite needs, then the whole suite, on a fresh machine:
#
#   bash tests/run.sh
#
# 1. installs and starts the real backends and peers (tests/backends.sh: Mosquitto, MariaDB,
#    InfluxDB 1.x, a Python venv with pymodbus; tools mbpoll and socat), reusing any that
#    already answer;
# 2. cargo fmt --check, and clippy with every warning an error;
# 3. every test of the workspace (unit, property, binary and end-to-end against the backends);
# 4. the deployment files (docker-compose config, helm lint/template, manifest schemas, the
#    example line documents) through deploy/check.sh.
#
# Builds go to CARGO_TARGET_DIR (default /var/tmp/fieldline-target) so repeated runs are fast.
# Fails on the first step that fails.
set -euo pipefail
exec </dev/null

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/fieldline-target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

step() { printf '\n== %s\n' "$*"; }

step "backends"
bash tests/backends.sh

step "format"
cargo fmt --all --check

step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
cargo test --workspace --locked

step "deployment files"
FIELDLINE_BIN="$CARGO_TARGET_DIR/debug/fieldline" bash deploy/check.sh

step "all checks passed"
