#!/usr/bin/env python3
"""Load GGUF files written by `bitnet convert` in llama.cpp (llama-cpp-python) and compare their
logits with llama.cpp's logits on its own conversion of the same checkpoint.

Usage: peer-check-llamacpp.py REFERENCE.safetensors OURS.gguf PEERS.gguf [...pairs]
Prints, per prompt, max |logit difference| between llama.cpp on our file and on the peer's file
(same libllama, CPU, 1 thread, f32 KV cache, flash attention off), and the ids check.
"""
import json, os, sys
import numpy as np
from safetensors.numpy import load_file
from llama_cpp import Llama

ref = load_file(sys.argv[1])
pairs = sys.argv[2:]
def logits(path, ids):
    m = Llama(model_path=path, n_ctx=256, n_threads=1, n_batch=256, logits_all=True,
              flash_attn=False, type_k=0, type_v=0, verbose=False)
    tok_ok = None
    out = []
    for i in ids:
        m.reset()
        m.eval(list(map(int, i)))
        out.append(np.array(m.scores[: len(i)], dtype=np.float32))
    return m, out
ids = [ref[f"p{i}.ids"] for i in range(3) if f"p{i}.ids" in ref]
rj = os.path.join(os.path.dirname(sys.argv[1]), "reference.json")
texts = [p["text"] for p in json.load(open(rj))["prompts"]] if os.path.exists(rj) else []
worst = 0.0
for k in range(0, len(pairs), 2):
    ours, peer = pairs[k], pairs[k + 1]
    mo, lo = logits(ours, ids)
    mp, lp = logits(peer, ids)
    for i, (a, b) in enumerate(zip(lo, lp)):
        d = float(np.abs(a - b).max())
        worst = max(worst, d)
        same_ids = (i >= len(texts) or
                    mo.tokenize(texts[i].encode()) == list(map(int, ids[i])) == mp.tokenize(texts[i].encode()))
        print(f"{ours} vs {peer} p{i}: max |dL| = {d:.3g}, llama.cpp tokenizes the prompt to the "
              f"reference ids with both files: {same_ids}")
print("worst", worst)
