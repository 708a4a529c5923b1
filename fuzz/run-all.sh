#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each (default 20): AddressSanitizer
# build with debug assertions, seeded from fuzz/seeds/<target>/ (read only), new inputs kept
# in the git-ignored fuzz/corpus/<target>/. FUZZ_JOBS targets run at once (default: the
# number of CPUs; each libFuzzer process uses one). Prints the executions of each target;
# exits non-zero if any target crashed, whose input is left in fuzz/artifacts/<target>/.
#
#   fuzz/run-all.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-20}"
shift || true
jobs="${FUZZ_JOBS:-$(nproc)}"
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

results="$(mktemp -d)"
trap 'rm -rf "$results"' EXIT
run_one() {
  local t="$1" t0
  t0=$(date +%s)
  mkdir -p "corpus/$t"
  local dirs=("corpus/$t")
  if [ -d "seeds/$t" ]; then dirs+=("seeds/$t"); fi
  if cargo fuzz run --debug-assertions "$t" "${dirs[@]}" -- \
      -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=2048 \
      >"$results/$t.log" 2>&1; then
    echo ok >"$results/$t.status"
  else
    echo failed >"$results/$t.status"
  fi
  local execs
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$results/$t.log" \
    | grep -o '[0-9]*$' || echo '?')
  printf '%-18s %10s executions in %3ss\n' "$t" "$execs" "$(( $(date +%s) - t0 ))" \
    >"$results/$t.line"
}
running=0
for t in "${targets[@]}"; do
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait || true

failed=0
for t in "${targets[@]}"; do
  cat "$results/$t.line"
  if [ "$(cat "$results/$t.status")" != ok ]; then
    failed=1
    tail -n 80 "$results/$t.log"
    echo "fuzz target $t FAILED; input in fuzz/artifacts/$t/ (see fuzz/README.md)"
  fi
done
echo "fuzz total: $(( $(date +%s) - started ))s"
exit "$failed"
