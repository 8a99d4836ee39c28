"""Seeded generators of SFT conversations; each module documents what its data teaches (docs/sft.md).

Every generator is `fn(n, seed=0, split="train", **options) -> list[conversation]`, deterministic
under (n, seed, split, options). Held-out splits are decided by a hash of the problem itself
(operands, word, question template), so train and test never share a problem whatever n and seed are.

    from jaxllm.data.generators import generate, write_jsonl
    write_jsonl(generate("identity", 300, seed=0), "identity.jsonl")
"""
from __future__ import annotations

import random
from typing import Callable, Optional

from jaxllm.data.chat import write_jsonl
from jaxllm.data.sources import DataError, _unit_hash

Generator = Callable[..., list]
SPLITS = ("train", "test")


def conversation(user: str, assistant, system: Optional[str] = None, meta: Optional[dict] = None,
                 id: Optional[str] = None) -> dict:
    """A one-exchange conversation; `assistant` is a string or a list of parts (tool use)."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    conv: dict = {"messages": messages}
    if id is not None:
        conv["id"] = id
    if meta:
        conv["meta"] = meta
    return conv


def split_of(key: str, test_fraction: float) -> str:
    """"test" for a stable `test_fraction` of keys (sha256 of the key), else "train"."""
    return "test" if _unit_hash("generator-split", key) < test_fraction else "train"


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown generator split {split!r}; use 'train' or 'test'")


def rng_for(name: str, seed: int, split: str) -> random.Random:
    """A private RNG per (generator, seed, split): string seeds hash deterministically (sha512)."""
    return random.Random(f"{name}:{seed}:{split}")


def sample_unique(make: Callable[[random.Random], tuple[str, object]], n: int, rng: random.Random, split: str,
                  test_fraction: float, what: str, max_tries: int = 200, seen: set | None = None,
                  split_fn: Optional[Callable[[str], str]] = None) -> list:
    """n items from `make(rng) -> (key, item)` whose key is in `split` (by `split_fn`, default the hash
    of the key) and not seen before."""
    seen, out = set(seen or ()), []
    split_fn = split_fn or (lambda key: split_of(key, test_fraction))
    tries = 0
    while len(out) < n:
        key, item = make(rng)
        tries += 1
        if key in seen or split_fn(key) != split:
            if tries > max_tries * max(n, 10):
                raise DataError(f"{what}: only {len(out)} distinct {split} items exist with these options, "
                                f"asked for {n}; lower n or widen the options")
            continue
        seen.add(key)
        out.append(item)
    return out


def variant(fn: Generator, doc: str, **fixed) -> Generator:
    """`fn` with some options fixed (registered under another name); the caller may still override them."""
    def wrapped(n=None, seed: int = 0, split: str = "train", **options):
        args = (n,) if n is not None else ()
        return fn(*args, seed=seed, split=split, **{**fixed, **options})
    wrapped.__doc__ = doc
    return wrapped


def _registry() -> dict[str, Generator]:
    from jaxllm.data.generators import arithmetic, converters, identity, knowledge, tool_use

    return {**identity.GENERATORS, **arithmetic.GENERATORS, **tool_use.GENERATORS, **knowledge.GENERATORS,
            **converters.GENERATORS}


def generator_names() -> list[str]:
    return sorted(_registry())


def get_generator(name: str) -> Generator:
    reg = _registry()
    if name not in reg:
        raise DataError(f"unknown generator {name!r}; known: {', '.join(sorted(reg))}")
    return reg[name]


def generate(name: str, /, n: Optional[int] = None, seed: int = 0, split: str = "train", **options) -> list[dict]:
    """Conversations from the named generator (n=None: the generator's default count); `name` is
    positional-only so that options may use it (identity's name=...)."""
    check_split(split)
    fn = get_generator(name)
    try:
        return fn(seed=seed, split=split, **options) if n is None else fn(n, seed=seed, split=split, **options)
    except TypeError as e:  # an unknown option: name the generator and what it accepts
        import inspect
        raise DataError(f"generator {name!r}: {e}; options: {', '.join(inspect.signature(fn).parameters)}") from e


def option_value(text: str):
    """A generator option from the command line or a mixture entry: JSON when it parses (3, 0.4, true), else the text."""
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def write_mixture(out_dir, counts: dict, seed: int = 0, split: str = "train") -> tuple[str, ...]:
    """Write one JSONL per generator into `out_dir` and return the paths (for SFTDataConfig.files).

    `counts` maps a generator name to n, or to (n, {options}), e.g.
    {"identity": 300, "arithmetic": (2000, {"max_digits": 2}), "tool-python": 800}.
    """
    from pathlib import Path

    paths = []
    for name, spec in counts.items():
        n, options = spec if isinstance(spec, tuple) else (spec, {})
        paths.append(str(write_jsonl(generate(name, n, seed=seed, split=split, **options),
                                     Path(out_dir) / f"{name}-{split}.jsonl")))
    return tuple(paths)


__all__ = ["conversation", "split_of", "generate", "option_value", "generator_names", "get_generator", "write_jsonl", "write_mixture"]
