#!/usr/bin/env bash
# The compose cluster under faults, with QoS 1 and QoS 2 load from an
# independent client (loadcheck.py, paho-mqtt) through HAProxy.
#
# Builds the images (deploy/docker/build-local.sh: nothing is pulled), brings
# deploy/compose/docker-compose.yml up under its own project name, waits for
# every node to be ready, starts the load, then, one at a time with the load
# running and a settle period after each:
#   a  docker kill an edge, then start it again;
#   b  docker kill the store leader, then start it again;
#   c  cut the store leader off the network (docker network disconnect) for
#      longer than an election, then reconnect it at the same address;
#   d  roll every container: docker-compose stop (SIGTERM, the drain) and
#      start, one at a time, waiting for each to be ready;
#   e  move a store voter to a new IP address (disconnect, connect --ip),
#      check it catches up, then stop another voter: the group must keep its
#      majority (writes go on) because the moved voter is reached by name.
# Then the load drains and loadcheck.py prints, per fault, what was sent,
# acknowledged, refused, delivered, lost and duplicated. The run fails on any
# acknowledged QoS 1/2 message lost, any QoS 2 duplicate, a node not ready
# in time, or a check of (e) that does not hold.
#
#   deploy/compose/test.sh                              # the release binary
#   deploy/compose/test.sh --binary "$CARGO_TARGET_DIR/debug/rookery"
#
# Options:
#   --binary PATH   the rookery binary for the image (build-local.sh's default:
#                   $CARGO_TARGET_DIR or ~/.cache/rookery-target, release)
#   --faults LIST   which faults, in order [default: a,b,c,d,e]
#   --settle S      seconds of load before the first fault and after each [8]
#   --timeout S     the whole run's bound, builds included [600]
#   --keep          leave the cluster running at the end (tear it down with
#                   docker-compose -p rookery-ctest down -v)
#   --logs DIR      on failure, save every container's whole log in DIR
#                   (only the last lines are shown otherwise)
#
# Two runs at once need their own ROOKERY_CTEST_PROJECT (compose project),
# ROOKERY_SUBNET and ROOKERY_IMAGE.
#
# Skipped (exit 0, with a message) where Docker or Compose is not available.
# paho-mqtt is installed into a virtualenv under ~/.cache when missing.
# Everything is bounded: each wait, and the whole run (--timeout); the cluster
# is torn down at the end whatever happens, with its logs shown on failure.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
binary=""
faults="a,b,c,d,e"
settle=8
timeout_s=600
keep=0
logs_dir=""
args=("$@")
while (($#)); do
    case "$1" in
        --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
        --faults) faults="${2:?--faults needs a list}"; shift 2 ;;
        --settle) settle="${2:?--settle needs seconds}"; shift 2 ;;
        --timeout) timeout_s="${2:?--timeout needs seconds}"; shift 2 ;;
        --keep) keep=1; shift ;;
        --logs) logs_dir="${2:?--logs needs a directory}"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "test.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

if ! docker info >/dev/null 2>&1; then
    echo "SKIP: docker is not available here; the compose test did not run"
    exit 0
fi
if command -v docker-compose >/dev/null; then
    compose_cmd=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
else
    echo "SKIP: neither docker-compose nor docker compose is available; the compose test did not run"
    exit 0
fi

# The whole run is bounded: run again under timeout(1), which signals the
# whole process group (docker-compose, the load) when time is up; the EXIT
# trap then tears the cluster down.
if [[ -z "${ROOKERY_CTEST_BOUNDED:-}" ]]; then
    export ROOKERY_CTEST_BOUNDED=1
    status=0
    timeout -k 120 "$timeout_s" "$0" "${args[@]}" || status=$?
    if ((status == 124)); then
        echo "FAILED: the compose test took longer than ${timeout_s}s" >&2
    fi
    exit "$status"
fi

project="${ROOKERY_CTEST_PROJECT:-rookery-ctest}"
export ROOKERY_IMAGE="${ROOKERY_IMAGE:-rookery:compose-test}"
export BASE_IMAGE="${ROOKERY_BASE_IMAGE:-local/debian:bookworm-slim}"
export ROOKERY_RESTART=no
export ROOKERY_SUBNET="${ROOKERY_SUBNET:-172.29.83.0/24}"
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
compose() { "${compose_cmd[@]}" -p "$project" -f "$here/docker-compose.yml" "$@"; }
voters=(rk1 rk2 rk3)
edges=(e1 e2)
token=/run/rookery/admin-token
began=$SECONDS

