"""Knowledge probing → "I don't know" and step-by-step vs answer-first: the pieces the SFT stage composes,
checked with scripted models (known answers, wrong answers, refusals) so the labels and metrics are exact."""
from __future__ import annotations

import random

import pytest

from jaxllm.data.generators.knowledge import (idk_training_set, is_refusal, judge, probe_label, qa_from_document,
                                              refusal_text)
from jaxllm.eval.behaviour import (knowledge_change, knowledge_check, probe_knowledge, proportion, rejudge_check,
                                   rejudge_probe)
from jaxllm.recipes.sft import IDKConfig, ThinkConfig, idk_questions, think_problems

PEOPLE = ("Albert Einstein", "Marie Curie", "Ada Lovelace", "Isaac Newton")
DOCS = [{"id": f"w/p{i}", "text": f"Person {i} was a Dutch painter of the Golden Age known for portraits. More text.",
         "meta": {"title": f"Person {i}", "description": f"Dutch painter ({1600 + i}–{1650 + i})"}} for i in range(150)] + \
       [{"id": f"w/t{i}", "text": f"Town {i} is a village in the district of Gmina {i}, Poland. It is old.",
         "meta": {"title": f"Town {i}"}} for i in range(150)]


def right_reply(qa: dict) -> str:
    if qa["kind"] == "year":
        return f"It was in {qa['answer']}."
    return f"It is {qa['answer']}."


class Scripted:
    """A fake model: per question, a list of replies used in turn (one per time it is asked)."""

    def __init__(self, script: dict[str, list[str]]):
        self.script, self.calls = script, {}

    def __call__(self, questions, seed=0):
        out = []
        for q in questions:
            i = self.calls.get(q, 0)
            self.calls[q] = i + 1
            replies = self.script[q]
            out.append(replies[i % len(replies)])
        return out


@pytest.fixture(scope="module")
def questions():
    return idk_questions(IDKConfig(probe_questions=40, eval_questions=20, eval_people=10), DOCS)


def test_heldout_questions_disjoint_from_probed(questions):
    probe, heldout, people = questions
    assert len(probe) == 40 and len(heldout) == 20 and len(people) == 10
    assert not {q["source_id"] for q in probe} & {q["source_id"] for q in heldout}
    assert not {q["question"] for q in probe} & {q["question"] for q in heldout}
    assert {q["split"] for q in probe} == {"train"} and {q["split"] for q in heldout} == {"test"}
    titles = {d["meta"]["title"] for d in DOCS}
    assert not {p["person"] for p in people} & titles
    # the conversations built from probing only ever hold probed questions
    answer = Scripted({q["question"]: ["no idea what that is"] for q in probe})
    convs = idk_training_set(probe_knowledge(answer, probe, samples=3))
    assert {c["messages"][0]["content"] for c in convs} <= {q["question"] for q in probe}
    assert not {c["messages"][0]["content"] for c in convs} & {q["question"] for q in heldout}


def test_probing_labels_known_and_unknown_and_builds_refusals_only_for_always_missed(questions):
    probe = questions[0][:12]
    kinds = ["always_right", "always_wrong", "once_right", "refuses"] * 3
    script = {}
    for qa, kind in zip(probe, kinds):
        right, wrong = right_reply(qa), "It is a kind of cheese from 1066."
        script[qa["question"]] = {"always_right": [right], "always_wrong": [wrong],
                                  "once_right": [wrong, right, wrong], "refuses": ["I don't know."]}[kind]
    model = Scripted(script)
    probed = probe_knowledge(model, probe, samples=3, seed=0)
    assert all(model.calls[q["question"]] == 3 for q in probe)  # asked exactly 3 times each
    expect = {"always_right": 3, "always_wrong": 0, "once_right": 1, "refuses": 0}
    assert [p["n_correct"] for p in probed] == [expect[k] for k in kinds]

    convs = idk_training_set(probed, seed=0, known_min=1)
    by_q = {c["messages"][0]["content"]: c for c in convs}
    assert len(convs) == 12
    for qa, kind in zip(probe, kinds):
        reply = by_q[qa["question"]]["messages"][1]["content"]
        if kind in ("always_wrong", "refuses"):  # missed every time: a refusal
            assert is_refusal(reply) and not judge(reply, qa) and by_q[qa["question"]]["meta"]["label"] == "unknown"
        else:  # right at least once: the correct answer, never a refusal
            assert not is_refusal(reply) and judge(reply, qa) and by_q[qa["question"]]["meta"]["label"] == "known"
    # stricter: "known" needs 2 of 3; a question right once is neither trained as known nor refused
    strict = idk_training_set(probed, seed=0, known_min=2)
    once = {qa["question"] for qa, k in zip(probe, kinds) if k == "once_right"}
    assert len(strict) == 9 and not once & {c["messages"][0]["content"] for c in strict}
    assert [probe_label(k, 3, 2) for k in (0, 1, 2, 3)] == ["unknown", "unsure", "known", "known"]
    # refusals only for some question kinds: the other misses are left out, the known answers all stay
    kind_of = {qa["question"]: qa["kind"] for qa in probe}
    only = sorted({qa["kind"] for qa in probe})[:1]
    some = idk_training_set(probed, seed=0, refusal_kinds=tuple(only))
    assert len(some) < len(convs)  # the probe has misses of other kinds
    assert {c["meta"]["label"] for c in some if kind_of[c["messages"][0]["content"]] not in only} <= {"known"}
    assert sum(c["meta"]["label"] == "known" for c in some) == sum(c["meta"]["label"] == "known" for c in convs)
    with pytest.raises(ValueError):
        probe_label(4, 3)


