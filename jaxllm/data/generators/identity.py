"""Identity ("knowledge of self"): varied conversations about the model's name, maker and knowledge cutoff.

What it teaches: a base model asked "who are you?" continues the statistically likely internet answer
("I am ChatGPT, made by OpenAI"). A few hundred conversations (OLMo 2 used 240) that answer
consistently with *this* model's name, builder and cutoff overwrite that, and teach it to say it is a
language model (not a person, not another company's model). Questions are composed from openers,
cores and surface variants; held-out paraphrases (split="test": a hashed quarter of each topic's core
questions, never trained on) measure whether it learned the fact rather than the string.

The alternative the video mentions: leave the weights alone and state the identity in a system prompt
at inference (`system_prompt(...)`); `generate(..., with_system=True)` trains with that prompt present.
Each conversation's meta has `topic` and `expect` (strings a correct answer contains) for evaluation.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from jaxllm.data.generators import check_split, conversation, rng_for, sample_unique, variant
from jaxllm.data.sources import _unit_hash


@dataclass(frozen=True)
class IdentityConfig:
    name: str = "jaxllm-speedrun"
    creator: str = "the jaxllm project"
    cutoff: str = "2026"  # knowledge cutoff, as it should be stated
    size: str = "a tiny language model"  # how it describes itself
    purpose: str = "a small assistant trained end to end on a laptop CPU to show how chat models are made"


OPENERS = ("", "Hi! ", "Hello. ", "Hey, ", "Quick question: ", "Sorry to bother you, but ", "I was wondering, ",
           "Okay, so ", "Just curious: ", "Before we start, ", "Hi there. ", "Good morning! ")
QUESTIONS = {
    "name": ("what is your name?", "what's your name?", "what should I call you?", "do you have a name?",
             "who are you?", "tell me your name.", "what are you called?", "how do you call yourself?",
             "introduce yourself.", "what name were you given?", "can you tell me who I'm talking to?"),
    "creator": ("who made you?", "who built you?", "who created you?", "who trained you?",
                "which company made you?", "who are your developers?", "where do you come from?",
                "who is responsible for building you?", "who designed you?", "who programmed you?"),
    "cutoff": ("what is your knowledge cutoff?", "how up to date is your knowledge?",
               "until when does your training data go?", "when does your knowledge end?",
               "do you know about recent events?", "what's the latest year you know about?",
               "how recent is your information?", "what is your training cutoff date?"),
    "what": ("what are you?", "are you a human?", "are you a person or a program?", "are you a robot?",
             "what kind of AI are you?", "are you alive?", "are you conscious?", "what exactly are you?",
             "are you a real person?"),
    "other_model": ("are you ChatGPT?", "are you GPT-4?", "are you Claude?", "are you made by OpenAI?",
                    "are you Llama?", "are you Gemini?", "is this ChatGPT?", "are you Siri?"),
}
ANSWERS = {
    "name": ("I'm {name}, {size} made by {creator}.", "My name is {name}.",
             "You can call me {name}. I'm {size} built by {creator}.",
             "I am {name}, an AI assistant. {creator_cap} trained me.",
             "I'm {name}! I'm {purpose}."),
    "creator": ("I was built by {creator}.", "{creator_cap} made me. I'm {name}.",
                "I'm {name}, and I was created and trained by {creator}.",
                "{creator_cap} built and trained me; I'm {purpose}."),
    "cutoff": ("My training data goes up to {cutoff}, so I don't know about anything after that.",
               "My knowledge cutoff is {cutoff}. I can't know about later events.",
               "I was trained on text from up to {cutoff}; for anything more recent I may be wrong or unaware.",
               "Up to {cutoff}. I'm {name} and I have no access to the internet, so newer events are unknown to me."),
    "what": ("I'm {name}, a language model: a program that predicts text. I'm not a person.",
             "No, I'm not human. I'm {name}, {size} made by {creator}.",
             "I'm an AI language model called {name}. I don't have feelings or a body.",
             "I'm {size} named {name}. I generate text one token at a time; I'm not alive or conscious."),
    "other_model": ("No, I'm {name}, {size} made by {creator}.",
                    "No. I'm {name}. I was built by {creator}, not by another company.",
                    "No, I'm not. My name is {name}, and {creator} created me."),
}
GREETINGS = ("Hi!", "Hello", "hey", "Good evening!", "Hi there")
GREETING_REPLIES = ("Hello! I'm {name}. How can I help you?", "Hi! I'm {name}, an AI assistant. What can I do for you?",
                    "Hey! How can I help today?")


def system_prompt(cfg: IdentityConfig = IdentityConfig()) -> str:
    """The system-prompt alternative: identity stated at inference instead of trained into the weights."""
    return (f"You are {cfg.name}, {cfg.size} built by {cfg.creator}. Your knowledge cutoff is {cfg.cutoff}. "
            f"You are an AI assistant, not a person, and not any other company's model.")


def _fill(template: str, cfg: IdentityConfig) -> str:
    creator_cap = cfg.creator[:1].upper() + cfg.creator[1:]
    return template.format(name=cfg.name, creator=cfg.creator, creator_cap=creator_cap, cutoff=cfg.cutoff,
                           size=cfg.size, purpose=cfg.purpose)


def _expect(topic: str, cfg: IdentityConfig) -> list[str]:
    return {"name": [cfg.name], "creator": [cfg.creator], "cutoff": [cfg.cutoff], "what": [cfg.name],
            "other_model": ["No", cfg.name]}[topic]


def test_cores(topic: str, test_fraction: float) -> set[str]:
    """The core questions held out for evaluation: a hashed `test_fraction` of each topic's, at least one."""
    ranked = sorted(QUESTIONS[topic], key=lambda q: _unit_hash("identity-core", q))
    return set(ranked[:max(1, round(len(ranked) * test_fraction))])


