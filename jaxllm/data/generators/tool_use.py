"""Tool use: traces where the assistant calls the python tool or the search tool instead of guessing.

What it teaches: a model sees tokens, not characters, and does little computation per token, so it
is bad at big arithmetic, at counting letters ("strawberry"), at picking every third letter of
"ubiquitous" and at counting dots; and what it recalls from its weights is vague. Copying the
question into code is easy for it, and the interpreter is exact; reading a search result is working
memory rather than vague recollection. Each trace is one assistant turn: a short lead-in, the call
(trained), the tool's output (spliced in by the engine, not trained), and the answer read from it.

Python calls print their result; the recorded output is exactly what `python -c CODE` prints
(trailing newline stripped, as `jaxllm.infer.sandbox.tool_output_text` gives it; tests run every
call in a real interpreter). Search results use `format_search_results`, the format the engine's
search tool must produce. Held-out splits hash the operands / word / document id.
"""
from __future__ import annotations

import random
from typing import Iterable, Optional

from jaxllm.data.generators import check_split, conversation, rng_for, sample_unique, split_of
from jaxllm.data.sources import DataError

WORDS = (
    "strawberry ubiquitous mississippi bookkeeper committee accommodate onomatopoeia parallel banana "
    "assessment necessary occurrence embarrass millennium possession broccoli cappuccino rhythm "
    "giraffe hippopotamus balloon coffee letter programming language tokenizer transformer "
    "attention butterfly raspberry blueberry pineapple watermelon elephant kangaroo crocodile "
    "chocolate vanilla cinnamon peppermint dictionary encyclopedia philosophy psychology "
    "mathematics chemistry astronomy geography literature architecture engineering "
    "independence responsibility possibility opportunity electricity temperature "
    "refrigerator helicopter submarine telescope microscope calculator keyboard "
    "abracadabra bamboozle kaleidoscope xylophone zucchini quizzical jazziness puzzle "
    "successful address tomorrow difficult beginning different excellent communication "
    "restaurant vegetable strength knowledge sequence silhouette questionnaire "
    "rendezvous parliament lieutenant colonel Wednesday February bureaucracy "
    "conscientious entrepreneur surveillance acquaintance exaggerate mnemonic "
    "Antarctica Australia Massachusetts Tennessee Connecticut Pennsylvania Cincinnati"
).split()
ORDINALS = {2: "second", 3: "third", 4: "fourth", 5: "fifth"}
STARTS = {0: "first", 1: "second", 2: "third"}
LEADS = ("Let me use Python for this.", "I'll compute it with the python tool.", "Let me check with code.",
         "Counting by hand is error-prone for me, so I'll use Python.", "I'll run a quick Python snippet.")


def _call(lead: str, code: str, output: str, answer: str) -> list[dict]:
    return [{"type": "text", "text": lead}, {"type": "python", "text": code},
            {"type": "python_output", "text": output}, {"type": "text", "text": answer}]


def big_arithmetic(r: random.Random, min_digits: int = 4, max_digits: int = 8):
    a = r.randint(10 ** (r.randint(min_digits, max_digits) - 1), 10 ** max_digits - 1)
    b = r.randint(10 ** (r.randint(min_digits, max_digits) - 1), 10 ** max_digits - 1)
    op = r.choice("+-*")
    value = a + b if op == "+" else a - b if op == "-" else a * b
    expr = f"{a} {op} {b}"
    q = r.choice(("What is {e}?", "Compute {e}.", "Calculate {e} exactly.", "What's {e}?", "{e} = ?")).format(e=expr)
    parts = _call(r.choice(LEADS), f"print({expr})", str(value), f"{expr} = {value}.")
    return f"big:{expr}", (q, parts, {"task": "big_arithmetic", "answer": str(value)})


def count_letter(r: random.Random, words: tuple[str, ...] = WORDS):
    word = r.choice(words)
    letter = r.choice(sorted(set(word.lower()) - {" "}))
    n = word.lower().count(letter)
    q = r.choice(('How many "{l}"s are in the word "{w}"?', "How many times does the letter {l} appear in {w}?",
                  "Count the letter '{l}' in '{w}'.", 'How many {l}\'s are there in "{w}"?')).format(l=letter, w=word)
    parts = _call(r.choice(LEADS), f'print("{word}".lower().count("{letter}"))', str(n),
                  f'There {"is" if n == 1 else "are"} {n} "{letter}"{"" if n == 1 else "s"} in "{word}".')
    return f"count:{word}:{letter}", (q, parts, {"task": "count_letter", "answer": str(n)})


def every_kth(r: random.Random, words: tuple[str, ...] = WORDS):
    word = r.choice([w for w in words if len(w) >= 6])
    k, start = r.choice(sorted(ORDINALS)), r.choice(sorted(STARTS))
    result = word[start::k]
    q = r.choice(('Print every {k} letter of "{w}", starting with the {s} letter.',
                  "What do you get if you take every {k} character of {w}, starting from the {s} one?",
                  "Write every {k} letter of the word {w}, beginning with its {s} letter.")).format(
        k=ORDINALS[k], s=STARTS[start], w=word)
    parts = _call(r.choice(LEADS), f'print("{word}"[{start}::{k}])', result, f'The letters are "{result}".')
    return f"kth:{word}:{k}:{start}", (q, parts, {"task": "every_kth", "answer": result})


