#!/usr/bin/env bash
# Runs the codec's coverage-guided fuzz target (libFuzzer via cargo-fuzz) for a
# bounded time, on stable Rust. Usage: scripts/fuzz.sh [SECONDS] [TARGET]
# Installs cargo-fuzz from crates.io if it is missing. A crash leaves its input
# in crates/codec/fuzz/artifacts/TARGET/ and makes this script fail; replay it
# with: cargo fuzz run --sanitizer none TARGET crates/codec/fuzz/artifacts/TARGET/crash-...
set -euo pipefail
seconds="${1:-60}"
target="${2:-decode}"
root="$(cd "$(dirname "$0")/.." && pwd)"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz@0.13.2
fi

cd "$root/crates/codec/fuzz"
mkdir -p "corpus/$target"
# --sanitizer none: the sanitizers need nightly; coverage guidance does not.
exec cargo fuzz run --sanitizer none "$target" "corpus/$target" seeds -- \
    -max_total_time="$seconds" -max_len=4096 -print_final_stats=1
