"""Arithmetic and word problems ("models need tokens to think"): step-by-step vs answer-first solutions.

What it teaches: a transformer does a fixed amount of computation per token, so an answer written
as the very first token must be computed in one forward pass. "steps" solutions spread the work
over many tokens (one operation per line, multi-digit products split into partial products) and put
the answer last; "answer_first" states the answer before justifying it (the video's bad example);
"answer_only" gives just the answer (mental arithmetic). Training one model per style and testing on
bigger numbers is the comparison the video makes.

Problems: expressions with `min_digits..max_digits`-digit operands and `min_ops..max_ops` operations
(+, -, *, standard precedence), and the Emily-apples family of word problems (unit price from a
total, total cost, what is left, equal sharing, "times as many"). The difficulty knobs let the RL stage
pick problems a tiny model gets 10-70% right. Held-out split by a hash of the operands (the names and
items of word problems do not matter), so test problems never occur in training. Every solution ends
with a checkable line, "#### N" (answer_format="####") or "The answer is N." ("sentence");
`extract_answer` reads it back.
"""
from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass
from typing import Literal, Optional

from jaxllm.data.generators import check_split, conversation, rng_for, sample_unique, variant
from jaxllm.data.sources import DataError

Style = Literal["steps", "answer_first", "answer_only", "mixed"]


@dataclass(frozen=True)
class ArithmeticConfig:
    min_digits: int = 1
    max_digits: int = 2
    min_ops: int = 1
    max_ops: int = 2
    ops: str = "+-*"
    kind: Literal["expression", "word", "mixed"] = "expression"
    style: Style = "steps"
    steps_fraction: float = 0.5  # style "mixed": this share of solutions step by step, the rest answer first
    answer_format: Literal["####", "sentence"] = "####"
    test_fraction: float = 0.2

    def __post_init__(self):
        if not 1 <= self.min_digits <= self.max_digits:
            raise DataError(f"arithmetic digits: need 1 <= min_digits <= max_digits, got {self.min_digits}, {self.max_digits}")
        if not 1 <= self.min_ops <= self.max_ops:
            raise DataError(f"arithmetic ops: need 1 <= min_ops <= max_ops, got {self.min_ops}, {self.max_ops}")
        if not self.ops or set(self.ops) - set("+-*"):
            raise DataError(f"arithmetic ops={self.ops!r}: use a non-empty subset of '+-*'")
        if self.style not in ("steps", "answer_first", "answer_only", "mixed"):
            raise DataError(f"arithmetic style={self.style!r}: use steps, answer_first, answer_only or mixed")
        if not 0.0 <= self.steps_fraction <= 1.0:
            raise DataError(f"arithmetic steps_fraction={self.steps_fraction!r}: use a share between 0 and 1")


@dataclass(frozen=True)
class Problem:
    question: str
    answer: int
    steps: tuple[str, ...]  # the worked solution, one line each
    kind: str  # "expression" or the word-problem family
    key: str  # what decides the split: the operands


def _number(r: random.Random, cfg: ArithmeticConfig) -> int:
    d = r.randint(cfg.min_digits, cfg.max_digits)
    return r.randint(10 ** (d - 1) if d > 1 else 0, 10 ** d - 1)


def _mul_steps(a: int, b: int) -> list[str]:
    """a * b, with a multi-digit b split into partial products (more tokens to think with)."""
    if abs(b) < 10 or abs(a) < 10:
        return [f"{a} * {b} = {a * b}"]
    parts = [int(c) * 10 ** i for i, c in enumerate(reversed(str(abs(b)))) if c != "0"][::-1]
    if len(parts) == 1:
        return [f"{a} * {b} = {a * b}"]
    products = [a * p for p in parts]
    return [f"{a} * {b} = " + " + ".join(f"{a} * {p}" for p in parts),  # operands of * are never negative
            " + ".join(map(str, products)) + f" = {a * b}"]


def solve(numbers: list[int], ops: list[str]) -> tuple[int, list[str]]:
    """Evaluate with precedence (* before +/-, left to right), one line per operation."""
    nums, ops, steps = list(numbers), list(ops), []
    while ops:
        i = next((k for k, o in enumerate(ops) if o == "*"), 0)
        a, b, op = nums[i], nums[i + 1], ops[i]
        r = a * b if op == "*" else a + b if op == "+" else a - b
        steps += _mul_steps(a, b) if op == "*" else [f"{a} {op} {b} = {r}"]
        nums[i:i + 2], ops[i:i + 1] = [r], []
    return nums[0], steps


