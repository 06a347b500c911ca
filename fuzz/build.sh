#!/bin/sh
# Build the libFuzzer harness straight from the library's sources:
#   fuzz/build.sh [OUTDIR]        (default: build-fuzz/ at the top)
# Needs clang with its fuzzer runtime (Debian: clang, libclang-rt-14-dev).
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$top/build-fuzz}
CC=${CC:-clang}
mkdir -p "$out"
# The library gets coverage instrumentation and the sanitizers too;
# -fno-sanitize-recover turns any UBSan report into a crash.
flags="-g -O1 -fno-omit-frame-pointer -D_GNU_SOURCE -pthread \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  -I$top/include -I$top/src"
# shellcheck disable=SC2086
$CC $flags -o "$out/fuzz_api" "$top/fuzz/fuzz_api.c" "$top"/src/*.c
echo "built $out/fuzz_api"
