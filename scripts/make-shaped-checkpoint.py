#!/usr/bin/env python3
"""Write a random BitNet checkpoint of a given shape in Microsoft's 2B-4T HF layout (packed uint8
weights + bf16 weight_scale, autobitlinear; bf16 norms; tied bf16 embedding), for load-time and
speed measurements on real sizes. Needs only numpy. The tokenizer files of a fixture are copied
so `bitnet generate` runs (its ids cover only the fixture's small vocabulary).

Usage: make-shaped-checkpoint.py OUT_DIR [--hidden 2560 --inter 6912 --layers 30 --heads 20
        --kv-heads 5 --vocab 128256 --ctx 4096 --tokenizer-from DIR]
Defaults are bitnet-b1.58-2B-4T's shape (about 1.2 GB on disk).
"""
import argparse, json, os, shutil, struct
import numpy as np


def bf16(a):
    a = np.ascontiguousarray(a, dtype=np.float32)
    u = a.view(np.uint32)
    # round to nearest even, as torch's float32 -> bfloat16
    r = ((u >> 16) & 1) + 0x7FFF
    return ((u + r) >> 16).astype(np.uint16)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--hidden", type=int, default=2560); p.add_argument("--inter", type=int, default=6912)
    p.add_argument("--layers", type=int, default=30); p.add_argument("--heads", type=int, default=20)
    p.add_argument("--kv-heads", type=int, default=5); p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--ctx", type=int, default=4096); p.add_argument("--seed", type=int, default=0)
    here = os.path.dirname(os.path.abspath(__file__))
    p.add_argument("--tokenizer-from", default=os.path.join(here, "..", "..", "shared", "fixtures", "bitnet-tiny-packed"))
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    os.makedirs(a.out, exist_ok=True)
    hd = a.hidden // a.heads
    shapes = {"q_proj": (a.heads * hd, a.hidden), "k_proj": (a.kv_heads * hd, a.hidden),
              "v_proj": (a.kv_heads * hd, a.hidden), "o_proj": (a.hidden, a.heads * hd),
              "gate_proj": (a.inter, a.hidden), "up_proj": (a.inter, a.hidden), "down_proj": (a.hidden, a.inter)}
    # bytes whose four 2-bit fields are all valid codes (0, 1, 2)
    valid = np.array([b for b in range(256) if all(((b >> (2 * i)) & 3) != 3 for i in range(4))], dtype=np.uint8)
    tensors = {}
    tensors["model.embed_tokens.weight"] = ("BF16", (a.vocab, a.hidden), bf16(rng.standard_normal((a.vocab, a.hidden), dtype=np.float32)))
    for l in range(a.layers):
        pre = f"model.layers.{l}."
        for n in ("input_layernorm", "post_attention_layernorm"):
            tensors[pre + n + ".weight"] = ("BF16", (a.hidden,), bf16(rng.uniform(0.5, 1.5, a.hidden)))
        tensors[pre + "self_attn.attn_sub_norm.weight"] = ("BF16", (a.hidden,), bf16(rng.uniform(0.5, 1.5, a.hidden)))
        tensors[pre + "mlp.ffn_sub_norm.weight"] = ("BF16", (a.inter,), bf16(rng.uniform(0.5, 1.5, a.inter)))
        for n, (o, i) in shapes.items():
            mod = "self_attn" if n in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            packed = valid[rng.integers(0, len(valid), size=((o + 3) // 4, i))]
            tensors[f"{pre}{mod}.{n}.weight"] = ("U8", ((o + 3) // 4, i), packed)
            tensors[f"{pre}{mod}.{n}.weight_scale"] = ("BF16", (1,), bf16(np.array([0.02 * (1 + 0.1 * rng.random())])))
    tensors["model.norm.weight"] = ("BF16", (a.hidden,), bf16(rng.uniform(0.5, 1.5, a.hidden)))
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for k, (dt, shape, arr) in tensors.items():
        n = arr.nbytes
        header[k] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(os.path.join(a.out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hb))); f.write(hb)
        for k, (dt, shape, arr) in tensors.items():
            f.write(np.ascontiguousarray(arr).tobytes())
    cfg = {"architectures": ["BitNetForCausalLM"], "model_type": "bitnet", "vocab_size": a.vocab,
           "hidden_size": a.hidden, "intermediate_size": a.inter, "num_hidden_layers": a.layers,
           "num_attention_heads": a.heads, "num_key_value_heads": a.kv_heads, "hidden_act": "relu2",
           "max_position_embeddings": a.ctx, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
           "tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": [1],
           "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                   "quantization_mode": "offline"}, "torch_dtype": "bfloat16"}
    json.dump(cfg, open(os.path.join(a.out, "config.json"), "w"), indent=2)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        src = os.path.join(a.tokenizer_from, f)
        if os.path.isfile(src):
            shutil.copy(src, os.path.join(a.out, f))
            os.chmod(os.path.join(a.out, f), 0o644)
    print(a.out, "written:", off >> 20, "MiB of tensors")


if __name__ == "__main__":
    main()
