#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each (default 20): AddressSanitizer
# build with debug assertions, seeded from fuzz/seeds/<target>/ (read only), new inputs kept
# in the git-ignored fuzz/corpus/<target>/. Prints the executions of each target; exits
# non-zero on the first crash, whose input is left in fuzz/artifacts/<target>/.
#
#   fuzz/run-all.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-20}"
shift || true
# cargo-fuzz passes -Z flags; this lets the stable toolchain accept them.
export RUSTC_BOOTSTRAP=1
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
started=$(date +%s)
if [ ${#targets[@]} -eq 1 ]; then
  cargo fuzz build --debug-assertions "${targets[0]}"
else
  cargo fuzz build --debug-assertions
fi
echo "fuzz build: $(( $(date +%s) - started ))s"
summary=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  dirs=("corpus/$t")
  if [ -d "seeds/$t" ]; then dirs+=("seeds/$t"); fi
  log="$(mktemp)"
  t0=$(date +%s)
  if ! cargo fuzz run --debug-assertions "$t" "${dirs[@]}" -- \
      -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=2048 >"$log" 2>&1; then
    tail -n 80 "$log"
    echo "fuzz target $t FAILED; input in fuzz/artifacts/$t/ (see fuzz/README.md)"
    exit 1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  summary+=("$(printf '%-18s %10s executions in %3ss' "$t" "$execs" "$(( $(date +%s) - t0 ))")")
  rm -f "$log"
done
printf '%s\n' "${summary[@]}"
echo "fuzz total: $(( $(date +%s) - started ))s"