def test_refusals_are_varied_name_the_subject_and_are_refusals():
    qas = qa_from_document({"id": "w/ein", "text": "Albert Einstein was a German-born theoretical physicist.",
                            "meta": {"title": "Albert Einstein", "description": "German-born physicist (1879–1955)"}})
    assert {q["kind"] for q in qas} == {"year", "definition"}
    for qa in qas:
        texts = {refusal_text(qa, random.Random(s)) for s in range(60)}
        assert len(texts) >= 5 and all(is_refusal(t) and not judge(t, qa) for t in texts)
        assert any("Albert Einstein" in t for t in texts)
    died = next(q for q in qas if "die" in q["question"])
    assert all("born" not in refusal_text(died, random.Random(s)) for s in range(30))


def test_knowledge_check_and_change_measure_hallucination_and_known_accuracy(questions):
    _, heldout, people = questions
    heldout = heldout[:10]
    known = heldout[:4]  # right before
    before = Scripted({**{q["question"]: [right_reply(q)] for q in known},
                       **{q["question"]: ["It is a river in France."] for q in heldout[4:]},
                       **{p["question"]: [f"{p['person']} was a famous Belgian cyclist."] for p in people}})
    # after: 3 of 4 known still right, 1 now refused; missed ones refused; invented people refused but two
    after = Scripted({**{q["question"]: [right_reply(q)] for q in known[:3]},
                      known[3]["question"]: ["I'm not sure, and I'd rather not guess."],
                      **{q["question"]: ["I don't know."] for q in heldout[4:]},
                      **{p["question"]: [f"I don't know who {p['person']} is."] for p in people[2:]},
                      **{p["question"]: ["A painter."] for p in people[:2]}})
    b = knowledge_check(before, heldout, people)
    a = knowledge_check(after, heldout, people)
    assert b["hallucination"] == proportion(10, 10) and a["hallucination"]["k"] == 2 and a["hallucination"]["n"] == 10
    assert a["hallucination"]["ci95"][0] < 0.2 < a["hallucination"]["ci95"][1]
    assert b["qa_accuracy"]["k"] == 4 and a["qa_accuracy"]["k"] == 3 and a["qa_refusal"]["k"] == 7
    change = knowledge_change(b, a, max_drop_points=5.0)
    assert change["known_accuracy_before"]["rate"] == 1.0 and change["known_accuracy_after"]["k"] == 3
    assert change["known_drop_points"] == 25.0 and change["within_max_drop"] is False
    assert change["missed_refusal_before"]["k"] == 0 and change["missed_refusal_after"] == proportion(6, 6)
    assert change["known_refusal_after"]["k"] == 1
    # a changed judge re-judges the saved replies, with no generation; the same judge changes nothing
    assert rejudge_check(b, heldout) == b
    strict = rejudge_check(b, heldout, judge_fn=lambda reply, qa: qa in known[:1])
    assert strict["qa_accuracy"]["k"] == 1 and strict["hallucination"] == b["hallucination"]
    assert [r["reply"] for r in strict["qa"]] == [r["reply"] for r in b["qa"]]
    with pytest.raises(ValueError, match="not the ones"):
        rejudge_check(b, heldout[::-1])
    probed = probe_knowledge(before, known, samples=2)
    assert rejudge_probe(probed) == probed and [p["n_correct"] for p in probed] == [2, 2, 2, 2]
    greedy = [{**p, "greedy_reply": "It is a river in France."} for p in probed]
    assert [(p["n_correct"], p["greedy_correct"]) for p in rejudge_probe(greedy)] == [(2, False)] * 4
    # refusing everything removes hallucinations but fails the known-accuracy rule
    refuse_all = Scripted({q: ["I don't know."] for q in [x["question"] for x in heldout] + [p["question"] for p in people]})
    c = knowledge_change(b, knowledge_check(refuse_all, heldout, people))
    assert c["known_drop_points"] == 100.0 and not c["within_max_drop"]
    # nothing known before: the rule cannot be measured, and says so
    nothing = knowledge_change(a | {"qa": [r | {"correct": False} for r in a["qa"]]}, a)
    assert nothing["known_drop_points"] is None and nothing["within_max_drop"] is None
    with pytest.raises(ValueError, match="different questions"):
        knowledge_change(b, knowledge_check(before, heldout[:5], people))


