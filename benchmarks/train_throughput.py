"""Train-step tokens/s and MFU on CPU: ours vs an equivalent plain PyTorch model, side by side in one run.

    python benchmarks/train_throughput.py                 # d128/L4, d256/L6, d384/L6 at ctx 256, vocab 8192
    python benchmarks/train_throughput.py --gpt2          # also GPT-2 124M at ctx 1024 (slow: a few steps)

Both sides: GPT-2 family (LayerNorm, GELU-tanh, learned positions, tied embeddings, biases), float32,
AdamW, the same batch; torch uses 2 threads (eager); both run under tcmalloc when it is installed
(jaxllm/allocator.py; JAXLLM_TCMALLOC=0 compares glibc). The f32 matmul peak is measured before and
after the models; MFU = tokens/s x FLOPs/token / the best of the two. Timings on a shared 2-core
machine swing ~2x between runs: read the ratios.
"""
from __future__ import annotations

from jaxllm.allocator import reexec_under_tcmalloc, tcmalloc_loaded

reexec_under_tcmalloc()  # before jax is imported (jaxllm/allocator.py)

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.model import ModelConfig, flops_per_token
from jaxllm.parallel import MeshConfig
from jaxllm.recipes.pretrain import Trainer
from jaxllm.train.metrics import measure_matmul_peak
from jaxllm.train.optim import OptimConfig
from jaxllm.train.step import TrainConfig

SHAPES = {"d128/L4": (128, 4, 2), "d256/L6": (256, 6, 4), "d384/L6": (384, 6, 6)}


def batch_of(batch, seq, vocab, seed=0):
    x = np.random.default_rng(seed).integers(0, vocab, (batch, seq + 1)).astype(np.int32)
    return {"inputs": x[:, :-1], "targets": x[:, 1:], "loss_mask": np.ones((batch, seq), np.float32)}


def ours(cfg: ModelConfig, batch: int, steps: int) -> float:
    tr = Trainer.create(cfg, MeshConfig(), OptimConfig(lr=1e-3, warmup_steps=1), TrainConfig(steps=steps + 2), seed=0)
    b = batch_of(batch, cfg.max_seq_len, cfg.vocab_size)
    jax.block_until_ready(tr.step(b))  # compile
    jax.block_until_ready(tr.step(b))
    t0 = time.perf_counter()
    for _ in range(steps):
        m = tr.step(b)
    jax.block_until_ready(m)
    return steps * batch * cfg.max_seq_len / (time.perf_counter() - t0)


def theirs(cfg: ModelConfig, batch: int, steps: int, threads: int = 2) -> float:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    d, h, T, V = cfg.d_model, cfg.n_heads, cfg.max_seq_len, cfg.vocab_size

    from torch_gpt import GPT

    model = GPT(V, T, d, cfg.n_layers, h, cfg.d_ff)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    b = batch_of(batch, T, V)
    x, y = torch.from_numpy(b["inputs"].astype(np.int64)), torch.from_numpy(b["targets"].astype(np.int64))

    def step():
        loss = F.cross_entropy(model(x).view(-1, V), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(), step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch * T / (time.perf_counter() - t0)


def gpt2_like(d, n_layers, n_heads, seq, vocab):
    return ModelConfig(family="gpt2", vocab_size=vocab, max_seq_len=seq, d_model=d, n_layers=n_layers,
                       n_heads=n_heads, n_kv_heads=n_heads, d_ff=4 * d, tie_embeddings=True, use_bias=True,
                       scan_layers=False, attention_impl="blocked")  # as the speedrun runs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--gpt2", action="store_true", help="also the GPT-2 124M shape at context 1024")
    args = ap.parse_args()
    print(f"allocator: {'tcmalloc' if tcmalloc_loaded() else 'glibc malloc (JAXLLM_TCMALLOC=0 or not installed)'}")
    peaks = [measure_matmul_peak(1024, jnp.float32, repeats=10)]
    shapes = [(name, gpt2_like(d, L, h, 256, 8192), args.batch, args.steps) for name, (d, L, h) in SHAPES.items()]
    if args.gpt2:
        shapes.append(("gpt2-124m ctx1024", gpt2_like(768, 12, 12, 1024, 50257), 4, 3))
    rows = [(name, cfg, ours(cfg, batch, steps), theirs(cfg, batch, steps)) for name, cfg, batch, steps in shapes]
    peaks.append(measure_matmul_peak(1024, jnp.float32, repeats=10))
    peak = max(peaks)  # MFU over the best peak seen in this run (first and last measurement)
    print(f"matmul peak (f32, 1024^3), before and after: {peaks[0] / 1e9:.0f}, {peaks[1] / 1e9:.0f} GFLOP/s; "
          f"MFU below uses the best, {peak / 1e9:.0f}")
    print(f"{'shape':>18} {'ours tok/s':>11} {'torch tok/s':>12} {'ratio':>6} {'our MFU':>8} {'torch MFU':>9}")
    for name, cfg, a, b in rows:
        f = flops_per_token(cfg, cfg.max_seq_len)
        print(f"{name:>18} {a:>11,.0f} {b:>12,.0f} {a / b:>6.2f} {a * f / peak:>8.1%} {b * f / peak:>9.1%}")


if __name__ == "__main__":
    main()
