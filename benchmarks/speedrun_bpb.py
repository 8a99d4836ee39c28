"""The speedrun race: our pretraining stage vs a plain PyTorch nanoGPT-style model, same data and clock.

Both sides get the same corpus (Wikipedia summaries + unique BoolQ passages, 2% of documents held
out by id hash), the same byte-level BPE tokenizer (vocab 4096), the same validation batches and
the same wall-clock training budget; each prints its validation bits per byte.

    python benchmarks/speedrun_bpb.py --minutes 10              # both sides, one after the other
    python benchmarks/speedrun_bpb.py --minutes 10 --only torch

The PyTorch side is the bar from the pretraining issue: d_model 96, 4 layers, 4 heads, context 256,
GELU MLP, LayerNorm, learned positions, tied embeddings, AdamW (0.9, 0.95), weight decay 0.1,
50 warmup steps, cosine to 10%, batch 16 x 256, float32, 2 threads. Its cosine length is fitted to
the budget from a measured step time, as a person tuning it fairly would do.
"""
from __future__ import annotations

from jaxllm.allocator import reexec_under_tcmalloc

reexec_under_tcmalloc()  # before jax is imported (jaxllm/allocator.py)

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from jaxllm.config import override
from jaxllm.data.pipeline import make_eval_batches
from jaxllm.data.shards import ShardSource
from jaxllm.eval.bpb import bits_per_byte, target_bytes, token_byte_lengths
from jaxllm.recipes.experiment import load_experiment, open_run, run_stages, start_run
from jaxllm.tokenizer import Tokenizer


def prepare(run_dir: Path | None):
    """Data, tokenizer and shards of the speedrun config (reused when run_dir already has them)."""
    if run_dir is not None and (run_dir / "config.json").exists():
        cfg, run_dir = open_run(run_dir)
    else:
        # the corpus: no web pages, whatever the speedrun's own default sources are
        cfg = load_experiment("speedrun", ("tokenizer.vocab_size=4096", "pipeline.seq_len=256",
                                           "data.sources=wikipedia-summaries,boolq-passages"))
        run_dir = start_run(cfg, run_dir)
    results = run_stages(override(cfg, ["stages=data,tokenizer,shards"]), run_dir)
    return cfg, run_dir, results


def train_ours(cfg, run_dir: Path, results: dict, minutes: float) -> dict:
    from jaxllm.recipes.pretrain import pretrain
    from jaxllm.recipes.stages import model_for_tokenizer

    tok = Tokenizer.load(results["tokenizer"]["dir"])
    cfg = override(cfg, [f"train.time_budget_s={minutes * 60}", "train.sample_every=0"])
    out = run_dir / f"ours-{int(time.time())}"
    return pretrain(out, model_for_tokenizer(cfg.model, tok), cfg.mesh, cfg.optim, cfg.train, cfg.pipeline,
                    results["shards"]["train"]["dir"], results["shards"]["validation"]["dir"], tok, None, cfg.seed)


def train_torch(cfg, results: dict, minutes: float, lr: float, threads: int = 2, seed: int = 0) -> dict:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    tok = Tokenizer.load(results["tokenizer"]["dir"])
    vocab, ctx, d, n_layers, n_heads, batch = tok.n_vocab, 256, 96, 4, 4, 16
    src = ShardSource(results["shards"]["train"]["dir"])
    stream = np.concatenate([src[i] for i in range(len(src))]).astype(np.int64)  # documents, BOS-separated
    rng = np.random.default_rng(seed)

    from torch_gpt import GPT

    model = GPT(vocab, ctx, d, n_layers, n_heads)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wte" not in n and "wpe" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "wte" not in n and "wpe" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))

    def get_batch():
        ix = rng.integers(0, len(stream) - ctx - 1, batch)
        x = torch.from_numpy(np.stack([stream[i:i + ctx] for i in ix]))
        y = torch.from_numpy(np.stack([stream[i + 1:i + ctx + 1] for i in ix]))
        return x, y

    def step_once():
        x, y = get_batch()
        loss = F.cross_entropy(model(x).view(-1, vocab), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(loss)

    # Fit the cosine length to the budget from the step time of a few throwaway-lr steps.
    for g in opt.param_groups:
        g["lr"] = 0.0
    t0 = time.perf_counter()
    for _ in range(10):
        step_once()
    step_time = (time.perf_counter() - t0) / 10
    total_steps = max(100, int(minutes * 60 / step_time))
    warmup = 50

    def lr_at(s):
        if s < warmup:
            return lr * (s + 1) / warmup
        frac = min(1.0, (s - warmup) / max(1, total_steps - warmup))
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    start, s, loss = time.perf_counter(), 0, float("nan")
    while time.perf_counter() - start < minutes * 60:
        for g in opt.param_groups:
            g["lr"] = lr_at(s)
        loss = step_once()
        s += 1
    train_seconds = time.perf_counter() - start
    byte_lengths = token_byte_lengths(tok)
    nats = n_bytes = 0.0
    model.eval()
    with torch.no_grad():
        for b in make_eval_batches(results["shards"]["validation"]["dir"], cfg.pipeline, cfg.train.eval_batches):
            logits = model(torch.from_numpy(b["inputs"].astype(np.int64)))
            nll = F.cross_entropy(logits.view(-1, vocab), torch.from_numpy(b["targets"].astype(np.int64)).view(-1),
                                  reduction="none").numpy()
            nats += float((nll * b["loss_mask"].reshape(-1)).sum())
            n_bytes += target_bytes(b, byte_lengths)
    return {"steps": s, "planned_steps": total_steps, "train_seconds": round(train_seconds, 1),
            "last_train_loss": loss, "val_bpb": bits_per_byte(nats, n_bytes), "lr": lr}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--run-dir", type=Path, default=Path("runs/bench-speedrun-bpb"))
    ap.add_argument("--only", choices=["ours", "torch"], default=None)
    ap.add_argument("--torch-lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    cfg, run_dir, results = prepare(args.run_dir)
    out = {}
    if args.only in (None, "ours"):
        ours = train_ours(cfg, run_dir, results, args.minutes)
        out["ours"] = {k: ours[k] for k in ("steps", "train_seconds", "val_bpb")}
        print(f"ours:    val bpb {ours['val_bpb']:.4f} after {ours['steps']} steps in {ours['train_seconds']} s")
    if args.only in (None, "torch"):
        theirs = train_torch(cfg, results, args.minutes, args.torch_lr, args.threads)
        out["torch"] = theirs
        print(f"pytorch: val bpb {theirs['val_bpb']:.4f} after {theirs['steps']} steps in {theirs['train_seconds']} s "
              f"(lr {theirs['lr']})")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
