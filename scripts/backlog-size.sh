#!/usr/bin/env bash
# Disk and memory per queued message, measured with Mosquitto's clients (not
# the team's): a persistent session is made with `mosquitto_sub -c` and left;
# N QoS 1 messages of random payload (SIZE bytes of base64) are published to
# it with `mosquitto_pub -l`; the data directory (du) and the node's resident
# memory are read before and after, after a restart, and the backlog is then
# delivered to the session, timed.
#
#   scripts/backlog-size.sh [BINARY] [N] [SIZE]
#   (defaults: the release build, 100000, 256)
#
# Needs mosquitto-clients, curl and bc. A single node on 127.0.0.1, its data
# in a temporary directory removed at the end.
set -euo pipefail
bin=${1:-${CARGO_TARGET_DIR:-$HOME/.cache/rookery-target}/release/rookery}
n=${2:-100000}
size=${3:-256}
dir=$(mktemp -d -t rookery-backlog.XXXXXX)
port=$((20000 + RANDOM % 10000))
http=$((port + 1))
pid=
cleanup() {
    if [[ -n "$pid" ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$dir"
}
trap cleanup EXIT

start_node() {
    # The queue must hold the whole backlog.
    ROOKERY_BROKER__LIMITS__MAX_QUEUED_MESSAGES=$((n * 2)) "$bin" serve \
        --listen "127.0.0.1:$port" --http-listen "127.0.0.1:$http" \
        --store-listen 127.0.0.1:0 --data-dir "$dir/data" >>"$dir/log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$http/readyz" >/dev/null && return
        sleep 0.2
    done
    echo "the node did not become ready; its log:" >&2
    cat "$dir/log" >&2
    exit 1
}
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
data_bytes() { du -sb "$dir/data" | cut -f1; }
per_message() { echo $(( ($1 - $2) / n )); }

start_node
timeout 10 mosquitto_sub -p "$port" -c -i backlog-sub -q 1 -t 'backlog/#' -W 1 >/dev/null 2>&1 || true
sleep 2
disk0=$(data_bytes)
rss0=$(rss_kib)
# Distinct random lines: a payload that does not compress away.
head -c $((n * size)) /dev/urandom | base64 -w "$size" | head -n "$n" >"$dir/messages" || true
# mosquitto_pub -l stops early past 65,535 QoS 1 messages (it takes an
# earlier PUBACK with the last message's reused packet id for the last one):
# publish in runs of 50,000 and check the node received every message.
split -l 50000 "$dir/messages" "$dir/run."
t0=$(date +%s.%N)
for run in "$dir"/run.*; do
    mosquitto_pub -p "$port" -i backlog-pub -q 1 -t backlog/t -l <"$run"
done
t1=$(date +%s.%N)
received=$(curl -s "http://127.0.0.1:$http/metrics" \
    | awk '/^rookery_messages_received_total\{qos="1"\}/ {print $2}')
if [[ "$received" != "$n" ]]; then
    echo "the node received $received of $n messages" >&2
    exit 1
fi
sleep 3
disk1=$(data_bytes)
rss1=$(rss_kib)
kill -TERM "$pid"
wait "$pid" || true
start_node
sleep 3
disk2=$(data_bytes)
rss2=$(rss_kib)
t2=$(date +%s.%N)
got=$( (timeout 120 mosquitto_sub -p "$port" -c -i backlog-sub -q 1 -t 'backlog/#' -C "$n" -W 100 || true) | wc -l)
t3=$(date +%s.%N)

echo "$n QoS 1 messages of $size bytes, published in $(echo "$t1 - $t0" | bc) s (mosquitto_pub -l)"
echo "data directory: $disk0 B before, $disk1 B after (+$(per_message "$disk1" "$disk0") B/message), $disk2 B after a restart (+$(per_message "$disk2" "$disk0") B/message)"
echo "resident memory: $rss0 KiB before, $rss1 KiB after (+$(( (rss1 - rss0) * 1024 / n )) B/message), $rss2 KiB after a restart with the backlog on disk"
echo "backlog delivered to the session: $got of $n in $(echo "$t3 - $t2" | bc) s (mosquitto_sub, QoS 1)"
