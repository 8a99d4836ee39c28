"""Train-step tokens/s and MFU on CPU: ours vs an equivalent plain PyTorch model, side by side in one run.

    python benchmarks/train_throughput.py                 # d128/L4, d256/L6, d384/L6 at ctx 256, vocab 8192
    python benchmarks/train_throughput.py --gpt2          # also GPT-2 124M at ctx 1024 (slow: a few steps)
    python benchmarks/train_throughput.py --rounds 8 --gpt2 --gpt2-rounds 10   # more rounds on noisy machines

Both sides: GPT-2 family (LayerNorm, GELU-tanh, learned positions, tied embeddings, biases), float32,
AdamW, the same batch; torch uses 2 threads (eager); ours runs as the speedrun does (fused attention and BLAS
matmuls, jaxllm/kernels: MKL on Intel CPUs, OpenBLAS on others, JAXLLM_BLAS=mkl|openblas to choose); both
run under tcmalloc when it is installed (jaxllm/allocator.py; JAXLLM_TCMALLOC=0 compares glibc). The f32
matmul peak is measured before and after the models; MFU = tokens/s x FLOPs/token / the best of the two.
The two sides run interleaved in rounds (ABBA) and the ratio is the median of the per-round ratios, with
their quartiles and the rounds ours won beside it: timings on these 2-core machines swing ~2x between
runs, and even within one.
"""
from __future__ import annotations

from jaxllm.allocator import reexec_under_tcmalloc, tcmalloc_loaded

reexec_under_tcmalloc()  # before jax is imported (jaxllm/allocator.py)

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.kernels import blas_matmul
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


def ours(cfg: ModelConfig, batch: int):
    """A callable running one of our train steps (compiled, warm) and returning once it finished."""
    tr = Trainer.create(cfg, MeshConfig(), OptimConfig(lr=1e-3, warmup_steps=1), TrainConfig(steps=10_000), seed=0)
    b = batch_of(batch, cfg.max_seq_len, cfg.vocab_size)
    return lambda: jax.block_until_ready(tr.step(b))


def theirs(cfg: ModelConfig, batch: int, threads: int = 2):
    """The same for the plain PyTorch model (eager, float32, `threads` threads)."""
    import torch
    import torch.nn.functional as F

    from torch_gpt import GPT

    torch.set_num_threads(threads)
    V = cfg.vocab_size
    model = GPT(V, cfg.max_seq_len, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    b = batch_of(batch, cfg.max_seq_len, V)
    x, y = torch.from_numpy(b["inputs"].astype(np.int64)), torch.from_numpy(b["targets"].astype(np.int64))

    def step():
        loss = F.cross_entropy(model(x).view(-1, V), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def race(cfg: ModelConfig, batch: int, rounds: int, steps: int, warmup: int = 3) -> dict:
    """Both sides, interleaved: each round runs `steps` of each side, the side that goes first alternating
    (ABBA). This machine's speed drifts by up to 2x within a minute, so each round gives a paired ratio and
    the medians are reported (PyTorch's first few steps are also ~1.3x slower than its steady state, hence
    the warmup)."""
    sides = {"ours": ours(cfg, batch), "torch": theirs(cfg, batch)}
    for step in sides.values():
        for _ in range(warmup):
            step()
    tokens = steps * batch * cfg.max_seq_len
    rates = {name: [] for name in sides}
    for r in range(rounds):
        for name in (("ours", "torch") if r % 2 == 0 else ("torch", "ours")):
            t0 = time.perf_counter()
            for _ in range(steps):
                sides[name]()
            rates[name].append(tokens / (time.perf_counter() - t0))
    ratios = np.array(rates["ours"]) / np.array(rates["torch"])
    return {"ours": float(np.median(rates["ours"])), "torch": float(np.median(rates["torch"])),
            "ratio": float(np.median(ratios)), "quartiles": tuple(np.percentile(ratios, [25, 75])),
            "wins": int(np.sum(ratios > 1)), "rounds": rounds}


def gpt2_like(d, n_layers, n_heads, seq, vocab):
    return ModelConfig(family="gpt2", vocab_size=vocab, max_seq_len=seq, d_model=d, n_layers=n_layers,
                       n_heads=n_heads, n_kv_heads=n_heads, d_ff=4 * d, tie_embeddings=True, use_bias=True,
                       scan_layers=False, attention_impl="fused", matmul_impl="blas")  # as the speedrun runs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=12, help="interleaved rounds per shape (ratios: their median)")
    ap.add_argument("--steps", type=int, default=1, help="train steps per side per round")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--gpt2", action="store_true", help="also the GPT-2 124M shape at context 1024")
    ap.add_argument("--gpt2-rounds", type=int, default=4, help="rounds for the GPT-2 shape (a step takes 10-30 s)")
    args = ap.parse_args()
    print(f"allocator: {'tcmalloc' if tcmalloc_loaded() else 'glibc malloc (JAXLLM_TCMALLOC=0 or not installed)'}; "
          f"our matmuls: {blas_matmul.library() if blas_matmul.available() else 'XLA (no BLAS kernel)'}")
    peaks = [measure_matmul_peak(1024, jnp.float32, repeats=10)]
    shapes = [(name, gpt2_like(d, L, h, 256, 8192), args.batch, args.rounds, args.steps)
              for name, (d, L, h) in SHAPES.items()]
    if args.gpt2:
        shapes.append(("gpt2-124m ctx1024", gpt2_like(768, 12, 12, 1024, 50257), 4, args.gpt2_rounds, 1))
    rows = [(name, cfg, race(cfg, batch, rounds, steps)) for name, cfg, batch, rounds, steps in shapes]
    peaks.append(measure_matmul_peak(1024, jnp.float32, repeats=10))
    peak = max(peaks)  # MFU over the best peak seen in this run (first and last measurement)
    print(f"matmul peak (f32, 1024^3, best of XLA and BLAS), before and after: {peaks[0] / 1e9:.0f}, {peaks[1] / 1e9:.0f} GFLOP/s; "
          f"MFU below uses the best, {peak / 1e9:.0f}")
    print(f"{'shape':>18} {'ours tok/s':>11} {'torch tok/s':>12} {'ratio':>6} {'quartiles':>11} {'ours faster':>12} "
          f"{'our MFU':>8} {'torch MFU':>9}")
    for name, cfg, r in rows:
        f = flops_per_token(cfg, cfg.max_seq_len)
        lo, hi = r["quartiles"]
        won = f"{r['wins']}/{r['rounds']} rounds"
        print(f"{name:>18} {r['ours']:>11,.0f} {r['torch']:>12,.0f} {r['ratio']:>6.2f} {f'{lo:.2f}-{hi:.2f}':>11} "
              f"{won:>12} {r['ours'] * f / peak:>8.1%} {r['torch'] * f / peak:>9.1%}")


if __name__ == "__main__":
    main()