work="$(mktemp -d -t rookery-ctest.XXXXXX)"
control="$work/control"
mkdir -p "$control"
problems=()
load_pid=""

# Wall-clock time (UTC, as the nodes log) and seconds since the start.
log() { printf '[%s %4ds] %s\n' "$(date -u +%T.%3N)" "$((SECONDS - began))" "$*"; }
problem() { log "PROBLEM: $*"; problems+=("$*"); }

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n "$load_pid" ]] && kill -0 "$load_pid" 2>/dev/null; then
        kill "$load_pid" 2>/dev/null || true
        wait "$load_pid" 2>/dev/null || true
    fi
    if ((status != 0)); then
        echo "---- docker-compose logs (last 40 lines per service) ----"
        compose logs --no-color --tail 40 2>&1 | tail -n 400 || true
        [[ -f "$work/loadcheck.out" ]] && { echo "---- loadcheck"; tail -n 60 "$work/loadcheck.out"; }
        if [[ -n "$logs_dir" ]]; then
            mkdir -p "$logs_dir"
            local file; file="$logs_dir/compose-$(date -u +%Y%m%dT%H%M%S).log"
            compose logs --no-color --timestamps >"$file" 2>&1 || true
            echo "every container's log: $file"
        fi
    fi
    if ((keep)); then
        echo "cluster left running: ${compose_cmd[*]} -p $project -f $here/docker-compose.yml down -v"
    else
        compose down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# ---- helpers ---------------------------------------------------------------

container() {
    docker ps -aq --filter "label=com.docker.compose.project=$project" \
        --filter "label=com.docker.compose.service=$1" | head -n 1
}
network() {
    docker network ls -q --filter "label=com.docker.compose.project=$project" \
        --filter "label=com.docker.compose.network=rookery" | head -n 1
}
ip_of() {
    docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$(container "$1")" \
        | awk '{ print $1 }'
}
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The HTTP status of GET PATH on HOST:PORT (000 when there is no answer).
http_status() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: test\r\n\r\n" "$3" >&3
        IFS=" " read -r _ code _ <&3 && echo "$code"' _ "$1" "$2" "$3" 2>/dev/null || echo 000
}
ready() {
    local ip
    ip="$(ip_of "$1")"
    [[ -n "$ip" && "$(http_status "$ip" 9883 /readyz)" == 200 ]]
}
# wait_ready LIMIT SERVICE...: every one answers /readyz 200 within LIMIT s.
wait_ready() {
    local limit="$1" service deadline=$((SECONDS + $1))
    shift
    for service in "$@"; do
        until ready "$service"; do
            if ((SECONDS >= deadline)); then
                problem "$service not ready within ${limit}s"
                return 1
            fi
            sleep 0.2
        done
    done
}

# rookery ctl in a running node's container, with the cluster's token; not
# in the one named by $ctl_skip (a node cut off answers with its own stale
# view of the group).
ctl_skip=""
ctl() {
    local service cid
    for service in "${voters[@]}" "${edges[@]}"; do
        [[ "$service" == "$ctl_skip" ]] && continue
        cid="$(container "$service")"
        [[ -n "$cid" && "$(docker inspect -f '{{.State.Running}}' "$cid")" == true ]] || continue
        if docker exec "$cid" rookery ctl --url http://127.0.0.1:9883 --token-file "$token" --json "$@" 2>/dev/null; then
            return 0
        fi
    done
    return 1
}
# The store group as one line: "LEADER ID:REACHABLE:LAG:ADDRESS ..." (LEADER
# 0 when none is known), from any node that answers; empty when none does.
cluster_view() {
    ctl cluster status 2>/dev/null | python3 -c '
import json, sys
c = json.load(sys.stdin)
nodes = " ".join("%s:%d:%s:%s" % (n["node_id"], bool(n.get("reachable")), n.get("lag"), n.get("address"))
                 for n in c.get("nodes", []))
print(c.get("leader_id") or 0, nodes)' 2>/dev/null || true
}
leader() { local view; view="$(cluster_view)"; echo "${view%% *}"; }
# wait_group LIMIT [EXCEPT]: a leader (not EXCEPT) and every voter reachable,
# none more than 100 entries behind; the view is left in group_view.
group_view=""
wait_group() {
    local limit="$1" except="${2:-}" deadline=$((SECONDS + $1)) view
    while ((SECONDS < deadline)); do
        view="$(cluster_view)"
        if [[ -n "$view" && "${view%% *}" != 0 && "${view%% *}" != "$except" ]] \
            && python3 -c '
import sys
nodes = [n.split(":", 3) for n in sys.argv[1].split()[1:]]
sys.exit(0 if len(nodes) == 3 and all(r == "1" and lag not in ("None", "") and int(lag) <= 100
                                    for _, r, lag, _ in nodes) else 1)' "$view"; then
            group_view="$view"
            return 0
        fi
        sleep 0.5
    done
    problem "the store group did not settle within ${limit}s (last view: ${view:-none})"
    return 1
}
acked() {
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["acked"])' "$control/status" 2>/dev/null || echo 0
}
phase() { echo "$1" >"$control/phase"; log "== phase $1"; }

