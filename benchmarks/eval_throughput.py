"""Evaluation throughput: multiple-choice examples/s, batched (bucketed padding) vs one by one.

    python benchmarks/eval_throughput.py [--tasks piqa,openbookqa] [--limit 64] [--depth 4] [--repeats 3]
    python benchmarks/eval_throughput.py --tokenizer bytes --depth 2       # overhead-bound: small vocab
    python benchmarks/eval_throughput.py --model smollm2-135m-instruct --limit 24

Both modes score exactly the same requests with the same jitted forward (`score_requests`): batched
packs ~`--batch-tokens` tokens per call, one-by-one uses max_rows=1 (still bucketed lengths, so both
compile a handful of shapes). A first untimed pass compiles; each timed sample records the CPU
other processes used meanwhile (from /proc/stat), and the least disturbed sample of each mode is
reported. Results: JSON on stdout (and --out).
"""
from __future__ import annotations

from jaxllm.allocator import reexec_under_tcmalloc

reexec_under_tcmalloc()  # before jax is imported (jaxllm/allocator.py)

import argparse
import json
import os
import time

import numpy as np


def cpu_jiffies() -> tuple[int, int]:
    """(busy jiffies of the whole machine, of this process)."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    busy = sum(vals) - vals[3] - vals[4]
    with open(f"/proc/{os.getpid()}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return busy, int(fields[11]) + int(fields[12])


def timed(fn) -> tuple[float, float]:
    """(wall seconds, share of machine CPU used by other processes meanwhile)."""
    b0, s0 = cpu_jiffies()
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    b1, s1 = cpu_jiffies()
    ticks = os.sysconf("SC_CLK_TCK") * wall * os.cpu_count()
    return wall, max(0.0, ((b1 - b0) - (s1 - s0)) / max(ticks, 1e-9))


def build_model(args):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from jaxllm.eval.model import from_parts, from_pretrained
    from jaxllm.model import Transformer
    from jaxllm.model.presets import tiny
    from jaxllm.tokenizer import load_tokenizer

    if args.model != "tiny":
        from jaxllm.model.hub import load_pretrained
        return from_pretrained(load_pretrained(args.model))
    if args.tokenizer == "bytes":  # 257 ids: the output layer is cheap, so per-call overhead dominates
        from jaxllm.tokenizer import Tokenizer
        tok = Tokenizer({bytes([i]): i for i in range(256)}, {"<|bos|>": 256}, name="bytes")
    else:
        tok = load_tokenizer(args.tokenizer)
    cfg = tiny(args.depth, tok.n_vocab, 2048)
    params = jax.jit(lambda k: nn.unbox(Transformer(cfg).init(k, jnp.zeros((1, 4), jnp.int32))["params"]))(
        jax.random.key(0))
    return from_parts(f"tiny-depth{args.depth}-{tok.name}", cfg, params, tok)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="'tiny' (random init, gpt2 vocab) or a pretrained name")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--tokenizer", default="gpt2", help="tiny model's tokenizer: an encoding name or 'bytes'")
    p.add_argument("--tasks", default="piqa,openbookqa")
    p.add_argument("--limit", type=int, default=64)
    p.add_argument("--shots", type=int, default=0)
    p.add_argument("--batch-tokens", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    from jaxllm.eval.scoring import score_requests
    from jaxllm.eval.tasks import build_prompt, load_task, requests_for, split_pool

    model = build_model(args)
    reqs, n_examples = [], 0
    for task in args.tasks.split(","):
        pool, items = split_pool(load_task(task))
        for ex in items[:args.limit]:
            context, options = build_prompt(ex, pool[:args.shots], model.kind, "cloze")
            reqs += requests_for(model, context, options)
            n_examples += 1
    n_tokens = sum(len(r.context) + len(r.continuation) for r in reqs)
    modes = {"batched": dict(batch_tokens=args.batch_tokens), "one_by_one": dict(max_rows=1)}
    results = {}
    for name, kw in modes.items():
        scores = score_requests(model.params, model.cfg, reqs, **kw)  # compile (untimed)
        results[name] = {"samples": [], "scores": np.array([s.logprob for s in scores])}
    for _ in range(args.repeats):
        for name, kw in modes.items():
            results[name]["samples"].append(timed(lambda: score_requests(model.params, model.cfg, reqs, **kw)))
    out = {"model": model.name, "tasks": args.tasks, "examples": n_examples, "requests": len(reqs),
           "tokens": n_tokens, "cpu_count": os.cpu_count()}
    for name in modes:
        wall, other = min(results[name]["samples"], key=lambda s: (round(s[1], 1), s[0]))
        out[name] = {"seconds": wall, "examples_per_s": n_examples / wall, "tokens_per_s": n_tokens / wall,
                     "other_cpu_share": other, "all_seconds": [s[0] for s in results[name]["samples"]]}
    out["speedup"] = out["batched"]["examples_per_s"] / out["one_by_one"]["examples_per_s"]
    out["max_abs_logprob_diff"] = float(np.max(np.abs(results["batched"]["scores"] - results["one_by_one"]["scores"])))
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
