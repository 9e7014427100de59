#!/usr/bin/env python3
"""The peer of `bitnet bench --device cuda`: decode tokens/s of transformers' BitNetForCausalLM
in bf16 on the same GPU, for the 2B-4T shape (random weights: speed does not depend on them).

Like `bitnet bench`'s tg test: every stream starts from one token with an empty cache and
generates --n-gen tokens greedily (EOS ignored); t/s = streams × n-gen / seconds. One warm-up
run, then --reps timed runs. Prints one JSON object per stream count.
"""
import argparse
import json
import statistics
import time

import torch
from transformers import BitNetConfig, BitNetForCausalLM

SHAPES = {
    # microsoft/bitnet-b1.58-2B-4T
    "2b4t": dict(hidden_size=2560, intermediate_size=6912, num_hidden_layers=30,
                 num_attention_heads=20, num_key_value_heads=5, vocab_size=128256,
                 max_position_embeddings=4096, rope_theta=500000.0, rms_norm_eps=1e-5,
                 hidden_act="relu2", tie_word_embeddings=True),
    # A smoke test of this script (e.g. on a CPU: --device cpu --shape tiny).
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=1000,
                 max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-5,
                 hidden_act="relu2", tie_word_embeddings=True, bos_token_id=1, eos_token_id=2),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="2b4t", choices=sorted(SHAPES))
    ap.add_argument("--n-gen", type=int, default=64)
    ap.add_argument("--streams", default="1,16")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    torch.manual_seed(0)
    cfg = BitNetConfig(**SHAPES[a.shape])
    # Built on the GPU in bf16 directly (a CPU fp32 init of 2.4 B parameters takes minutes).
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(a.device):
        model = BitNetForCausalLM(cfg)
    model.eval()
    for np_ in [int(s) for s in a.streams.split(",")]:
        ids = torch.randint(0, cfg.vocab_size, (np_, 1), device=a.device)
        sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)

        def run():
            sync()
            t = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(ids, max_new_tokens=a.n_gen, min_new_tokens=a.n_gen,
                                     do_sample=False, pad_token_id=0, eos_token_id=None)
            sync()
            assert out.shape == (np_, 1 + a.n_gen), out.shape
            return time.perf_counter() - t

        run()  # warm-up
        ts = [np_ * a.n_gen / run() for _ in range(a.reps)]
        print(json.dumps({
            "engine": "transformers", "version": __import__("transformers").__version__,
            "torch": torch.__version__, "dtype": "bfloat16", "device": torch.cuda.get_device_name() if a.device.startswith("cuda") else a.device,
            "shape": a.shape, "n_gen": a.n_gen, "n_streams": np_,
            "avg_ts": statistics.mean(ts), "stddev_ts": statistics.stdev(ts) if len(ts) > 1 else 0.0,
        }), flush=True)


if __name__ == "__main__":
    main()
