#!/usr/bin/env bash
# Checks the Grafana dashboard and the alerting rules against a real
# Prometheus scraping a live cluster: starts three `rookery serve` nodes (each
# a store replica and an edge) on loopback, puts MQTT load on them (QoS 0, 1
# and 2, MQTT 3.1, 3.1.1 and 5.0, a persistent session, retained messages,
# subscribers on other nodes than the publishers so that edges forward),
# starts Prometheus (Debian's `prometheus` package) scraping the nodes every
# second with deploy/prometheus/rookery-rules.yml loaded, then asks
# Prometheus' HTTP API for every query of deploy/grafana/rookery.json.
#
# Passes when every panel query returns data, the dashboard's variables find
# values, every rule evaluates without error, `promtool check rules` passes on
# the rules and `promtool check metrics` on each node's /metrics; then two
# nodes are killed and the node-down, no-leader and out-of-touch alerts must
# become pending or firing.
#
#   deploy/prometheus/check-dashboard.sh [ROOKERY_BINARY]
#
# The binary defaults to $CARGO_TARGET_DIR/debug/rookery (else
# target/debug/rookery). Needs prometheus, promtool, mosquitto_pub,
# mosquitto_sub, curl and python3. Everything listens on 127.0.0.1 only and
# lives in a temporary directory; the whole check takes about two minutes and
# is bounded; it stops only the processes it started.
set -euo pipefail

cd "$(dirname "$0")/../.."
root=$(pwd)
binary=${1:-${CARGO_TARGET_DIR:-$root/target}/debug/rookery}
rules=$root/deploy/prometheus/rookery-rules.yml
dashboard=$root/deploy/grafana/rookery.json
# How long load runs before the queries (rate windows need samples).
load_seconds=${LOAD_SECONDS:-45}

for tool in prometheus promtool mosquitto_pub mosquitto_sub curl python3; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
done
[[ -x $binary ]] || { echo "no rookery binary at $binary (cargo build first)" >&2; exit 2; }

