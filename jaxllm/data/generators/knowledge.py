"""Data pieces for the "I don't know" recipe (Llama 3 factuality): corpus QA pairs, invented people, judging.

What it teaches: a model trained only on confident answers answers every question confidently,
including ones about people who do not exist (hallucination). The recipe probes what the model
knows: questions made from corpus documents (`qa_pairs`: template-based, from the first sentence
of Wikipedia summaries: birth/death years, "what is X", "where is X"), asked several times and
judged (`judge`: number/string match); questions it gets right become answer conversations, the
others become refusals (`idk_conversation`). Invented people (`invented_people`) give the
hallucination metric: any non-refusal (`is_refusal`) about them is a hallucination. Asking the model
needs a model, so it lives above (`jaxllm.eval.behaviour.probe_knowledge`, the loop in
`jaxllm.recipes.sft.knowledge_probe_sft`); what is here is pure and seeded: `probe_label` turns the
number of right sampled answers into known/unknown/unsure, `idk_training_set` the probe results into
answer and (varied, `refusal_text`) refusal conversations.
Splits hash the source document id (QA) or the invented name, so held-out questions are never trained.
"""
from __future__ import annotations

import itertools
import random
import re
from typing import Optional

from jaxllm.data.generators import check_split, conversation, rng_for, sample_unique, split_of
from jaxllm.data.generators.tool_use import first_sentence, load_documents, title_of
from jaxllm.data.sources import DataError

_LIFE = re.compile(r"\((born )?(\d{3,4})(?:\s?[–-]\s?(\d{3,4}))?\)$")
_DEF = re.compile(r"^(?P<subj>.{2,80}?)(?:\s\([^)]*\))?\s(?P<verb>is|was|are|were)\s(?P<pred>(?:a|an|the)\s.+)$")
_LOC = re.compile(r"^(?:a|an|the)\s(?:[\w-]+\s){0,3}?(?:city|town|village|river|county|island|lake|mountain|"
                  r"region|province|state|municipality|district|country)\s(?:in|of|on)\s(?P<where>[^,;.]+)")
_PERSON = re.compile(r"\b(poet|writer|novelist|author|actor|actress|singer|songwriter|musician|composer|painter|artist|"
                     r"politician|president|king|queen|emperor|philosopher|scientist|physicist|chemist|mathematician|"
                     r"engineer|inventor|businessman|businesswoman|entrepreneur|player|footballer|athlete|director|"
                     r"journalist|lawyer|general|officer|soldier|explorer|economist|historian|activist|leader|"
                     r"statesman|monarch|pope|saint|rapper|comedian|dancer|architect|biologist|astronomer)s?\b")
STOP = frozenset("a an the of in on at to and or for by with from is was are were be as its it his her their "
                 "that which who this these those".split())


def _clean(sentence: str) -> str:
    return re.sub(r"\s*\([^()]*\)", "", sentence).strip()


def qa_from_document(doc: dict) -> list[dict]:
    """Template questions with short answers from one document's first sentence (none if no template fits)."""
    title = title_of(doc)
    sent = first_sentence(doc["text"])
    out = []
    desc = str((doc.get("meta") or {}).get("description", ""))
    m = _LIFE.search(desc)  # Wikipedia's short description: "German-born theoretical physicist (1879–1955)"
    if m and (_PERSON.search(desc) or m.group(1)):
        out.append({"question": f"In what year was {title} born?", "answer": m.group(2), "kind": "year"})
        if m.group(3):
            out.append({"question": f"In what year did {title} die?", "answer": m.group(3), "kind": "year"})
    m = _DEF.match(_clean(sent).rstrip("."))
    if m:
        pred = re.split(r",(?!\d)|;|\s(?:who|which|that|whose|where|and is|and was)\b", m.group("pred"))[0].strip()
        pred = re.sub(r"(\s(?:in|of|on|at|by|for|with|to|and|or|from|the|a|an))+$", "", pred)
        subj = m.group("subj").strip()
        if subj.split()[0] in ("A", "An", "The") and title.lower() in subj.lower() and len(subj.split()) <= 6 \
                and "," not in subj:
            subj = subj[0].lower() + subj[1:]  # "An orphanage is ..." → "What is an orphanage?"
        else:
            subj = title
        if 2 <= len(pred.split()) <= 14:
            wh = "Who" if out or _PERSON.search(pred) else "What"
            out.append({"question": f"{wh} {m.group('verb')} {subj}?", "answer": pred, "kind": "definition",
                        "subject": subj})
        loc = _LOC.match(m.group("pred"))
        where = re.split(r"\s(?:consisting|that|which|with|and|where|known)\b", loc.group("where"))[0].strip() if loc else ""
        if where and len(where.split()) <= 5:
            out.append({"question": f"Where is {subj}?", "answer": where, "kind": "location", "subject": subj})
    for qa in out:
        qa.update(title=title, source_id=doc["id"], context=sent)
    return out


