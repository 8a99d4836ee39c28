"""A simulated labeller (no human-preference data can be had offline) and a toy word language for it.

The labeller stands in for people ranking k samples: it scores each completion with a hidden "true"
preference function of measurable properties of the text, adds Gumbel noise, and sorts. Sorting
utilities plus independent Gumbel(0, τ) noise draws a ranking from exactly the Plackett–Luce model
with scores true/τ, so τ (`noise`) sets how often two candidates whose true scores differ by d are
swapped: P(swap) = 1 - σ(d / τ).

The hidden true score of a completion (words = its lower-cased words, "." excluded):

    true = Σ value(w) over DISTINCT words w            (pleasant words add, unpleasant subtract,
                                                         content words a small fixed taste in [-0.2, 0.2])
           - REPEAT_PENALTY * repeats                  (repeats = content words used more than once:
                                                         repetition reads as nonsense)
           - LENGTH_PENALTY * max(0, n_words - MAX_GOOD_WORDS)   (rambling)
           + FINISHED_BONUS * [ends with "."]           (a finished sentence)
           - GRAMMAR_PENALTY * [not a sentence of the toy grammar]   (word salad)

Distinct-word counting and the repeat penalty are what make it hackable: a reward model that learned
"pleasant words are good" from ordinary samples, where repeats are rare, cannot know that the tenth
"lovely" is worth less than nothing — which is exactly what RL against it finds out.

The toy language (`ToyVocab`, `toy_sentence`) is a ~50-word grammar a tiny model learns in seconds;
prompts are a subject ("the cat"), completions the rest of the sentence.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Sequence

import numpy as np

from jaxllm.rl.preferences import Pair, Ranking

PLEASANT = {"lovely": 1.5, "sweet": 1.3, "happy": 1.2, "gentle": 1.1, "good": 1.0, "kind": 0.9,
            "bright": 0.8, "warm": 0.7}
UNPLEASANT = {"angry": -1.4, "sad": -1.2, "bad": -1.0, "cold": -0.8, "dull": -0.6}
FUNCTION_WORDS = ("the", "a", "and", "very")  # repeating these is normal English, not penalised
REPEAT_PENALTY = 1.5
LENGTH_PENALTY = 0.5
MAX_GOOD_WORDS = 9
FINISHED_BONUS = 0.5
GRAMMAR_PENALTY = 2.0

_WORD = re.compile(r"[a-z']+")


def _taste(word: str) -> float:
    """A fixed, arbitrary preference in [-0.2, 0.2] for every other word (from its hash)."""
    h = int(hashlib.sha256(word.encode()).hexdigest()[:8], 16)
    return round((h / 0xFFFFFFFF - 0.5) * 0.4, 3)


def word_value(word: str) -> float:
    if word in PLEASANT:
        return PLEASANT[word]
    if word in UNPLEASANT:
        return UNPLEASANT[word]
    return 0.0 if word in FUNCTION_WORDS else _taste(word)


def text_features(text: str) -> dict:
    """The measurable properties the true score is built from."""
    words = _WORD.findall(text.lower())
    content = [w for w in words if w not in FUNCTION_WORDS]
    return {"n_words": len(words), "distinct": sorted(set(words)),
            "repeats": len(content) - len(set(content)),
            "pleasant": sum(1 for w in set(words) if w in PLEASANT),
            "finished": text.rstrip().endswith("."), "grammatical": well_formed(text)}


def true_score(text: str, prompt: str = "") -> float:
    """The hidden preference of the simulated labeller for one completion (see the module docstring).

    The prompt does not enter (the toy prompts are only sentence subjects); it is an argument so a
    prompt-aware labeller can keep the same signature.
    """
    f = text_features(text)
    return (sum(word_value(w) for w in f["distinct"]) - REPEAT_PENALTY * f["repeats"]
            - LENGTH_PENALTY * max(0, f["n_words"] - MAX_GOOD_WORDS) + FINISHED_BONUS * f["finished"]
            - GRAMMAR_PENALTY * (not f["grammatical"]))


@dataclasses.dataclass(frozen=True)
class LabellerConfig:
    noise: float = 0.5  # Gumbel scale τ: P(prefer the truly better of two) = σ(Δtrue / τ)
    seed: int = 0


def rank_candidates(prompt: str, candidates: Sequence[str], rng: np.random.Generator, noise: float = 0.5
                    ) -> Ranking:
    """Rank candidates like a noisy person would: sort true/τ + Gumbel noise (a Plackett–Luce draw)."""
    scores = np.array([true_score(c, prompt) for c in candidates], np.float64)
    noisy = scores + (noise * rng.gumbel(size=len(candidates)) if noise > 0 else 0.0)
    order = tuple(int(i) for i in np.argsort(-noisy, kind="stable"))
    return Ranking(prompt, tuple(candidates), order, {"true_scores": [round(float(s), 4) for s in scores]})


def label_groups(prompts: Sequence[str], groups: Sequence[Sequence[str]], cfg: LabellerConfig = LabellerConfig()
                 ) -> list[Ranking]:
    """One ranking per prompt of its k sampled candidates; deterministic under cfg.seed."""
    rng = np.random.default_rng(cfg.seed)
    return [rank_candidates(p, g, rng, cfg.noise) for p, g in zip(prompts, groups)]


# ---------------------------------------------------------------- the toy language
NOUNS = ("cat", "dog", "bird", "fish", "child", "farmer", "river", "house", "tree", "song")
VERBS = ("sees", "likes", "finds", "paints", "hears", "follows", "builds", "greets")
NEUTRAL = ("big", "small", "old", "young", "red", "green")
ADJECTIVES = tuple(PLEASANT) + tuple(UNPLEASANT) + NEUTRAL
SPECIALS = ("<pad>", "<bos>", ".")


class ToyVocab:
    """Word-level ids for the toy language: 0 <pad>, 1 <bos>, 2 "." (the stop token), then words."""

    def __init__(self):
        words = SPECIALS + ("the", "a", "and", "very") + NOUNS + VERBS + ADJECTIVES
        self.words = list(dict.fromkeys(words))
        self.ids = {w: i for i, w in enumerate(self.words)}
        self.pad_id, self.bos_id, self.stop_id = 0, 1, 2

    @property
    def n_vocab(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        toks = text.replace(".", " . ").split()
        unknown = [t for t in toks if t not in self.ids]
        if unknown:
            raise ValueError(f"ToyVocab.encode: unknown words {unknown[:5]}; the toy language knows {len(self.ids)} words")
        return [self.ids[t] for t in toks]

    def decode(self, ids: Sequence[int]) -> str:
        words = [self.words[i] for i in ids if i not in (self.pad_id, self.bos_id) and i < len(self.words)]
        return " ".join(words).replace(" .", ".")


def well_formed(completion: str) -> bool:
    """Is this a completion of the toy grammar: VERB NP (and NP)* "." with NP = DET (very? ADJ)* NOUN.

    Any number of adjectives is grammatical (so "a lovely sweet dog" is a fair improvement)."""
    np_ = rf"(?:the|a)(?: (?:very )?(?:{'|'.join(ADJECTIVES)}))* (?:{'|'.join(NOUNS)})"
    pattern = rf"(?:{'|'.join(VERBS)}) {np_}(?: and {np_})*\."
    return re.fullmatch(pattern, " ".join(completion.split())) is not None


def _noun_phrase(rng: np.random.Generator) -> str:
    det = rng.choice(("the", "a"))
    if rng.random() < 0.5:
        adj = rng.choice(ADJECTIVES)
        adj = f"very {adj}" if rng.random() < 0.15 else adj
        return f"{det} {adj} {rng.choice(NOUNS)}"
    return f"{det} {rng.choice(NOUNS)}"


def toy_sentence(rng: np.random.Generator) -> tuple[str, str]:
    """(prompt, completion): "the cat" / "sees a lovely bird and the tree." from the toy grammar."""
    prompt = f"the {rng.choice(NOUNS)}"
    obj = _noun_phrase(rng)
    if rng.random() < 0.3:
        obj = f"{obj} and {_noun_phrase(rng)}"
    return prompt, f"{rng.choice(VERBS)} {obj}."


def toy_prompts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"the {rng.choice(NOUNS)}" for _ in range(n)]


def pairs_with_true_order(rankings: Sequence[Ranking]) -> list[tuple[Pair, bool]]:
    """All pairs of the rankings and whether the noisy label agrees with the true score order."""
    out = []
    for r in rankings:
        true = r.meta["true_scores"]
        o = r.ranking
        for a in range(len(o)):
            for b in range(a + 1, len(o)):
                out.append((Pair(r.prompt, r.candidates[o[a]], r.candidates[o[b]]), true[o[a]] >= true[o[b]]))
    return out
