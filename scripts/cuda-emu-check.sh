#!/usr/bin/env bash
# Runs the CUDA backend's GPU tests on a machine WITHOUT a GPU: the real Rust host code (cudarc,
# weight upload, step orchestration, CUDA graphs) and the real kernel source, with
#   - NVRTC from PyPI (nvidia-cuda-nvrtc-cu12, into ~/.cache/bitnet-nvrtc) compiling kernels.cu
#     to PTX exactly as on a GPU machine, and
#   - scripts/cuda-emu/fake_libcuda.cpp as libcuda.so: the driver calls over host memory, with
#     kernels.cu itself compiled by g++ and run by a fiber emulator (emu.h: blocks, warps,
#     __syncthreads, shuffles, dp4a).
# It checks the fixture criteria through the GPU code path, batches vs single sequences and
# chunked prefill. It cannot measure GPU speed or catch GPU-only faults (memory model, launch
# limits, driver behaviour): scripts/gpu-check.sh on a real GPU does that. ~10 minutes, slow by
# design (each GPU thread is a fiber).
#   scripts/cuda-emu-check.sh [f32|f16]    KV-cache precision to test (default f32)
set -euo pipefail
cd "$(dirname "$0")/.."
kv=${1:-f32}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitnet-cuda-target}"
venv=$HOME/.cache/bitnet-nvrtc
if ! ls "$venv"/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so* >/dev/null 2>&1; then
  echo "[emu] installing NVRTC from PyPI (nvidia-cuda-nvrtc-cu12) into $venv"
  python3 -m venv "$venv" && "$venv/bin/pip" install -q nvidia-cuda-nvrtc-cu12
fi
nvrtc=$(dirname "$(ls "$venv"/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so* | head -1)")
emu=$CARGO_TARGET_DIR/cuda-emu-$kv
mkdir -p "$emu"
flags=()
[ "$kv" = f32 ] && flags+=(-DBITNET_KV_F32)
echo "[emu] building the fake libcuda.so (g++, KV $kv)"
g++ -std=c++20 -O2 -shared -fPIC "${flags[@]}" -o "$emu/libcuda.so" scripts/cuda-emu/fake_libcuda.cpp
echo "[emu] cargo test --features cuda --test cuda (GPU tests through the emulator)"
LD_LIBRARY_PATH=$emu:$nvrtc BITNET_TEST_CUDA=1 BITNET_REQUIRE_NVRTC=1 BITNET_CUDA_KV=$kv \
  cargo test -p bitnet-engine --features cuda --test cuda -- --include-ignored --skip 2b4t \
  --test-threads 1 --nocapture