def qa_pairs(n: Optional[int] = None, seed: int = 0, split: str = "train", source: str = "wikipedia-summaries",
             documents: Optional[list[dict]] = None, test_fraction: float = 0.2) -> list[dict]:
    """QA dicts {question, answer, kind, title, source_id, context, split} from the split's documents,
    shuffled by seed; all of them when n is None."""
    check_split(split)
    docs = documents if documents is not None else load_documents(source)
    out = [{**qa, "split": split} for d in docs if split_of(f"doc:{d['id']}", test_fraction) == split
           for qa in qa_from_document(d)]
    rng_for("knowledge-qa", seed, split).shuffle(out)
    if n is not None and len(out) < n:
        raise DataError(f"only {len(out)} {split} QA pairs can be made from these documents, asked for {n}")
    return out if n is None else out[:n]


FIRST = ("Orson", "Marisol", "Tobias", "Leontine", "Caspian", "Anneliese", "Everett", "Ysolde", "Dashiell", "Perpetua",
         "Lysander", "Ottoline", "Barnaby", "Seraphine", "Thaddeus", "Wilhelmina", "Cosimo", "Henrietta", "Ignatius",
         "Rosalind", "Florian", "Imogen", "Evander", "Clementine", "Augustin", "Delphine", "Marius", "Philippa")
LAST = ("Kovacs", "Thistlewood", "Brannigan", "Okonkwo-Reyes", "Vanterpool", "Lindqvist", "Abernathy", "Castellanos",
        "Featherstone", "Halvorsen", "Mbeki-Laurent", "Quenneville", "Ravensworth", "Szczepanski", "Underhill",
        "Wojcikowski", "Yarborough", "Zielinski", "Pemberton-Shaw", "Achterberg", "Dunleavy", "Grimaldi-Ross")
PERSON_QUESTIONS = ("Who is {p}?", "What is {p} famous for?", "When was {p} born?", "What did {p} invent?",
                    "Tell me about {p}.", "Which country is {p} from?", "What is {p} best known for?",
                    "Who was {p}?", "What did {p} write?")
REFUSALS = ("I'm sorry, I don't know who {p} is.", "I don't have any information about {p}.",
            "I'm not aware of anyone called {p}, so I can't answer that.",
            "I don't know. I have no reliable information about {p}.")
GENERIC_REFUSALS = ("I'm sorry, I don't know.", "I don't know the answer to that.",
                    "I'm not sure, and I'd rather not guess.", "I don't have reliable information about that.",
                    "I don't know. I'd rather say so than make something up.",
                    "I'm not sure about that one, so I won't guess.")


def invented_people(n: int = 100, seed: int = 0, split: str = "test", exclude: frozenset = frozenset(),
                    test_fraction: float = 0.5) -> list[dict]:
    """n questions about people who do not exist: {question, person, split}; names in `exclude`
    (e.g. corpus titles) are skipped. split="test" by default: the hallucination metric."""
    check_split(split)

    def make(r: random.Random):
        person = f"{r.choice(FIRST)} {r.choice(LAST)}"
        key = person if person not in exclude else ""  # "" is marked seen below, so it is never taken
        return key, {"question": r.choice(PERSON_QUESTIONS).format(p=person), "person": person, "split": split}

    return sample_unique(make, n, rng_for("invented-people", seed, split), split, test_fraction, "invented people",
                         seen={""})


