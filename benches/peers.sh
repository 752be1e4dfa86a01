#!/usr/bin/env bash
# Benchmark: threatflow's flow job beside rsyslog and syslog-ng doing its nearest equivalent on
# the same generated Calico flow log (1M records by default), in one run:
#   read the file -> parse the JSON -> look the source and destination IPs up in a pod table
#   -> a CEF-like template -> a file.
# threatflow runs `enrich` with one worker (one core, like the peers' single pipeline) and with
# the default workers. rsyslog: imfile, mmjsonparse, lookup tables, omfile. syslog-ng: file
# source (flow-controlled), json-parser, add-contextual-data, file destination. Each peer runs
# until its output holds every record; its CPU time then comes from /proc. Prints records per
# CPU-second and wall time for each, and threatflow's ratio to each peer.
# rsyslog and syslog-ng come from `bash tests/run.sh`; this script adds syslog-ng's
# add-contextual-data module under target/syslog-ng. Usage: bash benches/peers.sh [records]
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-1000000}
target=${CARGO_TARGET_DIR:-target}
root=$PWD
command -v rsyslogd >/dev/null && [ -x target/syslog-ng/usr/sbin/syslog-ng ] ||
  { echo "run 'bash tests/run.sh' first: it installs rsyslog and unpacks syslog-ng" >&2; exit 1; }
command -v /usr/bin/time >/dev/null 2>&1 || apt-get install -y -q time >/dev/null
modules=target/syslog-ng/usr/lib/syslog-ng/3.38
if [ ! -e "$modules/libadd-contextual-data.so" ]; then
  download=$(mktemp -d)
  chmod 755 "$download"
  (cd "$download" && apt-get download -q syslog-ng-mod-add-contextual-data >/dev/null)
  dpkg -x "$download"/syslog-ng-mod-add-contextual-data_*.deb target/syslog-ng
  rm -rf "$download"
fi
cargo build --release --quiet --bin threatflow --example gen_flows
work=$(mktemp -d)
chmod 755 "$work"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
"$target/release/examples/gen_flows" "$records" > "$work/flows.log"

# The pod table both peers look addresses up in: pod IP -> namespace/name.
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
pods = {}
for item in json.load(open("deploy/local/inventory.json"))["items"]:
    if item.get("kind") == "Pod":
        for ip in item.get("status", {}).get("podIPs", []) or [{"ip": item["status"].get("podIP")}]:
            if ip.get("ip"):
                pods[ip["ip"]] = item["metadata"]["namespace"] + "/" + item["metadata"]["name"]
json.dump({"version": 1, "nomatch": "", "type": "string",
           "table": [{"index": ip, "value": pod} for ip, pod in sorted(pods.items())]},
          open(f"{work}/pods.json", "w"))
with open(f"{work}/pods.csv", "w") as csv:
    for ip, pod in sorted(pods.items()):
        csv.write(f"{ip},pod,{pod}\n")
PY

cat > "$work/rsyslog.conf" <<CONF
global(workDirectory="$work" maxMessageSize="64k")
module(load="imfile")
module(load="mmjsonparse")
lookup_table(name="pods" file="$work/pods.json")
template(name="cef" type="string" string="CEF:0|peer|rsyslog|1|flow|Flow|1|src=%\$!source_ip% dst=%\$!dest_ip% spt=%\$!source_port% dpt=%\$!dest_port% proto=%\$!proto% act=%\$!action% cs1=%\$!source_namespace% cs2=%\$!dest_namespace% suser=%\$.src% duser=%\$.dst% in=%\$!bytes_in% out=%\$!bytes_out%\n")
input(type="imfile" file="$work/flows.log" tag="flows" ruleset="flows")
ruleset(name="flows") {
  action(type="mmjsonparse" cookie="")
  set \$.src = lookup("pods", \$!source_ip);
  set \$.dst = lookup("pods", \$!dest_ip);
  action(type="omfile" file="$work/rsyslog.out" template="cef")
}
CONF
cat > "$work/syslog-ng.conf" <<CONF
@version: 3.38
source s_flows { file("$work/flows.log" follow-freq(0.1) flags(no-parse) log-msg-size(65536)); };
parser p_json { json-parser(prefix(".json.")); };
parser p_src { add-contextual-data(selector("\${.json.source_ip}") database("$work/pods.csv") prefix("src.")); };
parser p_dst { add-contextual-data(selector("\${.json.dest_ip}") database("$work/pods.csv") prefix("dst.")); };
destination d_out { file("$work/syslog-ng.out" template("CEF:0|peer|syslog-ng|1|flow|Flow|1|src=\${.json.source_ip} dst=\${.json.dest_ip} spt=\${.json.source_port} dpt=\${.json.dest_port} proto=\${.json.proto} act=\${.json.action} cs1=\${.json.source_namespace} cs2=\${.json.dest_namespace} suser=\${src.pod} duser=\${dst.pod} in=\${.json.bytes_in} out=\${.json.bytes_out}\n")); };
log { source(s_flows); parser(p_json); parser(p_src); parser(p_dst); destination(d_out); flags(flow-control); };
CONF

