#!/bin/sh
# rustc wrapper for run.sh: libFuzzer's coverage instrumentation (stable
# -C flags) for pullthrough and the fuzz targets, nothing else.
rustc=$1
shift
case " $* " in
*" --crate-name pullthrough "* | *" --crate-name pullthrough_fuzz "* | *fuzz_targets/*)
    exec "$rustc" "$@" --cfg fuzzing -Cdebug-assertions -Coverflow-checks \
        -Cpasses=sancov-module \
        -Cllvm-args=-sanitizer-coverage-level=4 \
        -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
        -Cllvm-args=-sanitizer-coverage-pc-table \
        -Cllvm-args=-sanitizer-coverage-trace-compares
    ;;
esac
exec "$rustc" "$@"