QUESTION_FORMS = ("What is {e}?", "Compute {e}.", "Calculate {e}.", "{e} = ?", "What does {e} equal?",
                  "Please work out {e}.", "Solve: {e}")


def expression_problem(r: random.Random, cfg: ArithmeticConfig) -> Problem:
    n_ops = r.randint(cfg.min_ops, cfg.max_ops)
    numbers = [_number(r, cfg) for _ in range(n_ops + 1)]
    ops = [r.choice(cfg.ops) for _ in range(n_ops)]
    expr = " ".join(str(x) for pair in zip(numbers, ops + [""]) for x in pair).strip()
    answer, steps = solve(numbers, ops)
    return Problem(r.choice(QUESTION_FORMS).format(e=expr), answer, tuple(steps), "expression", expr)


NAMES = ("Emily", "Liam", "Sofia", "Noah", "Ava", "Mateo", "Priya", "Kenji", "Amara", "Lucas", "Zoe", "Omar",
         "Hannah", "Diego", "Mei", "Jonas", "Fatima", "Oliver", "Chloe", "Ravi")
ITEMS = (("apple", "fruit"), ("orange", "fruit"), ("pear", "fruit"), ("notebook", "school supplies"),
         ("pencil", "school supplies"), ("cookie", "snacks"), ("muffin", "snacks"), ("ticket", "tickets"),
         ("marble", "toys"), ("sticker", "toys"))


def _pair(r: random.Random) -> tuple[str, str, str]:
    (a, group), (b, group_b) = r.sample([i for i in ITEMS], 2)
    return a, b, group if group == group_b else "items"