ticks=$(getconf CLK_TCK)
# Runs a daemon until its output file holds every record; prints "cpu_seconds wall_seconds".
run_daemon() { # output, command...
  local output=$1; shift
  local started; started=$(date +%s.%N)
  "$@" > "$work/daemon.log" 2>&1 &
  local pid=$!
  local deadline=$((SECONDS + 600))
  until [ -f "$output" ] && [ "$(wc -l < "$output")" -ge "$records" ]; do
    kill -0 "$pid" 2>/dev/null || { echo "the daemon stopped: $(cat "$work/daemon.log")" >&2; exit 1; }
    [ $SECONDS -lt $deadline ] || { echo "timed out: $(wc -l < "$output") of $records records" >&2; exit 1; }
    sleep 0.2
  done
  local ended; ended=$(date +%s.%N)
  local cpu; cpu=$(awk -v t="$ticks" '{ print ($14 + $15) / t }' "/proc/$pid/stat")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$cpu $(awk -v a="$started" -v b="$ended" 'BEGIN { print b - a }')"
}
run_threatflow() { # workers
  /usr/bin/time -f "%U %S %e" -o "$work/time" "$target/release/threatflow" enrich --workers "$1" \
    --inventory deploy/local/inventory.json < "$work/flows.log" > "$work/threatflow.out" 2>/dev/null
  awk '{ print $1 + $2, $3 }' "$work/time"
}

declare -A result
result[threatflow_1]=$(run_threatflow 1)
result[threatflow]=$(run_threatflow "$(nproc)")
rm -f "$work"/imfile-state*
result[rsyslog]=$(run_daemon "$work/rsyslog.out" rsyslogd -n -f "$work/rsyslog.conf" -i "$work/rsyslog.pid")
result[syslog_ng]=$(run_daemon "$work/syslog-ng.out" env LD_LIBRARY_PATH="$root/target/syslog-ng/usr/lib/syslog-ng" \
  "$root/target/syslog-ng/usr/sbin/syslog-ng" -F --no-caps --module-path="$root/$modules" \
  -f "$work/syslog-ng.conf" -p "$work/syslog-ng.pid" -R "$work/syslog-ng.persist" -c "$work/syslog-ng.ctl")

grep -q 'suser=shop/' "$work/rsyslog.out" && grep -q 'suser=shop/' "$work/syslog-ng.out" ||
  { echo "a peer did not look pods up" >&2; exit 1; }
echo "$records Calico records ($(du -h "$work/flows.log" | cut -f1)), read -> JSON -> pod lookup -> CEF-like -> file:"
per_cpu() { echo "${result[$1]}" | awk -v n="$records" '{ printf "%.0f", n / $1 }'; }
for name in threatflow_1 threatflow rsyslog syslog_ng; do
  echo "${result[$name]}" | awk -v name="$name" -v n="$records" \
    '{ printf "  %-13s %8.0fk records per CPU-second  (%.2f CPU s, %.2f s wall, %.0fk records/s)\n", name, n / $1 / 1000, $1, $2, n / $2 / 1000 }'
done
for peer in rsyslog syslog_ng; do
  awk -v a="$(per_cpu threatflow_1)" -v b="$(per_cpu "$peer")" -v peer="$peer" \
    'BEGIN { printf "threatflow (one worker) does %.1fx the work of %s per CPU-second\n", a / b, peer }'
done
