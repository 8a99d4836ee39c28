"""Rollouts: prompts -> G sampled completions each -> rewards -> a padded training batch; greedy evaluation.

A problem is a dict {"question": str, "answer": number}. Prompts are rendered with the same chat template
the model was fine-tuned with, so RL continues exactly where SFT left off. Sampling uses the KV-cache
sampler (jaxllm.infer.sampling.generate); log-probs for the update are recomputed by the training
step on the mesh, not taken from the sampler.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from jaxllm.data.chat import render_prompt, stop_ids
from jaxllm.infer.sampling import generate
from jaxllm.rl.preferences import wilson_interval

RewardFn = Callable[..., float]


def prompt_ids(problems: Sequence[dict], tokenizer, template: str) -> list[list[int]]:
    """Token ids of each problem's question as a one-turn chat prompt ending in the assistant header."""
    return [render_prompt({"messages": [{"role": "user", "content": p["question"]}]}, tokenizer, template)
            for p in problems]


def end_ids(tokenizer, template: str) -> tuple[int, ...]:
    """Ids that end a reply: the template's end marker (and the tokenizer's eos, if it has one)."""
    ids = set(stop_ids(tokenizer, template)["end"])
    eos = getattr(tokenizer, "eos_id", None)
    if eos is not None:
        ids.add(eos)
    return tuple(sorted(ids))


def decode_completion(tokenizer, ids: Sequence[int], stops: Sequence[int]) -> str:
    """Completion text without its stop token."""
    return tokenizer.decode([t for t in ids if t not in stops])


def sample_completions(params, model_cfg, prompts: Sequence[Sequence[int]], group_size: int, *, max_new_tokens: int,
                       temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                       stops: Sequence[int] = (), pad_id: int = 0, batch_size: int = 0) -> list[list[int]]:
    """group_size completions per prompt, grouped: out[i * group_size + g] continues prompts[i].

    batch_size > 0 caps how many sequences are decoded at once (memory); each chunk gets its own seed.
    """
    rows = [list(p) for p in prompts for _ in range(group_size)]
    chunk = batch_size or len(rows)
    out: list[list[int]] = []
    for c, start in enumerate(range(0, len(rows), chunk)):
        out += generate(params, model_cfg, rows[start:start + chunk], max_new_tokens=max_new_tokens,
                        temperature=temperature, top_k=top_k, top_p=top_p, seed=seed * 7919 + c,
                        stop_ids=tuple(stops), pad_id=pad_id)
    return out


def score(texts: Sequence[str], answers: Sequence, reward_fn: RewardFn, **options) -> np.ndarray:
    """rewards [n] = reward_fn(text, answer, **options) for each completion."""
    return np.asarray([reward_fn(t, a, **options) for t, a in zip(texts, answers)], np.float32)


def make_batch(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], seq_len: int,
               pad_id: int = 0, **per_sequence: np.ndarray) -> dict[str, np.ndarray]:
    """The training batch for prompt+completion pairs, right-padded to seq_len + 1 tokens.

    inputs/targets [n, seq_len] are the sequence shifted by one; loss_mask is 1 where the target is a
    completion token; every extra per-sequence array (advantages, rewards: [n]) is broadcast over the
    tokens (zero on padding), since the train step shards all batch arrays as [batch, length].
    """
    n = len(completions)
    ids = np.full((n, seq_len + 1), pad_id, np.int32)
    mask = np.zeros((n, seq_len), np.float32)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        seq = list(p) + list(c)
        if len(seq) > seq_len + 1:
            raise ValueError(f"rollout {i}: prompt {len(p)} + completion {len(c)} tokens exceed seq_len + 1 = "
                             f"{seq_len + 1}; raise rl.seq_len or lower rl.max_new_tokens")
        ids[i, :len(seq)] = seq
        mask[i, len(p) - 1:len(seq) - 1] = 1.0  # targets at positions len(p)-1.. are the completion tokens
    batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": mask}
    for name, values in per_sequence.items():
        batch[name] = (np.asarray(values, np.float32)[:, None] * mask).astype(np.float32)
    return batch


def pad_rows(batch: dict[str, np.ndarray], multiple: int) -> dict[str, np.ndarray]:
    """Append all-zero rows (loss_mask 0: they train nothing) until the batch divides over `multiple` devices."""
    n = len(batch["loss_mask"])
    extra = -n % max(multiple, 1)
    if not extra:
        return batch
    return {k: np.concatenate([v, np.zeros((extra, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}


def greedy_accuracy(params, model_cfg, tokenizer, problems: Sequence[dict], template: str, reward_fn: RewardFn, *,
                    max_new_tokens: int, batch_size: int = 64, pad_id: int = 0, **reward_options) -> dict:
    """Greedy (temperature 0) answers to `problems`: accuracy, its 95% Wilson interval, the number of
    problems, mean response length (tokens), and the first few completions (for the report)."""
    prompts = prompt_ids(problems, tokenizer, template)
    stops = end_ids(tokenizer, template)
    outs = sample_completions(params, model_cfg, prompts, 1, max_new_tokens=max_new_tokens, temperature=0.0,
                              stops=stops, pad_id=pad_id, batch_size=batch_size)
    texts = [decode_completion(tokenizer, o, stops) for o in outs]
    correct = score(texts, [p["answer"] for p in problems], reward_fn, **reward_options) >= 1.0
    k, n = int(correct.sum()), len(problems)
    lo, hi = wilson_interval(k, n)
    marker = reward_options.get("answer_format") or "####"
    return {"accuracy": k / max(n, 1), "correct": k, "n": n, "ci95": [lo, hi], "per_problem": correct.astype(int).tolist(),
            "response_len": float(np.mean([len(o) for o in outs])) if outs else 0.0,
            # replies that state the answer before any working (the strategy RL often unlearns)
            "answer_first": float(np.mean([t.lstrip().startswith(marker) for t in texts])) if texts else 0.0,
            "examples": [{"question": p["question"], "completion": t, "answer": p["answer"]}
                         for p, t in zip(problems[:3], texts[:3])]}


def mcnemar_z(before: Sequence[int], after: Sequence[int]) -> tuple[float, int, int]:
    """Paired test on the same problems: z = (gained - lost) / sqrt(gained + lost), with the two counts.

    More powerful than comparing two proportions when before and after are scored on one problem set.
    """
    gained = sum(1 for b, a in zip(before, after) if a and not b)
    lost = sum(1 for b, a in zip(before, after) if b and not a)
    return ((gained - lost) / math.sqrt(gained + lost) if gained + lost else 0.0), gained, lost


def two_proportion_z(k1: int, n1: int, k2: int, n2: int) -> float:
    """z statistic of the difference k2/n2 - k1/n1 (pooled); |z| > 1.96 is beyond noise at 95%."""
    if n1 == 0 or n2 == 0:
        return 0.0
    p = (k1 + k2) / (n1 + n2)
    se = math.sqrt(max(p * (1 - p) * (1 / n1 + 1 / n2), 1e-12))
    return (k2 / n2 - k1 / n1) / se
