#!/usr/bin/env bash
# Benchmark: `threatflow feed normalize` against FireHOL's `iprange` on the same generated
# 1M-line IPv4 feed. Prints the median wall time and peak RSS of each over 5 runs, and checks
# that both print the same CIDRs (iprange prints single addresses without /32).
set -euo pipefail
cd "$(dirname "$0")/.."
lines=${1:-1000000}
for tool in iprange /usr/bin/time; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    apt-get install -y iprange time >/dev/null
  fi
done
cargo build --release --quiet --bin threatflow --example gen_feed
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
./target/release/examples/gen_feed "$lines" > "$work/feed.txt"

measure() { # name, command...
  local name=$1; shift
  for _ in 1 2 3 4 5; do
    /usr/bin/time -f "%e %M" -o "$work/time" "$@" > "$work/$name.out" 2>/dev/null
    cat "$work/time"
  done | sort -n | awk -v name="$name" 'NR==3 { printf "%-10s median %s s, peak RSS %.1f MB\n", name, $1, $2/1024 }'
}
measure threatflow ./target/release/threatflow feed normalize "$work/feed.txt"
measure iprange iprange "$work/feed.txt"
sed -E 's#^([0-9.]+)$#\1/32#' "$work/iprange.out" > "$work/iprange32.out"
if cmp -s "$work/threatflow.out" "$work/iprange32.out"; then
  echo "identical output: $(wc -l < "$work/threatflow.out") CIDRs from $lines lines"
else
  echo "OUTPUTS DIFFER" >&2
  exit 1
fi