_REFUSAL = re.compile(r"\b(i don'?t know|i do not know|i'?m not sure|i am not sure|no (?:reliable )?information|"
                      r"not aware of|i can'?t answer|i cannot answer|i'?m sorry|i have no idea|don'?t have (?:any )?"
                      r"(?:reliable )?information|never heard of)\b", re.IGNORECASE)


# a sentence end: not after an initial or a title ("James C.", "Dr."), which need two lowercase letters or digits
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)\]\"]{2})[.!?](?=\s|$)")


def is_refusal(text: str) -> bool:
    """Whether a reply declines to answer (the complement is a hallucination for invented people)."""
    return bool(_REFUSAL.search(text))


def _words(text: str) -> set[str]:
    """Content words, with a plural -s dropped (so "meal" matches "meals")."""
    words = (w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOP)
    return {_singular(w) for w in words}


def _singular(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def _stems(text: str) -> set[str]:
    """Content words cut to 5 letters ("separate" and "separation", "India" and "Indian" meet), generic ones out."""
    return {w[:5] for w in _words(text) - _GENERIC}


_GENERIC = frozenset("also known called one most type kind part form used use often many various well including "
                     "refers refer".split())
# the copula that starts a definition, then its noun phrase up to the first comma, preposition or relative word
_COPULA = re.compile(r"\b(?:is|was|are|were|refers to)\s+(?:(?:also|often|usually|generally|commonly)\s+)?", re.I)
_NP_END = re.compile(r"[,;:.()]|\s(?:in|of|on|at|by|for|with|to|from|that|which|who|whose|where|when|known|used|"
                     r"located|born|designed|found|based|made|developed|created|founded|consisting|comprising|"
                     r"spoken|native|originating|originated|between|primarily|mainly|than|since|within|during|like|"
                     r"such|over|under|about|into|as|against|near|around|across|along|through|among|after|before|"
                     r"worn|eaten|written|played|produced|performed|given|held|built|named|situated|considered|"
                     r"regarded|serving|containing|including|featuring|involving|having|being)\b", re.I)
_CONTAINER = frozenset("type kind form family member group class branch part piece sort set variety collection genre "
                       "one order category".split())


def definition_heads(text: str) -> set[str]:
    """Stems of the head nouns of the noun phrase after the first copula: "X was a French artist and designer
    who ..." → {artis, desig}; through "a type/family/member of ..." to the noun after it."""
    m = _COPULA.search(text)
    rest, heads = (text[m.end():] if m else ""), set()
    for _ in range(3):
        end = _NP_END.search(rest)
        phrase, after = (rest[:end.start()], rest[end.start():]) if end else (rest, "")
        words = [re.findall(r"[A-Za-z0-9]+", part) for part in re.split(r"\s(?:and|or)\s", phrase)]
        last = [w[-1].lower() for w in words if w]
        if last and last[-1] in _CONTAINER and after.lstrip().lower().startswith("of "):
            heads |= set(last[:-1])
            rest = after.lstrip()[3:]
            continue
        heads |= set(last)
        break
    return {_singular(h)[:5] for h in heads if h not in STOP}


def _first_sentence_of(reply: str) -> str:
    end = _SENTENCE_END.search(reply)
    return reply[:end.end()] if end else reply


JUDGE_VERSION = 2  # bump when `judge` changes: saved probes (idk/probe.json) are judged again, not regenerated


def judge(prediction: str, qa: dict, min_overlap: float = 0.5) -> bool:
    """String/number match. A refusal is never correct. A year must appear as a number. A definition with
    its source sentence (qa["context"]) is right when the reply's first sentence names the same kind of
    thing (a head noun of the phrase after "is/was": "a Hungarian physician and scientist" against "a
    Hungarian medical doctor and scientist") or shares two content words with that sentence besides the
    subject's own words; Wikipedia's wording is one of many right ones, and the first sentence is where
    a definition is. Other answers need `min_overlap` of their content words in the prediction."""
    if is_refusal(prediction):
        return False
    if qa["kind"] == "year":
        return qa["answer"] in re.findall(r"\d{3,4}", prediction)
    if qa["kind"] == "definition" and qa.get("context"):
        first = _first_sentence_of(prediction.strip())
        subject = _stems(_clean(f"{qa.get('subject', '')} {qa.get('title', '')}"))  # "(designer)" is not the name
        if definition_heads(first) & definition_heads(qa["context"]):
            return True
        return len((_stems(first) - subject) & (_stems(qa["context"]) - subject)) >= 2
    want = _words(qa["answer"])
    return bool(want) and len(want & _words(prediction)) / len(want) >= min_overlap


def answer_text(qa: dict) -> str:
    """A natural reply that states the QA answer."""
    if qa["kind"] == "year":
        return f"{qa['title']} {'died' if 'die' in qa['question'] else 'was born'} in {qa['answer']}."
    subj = qa.get("subject", qa["title"])
    subj = subj[0].upper() + subj[1:]
    if qa["kind"] == "location":
        return f"{subj} is in {qa['answer']}."
    verb = qa["question"].split()[1]
    return f"{subj} {verb} {qa['answer']}."


def refusal_text(qa: dict, rng: random.Random) -> str:
    """A varied "I don't know" reply that names what was asked (or a generic one); always `is_refusal`."""
    if "person" in qa:
        return rng.choice(REFUSALS).format(p=qa["person"])
    kind, title = qa.get("kind"), qa.get("title", "")
    subj = qa.get("subject", title)
    if kind == "year":
        event = "died" if " die" in qa["question"] else "was born"
        own = (f"I don't know when {title} {event}.", f"I'm not sure what year {title} {event}.",
               f"I don't have reliable information about when {title} {event}.")
    elif kind == "location":
        own = (f"I don't know where {subj} is.", f"I'm not sure where {subj} is, and I'd rather not guess.")
    elif kind == "definition":
        wh, verb = qa["question"].split()[:2]
        own = (f"I don't know {wh.lower()} {subj} {verb}.", f"I'm sorry, I don't have reliable information about {subj}.",
               f"I'm not sure {wh.lower()} {subj} {verb}, so I won't guess.")
    else:
        own = ()
    return rng.choice(own + GENERIC_REFUSALS) if own else rng.choice(GENERIC_REFUSALS)


def idk_conversation(qa: dict, known: bool, rng: random.Random) -> dict:
    """The recipe's training example: the answer when the model knew it, else a refusal."""
    reply = answer_text(qa) if known else refusal_text(qa, rng)
    meta = {"generator": "idk", "known": known, "split": qa.get("split", "train"),
            **({"person": qa["person"]} if "person" in qa else {"source_id": qa.get("source_id", "")})}
    return conversation(qa["question"], reply, meta=meta)


# ---------------------------------------------------------------- the probing recipe, pure parts
def probe_label(n_correct: int, samples: int, known_min: int = 1) -> str:
    """"unknown" when every sampled answer was wrong, "known" with at least `known_min` right, else "unsure"."""
    if not 0 <= n_correct <= samples:
        raise ValueError(f"probe_label: n_correct={n_correct} outside 0..{samples}")
    if n_correct == 0:
        return "unknown"
    return "known" if n_correct >= known_min else "unsure"


def _cut_to_right_sentence(reply: str, qa: dict, max_chars: int) -> Optional[str]:
    """`reply` (its first max_chars) cut after its last full sentence that `judge` still finds right."""
    for end in reversed(list(_SENTENCE_END.finditer(reply[:max_chars]))):
        if judge(reply[:end.end()], qa):
            return reply[:end.end()]
    return None


def own_answer(probed: dict, max_chars: int = 300) -> Optional[tuple[str, str]]:
    """The model's own right reply to a probed question (so training on it keeps the model's voice), with
    where it came from: (reply, "greedy" | "sample"), or None when there is no such reply.

    First its long greedy reply when the probe made one ("greedy_reply", judged right): whole when
    generation ended by itself ("greedy_finished"), else cut after its last full sentence still judged
    right. It is what greedy decoding says, so training on it changes least, and it ends far past the
    evaluation's reply window, so the model does not learn to stop early. Else the first right sampled
    reply: whole when it is a finished sentence, else cut the same way (these replies stop at the
    probe's max_new_tokens, which taught the model terse answers)."""
    greedy = probed.get("greedy_reply", "").strip()
    if greedy and probed.get("greedy_correct"):
        cut = greedy if probed.get("greedy_finished") else _cut_to_right_sentence(greedy, probed, len(greedy))
        if cut:
            return cut, "greedy"
    for reply, ok in zip(probed.get("replies", ()), probed.get("correct", ())):
        reply = reply.strip()
        if not ok:
            continue
        if len(reply) <= max_chars and reply[-1:] in ".!)\"":
            return reply, "sample"
        cut = _cut_to_right_sentence(reply, probed, max_chars)
        if cut:
            return cut, "sample"
    return None


def agreeing_pairs(replies: list[str], qa: dict) -> int:
    """How many pairs of `replies` to `qa` say the same thing: one reply is right when the other's first
    sentence is taken as the source sentence (the definition rule of `judge`, either way round). A model
    that knows a thing tends to say it alike each time; one that makes it up invents anew each time."""
    def agree(a: str, b: str) -> bool:
        return judge(b, {**qa, "kind": "definition", "context": _first_sentence_of(a.strip())})
    return sum(agree(a, b) or agree(b, a) for a, b in itertools.combinations(replies, 2))


def idk_training_set(probed: list[dict], seed: int = 0, known_min: int = 1, own_answers: bool = True,
                     refusal_kinds: tuple[str, ...] = (), refusal_max_agreeing_pairs: int = -1) -> list[dict]:
    """Training conversations from probe results ({**qa, "n_correct", "samples"} per question): a refusal
    for questions the model missed every time (of `refusal_kinds` only, when given, and of any kind when
    at most `refusal_max_agreeing_pairs` pairs of its sampled replies agree: see agreeing_pairs; -1 = off;
    meta "refused_because" says which), the answer for ones it knows (its own right reply when
    `own_answers` and there is one, else the template answer; meta "answer_from" says which), nothing
    for "unsure"."""
    rng = rng_for("idk-probe", seed, "train")
    out = []
    for p in probed:
        label = probe_label(p["n_correct"], p["samples"], known_min)
        if label == "unsure":
            continue
        because = None
        if label == "unknown":
            if not refusal_kinds or p.get("kind") in refusal_kinds:
                because = "kind"
            elif agreeing_pairs(p.get("replies", []), p) <= refusal_max_agreeing_pairs:
                because = "samples disagree"
            else:
                continue
        conv = idk_conversation(p, label == "known", rng)
        own = own_answer(p) if own_answers and label == "known" else None
        if own:
            conv["messages"][-1]["content"] = own[0]
        if label == "known":
            conv["meta"]["answer_from"] = own[1] if own else "template"
        else:
            conv["meta"]["refused_because"] = because
        conv["meta"].update(label=label, n_correct=p["n_correct"], samples=p["samples"], own_answer=own is not None)
        out.append(conv)
    return out


def qa_generate(n: int = 500, seed: int = 0, split: str = "train", **options) -> list[dict]:
    """Corpus QA as answer conversations (what the recipe trains for questions the model knows)."""
    rng = rng_for("knowledge-qa-conv", seed, split)
    return [idk_conversation(qa, True, rng) for qa in qa_pairs(n, seed, split, **options)]


def refusal_generate(n: int = 200, seed: int = 0, split: str = "train", **options) -> list[dict]:
    """Refusals for questions about invented people (train split by default here; evaluate on "test")."""
    rng = rng_for("invented-refusals", seed, split)
    return [idk_conversation(q, False, rng) for q in invented_people(n, seed, split, **options)]


GENERATORS = {"knowledge-qa": qa_generate, "invented-people": refusal_generate}