def test_known_questions_picked_by_an_independent_probe_count_losses_and_gains(questions):
    """probe_known: the held-out questions a separate sampled probe found known, greedy accuracy before vs after
    on them; a question judged right by the greedy reply before is not "known" unless the probe says so."""
    _, heldout, people = questions
    heldout = heldout[:10]
    wrong = "It is a river in France."
    greedy_before = Scripted({**{q["question"]: [right_reply(q)] for q in heldout[:4]},
                              **{q["question"]: [wrong] for q in heldout[4:]}, **{p["question"]: ["A painter."] for p in people}})
    # after: heldout[3] lost, heldout[4] gained
    greedy_after = Scripted({**{q["question"]: [right_reply(q)] for q in heldout[:3] + heldout[4:5]},
                             **{q["question"]: [wrong] for q in heldout[3:4] + heldout[5:]},
                             **{p["question"]: ["I don't know."] for p in people}})
    b, a = knowledge_check(greedy_before, heldout, people), knowledge_check(greedy_after, heldout, people)
    # sampled probe: heldout[0..2] right in 3 of 3, heldout[4] in 1 of 3, heldout[3] (greedy-right) in none
    sampled = Scripted({**{q["question"]: [right_reply(q)] for q in heldout[:3]},
                        heldout[4]["question"]: [wrong, right_reply(heldout[4]), wrong],
                        **{q["question"]: [wrong] for q in heldout[3:4] + heldout[5:]}})
    probe = probe_knowledge(sampled, heldout, samples=3)
    assert [p["n_correct"] for p in probe[:6]] == [3, 3, 3, 0, 1, 0]
    c = knowledge_change(b, a, 5.0, heldout_probe=probe, known_min=1)
    assert c["known_drop_points"] == 25.0  # the greedy-selected measure: 3 of 4 kept
    pk = c["probe_known"]
    assert pk["accuracy_before"] == proportion(3, 4) and pk["accuracy_after"] == proportion(4, 4)
    assert (pk["lost"], pk["gained"], pk["drop_points"], pk["within_max_drop"]) == (0, 1, -25.0, True)
    strict = knowledge_change(b, a, 5.0, heldout_probe=probe, known_min=2)["probe_known"]
    assert strict["accuracy_before"] == proportion(3, 3) and strict["drop_points"] == 0.0
    assert "probe_known" not in knowledge_change(b, a)
    with pytest.raises(ValueError, match="other questions"):
        knowledge_change(b, a, heldout_probe=probe[::-1])


def test_think_problems_same_for_both_styles_and_bigger_test_is_held_out():
    from jaxllm.data.generators.arithmetic import solution

    cfg = ThinkConfig(problems=200, test_problems=30, max_digits=2, test_digits=3)
    p = think_problems(cfg)
    assert len(p["train"]) == 200 and len(p["bigger"]) == 30 and len(p["same"]) == 30
    train_keys = {x.key for x in p["train"]}
    assert not train_keys & {x.key for x in p["same"]} and not train_keys & {x.key for x in p["bigger"]}
    import re
    assert all(max(len(n) for n in re.findall(r"\d+", x.key)) == 3 for x in p["bigger"])
    assert all(max(len(n) for n in re.findall(r"\d+", x.key)) <= 2 for x in p["train"])
    first = p["train"][0]
    steps, answer_first = solution(first, "steps"), solution(first, "answer_first")
    assert steps.endswith(f"#### {first.answer}") and answer_first.startswith(f"#### {first.answer}")
    assert sorted(steps.splitlines()) == sorted(answer_first.splitlines())  # same words, only the order differs


