#!/usr/bin/env bash
# Serving benchmarks with `bitnet loadtest` against `bitnet serve` on loopback (same machine):
#   1. headline: tiny model, max_tokens 1, 64 connections (requests/s, P99 latency)
#   2. continuous batching: small synthetic model (hidden 512, 6 layers), 1 vs 16 streams,
#      greedy and sampled (temperature 1, top_p 0.95)
#   3. the same on the 2B-4T-shaped model (pass --with-2b4t; ~1 GB of disk, minutes)
#   4. overload: queue of 4, 32 concurrent requests -> 503 + Retry-After, counted in /metrics
# JSON reports go to $OUT (default target/bench-serve); a summary with the ratios is printed.
# KV_TYPE=f16 runs the small and 2B-4T servers with `--kv-type f16` (default f32).
# Usage: [KV_TYPE=f32|f16] scripts/bench-serve.sh [--with-2b4t]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitnet-rust-target}"
OUT=${OUT:-target/bench-serve}
MODELS=${MODELS:-$HOME/.cache/bitnet-models}
FIXTURES=${BITNET_FIXTURES:-../shared/fixtures}
KV_TYPE=${KV_TYPE:-f32}
with_2b4t=0
[ "${1:-}" = "--with-2b4t" ] && with_2b4t=1
mkdir -p "$OUT" "$MODELS"
# Reports of an earlier run would show up in the summary as if measured now.
rm -f "$OUT"/*.json

cargo build --release --locked -q -p bitnet-cli
B=$CARGO_TARGET_DIR/release/bitnet
PORT=${PORT:-18090}
URL=http://127.0.0.1:$PORT
srv_pid=""
stop() { [ -n "$srv_pid" ] && kill "$srv_pid" 2>/dev/null && wait "$srv_pid" 2>/dev/null; srv_pid=""; }
trap stop EXIT
start() { # model, extra serve flags...
  local model=$1; shift
  "$B" serve --model "$model" --port "$PORT" "$@" >"$OUT/serve.log" 2>&1 &
  srv_pid=$!
  for _ in $(seq 1 120); do
    curl -sf "$URL/ready" >/dev/null && return 0
    kill -0 "$srv_pid" 2>/dev/null || { cat "$OUT/serve.log"; exit 1; }
    sleep 0.5
  done
  echo "server did not become ready"; exit 1
}
lt() { "$B" loadtest --url "$URL" "$@"; }

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

echo "== 1. tiny model, max_tokens 1, 64 connections, 10 s"
start "$FIXTURES/bitnet-tiny-packed" --max-batch 64 --max-queue 256
lt --concurrency 64 --duration 10 --max-tokens 1 --prompt "Hi" --json "$OUT/tiny-c64-short.json" | tail -n +1 | grep -E "Successful|Failed|Request throughput|P99 E2EL|Total input"
lt --concurrency 64 --duration 10 --max-tokens 1 --json "$OUT/tiny-c64-default.json" | grep -E "Successful|Failed|Request throughput|P99 E2EL|Total input"
stop

echo "== 2. small model (hidden 512, 6 layers, TQ2_0): 1 vs 16 streams, 128 tokens each, $KV_TYPE KV cache"
small=$MODELS/small-tq2_0.gguf
[ -f "$small" ] || "$B" create-model --shape small --type tq2_0 --out "$small"
start "$small" --max-batch 16 --kv-type "$KV_TYPE"
lt --concurrency 1 --requests 8 --max-tokens 128 --stream --json "$OUT/small-c1.json" | grep -E "Output token thr|Mean TTFT|Mean TPOT"
lt --concurrency 16 --requests 64 --max-tokens 128 --stream --json "$OUT/small-c16.json" | grep -E "Output token thr|Mean TTFT|Mean TPOT"
echo "== 2b. the same, sampled (temperature 1, top_p 0.95: what most clients send)"
lt --concurrency 1 --requests 8 --max-tokens 128 --stream --temperature 1 --top-p 0.95 --json "$OUT/small-t1-c1.json" | grep -E "Output token thr|Mean TPOT"
lt --concurrency 16 --requests 64 --max-tokens 128 --stream --temperature 1 --top-p 0.95 --json "$OUT/small-t1-c16.json" | grep -E "Output token thr|Mean TPOT"
stop

if [ $with_2b4t = 1 ]; then
  echo "== 3. 2B-4T-shaped model (TQ2_0): 1 vs 16 streams, 64 tokens each, $KV_TYPE KV cache"
  big=$MODELS/2b4t-tq2_0.gguf
  [ -f "$big" ] || "$B" create-model --shape 2b4t --type tq2_0 --out "$big"
  start "$big" --max-batch 16 --kv-type "$KV_TYPE"
  lt --concurrency 1 --requests 4 --max-tokens 64 --stream --json "$OUT/2b4t-c1.json" | grep -E "Output token thr|Mean TTFT|Mean TPOT"
  lt --concurrency 16 --requests 16 --max-tokens 64 --stream --json "$OUT/2b4t-c16.json" | grep -E "Output token thr|Mean TTFT|Mean TPOT"
  stop
fi

echo "== 4. overload: --max-queue 4 --max-batch 1, 32 concurrent requests"
start "$FIXTURES/bitnet-tiny-packed" --max-batch 1 --max-queue 4
lt --concurrency 32 --requests 64 --max-tokens 64 --json "$OUT/overload.json" | grep -E "Successful|Failed|duration"
curl -s "$URL/metrics" | grep '^bitnet_requests_rejected_total' | tee "$OUT/overload-metrics.txt"
stop

python3 - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
def j(name):
    p = os.path.join(out, name)
    return json.load(open(p)) if os.path.exists(p) else None
print("\n== summary")
for name in ("tiny-c64-short", "tiny-c64-default"):
    d = j(name + ".json")
    print(f"{name}: {d['request_throughput']:.0f} req/s, P99 e2e {d['p99_e2el_ms']:.1f} ms, "
          f"{d['failed']} failed, {d['total_input_tokens'] / max(d['completed'], 1):.0f} prompt tokens")
for model in ("small", "small-t1", "2b4t"):
    a, b = j(f"{model}-c1.json"), j(f"{model}-c16.json")
    if a and b:
        tpot = a["mean_tpot_ms"], b["mean_tpot_ms"]
        print(f"{model}: 1 stream {a['output_throughput']:.1f} tok/s, 16 streams {b['output_throughput']:.1f} tok/s "
              f"-> {b['output_throughput'] / a['output_throughput']:.2f}x "
              f"(decode only, 16/TPOT: {16 / tpot[1] * 1000:.1f} vs {1000 / tpot[0]:.1f} tok/s = "
              f"{16 * tpot[0] / tpot[1]:.2f}x)")
d = j("overload.json")
print(f"overload: {d['completed']} completed, {d['failed']} failed, by status {d['failures_by_status']}, "
      f"{d['timeouts']} timeouts, {d['duration_s']:.1f} s")
EOF