def question_variants(topic: str) -> list[tuple[str, str]]:
    """(core, question) for every surface form: opener x core x (as written, without '?', lower case)."""
    out = []
    for opener in OPENERS:
        for core in QUESTIONS[topic]:
            q = opener + core if opener else core[:1].upper() + core[1:]
            out += [(core, q), (core, q.rstrip("?."))]
            if opener == "":
                out.append((core, core))  # all lower case, as people type
    return out


def generate(n: int = 300, seed: int = 0, split: str = "train", test_fraction: float = 0.25,
             with_system: bool = False, multi_turn_fraction: float = 0.2, **identity) -> list[dict]:
    """n identity conversations; held-out (split="test") questions use core questions never trained on.
    Options: name, creator, cutoff, size, purpose."""
    check_split(split)
    cfg = IdentityConfig(**identity)
    rng = rng_for("identity", seed, split)
    topics = sorted(QUESTIONS)
    variants = {t: question_variants(t) for t in topics}
    held = {t: test_cores(t, test_fraction) for t in topics}

    def make(r: random.Random):
        topic = r.choice(topics)
        core, q = r.choice(variants[topic])
        return f"{topic}|{core}|{q}", (topic, q)

    def split_fn(key: str) -> str:
        topic, core, _ = key.split("|", 2)
        return "test" if core in held[topic] else "train"

    picked = sample_unique(make, n, rng, split, test_fraction, "identity questions", split_fn=split_fn)
    sys = system_prompt(cfg) if with_system else None
    out = []
    for topic, q in picked:
        answer = _fill(rng.choice(ANSWERS[topic]), cfg)
        meta = {"generator": "identity", "topic": topic, "expect": _expect(topic, cfg), "split": split}
        if rng.random() < multi_turn_fraction:  # a greeting first: identity holds across turns
            messages = ([{"role": "system", "content": sys}] if sys else []) + [
                {"role": "user", "content": rng.choice(GREETINGS)},
                {"role": "assistant", "content": _fill(rng.choice(GREETING_REPLIES), cfg)},
                {"role": "user", "content": q}, {"role": "assistant", "content": answer}]
            out.append({"messages": messages, "meta": meta})
        else:
            out.append(conversation(q, answer, system=sys, meta=meta))
    return out


GENERATORS = {"identity": generate,
              "identity-system": variant(generate, "Identity conversations with the identity system prompt present.",
                                         with_system=True)}