# ---- faults ----------------------------------------------------------------

fault_a() {
    phase "a-edge-kill"
    local cid; cid="$(container e1)"
    docker kill "$cid" >/dev/null
    log "e1 killed (docker kill); its clients reconnect through HAProxy to e2"
    sleep 3
    docker start "$cid" >/dev/null
    local t=$SECONDS
    wait_ready 60 e1 || return 1
    log "e1 started again, ready after $((SECONDS - t))s"
}

fault_b() {
    phase "b-leader-kill"
    local old cid t
    old="$(leader)"
    [[ "$old" =~ ^[123]$ ]] || { problem "no store leader to kill (got '$old')"; return 1; }
    cid="$(container "rk$old")"
    docker kill "$cid" >/dev/null
    t=$SECONDS
    log "store leader rk$old killed (docker kill)"
    local deadline=$((SECONDS + 20)) now
    until now="$(leader)"; [[ "$now" =~ ^[123]$ && "$now" != "$old" ]]; do
        ((SECONDS < deadline)) || { problem "no new leader within 20s of killing rk$old"; return 1; }
        sleep 0.2
    done
    log "rk$now leads after $((SECONDS - t))s"
    sleep 2
    docker start "$cid" >/dev/null
    wait_ready 60 "rk$old" || return 1
    wait_group 60 || return 1
    log "rk$old back and caught up"
}

fault_c() {
    phase "c-partition"
    local old net cid ip t
    old="$(leader)"
    [[ "$old" =~ ^[123]$ ]] || { problem "no store leader to cut off (got '$old')"; return 1; }
    net="$(network)"; cid="$(container "rk$old")"; ip="$(ip_of "rk$old")"
    docker network disconnect "$net" "$cid"
    t=$SECONDS
    ctl_skip="rk$old"
    log "store leader rk$old ($ip) cut off the network"
    local deadline=$((SECONDS + 20)) now
    until now="$(leader)"; [[ "$now" =~ ^[123]$ && "$now" != "$old" ]]; do
        ((SECONDS < deadline)) || { problem "no new leader within 20s of cutting rk$old off"; break; }
        sleep 0.2
    done
    log "rk$now leads after $((SECONDS - t))s"
    # Well past an election timeout (0.4-0.8 s) and the edges' quorum bound.
    sleep 5
    docker network connect --ip "$ip" --alias "rk$old" "$net" "$cid"
    ctl_skip=""
    t=$SECONDS
    wait_ready 60 "rk$old" || return 1
    wait_group 60 || return 1
    log "rk$old reconnected at $ip, ready and caught up after $((SECONDS - t))s"
}

fault_d() {
    phase "d-rolling"
    local service t
    for service in "${voters[@]}" "${edges[@]}" haproxy prometheus; do
        t=$SECONDS
        compose stop -t 35 "$service" >/dev/null 2>&1
        log "$service stopped (drained) in $((SECONDS - t))s"
        compose start "$service" >/dev/null 2>&1
        t=$SECONDS
        case "$service" in
            rk*) wait_ready 60 "$service" || return 1; wait_group 60 || return 1 ;;
            e*) wait_ready 60 "$service" || return 1 ;;
            haproxy)
                local deadline=$((SECONDS + 30))
                until [[ "$(http_status 127.0.0.1 "$ROOKERY_HAPROXY_STATS_PORT" /)" == 200 ]]; do
                    ((SECONDS < deadline)) || { problem "HAProxy not back within 30s"; return 1; }
                    sleep 0.2
                done ;;
        esac
        log "$service back after $((SECONDS - t))s"
        sleep 2
    done
}

