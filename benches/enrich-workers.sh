#!/usr/bin/env bash
# Benchmark: `threatflow enrich` (stdin -> CEF on stdout, the quickstart inventory) on 1M
# generated Calico records with 1, 2 and (if given) more workers. Runs the settings in turn,
# 5 rounds, and prints each one's median wall time, records/s, CPU seconds, and its speed-up
# over one worker; checks that every setting writes the same bytes.
# The ceiling to read those speed-ups against is measured in the same rounds: two separate
# one-worker processes, each on half of the input at once ("2 processes"), share nothing, so
# their speed-up is what this machine's two cores give this job at best.
# Usage: bash benches/enrich-workers.sh [records] [extra worker counts...]
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-1000000}
shift || true
settings=(1 2 "$@")
command -v /usr/bin/time >/dev/null 2>&1 || apt-get install -y time >/dev/null
target=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet --bin threatflow --example gen_flows
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$target/release/examples/gen_flows" "$records" > "$work/flows.log"
half=$((records / 2))
head -n "$half" "$work/flows.log" > "$work/half-1.log"
tail -n +"$((half + 1))" "$work/flows.log" > "$work/half-2.log"
for round in 1 2 3 4 5; do
  for workers in "${settings[@]}"; do
    /usr/bin/time -f "%e %U %S" -o "$work/time" "$target/release/threatflow" enrich \
      --workers "$workers" --inventory deploy/local/inventory.json \
      < "$work/flows.log" > "$work/out-$workers.cef" 2>/dev/null
    echo "$workers $(cat "$work/time")" >> "$work/times"
  done
  started=$(date +%s.%N)
  for part in 1 2; do
    /usr/bin/time -f "%U %S" -o "$work/time-$part" "$target/release/threatflow" enrich \
      --workers 1 --inventory deploy/local/inventory.json \
      < "$work/half-$part.log" > "$work/out-half-$part.cef" 2>/dev/null &
  done
  wait
  ended=$(date +%s.%N)
  echo "2-processes $(awk -v a="$started" -v b="$ended" "BEGIN { print b - a }") $(cat "$work/time-1" "$work/time-2" | awk '{u += $1; s += $2} END {print u, s}')" >> "$work/times"
done
cat "$work/out-half-1.cef" "$work/out-half-2.cef" | cmp -s "$work/out-1.cef" - || { echo "OUTPUT DIFFERS with 2 processes" >&2; exit 1; }
for workers in "${settings[@]}"; do
  cmp -s "$work/out-1.cef" "$work/out-$workers.cef" || { echo "OUTPUT DIFFERS with $workers workers" >&2; exit 1; }
done
awk -v records="$records" '
  { wall[$1] = wall[$1] " " $2; cpu[$1] = cpu[$1] " " ($3 + $4) }
  function median(list,   n, values, i, j, t) {
    n = split(list, values, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (values[j] < values[i]) { t = values[i]; values[i] = values[j]; values[j] = t }
    return values[int((n + 1) / 2)]
  }
  END {
    base = median(wall[1])
    for (w in wall) {
      m = median(wall[w])
      label = (w == "2-processes") ? "2 processes" : "workers " w
      printf "%-12s median %.2f s = %.0fk records/s, %.2f CPU s, %.2fx one worker\n", label, m, records / m / 1000, median(cpu[w]), base / m
    }
  }' "$work/times" | sort -k2 -n