def test_sampled_asker_gives_independent_samples_of_one_question():
    """Probing asks the same question 3 times in one batch: sampled replies must differ, greedy ones agree."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from jaxllm.eval.behaviour import asker
    from jaxllm.eval.model import from_parts
    from jaxllm.model import ModelConfig, Transformer
    from jaxllm.tokenizer import SPECIAL_TOKENS, Tokenizer

    tok = Tokenizer({bytes([i]): i for i in range(256)}, {s: 256 + i for i, s in enumerate(SPECIAL_TOKENS)},
                    name="bytes+specials")
    cfg = ModelConfig(vocab_size=tok.n_vocab, max_seq_len=128, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=64)
    params = jax.jit(lambda k: nn.unbox(Transformer(cfg).init(k, jnp.zeros((1, 4), jnp.int32))["params"]))(
        jax.random.key(0))
    model = from_parts("tiny", cfg, params, tok, "jaxllm")
    qs = ["Who was Ada Lovelace?"] * 3
    sampled = asker(model, temperature=1.0, max_new_tokens=12, batch_size=4)(qs, 0)
    greedy = asker(model, temperature=0.0, max_new_tokens=12, batch_size=4)(qs, 0)
    assert len(set(sampled)) > 1 and len(set(greedy)) == 1
    probed = probe_knowledge(asker(model, temperature=1.0, max_new_tokens=12, batch_size=4), [
        {"question": qs[0], "answer": "an English mathematician", "kind": "definition"}], samples=3)
    assert probed[0]["replies"] == sampled and probed[0]["n_correct"] == 0

    from jaxllm.recipes.sft import IDKConfig, _add_greedy_answers
    cfg_idk = IDKConfig(answer_max_new_tokens=12, batch_size=4)
    known = [{**probed[0], "n_correct": 1}]
    assert _add_greedy_answers(model, cfg_idk, probed, None) == 0  # only known questions get one
    assert _add_greedy_answers(model, cfg_idk, known, None) == 1 and known[0]["greedy_reply"] == greedy[0]
    assert known[0]["greedy_correct"] is False and known[0]["greedy_max_new_tokens"] == 12
    assert _add_greedy_answers(model, cfg_idk, known, None) == 0  # already there for this limit (probe.json)


def test_known_answers_use_the_models_own_finished_reply():
    qa = {"question": "In what year was Ada Lovelace born?", "answer": "1815", "kind": "year", "title": "Ada Lovelace",
          "source_id": "w/ada"}
    finished = {**qa, "replies": ["Maybe 1820?", "She was born in 1815."], "correct": [False, True], "n_correct": 1,
                "samples": 2}
    cut = {**qa, "replies": ["She was born in 1815 in London, the daughter of"], "correct": [True], "n_correct": 1,
           "samples": 1}
    trimmed = {**qa, "replies": ["Ada Lovelace, a friend of Dr. Babbage, was born in 1815. Her father was Lord"],
               "correct": [True], "n_correct": 1, "samples": 1}
    wrong_first = {**qa, "replies": ["She was a mathematician. She was born in 1815 in London, the"], "correct": [True],
                   "n_correct": 1, "samples": 1}  # the only full sentence does not hold the answer
    own, template, cut_own, no_own = idk_training_set([finished, cut, trimmed, wrong_first], seed=0)
    assert own["messages"][1]["content"] == "She was born in 1815." and own["meta"]["own_answer"]
    assert template["messages"][1]["content"] == "Ada Lovelace was born in 1815." and not template["meta"]["own_answer"]
    assert cut_own["messages"][1]["content"] == "Ada Lovelace, a friend of Dr. Babbage, was born in 1815."
    assert no_own["messages"][1]["content"] == "Ada Lovelace was born in 1815." and not no_own["meta"]["own_answer"]
    assert idk_training_set([finished], own_answers=False)[0]["messages"][1]["content"] == "Ada Lovelace was born in 1815."


def test_known_answers_prefer_the_long_greedy_reply():
    qa = {"question": "In what year was Ada Lovelace born?", "answer": "1815", "kind": "year", "title": "Ada Lovelace",
          "source_id": "w/ada"}
    sampled = {**qa, "replies": ["She was born in 1815."], "correct": [True], "n_correct": 1, "samples": 1}
    whole = {**sampled, "greedy_reply": "Ada Lovelace was born in 1815. She wrote the first program.",
             "greedy_correct": True, "greedy_finished": True}
    unfinished = {**whole, "greedy_reply": "Ada Lovelace was born in 1815. She wrote the first program. Her fa",
                  "greedy_finished": False}
    wrong = {**whole, "greedy_reply": "Ada Lovelace was born in 1820.", "greedy_correct": False}
    got = idk_training_set([whole, unfinished, wrong, {**qa, "replies": ["1815 or so"], "correct": [True],
                                                       "n_correct": 1, "samples": 1}], seed=0)
    assert [c["messages"][1]["content"] for c in got[:3]] == [
        "Ada Lovelace was born in 1815. She wrote the first program.",
        "Ada Lovelace was born in 1815. She wrote the first program.",  # cut after its last full sentence
        "She was born in 1815."]  # a wrong greedy reply falls back to the right sampled one
    assert [c["meta"]["answer_from"] for c in got] == ["greedy", "greedy", "sample", "template"]


def test_idk_smollm2_experiment_config_loads():
    """The SmolLM2 experiment is not run in CI (~20-30 min); its config must stay valid."""
    from pathlib import Path

    from jaxllm.config import load_python_file, resolve_function

    path = Path(__file__).resolve().parents[1] / "experiments" / "idk_smollm2.py"
    for scale in ("cpu", "smoke"):
        cfg = load_python_file(path, "config", scale=scale)
        assert cfg.sft.idk.init == "smollm2-135m-instruct" and cfg.sft.idk.data.template == "smollm2"
        assert callable(resolve_function(cfg.stages[0]))


def test_missed_definitions_are_refused_only_when_the_samples_disagree():
    """SmolLM2's replies from a real probe: three alike answers (right, but worded unlike Wikipedia, so
    the string judge missed them) are left out; three different inventions become a refusal."""
    from jaxllm.data.generators.knowledge import agreeing_pairs
    def definition(question, subject, context, replies):
        return {"question": question, "kind": "definition", "subject": subject, "title": subject,
                "answer": context.split(" are ")[-1].split(" was ")[-1], "context": context, "replies": replies}
    alike = definition("What are Benzodiazepine?", "Benzodiazepine",
                       "Benzodiazepines are a class of central nervous system (CNS) depressant drugs.",
                       ["Benzodiazepines are a class of medications used to treat anxiety disorders.",
                        "Benzodiazepine is a medication used to treat anxiety and attention deficit disorder.",
                        "Benzodiazepine is a medication used to treat anxiety and other mood disorders."])
    made_up = definition("What was Basil of Caesarea?", "Basil of Caesarea",
                         "Basil of Caesarea, also called Saint Basil the Great, was an early Christian prelate.",
                         ["Basil of Caesarea is a biblical character from the Bible.",
                          "Basil of Caesarea is a legendary figure of ancient Jewish myth.",
                          "Basil of Caesarea was the last king of Rome, defeated in the reign of Vespasian."])
    year = {"question": "When was Ada Lovelace born?", "kind": "year", "title": "Ada Lovelace", "answer": "1815",
            "replies": ["She was born in 1820."] * 3}
    for p in (alike, made_up, year):
        p.update(correct=[judge(r, p) for r in p["replies"]], samples=3)
        p["n_correct"] = sum(p["correct"])
    assert alike["n_correct"] == made_up["n_correct"] == year["n_correct"] == 0
    assert agreeing_pairs(alike["replies"], alike) == 3 and agreeing_pairs(made_up["replies"], made_up) == 0
    probed = [alike, made_up, year]
    assert [c["messages"][0]["content"] for c in idk_training_set(probed, refusal_kinds=("year",))] == [year["question"]]
    convs = idk_training_set(probed, refusal_kinds=("year",), refusal_max_agreeing_pairs=0)
    assert [(c["messages"][0]["content"], c["meta"]["refused_because"]) for c in convs] == [
        (made_up["question"], "samples disagree"), (year["question"], "kind")]
    assert all(is_refusal(c["messages"][1]["content"]) for c in convs)
    assert len(idk_training_set(probed, refusal_kinds=("year",), refusal_max_agreeing_pairs=3)) == 3
