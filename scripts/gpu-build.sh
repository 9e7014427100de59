#!/usr/bin/env bash
# Builds what scripts/gpu-check.sh runs on a GPU machine that has no Rust toolchain, into
# target-gpu/ (git-ignored; carry it to the machine with the repository):
#   target-gpu/bitnet       the release binary with the `cuda` feature
#   target-gpu/cuda-tests   the test executable of crates/bitnet-engine/tests/cuda.rs
#   target-gpu/fixtures/    a copy of the reference fixtures (shared/fixtures)
# Needs no CUDA toolkit: cudarc loads the driver and NVRTC at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitnet-cuda-target}"
out=target-gpu
mkdir -p "$out"
cargo build --release --features cuda -p bitnet-cli
cp "$CARGO_TARGET_DIR/release/bitnet" "$out/bitnet"
exe=$(cargo test -p bitnet-engine --features cuda --test cuda --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda":
        print(m["executable"])' | tail -1)
[ -n "$exe" ] || { echo "gpu-build: the cuda test executable was not built" >&2; exit 1; }
cp "$exe" "$out/cuda-tests"
strip "$out/bitnet" "$out/cuda-tests"
fixtures=${BITNET_FIXTURES:-$(cd .. && pwd)/shared/fixtures}
rm -rf "$out/fixtures" && cp -r "$fixtures" "$out/fixtures"
du -sh "$out"/*
