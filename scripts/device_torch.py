"""PyTorch side of scripts/device-check.sh, on the same GPU in the same run.

  prefill DIR      Qwen2ForCausalLM (transformers, bf16, SDPA) on the checkpoint
                   that cuda/devbench wrote to DIR, on the same token ids; times
                   the prefill as devbench does (one warm-up, median of --runs)
                   and compares the final hidden states of sequence 0 with
                   devbench's (relative L2).
  train            the carry-on of scripts/bench_train_torch.py on the GPU
                   (h 64, L 2, D 896, V 151936 by default): tokens/s of full
                   training steps (forward, LM-head loss, backward, clip, AdamW).
  memory           peak device memory of one training step of a carry-on at the
                   32B shape (D 5120, V 152064) with --width/--layers giving ~116M
                   parameters.

Each prints one JSON line.
"""
import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train_torch import CarryOn, carryon_step  # noqa: E402


def sync():
    torch.cuda.synchronize()


def prefill(a):
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(a.dir, torch_dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
    ids = torch.tensor(json.load(open(os.path.join(a.dir, "ids.json"))), device="cuda")
    times = []
    with torch.inference_mode():
        for i in range(a.runs + 1):
            sync()
            t = time.perf_counter()
            out = m.model(input_ids=ids)
            h = out.last_hidden_state
            sync()
            if i > 0:
                times.append(time.perf_counter() - t)
    times.sort()
    med = times[len(times) // 2]
    got = torch.frombuffer(bytearray(open(os.path.join(a.dir, "hidden.f32"), "rb").read()), dtype=torch.float32)
    ref = h[0].float().flatten().cpu()
    rel = float((got - ref).norm() / ref.norm())
    print(json.dumps({"impl": "pytorch-" + torch.__version__ + "-transformers-sdpa-bf16", "batch": ids.shape[0],
                      "seq": ids.shape[1], "prefill_s_median": med, "tokens_per_s": ids.numel() / med,
                      "hidden_rel_l2_vs_carryon": rel, "peak_mib": torch.cuda.max_memory_allocated() / 2**20}))


def train(a):
    model, step = carryon_step(a.base_dim, a.vocab, a.width, a.layers, a.heads, a.ffn, a.batch, a.seq, "cuda")
    step(); sync()
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync()
    el = time.perf_counter() - t
    print(json.dumps({"impl": "pytorch-" + torch.__version__ + "-cuda-f32", "width": a.width, "layers": a.layers,
                      "base_dim": a.base_dim, "vocab": a.vocab, "seq": a.seq, "batch": a.batch,
                      "params": sum(p.numel() for p in model.parameters()),
                      "tokens_per_s": a.steps * a.batch * a.seq / el, "step_ms": el * 1000 / a.steps}))


def memory(a):
    torch.cuda.reset_peak_memory_stats()
    model, step = carryon_step(a.base_dim, a.vocab, a.width, a.layers, a.heads, a.ffn, a.batch, a.seq, "cuda")
    step(); sync()
    print(json.dumps({"impl": "pytorch-" + torch.__version__ + "-cuda-f32", "what": "one training step",
                      "width": a.width, "layers": a.layers, "base_dim": a.base_dim, "vocab": a.vocab,
                      "seq": a.seq, "batch": a.batch, "params": sum(p.numel() for p in model.parameters()),
                      "peak_mib": torch.cuda.max_memory_allocated() / 2**20}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["prefill", "train", "memory"])
    p.add_argument("--dir", default="/tmp/carryon-devbench")
    p.add_argument("--runs", type=int, default=5)
    for k, d in [("width", 64), ("layers", 2), ("heads", 4), ("ffn", 172), ("base-dim", 896),
                 ("vocab", 151936), ("seq", 512), ("batch", 8), ("steps", 20)]:
        p.add_argument("--" + k, type=int, default=d)
    a = p.parse_args()
    {"prefill": prefill, "train": train, "memory": memory}[a.what](a)


if __name__ == "__main__":
    main()
