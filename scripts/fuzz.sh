#!/usr/bin/env bash
# Runs a coverage-guided fuzz target (libFuzzer via cargo-fuzz) for a bounded
# time, on stable Rust. Usage: scripts/fuzz.sh [SECONDS] [TARGET]
# Targets: decode (the codec, crates/codec/fuzz) and connection (one
# connection's protocol core, crates/broker/fuzz).
# Installs cargo-fuzz from crates.io if it is missing. A crash leaves its input
# in CRATE/artifacts/TARGET/ and makes this script fail; replay it from CRATE
# with: cargo fuzz run --sanitizer none TARGET artifacts/TARGET/crash-...
set -euo pipefail
seconds="${1:-60}"
target="${2:-decode}"
root="$(cd "$(dirname "$0")/.." && pwd)"

case "$target" in
    decode) crate="crates/codec/fuzz" ;;
    connection) crate="crates/broker/fuzz" ;;
    *)
        echo "fuzz.sh: unknown target '$target' (decode, connection)" >&2
        exit 2
        ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz@0.13.2
fi

cd "$root/$crate"
mkdir -p "corpus/$target"
# --sanitizer none: the sanitizers need nightly; coverage guidance does not.
exec cargo fuzz run --sanitizer none "$target" "corpus/$target" seeds -- \
    -max_total_time="$seconds" -max_len=4096 -print_final_stats=1
