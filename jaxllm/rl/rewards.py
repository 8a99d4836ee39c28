"""Verifiable rewards: pull the final answer out of a completion and check it against the key.

Extraction tries, in order: the last `\\boxed{...}`, the last `#### N`, the last "answer is N", and (if
allowed) the last number anywhere. Numbers are parsed with units, currency, thousands separators and
a trailing full stop stripped ("$1,000.00 apples." -> 1000.0) and compared with a tolerance.

A reward function has the signature the RL loop calls, so an experiment can name its own
(`RLConfig.reward = "my_module:my_reward"`):

    reward_fn(completion: str, answer, **options) -> float
"""
from __future__ import annotations

import math
import re
from typing import Optional, Sequence

_HASH_RE = re.compile(r"####\s*([^\n]*)")
_ANSWER_IS_RE = re.compile(r"answer\s*(?:is|:|=)\s*:?\s*([^\n]*)", re.IGNORECASE)
METHODS = ("boxed", "####", "answer_is", "last_number")


def extract_boxed(text: str) -> Optional[str]:
    """Contents of the last \\boxed{...} (nested braces allowed); None if there is none or it is unclosed."""
    start = text.rfind("\\boxed")
    while start != -1:
        i = text.find("{", start)
        if i != -1 and text[start + len("\\boxed"):i].strip() == "":
            depth = 0
            for j in range(i, len(text)):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if depth == 0:
                    return text[i + 1:j].strip()
        start = text.rfind("\\boxed", 0, start)
    return None


def parse_number(text: str) -> Optional[float]:
    """The first number in a short answer string: "$3.00" -> 3.0, "1,000" -> 1000.0, "3 apples" -> 3.0,
    "-3" -> -3.0, "3/4" -> 0.75, "\\frac{3}{4}" -> 0.75, "50%" -> 50.0; None if there is no number."""
    if text is None:
        return None
    t = text.replace("\u2212", "-").replace("\\$", "$").replace("\\!", "").replace("\\,", ",")
    frac = re.search(r"(-?)\\d?frac\{\s*(-?\d+(?:\.\d+)?)\s*\}\{\s*(-?\d+(?:\.\d+)?)\s*\}", t)
    if frac:
        den = float(frac.group(3))
        return None if den == 0 else (-1 if frac.group(1) else 1) * float(frac.group(2)) / den
    t = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", t)  # thousands separators only: "1,000" but not "1,2"
    m = re.search(r"(-)?\s*\$?\s*(-)?(\d+(?:\.\d+)?)(?:\s*/\s*(\d+(?:\.\d+)?))?", t)
    if not m:
        return None
    value = float(m.group(3))
    if m.group(4) is not None:
        if float(m.group(4)) == 0:
            return None
        value /= float(m.group(4))
    return -value if (m.group(1) or m.group(2)) else value


def extract_last_number(text: str) -> Optional[str]:
    """The last number-looking span in the text ("... so 12 + 30 = 42." -> "42")."""
    t = text.replace("\u2212", "-")
    found = re.findall(r"-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?", t)
    return found[-1] if found else None


def extract_answer(text: str, methods: Sequence[str] = METHODS) -> Optional[str]:
    """The final-answer string of a completion by the first method in `methods` that finds one."""
    for method in methods:
        if method == "boxed":
            found = extract_boxed(text)
        elif method == "####":
            hits = [h.strip() for h in _HASH_RE.findall(text) if h.strip()]
            found = hits[-1] if hits else None
        elif method == "answer_is":
            hits = [h.strip() for h in _ANSWER_IS_RE.findall(text) if re.search(r"\d", h)]
            found = hits[-1] if hits else None
        elif method == "last_number":
            found = extract_last_number(text)
        else:
            raise ValueError(f"unknown answer extraction method {method!r}; use one of {', '.join(METHODS)}")
        if found is not None:
            return found
    return None


def extract_number(text: str, methods: Sequence[str] = METHODS) -> Optional[float]:
    """extract_answer, then parse_number: the completion's final answer as a float (None if none)."""
    return parse_number(extract_answer(text, methods))


def numbers_match(pred: Optional[float], gold: float, rel_tol: float = 1e-4, abs_tol: float = 1e-6) -> bool:
    if pred is None or not math.isfinite(pred):
        return False
    return math.isclose(pred, float(gold), rel_tol=rel_tol, abs_tol=abs_tol)


def correctness_reward(completion: str, answer, *, methods: Sequence[str] = METHODS, rel_tol: float = 1e-4,
                       **_) -> float:
    """1.0 if the extracted final answer equals `answer` numerically (within rel_tol), else 0.0."""
    gold = parse_number(str(answer)) if isinstance(answer, str) else float(answer)
    if gold is None:
        raise ValueError(f"correctness_reward: the answer key {answer!r} is not a number")
    return float(numbers_match(extract_number(completion, methods), gold, rel_tol))


def format_reward(completion: str, answer=None, *, answer_format: str = "####", **_) -> float:
    """1.0 if the completion states a final answer in the expected form ("####": a "#### N" line,
    "boxed": \\boxed{N}, "sentence": "The answer is N"), whatever its value; else 0.0."""
    methods = {"####": ("####",), "boxed": ("boxed",), "sentence": ("answer_is",)}.get(answer_format)
    if methods is None:
        raise ValueError(f"format_reward: answer_format={answer_format!r}; use '####', 'boxed' or 'sentence'")
    return float(parse_number(extract_answer(completion, methods)) is not None)


def math_reward(completion: str, answer, *, format_weight: float = 0.0, answer_format: str = "####",
                methods: Sequence[str] = METHODS, rel_tol: float = 1e-4, **_) -> float:
    """Correctness (0/1) plus format_weight times the format reward: the default reward of the RL loop."""
    r = correctness_reward(completion, answer, methods=methods, rel_tol=rel_tol)
    if format_weight:
        r += format_weight * format_reward(completion, answer_format=answer_format)
    return r


_EQUATION_RE = re.compile(r"([-+*/()\d\s.]*\d[-+*/()\d\s.]*)=([-+*/()\d\s.]*\d[-+*/()\d\s.]*)")


def _arith(text: str) -> Optional[float]:
    """Value of a plain arithmetic expression (numbers, + - * /, brackets); None if it is anything else."""
    import ast
    import operator

    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}

    def ev(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return -ev(node.operand) if isinstance(node.op, ast.USub) else ev(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError(node)

    try:
        return float(ev(ast.parse(text.strip(), mode="eval").body))
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None


def equations_hold(completion: str) -> bool:
    """True if every "expression = expression" the completion writes is arithmetically true ("3 + 4 = 7")."""
    for line in completion.splitlines():
        for left, right in _EQUATION_RE.findall(line):
            a, b = _arith(left), _arith(right)
            if a is not None and b is not None and not math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9):
                return False
    return True


def checked_math_reward(completion: str, answer, **options) -> float:
    """math_reward, paid only if the working shown is true as well: a right final answer after a false step
    ("9 + 1 = 11 ... #### 10") is a lucky guess, and rewarding it teaches the model to guess."""
    return math_reward(completion, answer, **options) if equations_hold(completion) else 0.0
