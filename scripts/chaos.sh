#!/usr/bin/env bash
# The long chaos run (docs/reliability.md): a cluster of the real binary
# (three store voters that are also edges, one edge-only node) under a
# seeded nemesis for N minutes, its history judged by the checker of
# tests/chaos. The seed is printed; the same seed replays the same faults.
#
#   scripts/chaos.sh [--minutes N] [--seed S] [--release] [--history DIR]
#   (defaults: 30 minutes, a random seed, the debug build, the temporary
#   directory)
#
# Bounded: the run ends by itself after N minutes of faults plus a drain of
# at most a few minutes. Processes, proxies and data live on loopback and in
# temporary directories, removed at the end.
set -euo pipefail
minutes=30
seed=
profile=()
history=${TMPDIR:-/tmp}
while [[ $# -gt 0 ]]; do
    case "$1" in
        --minutes) minutes=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        --release) profile=(--release); shift ;;
        --history) history=$2; shift 2 ;;
        *) echo "usage: $0 [--minutes N] [--seed S] [--release] [--history DIR]" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
export ROOKERY_CHAOS_MINUTES=$minutes ROOKERY_CHAOS_HISTORY_DIR=$history
if [[ -n "$seed" ]]; then export ROOKERY_CHAOS_SEED=$seed; fi
# The nodes run a copy of the binary: a build during the run (another
# checkout's CI sharing the target directory, say) must not swap the code
# of the nodes restarted after it.
cargo build --workspace "${profile[@]}" --bins --quiet
target=${CARGO_TARGET_DIR:-target}
binary="$target/$([[ ${#profile[@]} -gt 0 ]] && echo release || echo debug)/rookery"
copy=$(mktemp -d -t rookery-chaos-bin.XXXXXX)
trap 'rm -rf "$copy"' EXIT
cp "$binary" "$copy/rookery"
export ROOKERY_CLUSTER_BIN="$copy/rookery"
echo "chaos: nodes run $ROOKERY_CLUSTER_BIN (a copy of $binary)"
cargo test --workspace "${profile[@]}" --test cluster -- \
    --ignored --exact chaos::long_chaos_run --nocapture