def count_dots(r: random.Random, min_dots: int = 8, max_dots: int = 80):
    n = r.randint(min_dots, max_dots)
    dots = "." * n
    q = r.choice(("How many dots are below?\n{d}", "Count the dots: {d}", "How many dots are in this string: {d}")).format(d=dots)
    parts = _call(r.choice(LEADS), f'print(len("{dots}"))', str(n), f"There are {n} dots.")
    return f"dots:{n}", (q, parts, {"task": "count_dots", "answer": str(n)})


def reverse_word(r: random.Random, words: tuple[str, ...] = WORDS):
    word = r.choice(words)
    q = r.choice(('Spell "{w}" backwards.', "What is {w} written in reverse?", "Reverse the letters of {w}.")).format(w=word)
    parts = _call(r.choice(LEADS), f'print("{word}"[::-1])', word[::-1], f'"{word}" backwards is "{word[::-1]}".')
    return f"rev:{word}", (q, parts, {"task": "reverse", "answer": word[::-1]})


TASKS = {"big_arithmetic": big_arithmetic, "count_letter": count_letter, "every_kth": every_kth,
         "count_dots": count_dots, "reverse": reverse_word}


def generate(n: int = 500, seed: int = 0, split: str = "train", tasks: str = ",".join(TASKS),
             test_fraction: float = 0.2) -> list[dict]:
    """n python-tool traces over the comma-separated `tasks` (meta: task, answer, split)."""
    check_split(split)
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise DataError(f"tool_use tasks {unknown or tasks!r} unknown; use a comma-separated subset of {', '.join(TASKS)}")
    rng = rng_for("tool-python", seed, split)
    items = sample_unique(lambda r: TASKS[r.choice(names)](r), n, rng, split, test_fraction, "python tool traces")
    return [conversation(q, parts, meta={"generator": "tool-python", **meta, "split": split}) for q, parts, meta in items]


# --- search ---------------------------------------------------------------------------------------

def format_search_results(hits: Iterable[tuple[str, str]]) -> str:
    """What the search tool returns: "[1] Title: snippet" lines, best first."""
    return "\n".join(f"[{i}] {title}: {snippet}" for i, (title, snippet) in enumerate(hits, 1))


_ABBREV = ("St", "Dr", "Mr", "Mrs", "Ms", "Jr", "Sr", "Mt", "Inc", "Ltd", "Co", "vs", "No", "Gen", "Prof", "U.S", "U.K")


def first_sentence(text: str, max_chars: int = 400) -> str:
    """The first sentence of a summary, skipping abbreviations and initials ("St.", "J. R. R.")."""
    text = " ".join(text.split())
    i = 0
    while True:
        j = text.find(". ", i)
        if j < 0:
            out = text
            break
        word = text[:j].rsplit(" ", 1)[-1].lstrip("(")
        if len(word) <= 1 or word in _ABBREV or (len(word) <= 3 and word[:1].isupper() and "." in word) \
                or not text[j + 2:j + 3].isupper() and not text[j + 2:j + 3].isdigit():
            i = j + 2
            continue
        out = text[:j + 1]
        break
    return out if len(out) <= max_chars else out[:max_chars].rsplit(" ", 1)[0] + " ..."


def title_of(doc: dict) -> str:
    meta = doc.get("meta") or {}
    return str(meta.get("title") or doc["id"].rsplit("/", 1)[-1])


def load_documents(source: str = "wikipedia-summaries", limit: Optional[int] = None) -> list[dict]:
    """Documents of a named corpus (downloaded once into the cache)."""
    from jaxllm.data.sources import get_source

    docs = []
    for doc in get_source(source, val_fraction=0.0).documents("all"):
        if len(doc["text"].strip()) >= 40:
            docs.append(doc)
        if limit and len(docs) >= limit:
            break
    return docs


def search_generate(n: int = 300, seed: int = 0, split: str = "train", source: str = "wikipedia-summaries",
                    documents: Optional[list[dict]] = None, distractors: int = 2, test_fraction: float = 0.2) -> list[dict]:
    """n search-tool traces about documents of `source` (or the given `documents`); split by document id.

    The assistant searches for the title, reads the results (the right document among `distractors`
    others) and answers with that document's first sentence.
    """
    check_split(split)
    docs = documents if documents is not None else load_documents(source)
    pool = [d for d in docs if split_of(f"doc:{d['id']}", test_fraction) == split]
    if len(pool) < n:
        raise DataError(f"search traces: {len(pool)} {split} documents, asked for {n}; lower n or add documents")
    rng = rng_for("tool-search", seed, split)
    out = []
    for doc in rng.sample(pool, n):
        title = title_of(doc)
        others = rng.sample([d for d in docs if d["id"] != doc["id"]], min(distractors, len(docs) - 1))
        hits = [doc] + others
        rng.shuffle(hits)
        results = format_search_results((title_of(d), first_sentence(d["text"], 300)) for d in hits)
        q = rng.choice(("Tell me about {t}.", "What do you know about {t}?", "Can you look up {t} for me?",
                        "I need a quick fact about {t}.", "Search for {t} and summarize it in one sentence.")).format(t=title)
        parts = [{"type": "text", "text": rng.choice(("Let me search for that.", "I'll look it up.",
                                                      "Let me check the search tool."))},
                 {"type": "search", "text": title}, {"type": "search_output", "text": results},
                 {"type": "text", "text": first_sentence(doc["text"])}]
        out.append(conversation(q, parts, meta={"generator": "tool-search", "doc": doc["id"], "split": split}))
    return out


GENERATORS = {"tool-python": generate, "tool-search": search_generate}