fault_e() {
    phase "e-move-voter"
    local lead moved="" other="" net cid old_ip prefix new_ip t n
    lead="$(leader)"
    [[ "$lead" =~ ^[123]$ ]] || { problem "no store leader (got '$lead')"; return 1; }
    # A follower moves; the other follower is stopped afterwards, leaving the
    # leader and the moved voter: a majority only if the moved one is reached.
    for n in 1 2 3; do
        [[ "$n" == "$lead" ]] && continue
        if [[ -z "$moved" ]]; then moved=$n; else other=$n; fi
    done
    net="$(network)"; cid="$(container "rk$moved")"; old_ip="$(ip_of "rk$moved")"
    prefix="${ROOKERY_SUBNET%.*/*}"
    new_ip="$prefix.200"
    [[ "$new_ip" != "$old_ip" ]] || new_ip="$prefix.201"
    docker network disconnect "$net" "$cid"
    docker network connect --ip "$new_ip" --alias "rk$moved" "$net" "$cid"
    t=$SECONDS
    log "rk$moved moved from $old_ip to $new_ip (leader rk$lead)"
    wait_ready 60 "rk$moved" || return 1
    if ! wait_group 30; then
        problem "(e) rk$moved did not catch up at its new address $new_ip"
        return 1
    fi
    log "rk$moved caught up after $((SECONDS - t))s: $group_view"
    compose stop -t 35 "rk$other" >/dev/null 2>&1
    log "rk$other stopped: rk$lead and rk$moved must keep the majority"
    # Writes must go on: the load keeps being acknowledged, the edges stay
    # ready, and the group still has a leader.
    local before deadline=$((SECONDS + 20)) ok=0
    before="$(acked)"
    while ((SECONDS < deadline)); do
        if (($(acked) >= before + 50)) && ready e1 && ready e2 && [[ "$(leader)" =~ ^[123]$ ]]; then
            ok=1
            break
        fi
        sleep 0.5
    done
    if ((ok)); then
        log "majority kept: $(($(acked) - before)) messages acknowledged with rk$other down"
    else
        problem "(e) with rk$other stopped and rk$moved moved to $new_ip, the group lost its majority (acknowledged $(($(acked) - before)) messages in 20s; leader '$(leader)')"
    fi
    compose start "rk$other" >/dev/null 2>&1
    wait_ready 60 "rk$other" || return 1
    wait_group 60 || return 1
    ((ok))
}

# ---- the run ----------------------------------------------------------------

log "building the images"
build_args=(--tag "$ROOKERY_IMAGE" --base-tag "$BASE_IMAGE")
[[ -n "$binary" ]] && build_args+=(--binary "$binary")
"$repo/deploy/docker/build-local.sh" "${build_args[@]}"
compose build -q haproxy prometheus >/dev/null

venv="$HOME/.cache/rookery-compose-venv"
if ! "$venv/bin/python" -c 'import paho.mqtt' 2>/dev/null; then
    log "installing paho-mqtt into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'paho-mqtt>=2,<3'
fi
# The workaround for paho's QoS 2 resend after PUBREL must hold with the
# installed paho, or its duplicates would be counted as the broker's.
"$venv/bin/python" "$here/loadcheck.py" --self-test

ROOKERY_MQTT_PORT="$(free_port)"
ROOKERY_HAPROXY_STATS_PORT="$(free_port)"
ROOKERY_PROMETHEUS_PORT="$(free_port)"
export ROOKERY_MQTT_PORT ROOKERY_HAPROXY_STATS_PORT ROOKERY_PROMETHEUS_PORT
compose down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
log "starting the cluster (MQTT through HAProxy on 127.0.0.1:$ROOKERY_MQTT_PORT)"
compose up -d >/dev/null 2>&1 || { compose up -d; exit 1; }
t=$SECONDS
wait_ready 90 "${voters[@]}" "${edges[@]}" || exit 1
wait_group 30 || exit 1
log "every node ready after $((SECONDS - t))s; group: $group_view"

