"""The peer of `bitnet train` for a throughput comparison: the same BitNet b1.58 training step in
eager PyTorch on the CPU — BitLinear with transformers' AutoBitLinear online fake quantization and
the straight-through estimator, RMSNorm sub-norms, half-split RoPE, GQA through
scaled_dot_product_attention(is_causal=True), relu², tied head, cross-entropy, AdamW, clipping.

    python scripts/bench_train_torch.py models/kjv-shape.json --vocab 4096 --batch 16 --seq 128 \
        --steps 20 --threads 2

Prints one JSON line: tokens/s over the timed steps (after 3 warm-up steps).
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F


class WeightQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w):
        s = 1.0 / w.abs().mean().clamp(min=1e-5)
        return (w * s).round().clamp(-1, 1) / s

    @staticmethod
    def backward(ctx, g):
        return g


class ActQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        s = 127 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
        return (x * s).round().clamp(-128, 127) / s

    @staticmethod
    def backward(ctx, g):
        return g


class BitLinear(torch.nn.Linear):
    def forward(self, x):
        return F.linear(ActQuant.apply(x), WeightQuant.apply(self.weight))


class RMSNorm(torch.nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def rope(x, cos, sin):
    h = x.shape[-1] // 2
    rot = torch.cat([-x[..., h:], x[..., :h]], dim=-1)
    return x * cos + rot * sin


class Layer(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        h, i = c["hidden_size"], c["intermediate_size"]
        self.nh, self.nkv = c["num_attention_heads"], c["num_key_value_heads"]
        self.hd = h // self.nh
        eps = c.get("rms_norm_eps", 1e-5)
        self.ln1, self.ln2 = RMSNorm(h, eps), RMSNorm(h, eps)
        self.q = BitLinear(h, self.nh * self.hd, bias=False)
        self.k = BitLinear(h, self.nkv * self.hd, bias=False)
        self.v = BitLinear(h, self.nkv * self.hd, bias=False)
        self.o = BitLinear(self.nh * self.hd, h, bias=False)
        self.attn_sub = RMSNorm(self.nh * self.hd, eps)
        self.gate, self.up = BitLinear(h, i, bias=False), BitLinear(h, i, bias=False)
        self.down = BitLinear(i, h, bias=False)
        self.ffn_sub = RMSNorm(i, eps)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        y = self.ln1(x)
        q = self.q(y).view(b, t, self.nh, self.hd).transpose(1, 2)
        k = self.k(y).view(b, t, self.nkv, self.hd).transpose(1, 2)
        v = self.v(y).view(b, t, self.nkv, self.hd).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        rep = self.nh // self.nkv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        a = a.transpose(1, 2).reshape(b, t, -1)
        x = x + self.o(self.attn_sub(a))
        y = self.ln2(x)
        m = F.relu(self.gate(y)).square() * self.up(y)
        return x + self.down(self.ffn_sub(m))


class Model(torch.nn.Module):
    def __init__(self, c, vocab):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, c["hidden_size"])
        self.layers = torch.nn.ModuleList(Layer(c) for _ in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(c["hidden_size"], c.get("rms_norm_eps", 1e-5))
        hd = c["hidden_size"] // c["num_attention_heads"]
        theta = c.get("rope_theta", 10000.0)
        self.inv = 1.0 / theta ** (torch.arange(0, hd, 2).float() / hd)

    def forward(self, ids):
        t = ids.shape[1]
        f = torch.outer(torch.arange(t).float(), self.inv)
        cos, sin = torch.cat([f.cos(), f.cos()], -1), torch.cat([f.sin(), f.sin()], -1)
        x = self.emb(ids)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x) @ self.emb.weight.t()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    c = json.load(open(a.config))
    model = Model(c, a.vocab)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1)
    data = torch.randint(0, a.vocab, (a.steps + 3, a.batch, a.seq + 1))
    t0 = None
    for step in range(a.steps + 3):
        if step == 3:
            t0 = time.perf_counter()
        batch = data[step]
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, a.vocab), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    dt = time.perf_counter() - t0
    tokens = a.steps * a.batch * a.seq
    print(json.dumps({"engine": f"pytorch {torch.__version__} eager", "threads": a.threads,
                      "steps": a.steps, "tokens": tokens, "seconds": round(dt, 2),
                      "tokens_per_s": round(tokens / dt, 1)}))


if __name__ == "__main__":
    main()
