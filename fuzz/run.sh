#!/bin/sh
# Builds the fuzz targets with coverage instrumentation on stable Rust and
# runs each for a bounded time: `fuzz/run.sh [seconds per target] [target...]`.
#
# cargo-fuzz needs nightly only for its sanitizers (-Zsanitizer); coverage
# guidance itself uses stable flags. This script adds them, through a rustc
# wrapper, to pullthrough and the targets only, so the dependencies are
# built as usual. With nightly, `cargo fuzz run <target>` works as well.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
seconds=${1:-60}
[ $# -gt 0 ] && shift
targets=${*:-"reference digest range accept challenge ratelimit content_range manifest"}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"
export RUSTC_WRAPPER="$here/sancov-rustc.sh"
cd "$here"
cargo build --bins
for target in $targets; do
    mkdir -p "corpus/$target" artifacts
    echo "== $target: $seconds s"
    "$CARGO_TARGET_DIR/debug/$target" -max_total_time="$seconds" -max_len=4096 \
        -dict=registry.dict -artifact_prefix="artifacts/$target-" "corpus/$target"
done
