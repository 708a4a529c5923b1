#!/usr/bin/env bash
# Regenerates fuzz/seeds/<target>/ from the golden vectors (../shared/spec/vectors), through
# the core's `fuzz_seeds` test, which also runs every seed through its target.
set -euo pipefail
cd "$(dirname "$0")/.."
AGENTWIRE_WRITE_SEEDS=1 cargo test -p agentwire-core --test fuzz_seeds "$@"
