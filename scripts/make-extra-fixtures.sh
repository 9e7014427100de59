#!/usr/bin/env bash
# Makes the extra reference checkpoints in tests/fixtures/ with the shared fixture maker
# (../shared/tools/make_fixtures.py: transformers BitNetForCausalLM, float32 on CPU). They cover
# shapes and conventions the shared fixtures do not: the `bitlinear` (divide) weight_scale
# convention, GQA 4:1 and MQA, 5 heads, untied heads, hidden/intermediate sizes that are not
# multiples of the 128-wide kernel block, 3 and 4 layers.
# Needs python with torch, transformers (5.24 was used), accelerate, tokenizers, safetensors.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
maker=${MAKE_FIXTURES:-$here/../shared/tools/make_fixtures.py}
py=${PYTHON:-python3}
out=$here/tests/fixtures
mk() { "$py" "$maker" "$out" "$@"; }
mk gqa4-bitlinear-untied --mode packed --linear-class bitlinear --hidden 128 --heads 8 --kv-heads 2 --inter 256 --layers 2 --vocab 384 --seed 5
mk mqa-silu-master-tied --mode master --act silu --hidden 96 --heads 6 --kv-heads 1 --inter 160 --layers 3 --vocab 300 --tie --seed 9
mk mha5-relu2-packed-untied --mode packed --hidden 80 --heads 5 --kv-heads 5 --inter 208 --layers 4 --vocab 400 --seed 13
