"""A model judge: any loaded model grades answers against references with one fixed rubric.

The grade is read from the judge's log-likelihoods, not parsed from free text: after the rubric and
the item, each allowed score ("1".."5") is scored as the judge's reply, normalised to a distribution.
So every item gets a grade (no unparseable replies), and `expected` is a smooth score. Pairwise
verdicts ask for "A" or "B" and are read the same way, with both presentation orders averaged to
cancel the judge's position bias.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from jaxllm.eval.model import EvalModel
from jaxllm.eval.scoring import score_requests
from jaxllm.eval.tasks import requests_for

RUBRIC = (
    "You are a strict grader. Compare the answer with the reference answer and grade it from 1 to 5.\n"
    "5: correct and complete; it agrees with the reference.\n"
    "4: correct, with a minor omission or unneeded extra text.\n"
    "3: partly correct.\n"
    "2: wrong but on topic.\n"
    "1: wrong, off topic, empty, or a refusal although the reference gives an answer.\n"
    "Reply with the grade only."
)
SCORES = ("1", "2", "3", "4", "5")
PAIRWISE = (
    "You are a strict judge. Two assistants answered the same question. Decide which answer is better: "
    "correct first, then helpful and concise. Reply with the letter A or B only."
)


def _ask(judge: EvalModel, body: str, options: Sequence[str], lead: str) -> np.ndarray:
    """Probabilities of each option as the judge's reply to `body` (chat turn or '<lead>' text prompt)."""
    if judge.kind == "chat":
        context = [{"role": "user", "content": body}]
        opts = list(options)
    else:
        context = f"{body}\n{lead}"
        opts = [" " + o for o in options]
    lp = np.array([s.logprob for s in score_requests(judge.params, judge.cfg, requests_for(judge, context, opts),
                                                     batch_tokens=1024)])
    p = np.exp(lp - lp.max())
    return p / p.sum()


def grade_prompt(question: str, reference: str, answer: str) -> str:
    return f"{RUBRIC}\n\nQuestion: {question}\nReference answer: {reference}\nAnswer to grade: {answer}"


def grade(judge: EvalModel, question: str, reference: str, answer: str) -> dict:
    """{"score": argmax grade, "expected": probability-weighted grade, "probs": [p(1)..p(5)]}."""
    p = _ask(judge, grade_prompt(question, reference, answer), SCORES, "Grade:")
    return {"score": int(np.argmax(p)) + 1, "expected": float(np.dot(p, np.arange(1, 6))), "probs": p.tolist()}


def grade_many(judge: EvalModel, items: Sequence[dict]) -> dict:
    """Grade items {"question", "reference", "answer"}; returns mean grades and per-item results."""
    graded = [{**it, **grade(judge, it["question"], it["reference"], it["answer"])} for it in items]
    n = max(len(graded), 1)
    return {"judge": judge.name, "rubric": RUBRIC, "n": len(graded),
            "mean_score": sum(g["score"] for g in graded) / n, "mean_expected": sum(g["expected"] for g in graded) / n,
            "items": graded}


def pairwise_prompt(question: str, first: str, second: str, reference: Optional[str] = None) -> str:
    ref = f"\nReference answer: {reference}" if reference else ""
    return f"{PAIRWISE}\n\nQuestion: {question}{ref}\nAnswer A: {first}\nAnswer B: {second}"


def prefer_a(judge: EvalModel, question: str, a: str, b: str, reference: Optional[str] = None) -> float:
    """P(a is better), averaged over both presentation orders."""
    p1 = _ask(judge, pairwise_prompt(question, a, b, reference), ("A", "B"), "Better answer:")[0]
    p2 = _ask(judge, pairwise_prompt(question, b, a, reference), ("A", "B"), "Better answer:")[1]
    return float((p1 + p2) / 2)


def pairwise_judge(judge: EvalModel, references: Optional[dict[str, str]] = None,
                   margin: float = 0.05) -> Callable[[str, str, str], float]:
    """A battle judge for jaxllm.eval.arena.run_battles: 1 (a better), 0 (b better), 0.5 when within margin."""
    def verdict(prompt: str, a: str, b: str) -> float:
        p = prefer_a(judge, prompt, a, b, (references or {}).get(prompt))
        return 1.0 if p > 0.5 + margin else 0.0 if p < 0.5 - margin else 0.5
    return verdict
