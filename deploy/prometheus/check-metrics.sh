#!/usr/bin/env bash
# Lints what Prometheus will read from Rookery with promtool (Debian's
# `prometheus` package): the alerting rules (`promtool check rules`), and a
# live node's /metrics after a little traffic (`promtool check metrics`:
# HELP on every metric, counters ending in _total, no summaries where
# histograms belong, ...).
#
#   deploy/prometheus/check-metrics.sh [ROOKERY_BINARY]
#
# The binary defaults to $CARGO_TARGET_DIR/debug/rookery (else
# target/debug/rookery). The node listens on loopback ports the system
# picks and keeps its data in a temporary directory; the check takes a few
# seconds and stops only the node it started. CI runs it when promtool is
# installed.
set -euo pipefail

cd "$(dirname "$0")/../.."
root=$(pwd)
binary=${1:-${CARGO_TARGET_DIR:-$root/target}/debug/rookery}
for tool in promtool curl; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
done
[[ -x $binary ]] || { echo "no rookery binary at $binary (cargo build first)" >&2; exit 2; }

promtool check rules "$root/deploy/prometheus/rookery-rules.yml"

work=$(mktemp -d -t rookery-check-metrics.XXXXXX)
node=
cleanup() {
    if [[ -n $node ]]; then
        kill "$node" 2>/dev/null || true
        wait "$node" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

NO_COLOR=1 "$binary" serve --data-dir "$work/data" --listen 127.0.0.1:0 \
    --store-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 >"$work/log" 2>&1 &
node=$!
timeout 30 bash -c "until grep -q 'rookery ready' '$work/log'; do sleep 0.1; done" \
    || { cat "$work/log" >&2; echo "the node did not start" >&2; exit 1; }
address() { # the address a `listener ready` line gives a listener
    sed -n "s/.*listener ready listener=\"\?$1\"\? address=\([0-9.:]*\).*/\1/p" "$work/log" | head -n 1
}
http=$(address http)
mqtt=$(address tcp)
[[ -n $http && -n $mqtt ]] || { cat "$work/log" >&2; echo "no listener addresses" >&2; exit 1; }

# Some traffic, so that the histograms have observations.
if command -v mosquitto_pub >/dev/null; then
    for qos in 0 1 2; do
        mosquitto_pub -h "${mqtt%:*}" -p "${mqtt##*:}" -q "$qos" -t check/metrics -m "qos $qos"
    done
fi

curl -sf "http://$http/metrics" >"$work/metrics"
promtool check metrics <"$work/metrics"
echo "$(grep -c '^# HELP' "$work/metrics") metrics, every one with HELP: promtool check metrics passed"