# Messages are tagged with the phase current when first sent: the load starts
# in the baseline.
echo baseline >"$control/phase"
"$venv/bin/python" "$here/loadcheck.py" --port "$ROOKERY_MQTT_PORT" --control "$control" \
    --run-id "$$" --drain 60 --timeout "$timeout_s" >"$work/loadcheck.out" 2>&1 &
load_pid=$!
deadline=$((SECONDS + 60))
until python3 -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))["started"] else 1)' \
        "$control/status" 2>/dev/null; do
    if ! kill -0 "$load_pid" 2>/dev/null || ((SECONDS >= deadline)); then
        cat "$work/loadcheck.out"
        echo "FAILED: the load did not start" >&2
        exit 1
    fi
    sleep 0.5
done
log "== phase baseline"
sleep "$settle"

# Prometheus scrapes every node and has the alert rules loaded.
prometheus_check="$(python3 - "$ROOKERY_PROMETHEUS_PORT" <<'PY' || true
import json, sys, time, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}/api/v1"
deadline = time.time() + 30
while True:
    try:
        with urllib.request.urlopen(f"{base}/query?query=up%7Bjob%3D%22rookery%22%7D", timeout=3) as r:
            up = json.load(r)["data"]["result"]
        with urllib.request.urlopen(f"{base}/rules", timeout=3) as r:
            groups = [g["name"] for g in json.load(r)["data"]["groups"]]
        if len(up) == 5 and all(s["value"][1] == "1" for s in up) and groups:
            print(f"ok: {len(up)} nodes up, rule groups {', '.join(groups)}")
            break
    except OSError:
        up, groups = [], []
    if time.time() > deadline:
        print(f"up={[(s['metric']['instance'], s['value'][1]) for s in up]} groups={groups}")
        break
    time.sleep(1)
PY
)"
if [[ "$prometheus_check" == ok:* ]]; then
    log "Prometheus: ${prometheus_check#ok: }"
else
    problem "Prometheus does not scrape every node with the rules loaded: $prometheus_check"
fi

IFS=, read -r -a fault_list <<<"$faults"
for fault in "${fault_list[@]}"; do
    case "$fault" in
        a|b|c|d|e) ;;
        *) problem "no fault '$fault' (a to e)"; continue ;;
    esac
    if ! "fault_$fault"; then
        # A fault whose recovery failed leaves the cluster in no state for
        # the next; (e) is last and its checks are reported above.
        [[ "$fault" == e ]] || { log "skipping the remaining faults"; break; }
    fi
    sleep "$settle"
done

phase "end"
sleep 2
touch "$control/stop"
log "load stopped; draining (at most 60s)"
load_status=0
wait "$load_pid" || load_status=$?
load_pid=""
echo
cat "$work/loadcheck.out"
echo
# What the broker itself dropped, from Prometheus (which keeps the counts
# across the nodes' restarts): a message a subscriber's full queue refused
# (reason queue_full, broker.limits.max_queued_messages) is acknowledged to
# its publisher but never delivered to that subscriber.
python3 - "$ROOKERY_PROMETHEUS_PORT" <<'PY' || true
import json, sys, urllib.parse, urllib.request
query = "sum by (reason) (increase(rookery_messages_dropped_total[1h]))"
url = f"http://127.0.0.1:{sys.argv[1]}/api/v1/query?" + urllib.parse.urlencode({"query": query})
try:
    with urllib.request.urlopen(url, timeout=5) as r:
        result = json.load(r)["data"]["result"]
except OSError as error:
    print(f"messages dropped by the broker: Prometheus did not answer ({error})")
    sys.exit(0)
drops = {s["metric"].get("reason", "?"): round(float(s["value"][1])) for s in result}
print("messages dropped by the broker (Prometheus, whole run): "
      + (", ".join(f"{reason} {n}" for reason, n in sorted(drops.items()) if n) or "none"))
PY
echo
if ((load_status != 0)); then
    problems+=("loadcheck.py failed (exit $load_status): see above")
fi
if ((${#problems[@]})); then
    echo "FAILED ($((SECONDS - began))s):"
    printf '  - %s\n' "${problems[@]}"
    exit 1
fi
echo "OK ($((SECONDS - began))s): faults $faults passed"
