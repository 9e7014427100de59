#!/usr/bin/env bash
# The CUDA backend's checks on a GPU machine, in one run (sized for under 8 minutes on an
# H100/H200). Build first, where Rust is (scripts/gpu-build.sh fills target-gpu/), then carry
# the repository with target-gpu/ to the GPU machine and run this there. It needs the NVIDIA
# driver and NVRTC (from the CUDA toolkit or PyTorch's pip wheels), and for the peer
# PyTorch + transformers. Writes $OUT/gpu-report.md (or target-gpu/report/) with:
#   1. the fixture criteria on the GPU, GPU batches = single sequences, GPU vs CPU on the
#      2B-4T-shaped model (the cuda test executable, BITNET_TEST_CUDA=1);
#   2. `bitnet bench --device cuda` on the 2B-4T-shaped model: pp128, tg64 for 1 and 16
#      streams (CUDA graphs on, and tg64 with them off);
#   3. transformers' BitNetForCausalLM in bf16 on the same GPU (scripts/bench_transformers_gpu.py)
#      and the ratios;
#   4. `--device auto` with the GPU hidden: runs on the CPU and says why.
# Dry runs elsewhere (e.g. through scripts/cuda-emu): BITNET_GPU_CHECK_SHAPE=tiny makes the
# models small, BITNET_GPU_CHECK_FILTER picks tests, BITNET_GPU_CHECK_SKIP_PEER=1 skips PyTorch.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=target-gpu/bitnet
tests=target-gpu/cuda-tests
report_dir=${OUT:-target-gpu/report}
mkdir -p "$report_dir"
report=$report_dir/gpu-report.md
work=${BITNET_GPU_WORK:-/tmp/bitnet-gpu-check}
mkdir -p "$work"
log() { printf '%s\n' "$*" | tee -a "$report"; }
: > "$report"
for f in "$bin" "$tests"; do
  [ -x "$f" ] || { log "FATAL: $f missing: run scripts/gpu-build.sh on a machine with Rust first"; exit 1; }
done
export BITNET_FIXTURES=${BITNET_FIXTURES:-$PWD/target-gpu/fixtures}
[ -f "$BITNET_FIXTURES/README.md" ] || { log "FATAL: fixtures not found at $BITNET_FIXTURES"; exit 1; }

