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

ours=$(mktemp); theirs=$(mktemp)
"$bitnet" bench -m "$model" -p "$np" -n "$ng" -t "$threads" -r "$reps" --json > "$ours"
"$bench" -m "$model" -p "$np" -n "$ng" -t "$threads" -r "$reps" -o json > "$theirs"
"$py" - "$ours" "$theirs" "$model" <<'PY'
import json, sys
ours, theirs = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
key = lambda r: (r["n_threads"], r["n_prompt"], r["n_gen"])
t = {key(r): r for r in theirs}
print(f"model: {sys.argv[3]}")
print("| threads | test | bitnet t/s | llama.cpp t/s | ratio | bitnet GB/s |")
print("|---:|---|---:|---:|---:|---:|")
for r in ours:
    p = t.get(key(r))
    test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
    theirs_ts = f"{p['avg_ts']:.2f} ± {p['stddev_ts']:.2f}" if p else "n/a"
    ratio = f"{r['avg_ts'] / p['avg_ts']:.2f}x" if p else "n/a"
    gbps = f"{r['gbps']:.2f}" if r.get("gbps") else ""
    print(f"| {r['n_threads']} | {test} | {r['avg_ts']:.2f} ± {r['stddev_ts']:.2f} | {theirs_ts} | {ratio} | {gbps} |")
PY
rm -f "$ours" "$theirs"
