#!/usr/bin/env bash
# Benchmarks bitnet against llama.cpp's llama-bench on the same GGUF file, in one run.
#
#   scripts/bench-vs-llamacpp.sh MODEL.gguf [THREADS=1,2] [PROMPT=128] [GEN=64] [REPS=3]
#
# llama-bench is built (once) from the llama-cpp-python source package on PyPI (the llama.cpp
# version of the fixtures, 0.3.36), with llama.cpp's default native CPU flags, under
# $PEERS_DIR (default ~/.cache/bitnet-peers). Needs python3 with pip, cmake (pip installs one)
# and a C++ compiler. Prints both tables and the ratios bitnet / llama.cpp.
set -euo pipefail
model=${1:?usage: $0 MODEL.gguf [threads] [n_prompt] [n_gen] [reps]}
threads=${2:-1,2}; np=${3:-128}; ng=${4:-64}; reps=${5:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
peers=${PEERS_DIR:-$HOME/.cache/bitnet-peers}
py=${PYTHON:-python3}
mkdir -p "$peers"
bench="$peers/llama.cpp/build/bin/llama-bench"
if [ ! -x "$bench" ]; then
  echo "building llama-bench in $peers (one time, several minutes on 2 cores)" >&2
  venv="$peers/venv"
  [ -x "$venv/bin/pip" ] || "$py" -m venv "$venv"
  "$venv/bin/pip" install -q cmake scikit-build-core
  (cd "$peers" && "$venv/bin/pip" download -q llama-cpp-python==0.3.36 --no-deps \
      --no-binary llama-cpp-python --no-build-isolation -d .)
  tar xzf "$peers/llama_cpp_python-0.3.36.tar.gz" -C "$peers"
  rm -rf "$peers/llama.cpp" && mv "$peers/llama_cpp_python-0.3.36/vendor/llama.cpp" "$peers/llama.cpp"
  "$venv/bin/cmake" -S "$peers/llama.cpp" -B "$peers/llama.cpp/build" -DCMAKE_BUILD_TYPE=Release \
      -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >/dev/null
  "$venv/bin/cmake" --build "$peers/llama.cpp/build" --target llama-bench -j "$(nproc)" >/dev/null
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/bitnet-rust-target}
(cd "$here" && cargo build --release -q -p bitnet-cli)
bitnet="$CARGO_TARGET_DIR/release/bitnet"

# The engines alternate, one repetition each at a time, so that drift in this (shared) machine's
# speed hits both alike; mean ± sd over the repetitions.
tmp=$(mktemp -d)
for r in $(seq 1 "$reps"); do
  "$bitnet" bench -m "$model" -p "$np" -n "$ng" -t "$threads" -r 1 --json > "$tmp/ours-$r.json"
  "$bench" -m "$model" -p "$np" -n "$ng" -t "$threads" -r 1 -o json > "$tmp/theirs-$r.json"
done
"$py" - "$tmp" "$reps" "$model" <<'PY'
import json, statistics, sys
tmp, reps, model = sys.argv[1], int(sys.argv[2]), sys.argv[3]
key = lambda r: (r["n_threads"], r["n_prompt"], r["n_gen"])
def collect(prefix):
    runs = {}
    for i in range(1, reps + 1):
        for r in json.load(open(f"{tmp}/{prefix}-{i}.json")):
            runs.setdefault(key(r), []).append(r)
    return runs
ours, theirs = collect("ours"), collect("theirs")
def stat(rs):
    v = [r["avg_ts"] for r in rs]
    return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)
print(f"model: {model} ({reps} alternating repetitions)")
print("| threads | test | bitnet t/s | llama.cpp t/s | ratio | bitnet GB/s |")
print("|---:|---|---:|---:|---:|---:|")
for k, rs in ours.items():
    m, sd = stat(rs)
    test = f"pp{k[1]}" if k[1] else f"tg{k[2]}"
    gb = [r["gbps"] for r in rs if r.get("gbps")]
    gbps = f"{statistics.mean(gb):.2f}" if gb else ""
    if k in theirs:
        tm, tsd = stat(theirs[k])
        print(f"| {k[0]} | {test} | {m:.2f} ± {sd:.2f} | {tm:.2f} ± {tsd:.2f} | {m / tm:.2f}x | {gbps} |")
    else:
        print(f"| {k[0]} | {test} | {m:.2f} ± {sd:.2f} | n/a | n/a | {gbps} |")
PY
rm -rf "$tmp"
