#!/usr/bin/python3
"""Reference for carryon/net.go, computed by PyTorch in float64.

Not run in CI. Regenerate through the Go test, which writes the inputs:

    CARRYON_UPDATE_REFERENCE=1 go test ./model/ -run TestCarryOnReference

The test writes the carry-on's config, initial parameters, sources, targets
and LM head to a temporary input file and runs

    /usr/bin/python3 gen_reference.py INPUT OUTPUT

This script builds the same network from DESIGN.md §2 independently of the
Go code (RMSNorm, HF rotate-half RoPE, causal multi-head attention, SwiGLU,
gated delta head, frozen LM head, cross-entropy with ignore_index=-1),
computes the mean loss and every parameter gradient at the initial
parameters, then runs `steps` AdamW steps (torch.optim.AdamW, weight decay on
matrices only, warm-up + cosine learning rate, clip_grad_norm_) and records
the loss before each step.

File format (both directions), little-endian:
    u32 magic 0x43524546, u32 version 1, u32 n, n bytes of JSON header,
    then the float32 data of header["tensors"] in order.
"""
import json
import math
import struct
import sys

import torch
import torch.nn.functional as F

MAGIC = 0x43524546
VERSION = 1


def read(path):
    with open(path, "rb") as f:
        data = f.read()
    magic, version, n = struct.unpack_from("<III", data, 0)
    if magic != MAGIC or version != VERSION:
        sys.exit(f"{path}: magic {magic:#x} version {version}, want {MAGIC:#x} {VERSION}")
    hdr = json.loads(data[12:12 + n])
    off = 12 + n
    tensors = {}
    for t in hdr["tensors"]:
        numel = math.prod(t["shape"])
        vals = struct.unpack_from(f"<{numel}f", data, off)
        off += 4 * numel
        tensors[t["name"]] = torch.tensor(vals, dtype=torch.float64).reshape(t["shape"])
    if off != len(data):
        sys.exit(f"{path}: {len(data) - off} trailing bytes")
    return hdr, tensors


def write(path, hdr, tensors):
    hdr = dict(hdr)
    hdr["tensors"] = [{"name": k, "shape": list(v.shape)} for k, v in tensors.items()]
    js = json.dumps(hdr).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<III", MAGIC, VERSION, len(js)))
        f.write(js)
        for v in tensors.values():
            flat = v.detach().to(torch.float32).reshape(-1).tolist()
            f.write(struct.pack(f"<{len(flat)}f", *flat))


def rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, T, H, hd, theta):
    # HF rotate-half: dimension i pairs with i + hd/2.
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1)[:, None, :]
    sin = torch.cat([ang.sin(), ang.sin()], -1)[:, None, :]
    x = x.view(T, H, hd)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    rot = torch.cat([-x2, x1], -1)
    return (x * cos + rot * sin).reshape(T, H * hd)


def forward(P, cfg, xs, T, alpha):
    W, H, L = cfg["width"], cfg["heads"], cfg["layers"]
    hd = W // H
    eps, theta = cfg["norm_eps"], cfg["rope_theta"]
    r = sum(xs[i] @ P[f"src.{i}.proj.weight"].T + P[f"src.{i}.proj.bias"] for i in range(len(xs)))
    mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
    for l in range(L):
        p = f"blocks.{l}."
        a = rmsnorm(r, P[p + "attn_norm.weight"], eps)
        q = rope(a @ P[p + "attn.wq.weight"].T, T, H, hd, theta)
        k = rope(a @ P[p + "attn.wk.weight"].T, T, H, hd, theta)
        v = a @ P[p + "attn.wv.weight"].T
        q, k, v = (z.view(T, H, hd).transpose(0, 1) for z in (q, k, v))  # (H, T, hd)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd) + mask, -1) @ v
        r = r + att.transpose(0, 1).reshape(T, W) @ P[p + "attn.wo.weight"].T
        m = rmsnorm(r, P[p + "mlp_norm.weight"], eps)
        sw = F.silu(m @ P[p + "mlp.w_gate.weight"].T) * (m @ P[p + "mlp.w_up.weight"].T)
        r = r + sw @ P[p + "mlp.w_down.weight"].T
    h = rmsnorm(r, P["final_norm.weight"], eps)
    delta = h @ P["delta.weight"].T
    g = torch.sigmoid(h @ P["gate.weight"].T + P["gate.bias"])
    return xs[0] + alpha * g * delta


def mean_loss(P, cfg, xs, T, alpha, wpred, targets):
    y = forward(P, cfg, xs, T, alpha)
    return F.cross_entropy(y @ wpred.T, targets, ignore_index=-1, reduction="mean")


def cosine_lr(step, warmup, total, max_lr, min_lr):
    # tensor.CosineLR with the 1-based step.
    if step < warmup:
        return max_lr * step / warmup
    if step >= total or total <= warmup:
        return min_lr
    progress = (step - warmup) / (total - warmup)
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def main():
    hdr, t = read(sys.argv[1])
    cfg, oc, T, alpha = hdr["config"], hdr["optim"], hdr["T"], hdr["alpha"]
    names = hdr["params"]
    decay = set(hdr["decay"])
    P = {n: t["param:" + n].clone().requires_grad_(True) for n in names}
    xs = [t[f"source.{i}"] for i in range(len(cfg["sources"]))]
    wpred = t["w_pred"]
    targets = torch.tensor(hdr["targets"], dtype=torch.long)

    loss = mean_loss(P, cfg, xs, T, alpha, wpred, targets)
    loss.backward()
    out = dict(t)
    for n in names:
        out["grad:" + n] = P[n].grad.detach().clone()
    hdr["kind"] = "reference"
    hdr["loss0"] = loss.item()

    for p in P.values():
        p.grad = None
    opt = torch.optim.AdamW(
        [{"params": [P[n] for n in names if n in decay], "weight_decay": oc["WeightDecay"]},
         {"params": [P[n] for n in names if n not in decay], "weight_decay": 0.0}],
        lr=oc["LR"], betas=(oc["Beta1"], oc["Beta2"]), eps=oc["Eps"])
    losses, norms = [], []
    for step in range(1, hdr["steps"] + 1):
        opt.zero_grad()
        loss = mean_loss(P, cfg, xs, T, alpha, wpred, targets)
        loss.backward()
        losses.append(loss.item())
        norms.append(torch.nn.utils.clip_grad_norm_(list(P.values()), oc["ClipNorm"]).item())
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, oc["Warmup"], oc["Total"], oc["LR"], oc["MinLR"])
        opt.step()
    hdr["losses"], hdr["grad_norms"] = losses, norms
    hdr["generator"] = f"gen_reference.py, torch {torch.__version__}, float64"
    write(sys.argv[2], hdr, out)


if __name__ == "__main__":
    main()
