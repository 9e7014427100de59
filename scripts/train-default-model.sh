#!/usr/bin/env bash
# Re-trains the bundled default model (models/kjv-bitnet) from scratch on the King James Bible:
# corpus from Debian's bible-kjv (scripts/prepare-kjv.sh), a 4,096-token byte-level BPE, then
# quantization-aware training and the export in the 2B-4T packed convention. About 40 minutes on
# two cores; the checkpoint (master weights + optimizer) stays in $WORK, only the export is kept.
#
#   scripts/train-default-model.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-target/kjv-train}
mkdir -p "$work"
cargo build --release -p bitnet-cli
bitnet=${CARGO_TARGET_DIR:-target}/release/bitnet
scripts/prepare-kjv.sh "$work/kjv.txt"
"$bitnet" train-tokenizer --vocab 4096 "$work/kjv.txt" -o "$work/tokenizer/tokenizer.json"
"$bitnet" train --config models/kjv-shape.json --tokenizer "$work/tokenizer/tokenizer.json" \
    --data "$work/kjv.txt" --out "$work/checkpoint" --steps 1100 --seq-len 128 --batch-size 16 \
    --lr 2e-3 --warmup 60 --eval-every 100 --eval-windows 64 --save-every 100 --seed 1 \
    --export-hf models/kjv-bitnet