work=$(mktemp -d -t rookery-check-dashboard.XXXXXX)
pids=()
cleanup() {
    local status=$?
    # Newest first: the load, then Prometheus, then the nodes.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill "${pids[i]}" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ $status -ne 0 ]]; then
        echo "failed; logs:" >&2
        for log in "$work"/*.log; do
            [[ -f $log ]] && { echo "--- $log" >&2; tail -n 20 "$log" >&2; }
        done
    fi
    rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n=== %s (%s)\n' "$1" "$(date +%T)"; }

# Free loopback ports, chosen by the system.
read -r -a ports <<<"$(python3 - <<'EOF'
import socket
socks = []
for _ in range(13):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)"
# Per node i (0..2): store, forward, http, mqtt; then Prometheus.
store() { echo "127.0.0.1:${ports[$((4 * $1))]}"; }
forward() { echo "127.0.0.1:${ports[$((4 * $1 + 1))]}"; }
http() { echo "127.0.0.1:${ports[$((4 * $1 + 2))]}"; }
mqtt_port() { echo "${ports[$((4 * $1 + 3))]}"; }
prometheus_address=127.0.0.1:${ports[12]}

step "promtool check rules"
promtool check rules "$rules"

step "a 3-node cluster"
seeds="\"$(store 0)\", \"$(store 1)\", \"$(store 2)\""
for i in 0 1 2; do
    mkdir -p "$work/node$i"
    cat >"$work/node$i/rookery.toml" <<EOF
node_id = $((i + 1))
data_dir = "$work/node$i/data"

[store]
listen = "$(store "$i")"

[cluster]
seeds = [$seeds]
bootstrap_expect = 3
forward_listen = "$(forward "$i")"

[http]
listen = "$(http "$i")"
EOF
    NO_COLOR=1 "$binary" serve --config "$work/node$i/rookery.toml" \
        --listen "127.0.0.1:$(mqtt_port "$i")" >"$work/node$i.log" 2>&1 &
    pids+=($!)
done
for i in 0 1 2; do
    timeout 60 bash -c "until grep -q 'rookery ready' '$work/node$i.log'; do sleep 0.2; done" \
        || { echo "node $((i + 1)) did not start" >&2; exit 1; }
done
echo "ready: mqtt $(mqtt_port 0) $(mqtt_port 1) $(mqtt_port 2), http $(http 0) $(http 1) $(http 2)"

step "prometheus on $prometheus_address"
cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $rules
scrape_configs:
  - job_name: rookery
    static_configs:
      - targets: ["$(http 0)", "$(http 1)", "$(http 2)"]
EOF
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address="$prometheus_address" --log.level=warn >"$work/prometheus.log" 2>&1 &
pids+=($!)
timeout 30 bash -c "until curl -sf 'http://$prometheus_address/-/ready' >/dev/null; do sleep 0.2; done" \
    || { echo "prometheus did not get ready" >&2; exit 1; }

step "MQTT load for ${load_seconds}s"
sub() { # node, then mosquitto_sub options
    local node=$1
    shift
    timeout $((load_seconds + 60)) mosquitto_sub -h 127.0.0.1 -p "$(mqtt_port "$node")" "$@" >/dev/null 2>&1 &
    pids+=($!)
}
# Subscribers on nodes 2 and 3 for what node 1 publishes (forwarded), one
# of them a persistent session (its QoS 1/2 messages are queued in the
# store), each protocol version once.
sub 1 -V mqttv5 -q 2 -t 'load/#' -i check-persistent -c -x 300
sub 2 -V mqttv311 -q 1 -t 'load/#'
sub 0 -V mqttv31 -q 0 -t 'load/#'
sub 2 -V mqttv5 -q 1 -t '$share/group/load/#'
sleep 1
publish() { # node, qos, topic
    local node=$1 qos=$2 topic=$3
    timeout $((load_seconds + 10)) bash -c "
        end=\$((SECONDS + $load_seconds))
        while ((SECONDS < end)); do
            seq 200 | mosquitto_pub -h 127.0.0.1 -p $(mqtt_port "$node") -q $qos -t '$topic' -l
            sleep 0.5
        done" >/dev/null 2>&1 &
    pids+=($!)
}
publish 0 0 load/zero
publish 0 1 load/one
publish 1 2 load/two
for n in 1 2 3; do
    mosquitto_pub -h 127.0.0.1 -p "$(mqtt_port 0)" -r -q 1 -t "retained/$n" -m "kept $n"
done
sleep "$load_seconds"

step "every rule evaluates"
python3 - "$prometheus_address" <<'EOF'
import json, sys, urllib.request
rules = json.load(urllib.request.urlopen(f"http://{sys.argv[1]}/api/v1/rules", timeout=10))
bad = [(r["name"], r.get("lastError", r["health"]))
       for group in rules["data"]["groups"] for r in group["rules"] if r["health"] != "ok"]
total = sum(len(group["rules"]) for group in rules["data"]["groups"])
firing = [r["name"] for group in rules["data"]["groups"] for r in group["rules"] if r.get("state") == "firing"]
print(f"{total} rules loaded, {total - len(bad)} evaluated without error; firing now: {firing or 'none'}")
if bad or total == 0:
    for name, why in bad:
        print(f"  {name}: {why}")
    sys.exit(1)
EOF

step "every dashboard query returns data"
python3 - "$prometheus_address" "$dashboard" <<'EOF'
import json, sys, urllib.parse, urllib.request
address, path = sys.argv[1], sys.argv[2]
dashboard = json.load(open(path))

def query(expr):
    url = f"http://{address}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    return json.load(urllib.request.urlopen(url, timeout=10))

def substitute(expr):
    # What Grafana puts in for its variables: every job and node, and a
    # rate window of several scrape intervals.
    return (expr.replace("$__rate_interval", "30s").replace("$job", ".*")
            .replace("$instance", ".*"))

failed = 0
for variable in dashboard["templating"]["list"]:
    if variable["type"] != "query":
        continue
    definition = variable["definition"]
    # label_values(SELECTOR, LABEL)
    inner = definition[len("label_values("):-1]
    selector, label = inner.rsplit(",", 1)
    url = (f"http://{address}/api/v1/label/{label.strip()}/values?"
           + urllib.parse.urlencode({"match[]": substitute(selector.strip())}))
    values = json.load(urllib.request.urlopen(url, timeout=10))["data"]
    print(f"{'ok ' if values else 'NO '} variable {variable['name']}: {values}")
    failed += not values

count = empty = 0
for panel in dashboard["panels"]:
    for target in panel.get("targets", []):
        count += 1
        expr = substitute(target["expr"])
        answer = query(expr)
        result = answer.get("data", {}).get("result", [])
        values = [series["value"][1] for series in result]
        ok = answer.get("status") == "success" and result
        empty += not ok
        shown = ", ".join(values[:3]) + (" ..." if len(values) > 3 else "")
        print(f"{'ok ' if ok else 'NO '} {panel['title']} [{target['refId']}]: {len(result)} series ({shown})")
        if not ok:
            print(f"    {expr}\n    {answer.get('error', 'no data')}")
print(f"\n{count - empty} of {count} panel queries returned data")
sys.exit(1 if failed or empty else 0)
EOF

step "promtool check metrics on each node"
for i in 0 1 2; do
    curl -sf "http://$(http "$i")/metrics" | promtool check metrics
    echo "node $((i + 1)): clean"
done

step "an outage: nodes 2 and 3 killed, the alerts that must see it do"
# Node 1 is left alone, without its store majority: whether it led or not,
# no node can commit now, and its edge loses touch with the quorum.
kill -KILL "${pids[1]}" "${pids[2]}"
{ wait "${pids[1]}" "${pids[2]}"; } 2>/dev/null || true
python3 - "$prometheus_address" <<'EOF'
import json, sys, time, urllib.request
expected = {"RookeryNodeDown", "RookeryStoreNoLeader", "RookeryEdgeOutOfTouchWithStore"}
deadline = time.monotonic() + 40
while True:
    answer = json.load(urllib.request.urlopen(f"http://{sys.argv[1]}/api/v1/alerts", timeout=10))
    active = {alert["labels"]["alertname"]: alert["state"] for alert in answer["data"]["alerts"]}
    if expected <= active.keys() or time.monotonic() > deadline:
        break
    time.sleep(1)
print("active alerts:", ", ".join(f"{name} ({state})" for name, state in sorted(active.items())))
missing = expected - active.keys()
if missing:
    print("not raised:", ", ".join(sorted(missing)))
    sys.exit(1)
EOF

step "passed"
