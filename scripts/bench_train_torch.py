"""PyTorch reference for `carryon bench train`: the same carry-on (DESIGN.md §2),
the same shapes, random data and optimiser step, timed the same way.

    /usr/bin/python3 scripts/bench_train_torch.py --width 64 --layers 2 --heads 4 \
        --ffn 172 --base-dim 896 --vocab 32000 --seq 256 --batch 8 --steps 5 --threads 2

Prints one JSON line. Debian's PyTorch calls the system libblas.so.3; point
LD_LIBRARY_PATH at OpenBLAS (carryon bench does) or it runs the reference
BLAS. The line reports which BLAS was loaded and a measured sgemm rate so a
slow BLAS is visible.
"""
import argparse
import json
import math
import resource
import time

import torch
import torch.nn.functional as F


def rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


class CarryOn(torch.nn.Module):
    def __init__(self, D, W, L, H, FF, theta=1e4, eps=1e-6):
        super().__init__()
        self.W, self.H, self.hd, self.eps = W, H, W // H, eps
        self.proj = torch.nn.Linear(D, W)
        self.blocks = torch.nn.ModuleList()
        for _ in range(L):
            b = torch.nn.Module()
            b.attn_norm = torch.nn.Parameter(torch.ones(W))
            b.wq, b.wk, b.wv, b.wo = (torch.nn.Linear(W, W, bias=False) for _ in range(4))
            b.mlp_norm = torch.nn.Parameter(torch.ones(W))
            b.w_gate, b.w_up = torch.nn.Linear(W, FF, bias=False), torch.nn.Linear(W, FF, bias=False)
            b.w_down = torch.nn.Linear(FF, W, bias=False)
            self.blocks.append(b)
        self.final_norm = torch.nn.Parameter(torch.ones(W))
        self.delta = torch.nn.Linear(W, D, bias=False)
        self.gate = torch.nn.Linear(W, D)
        torch.nn.init.normal_(self.delta.weight, std=0.02)
        self.theta = theta

    def rope(self, x, T):  # x: (B, H, T, hd), rotate-half
        hd = self.hd
        inv = 1.0 / self.theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
        ang = torch.arange(T, dtype=torch.float32)[:, None] * inv[None, :]
        cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def forward(self, x):  # x: (B, T, D)
        B, T, _ = x.shape
        H, hd = self.H, self.hd
        mask = torch.full((T, T), float("-inf")).triu(1)
        r = self.proj(x)
        for b in self.blocks:
            a = rmsnorm(r, b.attn_norm, self.eps)
            q, k, v = (z.view(B, T, H, hd).transpose(1, 2) for z in (b.wq(a), b.wk(a), b.wv(a)))
            q, k = self.rope(q, T), self.rope(k, T)
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + mask, -1) @ v
            r = r + b.wo(att.transpose(1, 2).reshape(B, T, self.W))
            m = rmsnorm(r, b.mlp_norm, self.eps)
            r = r + b.w_down(F.silu(b.w_gate(m)) * b.w_up(m))
        h = rmsnorm(r, self.final_norm, self.eps)
        return x + torch.sigmoid(self.gate(h)) * self.delta(h)


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def blas_name():
    try:
        with open("/proc/self/maps") as f:
            libs = {l.split()[-1] for l in f if "blas" in l.lower()}
        return ",".join(sorted(libs))
    except OSError:
        return "unknown"


def sgemm_gflops():
    a, b = torch.randn(256, 896), torch.randn(4096, 896)
    a @ b.T
    t = time.perf_counter()
    for _ in range(5):
        a @ b.T
    return 5 * 2 * 256 * 896 * 4096 / (time.perf_counter() - t) / 1e9


def carryon_step(D, V, W, L, H, FF, B, T, device="cpu"):
    """The reference carry-on (base width D, width W, L blocks, H heads, MLP
    width FF) on B random sequences of T base states, with a frozen random LM
    head over V tokens; returns it and a function that takes one AdamW step
    (gradients clipped at norm 1) and returns the loss tensor."""
    model = CarryOn(D, W, L, H, FF).to(device)
    wpred = (torch.randn(V, D) * 0.02).to(device)  # frozen LM head
    x = torch.randn(B, T, D, device=device)
    targets = torch.randint(0, V, (B, T), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)

    def step():
        opt.zero_grad(set_to_none=True)
        y = model(x)
        loss = F.cross_entropy((y @ wpred.T).view(B * T, V), targets.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss
    return model, step


def main():
    p = argparse.ArgumentParser()
    for k, d in [("width", 64), ("layers", 2), ("heads", 4), ("ffn", 172), ("base-dim", 896),
                 ("vocab", 32000), ("seq", 256), ("batch", 8), ("steps", 5), ("threads", 2)]:
        p.add_argument("--" + k, type=int, default=d)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    D, V, T, B = a.base_dim, a.vocab, a.seq, a.batch
    model, step = carryon_step(D, V, a.width, a.layers, a.heads, a.ffn, B, T)

    step()  # warm-up
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    el = time.perf_counter() - t
    print(json.dumps({
        "impl": "pytorch-" + torch.__version__, "width": a.width, "layers": a.layers, "heads": a.heads,
        "ffn": a.ffn, "base_dim": D, "vocab": V, "seq": T, "batch": B, "steps": a.steps,
        "threads": torch.get_num_threads(), "params": sum(p.numel() for p in model.parameters()),
        "tokens_per_s": a.steps * B * T / el, "step_ms": el * 1000 / a.steps, "peak_rss_mib": peak_rss_mib(),
        "blas": blas_name(), "sgemm_gflops": sgemm_gflops(),
    }))


if __name__ == "__main__":
    main()