# NVRTC: the toolkit's, else the one in PyTorch's pip wheels.
nvrtc_dirs=$(python3 - <<'PY' 2>/dev/null
import glob, os, site
c = glob.glob("/usr/local/cuda*/lib64/libnvrtc.so*") + glob.glob("/usr/lib/x86_64-linux-gnu/libnvrtc.so*")
for s in site.getsitepackages():
    c += glob.glob(os.path.join(s, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so*"))
    c += glob.glob(os.path.join(s, "nvidia", "cu*", "lib", "libnvrtc.so*"))
print(":".join(sorted({os.path.dirname(p) for p in c})))
PY
)
export LD_LIBRARY_PATH=${nvrtc_dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# cudarc looks for libnvrtc.so / libnvrtc.so.12 / …: give a wheel-only install a plain name.
if [ -n "$nvrtc_dirs" ] && ! ls ${nvrtc_dirs//:/ } 2>/dev/null | grep -qx 'libnvrtc.so\(.12\)\?'; then
  real=$(ls ${nvrtc_dirs//:/\/libnvrtc.so* } 2>/dev/null | head -1)
  [ -n "$real" ] && ln -sf "$real" "$work/libnvrtc.so" && export LD_LIBRARY_PATH=$work:$LD_LIBRARY_PATH
fi

log "# BitNet-Rust GPU check ($(date -u +%Y-%m-%dT%H:%MZ))"
log ""
log '```'
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee -a "$report"
log "NVRTC dirs: ${nvrtc_dirs:-none found}"
log '```'

status=0
log ""
log "## 1. Tests (fixture criteria on the GPU, batches, GPU vs CPU on 2B-4T)"
shape=${BITNET_GPU_CHECK_SHAPE:-2b4t}
model=$work/$shape-tq2_0.gguf
[ -f "$model" ] || "$bin" create-model --shape "$shape" --type tq2_0 --out "$model" >"$work/create.log" 2>&1 \
  || { log "create-model failed:"; tail -5 "$work/create.log" | tee -a "$report"; status=1; }
log '```'
BITNET_TEST_CUDA=1 BITNET_REQUIRE_NVRTC=1 BITNET_2B4T_GGUF=$model timeout 300 "$tests" \
  --include-ignored --test-threads 1 --nocapture ${BITNET_GPU_CHECK_FILTER:-} 2>&1 | grep -E "GPU|2B-4T|^test |test result|panicked|cuda:" | tee -a "$report"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
log '```'

log ""
log "## 2. bitnet bench --device cuda ($shape shape, TQ2_0)"
log '```'
timeout 150 "$bin" bench --device cuda -m "$model" -p 128 -n 64 -t 1 -r 3 --streams 1,16 --json \
  > "$report_dir/bench-cuda.json" 2> "$work/bench.err"
rc=$?; [ $rc = 0 ] || { status=1; log "bench failed (exit $rc; 124 = timed out after 150 s)"; tail -5 "$work/bench.err" | tee -a "$report"; }
BITNET_CUDA_GRAPHS=0 timeout 60 "$bin" bench --device cuda -m "$model" -p 0 -n 64 -t 1 -r 3 --json \
  > "$report_dir/bench-cuda-nographs.json" 2>> "$work/bench.err"
rc=$?; [ $rc = 0 ] || { status=1; log "bench without graphs failed (exit $rc; 124 = timed out after 60 s)"; }
log '```'

log ""
log "## 3. transformers BitNetForCausalLM, bf16, same GPU"
if [ "${BITNET_GPU_CHECK_SKIP_PEER:-0}" = 1 ]; then
  log "(skipped: BITNET_GPU_CHECK_SKIP_PEER=1)"; : > "$report_dir/bench-transformers.jsonl"
else
  timeout 240 python3 scripts/bench_transformers_gpu.py --shape 2b4t --n-gen 64 --streams 1,16 --reps 3 \
    > "$report_dir/bench-transformers.jsonl" 2> "$work/hf.err" || { status=1; tail -5 "$work/hf.err" | tee -a "$report"; }
fi
python3 - "$report_dir" <<'PY' | tee -a "$report"
import json, sys, os
d = sys.argv[1]
def load(name):
    try:
        t = open(os.path.join(d, name)).read().strip()
        return json.loads(t) if t.startswith("[") else [json.loads(l) for l in t.splitlines() if l.strip()]
    except Exception as e:
        print(f"({name}: {e})"); return []
ours, nog, hf = load("bench-cuda.json"), load("bench-cuda-nographs.json"), load("bench-transformers.jsonl")
print("| engine | test | t/s |\n|---|---|---:|")
for r in ours:
    test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']} x{r.get('n_streams', 1)}"
    print(f"| bitnet ({r['kernel']}) | {test} | {r['avg_ts']:.1f} ± {r['stddev_ts']:.1f} |")
for r in nog:
    print(f"| bitnet, no CUDA graphs | tg{r['n_gen']} x{r.get('n_streams', 1)} | {r['avg_ts']:.1f} ± {r['stddev_ts']:.1f} |")
for r in hf:
    print(f"| transformers {r['version']} bf16 | tg{r['n_gen']} x{r['n_streams']} | {r['avg_ts']:.1f} ± {r['stddev_ts']:.1f} |")
for np_ in (1, 16):
    o = [r for r in ours if r["n_gen"] and r.get("n_streams", 1) == np_]
    h = [r for r in hf if r["n_streams"] == np_]
    if o and h:
        ratio = o[0]["avg_ts"] / h[0]["avg_ts"]
        goal = " (goal >= 5x)" if np_ == 1 else ""
        print(f"\nratio bitnet/transformers, {np_} stream(s): {ratio:.2f}x{goal}")
PY

log ""
log "## 4. --device auto with the GPU hidden (CUDA_VISIBLE_DEVICES='')"
log '```'
CUDA_VISIBLE_DEVICES= timeout 60 "$bin" generate --device auto --model "$BITNET_FIXTURES/bitnet-tiny-packed" \
  --prompt hello --max-tokens 4 2>&1 | grep -E "device|tokens/s|error" | tee -a "$report"
log '```'
log ""
log "exit status: $status"
exit $status