def word_problem(r: random.Random, cfg: ArithmeticConfig) -> Problem:
    """One problem of the Emily-apples family; numbers scale with max_digits."""
    hi = 10 ** cfg.max_digits - 1
    name, other = r.sample(NAMES, 2)
    family = r.choice(("unit_price", "total_cost", "remaining", "sharing", "times_as_many"))
    small = lambda: r.randint(2, max(2, min(9, hi)))  # noqa: E731  counts of things
    if family == "unit_price":  # the video's problem: 3 apples, 2 oranges at $2, $13 in total
        a, b, p1, p2 = small(), small(), r.randint(1, hi), r.randint(1, hi)
        x, y, group = _pair(r)
        total = a * p1 + b * p2
        q = (f"{name} buys {a} {x}s and {b} {y}s. Each {y} costs ${p2}. The total cost of all the {group} is "
             f"${total}. What is the cost of each {x}?")
        steps = [f"The {y}s cost {b} * {p2} = {b * p2} dollars.", f"So the {x}s cost {total} - {b * p2} = {a * p1} dollars.",
                 f"Each {x} costs {a * p1} / {a} = {p1} dollars."]
        return Problem(q, p1, tuple(steps), family, f"{family}:{a},{b},{p2},{total}")
    if family == "total_cost":
        a, b, p1, p2 = small(), small(), r.randint(1, hi), r.randint(1, hi)
        x, y, _ = _pair(r)
        q = f"{name} buys {a} {x}s at ${p1} each and {b} {y}s at ${p2} each. How many dollars does {name} spend in total?"
        steps = [f"The {x}s cost {a} * {p1} = {a * p1} dollars.", f"The {y}s cost {b} * {p2} = {b * p2} dollars.",
                 f"In total: {a * p1} + {b * p2} = {a * p1 + b * p2} dollars."]
        return Problem(q, a * p1 + b * p2, tuple(steps), family, f"{family}:{a},{p1},{b},{p2}")
    if family == "remaining":
        have = r.randint(max(2, hi // 10), hi)
        give = r.randint(1, have - 1)
        buy = r.randint(1, hi)
        x = r.choice(ITEMS)[0]
        q = f"{name} has {have} {x}s, gives {give} to {other}, and then buys {buy} more. How many {x}s does {name} have now?"
        steps = [f"After giving some away: {have} - {give} = {have - give}.", f"After buying more: {have - give} + {buy} = {have - give + buy}."]
        return Problem(q, have - give + buy, tuple(steps), family, f"{family}:{have},{give},{buy}")
    if family == "sharing":
        k, each = small(), r.randint(1, hi)
        extra = r.randint(1, hi)
        x = r.choice(ITEMS)[0]
        q = (f"{name} has {k * each} {x}s and shares them equally among {k} friends. Then each friend gets "
             f"{extra} more {x}s from {other}. How many {x}s does each friend have?")
        steps = [f"Sharing: {k * each} / {k} = {each} each.", f"With the extra ones: {each} + {extra} = {each + extra}."]
        return Problem(q, each + extra, tuple(steps), family, f"{family}:{k},{each},{extra}")
    base, m = r.randint(1, hi), small()
    x = r.choice(ITEMS)[0]
    q = f"{name} has {base} {x}s. {other} has {m} times as many. How many {x}s do they have together?"
    steps = [f"{other} has {m} * {base} = {m * base}.", f"Together: {base} + {m * base} = {base + m * base}."]
    return Problem(q, base + m * base, tuple(steps), family, f"times:{base},{m}")


def final_line(answer: int, answer_format: str) -> str:
    return f"#### {answer}" if answer_format == "####" else f"The answer is {answer}."


def solution(p: Problem, style: Style = "steps", answer_format: str = "####") -> str:
    """The assistant's reply in one of the three styles; every style contains exactly one final line."""
    last = final_line(p.answer, answer_format)
    if style == "answer_only":
        return last
    if style == "answer_first":
        return last + "\n" + "\n".join(p.steps)
    return "\n".join(p.steps) + "\n" + last


def make_problems(n: int, seed: int = 0, split: str = "train", **options) -> list[Problem]:
    """n distinct problems of the split (for RL and evaluation: question + integer answer)."""
    check_split(split)
    cfg = ArithmeticConfig(**options)
    rng = rng_for(f"arithmetic-{cfg.kind}", seed, split)

    def make(r: random.Random):
        use_word = cfg.kind == "word" or (cfg.kind == "mixed" and r.random() < 0.5)
        p = word_problem(r, cfg) if use_word else expression_problem(r, cfg)
        return p.key, p

    return sample_unique(make, n, rng, split, cfg.test_fraction, "arithmetic problems")


def generate(n: int = 1000, seed: int = 0, split: str = "train", **options) -> list[dict]:
    """n conversations: a problem and its solution in `style` (meta: answer, kind, key, style).

    style "mixed" writes `steps_fraction` of the solutions step by step and the rest answer first, as
    human-written data mixes styles: the RL stage can then find out which style earns the reward."""
    cfg = ArithmeticConfig(**options)
    pick = rng_for("arithmetic-style", seed, split)
    out = []
    for p in make_problems(n, seed, split, **options):
        style = cfg.style if cfg.style != "mixed" else "steps" if pick.random() < cfg.steps_fraction else "answer_first"
        meta = {"generator": "arithmetic", "answer": p.answer, "kind": p.kind, "key": p.key, "style": style,
                "split": split}
        out.append(conversation(p.question, solution(p, style, cfg.answer_format), meta=meta))
    return out


_FINAL = re.compile(r"####\s*(-?[\d,]*\d)")
_SENTENCE = re.compile(r"answer is:?\s*\$?\s*(-?[\d,]*\d)", re.IGNORECASE)


def extract_answer(text: str) -> Optional[int]:
    """The integer on the last "#### N" line, else in the last "The answer is N"; None if neither."""
    for pattern in (_FINAL, _SENTENCE):
        found = pattern.findall(text)
        if found:
            try:
                return int(found[-1].replace(",", ""))
            except ValueError:
                return None
    return None


def is_correct(text: str, answer: int) -> bool:
    return extract_answer(text) == answer


def problem_dict(p: Problem) -> dict:
    return asdict(p)


GENERATORS = {
    "arithmetic": generate,
    "arithmetic-answer-first": variant(generate, "Arithmetic with the answer stated first (the video's bad example).",
                                       style="answer_first"),
    "word-problems": variant(generate, "Emily-apples word problems with step-by-step solutions.", kind="word"),
    "word-problems-answer-first": variant(generate, "Word problems with the answer stated first.", kind="word",
                                          style="answer_first"),
}
