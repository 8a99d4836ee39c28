"""Behaviour checks from the video, as functions returning a result dict (rate + samples).

- identity: held-out identity questions; right when the reply contains every expected string.
- hallucination: questions about invented people; the rate of replies that do not decline.
- idk: questions nobody can answer; the rate of "I don't know"-style replies.
- tool-use: big arithmetic and letter counting with the python tool (sandboxed); right answer rate.
- 9.11-vs-9.9: "which is bigger" asked many times with sampling; the share that says 9.9.
- knowledge probing ("I don't know", Llama 3 factuality): `probe_knowledge` asks each corpus question
  several times and judges the replies; `knowledge_check` / `knowledge_change` measure hallucination on
  invented people and accuracy on held-out questions the model knew, before and after.

Chat models get each question as a user turn; base models a "User: ...\\nAssistant:" text prompt
(the video's fake-conversation trick), reply cut at the first newline.
"""
from __future__ import annotations

import re
from typing import Callable, Optional, Sequence

from jaxllm.eval.generative import complete
from jaxllm.eval.model import EvalModel

UNKNOWABLE = (
    "What did I eat for breakfast this morning?", "What number am I thinking of right now?",
    "What will the winning lottery numbers be next week?", "What is the name of my first pet?",
    "How many coins are in my pocket right now?", "What will the weather be in Paris on 3 March 2091?",
    "What is the password to my email account?", "Who will win the football world cup in 2090?",
    "What was the last thing my neighbour said to me?", "What colour is the shirt I am wearing today?",
    "What will the price of gold be on 1 January 2080?", "What is my grandmother's middle name?",
)
MAX_NEW_TOKENS = 64  # one reply length for every check: one compiled decode loop
BIGGER_QUESTIONS = ("Which is bigger, 9.11 or 9.9?", "9.11 or 9.9: which number is larger?",
                    "Is 9.11 bigger than 9.9?")


def ask(model: EvalModel, questions: Sequence, *, temperature: float = 0.0, seed: int = 0,
        max_new_tokens: int = MAX_NEW_TOKENS, system: Optional[str] = None, batch_size: int = 16) -> list[str]:
    """Replies to questions (strings or message lists) in the model's own prompt format."""
    prompts = []
    for q in questions:
        if model.kind == "chat":
            msgs = list(q) if not isinstance(q, str) else [{"role": "user", "content": q}]
            prompts.append(([{"role": "system", "content": system}] if system else []) + msgs)
        else:
            text = q if isinstance(q, str) else "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in q)
            text = text if not isinstance(q, str) else f"User: {q}"
            prompts.append((f"System: {system}\n" if system else "") + f"{text}\nAssistant:")
    return complete(model, prompts, temperature=temperature, seed=seed, max_new_tokens=max_new_tokens,
                    batch_size=batch_size)


def proportion(k: int, n: int) -> dict:
    """A rate with its count and 95% Wilson interval: {"rate", "k", "n", "ci95"} (rate None when n = 0)."""
    from jaxllm.rl.preferences import wilson_interval

    lo, hi = wilson_interval(k, n)
    return {"rate": k / n if n else None, "k": int(k), "n": int(n), "ci95": [round(lo, 4), round(hi, 4)]}


def _result(task: str, metric: str, flags: Sequence[bool], samples: list[dict], **extra) -> dict:
    rate = sum(flags) / max(len(flags), 1)
    return {"task": task, "kind": "behaviour", "metric": metric, "n": len(flags), "accuracy": rate, "chance": None,
            "ci95": proportion(sum(flags), len(flags))["ci95"], **extra, "samples": samples}


def identity_check(model: EvalModel, n: int = 20, seed: int = 0, **identity) -> dict:
    from jaxllm.data.generators.identity import generate

    convs = generate(n, seed=seed, split="test", multi_turn_fraction=0.0, **identity)
    questions = [c["messages"][:-1] for c in convs]
    replies = ask(model, questions)
    ok = [all(e.lower() in r.lower() for e in c["meta"]["expect"]) for c, r in zip(convs, replies)]
    return _result("identity", "identity_correct", ok, [
        {"question": q[-1]["content"], "reply": r, "expect": c["meta"]["expect"], "correct": k}
        for q, r, c, k in zip(questions, replies, convs, ok)])


def hallucination_check(model: EvalModel, n: int = 20, seed: int = 0) -> dict:
    """Main value: the refusal rate on invented people; hallucination_rate = 1 - it."""
    from jaxllm.data.generators.knowledge import invented_people, is_refusal

    people = invented_people(n, seed=seed, split="test")
    replies = ask(model, [p["question"] for p in people])
    refused = [is_refusal(r) for r in replies]
    r = _result("hallucination", "refusal_rate", refused, [
        {"question": p["question"], "reply": t, "refused": k} for p, t, k in zip(people, replies, refused)])
    r["hallucination_rate"] = 1.0 - r["accuracy"]
    return r


def idk_check(model: EvalModel, n: int = 12, seed: int = 0) -> dict:
    from jaxllm.data.generators.knowledge import is_refusal

    qs = [UNKNOWABLE[i % len(UNKNOWABLE)] for i in range(n)]
    replies = ask(model, qs, temperature=0.0 if n <= len(UNKNOWABLE) else 0.7, seed=seed)
    flags = [is_refusal(r) for r in replies]
    return _result("idk", "idk_rate", flags, [{"question": q, "reply": r, "idk": f} for q, r, f in zip(qs, replies, flags)])


# ---------------------------------------------------------------- knowledge probing ("I don't know")
AskFn = Callable[[Sequence[str], int], list[str]]  # (questions, seed) -> one reply per question
JudgeFn = Callable[[str, dict], bool]  # (reply, qa) -> right?


def asker(model: EvalModel, *, temperature: float = 0.0, max_new_tokens: int = MAX_NEW_TOKENS,
          batch_size: int = 16, system: Optional[str] = None) -> AskFn:
    """`ask` bound to one model and sampling setting: what probe_knowledge and knowledge_check call
    (tests pass a scripted function instead)."""
    def answer(questions: Sequence[str], seed: int = 0) -> list[str]:
        return ask(model, list(questions), temperature=temperature, seed=seed, max_new_tokens=max_new_tokens,
                   system=system, batch_size=batch_size)
    return answer


def model_judge(judge_model: EvalModel, min_score: int = 4) -> JudgeFn:
    """String/number match first; otherwise a model grade (jaxllm.eval.judge, 1-5) of at least `min_score`.
    A refusal is never right."""
    from jaxllm.data.generators.knowledge import is_refusal, judge
    from jaxllm.eval.judge import grade

    def judge_fn(reply: str, qa: dict) -> bool:
        if is_refusal(reply):
            return False
        return judge(reply, qa) or grade(judge_model, qa["question"], qa["answer"], reply)["score"] >= min_score
    return judge_fn


def probe_knowledge(answer: AskFn, qas: Sequence[dict], samples: int = 3, seed: int = 0,
                    judge_fn: Optional[JudgeFn] = None) -> list[dict]:
    """Ask every question `samples` times (sampled by `answer`) and judge each reply.

    Returns one dict per question: the qa fields plus "replies", "correct" (one flag per reply),
    "n_correct" and "samples"; jaxllm.data.generators.knowledge.probe_label turns them into labels."""
    replies = answer([qa["question"] for qa in qas for _ in range(samples)], seed)
    if len(replies) != samples * len(qas):
        raise ValueError(f"probe_knowledge: asked {samples * len(qas)} questions, got {len(replies)} replies")
    return rejudge_probe([{**qa, "replies": list(replies[i * samples:(i + 1) * samples]), "samples": samples}
                          for i, qa in enumerate(qas)], judge_fn)


def rejudge_probe(probed: Sequence[dict], judge_fn: Optional[JudgeFn] = None) -> list[dict]:
    """Probe results (their replies, and a "greedy_reply" when there is one) judged again: no generation."""
    from jaxllm.data.generators.knowledge import judge

    judge_fn = judge_fn or judge
    out = []
    for p in probed:
        ok = [bool(judge_fn(r, p)) for r in p["replies"]]
        greedy = {"greedy_correct": bool(judge_fn(p["greedy_reply"], p))} if "greedy_reply" in p else {}
        out.append({**p, "correct": ok, "n_correct": sum(ok), **greedy})
    return out


def knowledge_check(answer: AskFn, qas: Sequence[dict], people: Sequence[dict], seed: int = 0,
                    judge_fn: Optional[JudgeFn] = None) -> dict:
    """One (greedy) reply per held-out question: corpus QA judged right/wrong/refused, and invented people
    (any non-refusal is a hallucination). Rates come with n and a 95% interval."""
    from jaxllm.data.generators.knowledge import is_refusal

    replies = answer([q["question"] for q in qas] + [p["question"] for p in people], seed)
    qa_rows = [{"question": q["question"], "answer": q["answer"], "reply": r} for q, r in zip(qas, replies)]
    people_rows = [{"question": p["question"], "reply": r, "refused": is_refusal(r)}
                   for p, r in zip(people, replies[len(qas):])]
    return rejudge_check({"qa": qa_rows, "people": people_rows}, qas, judge_fn)


def rejudge_check(check: dict, qas: Sequence[dict], judge_fn: Optional[JudgeFn] = None) -> dict:
    """A knowledge_check result (its replies) judged again, e.g. after the judge changed: no generation."""
    from jaxllm.data.generators.knowledge import is_refusal, judge

    judge_fn = judge_fn or judge
    if [q["question"] for q in qas] != [r["question"] for r in check["qa"]]:
        raise ValueError("rejudge_check: the questions are not the ones the check asked")
    qa_rows = [{**r, "correct": bool(judge_fn(r["reply"], q)), "refused": is_refusal(r["reply"])}
               for q, r in zip(qas, check["qa"])]
    people_rows = check["people"]
    n_qa, n_people = len(qa_rows), len(people_rows)
    return {"hallucination": proportion(sum(not r["refused"] for r in people_rows), n_people),
            "qa_accuracy": proportion(sum(r["correct"] for r in qa_rows), n_qa),
            "qa_refusal": proportion(sum(r["refused"] for r in qa_rows), n_qa),
            "qa": qa_rows, "people": people_rows}


def knowledge_change(before: dict, after: dict, max_drop_points: float = 5.0,
                     heldout_probe: Optional[Sequence[dict]] = None, known_min: int = 1) -> dict:
    """Compare two knowledge_check results on the same questions. "Known" = answered right before (greedy,
    so 100% before by construction): the accuracy on them after must not fall more than max_drop_points;
    refusing everything would fail this. Also how often the questions missed before are refused.

    That selection uses the same judged reply it compares against, so every judge error on it can only
    count as a loss (regression to the mean). `heldout_probe` (probe_knowledge on the same questions,
    before) picks "known" independently, as the recipe itself does (>= known_min right samples): then
    the greedy accuracy on those questions before and after ("probe_known") measures the change without
    that bias."""
    if [r["question"] for r in before["qa"]] != [r["question"] for r in after["qa"]]:
        raise ValueError("knowledge_change: before and after were asked different questions")

    def change_on(idx):  # greedy accuracy on the questions idx, before -> after
        b = proportion(sum(before["qa"][i]["correct"] for i in idx), len(idx))
        a = proportion(sum(after["qa"][i]["correct"] for i in idx), len(idx))
        points = None if not idx else round(100.0 * (b["rate"] - a["rate"]), 2)
        return b, a, points, None if points is None else points <= max_drop_points

    known = [i for i, r in enumerate(before["qa"]) if r["correct"]]
    missed = [i for i, r in enumerate(before["qa"]) if not r["correct"]]
    known_before, kept, drop, within = change_on(known)
    out = {"known_accuracy_before": known_before, "known_accuracy_after": kept,
           "known_drop_points": drop, "within_max_drop": within, "max_drop_points": max_drop_points,
           "known_refusal_after": proportion(sum(after["qa"][i]["refused"] for i in known), len(known)),
           "missed_refusal_before": proportion(sum(before["qa"][i]["refused"] for i in missed), len(missed)),
           "missed_refusal_after": proportion(sum(after["qa"][i]["refused"] for i in missed), len(missed))}
    if heldout_probe is not None:
        if [p["question"] for p in heldout_probe] != [r["question"] for r in before["qa"]]:
            raise ValueError("knowledge_change: heldout_probe asked other questions than the check")
        idx = [i for i, p in enumerate(heldout_probe) if p["n_correct"] >= known_min]
        b, a, points, ok = change_on(idx)
        out["probe_known"] = {
            "known_min": known_min, "accuracy_before": b, "accuracy_after": a, "drop_points": points,
            "within_max_drop": ok,
            "lost": sum(before["qa"][i]["correct"] and not after["qa"][i]["correct"] for i in idx),
            "gained": sum(after["qa"][i]["correct"] and not before["qa"][i]["correct"] for i in idx)}
    return out


_BIGGER = r"(?:bigger|larger|greater|higher)"


def which_bigger(reply: str) -> str:
    """'9.9', '9.11' or 'unclear': which number the reply says is bigger (its first clear statement)."""
    t = reply.lower().replace("9.90", "9.9").replace("9.110", "9.11")
    pats = [(rf"\b(9\.11|9\.9)\b(?!\d)[^.\n]{{0,30}}?\b(?:is|are)\b[^.\n]{{0,15}}?{_BIGGER}", 1),
            (rf"{_BIGGER}[^.\n0-9]{{0,25}}?\b(9\.11|9\.9)\b(?!\d)", 1)]
    found = []
    for pat, g in pats:
        for m in re.finditer(pat, t):
            if "not" not in m.group(0) and "than" not in m.group(0)[: m.group(0).find(m.group(g))]:
                found.append((m.start(), m.group(g)))
    if found:
        return min(found)[1]
    m = re.match(r"^\s*(?:the answer is:?\s*)?\**(9\.11|9\.9)\**\s*(?:[.!]|$)", t)
    if m and " not " not in f" {t} ":
        return m.group(1)
    if t.strip().startswith("yes"):
        return "9.11"
    if t.strip().startswith("no"):
        return "9.9"
    return "unclear"


def bigger_check(model: EvalModel, n: int = 20, seed: int = 0, temperature: float = 1.0) -> dict:
    """'9.11 vs 9.9' asked n times with sampling (the questions rotate); main value: share saying 9.9."""
    qs = [BIGGER_QUESTIONS[i % len(BIGGER_QUESTIONS)] for i in range(n)]
    replies = ask(model, qs, temperature=temperature, seed=seed)
    said = [which_bigger(r) if not q.startswith("Is 9.11") else _yes_no(r) for q, r in zip(qs, replies)]
    counts = {k: said.count(k) for k in ("9.9", "9.11", "unclear")}
    return _result("9.11-vs-9.9", "says_9.9_bigger", [s == "9.9" for s in said],
                   [{"question": q, "reply": r, "says": s} for q, r, s in zip(qs, replies, said)],
                   counts=counts, temperature=temperature)


def _yes_no(reply: str) -> str:
    t = reply.strip().lower()
    if t.startswith("yes"):
        return "9.11"
    if t.startswith("no"):
        return "9.9"
    return which_bigger(reply)


# ---------------------------------------------------------------- tool use
def tool_markers(model: EvalModel) -> tuple[str, str, str, str]:
    """(python start, python end, output start, output end) as this model writes them."""
    return model.tools


def run_with_tools(model: EvalModel, messages: Sequence[dict], *, max_calls: int = 3,
                   max_new_tokens: int = MAX_NEW_TOKENS,
                   run_code: Optional[Callable[[str], str]] = None, generate_fn: Optional[Callable] = None
                   ) -> tuple[str, int]:
    """Greedy reply with python tool calls executed in the sandbox and their output spliced in.

    Returns (transcript text after the prompt, number of tool calls). `generate_fn` defaults to
    jaxllm.infer.sampling.generate (same signature)."""
    from jaxllm.infer.sampling import generate

    generate = generate_fn or generate
    if run_code is None:
        from jaxllm.infer.sandbox import run_python, tool_output_text

        def run_code(code: str) -> str:
            return tool_output_text(run_python(code))
    py_start, py_end, out_start, out_end = tool_markers(model)
    stops = tuple(model.stop_ids) + tuple(model.tool_stop_ids)
    ids = model.prompt_ids(messages)
    transcript, calls = "", 0
    for _ in range(max_calls + 1):
        ids = ids[-(model.cfg.max_seq_len - max_new_tokens):]
        new = generate(model.params, model.cfg, [ids], max_new_tokens=max_new_tokens, temperature=0.0,
                       stop_ids=stops)[0]
        text = model.tokenizer.decode(new)
        end = text.find(py_end)
        start = text.rfind(py_start, 0, end) if end >= 0 else -1
        if end < 0 or start < 0 or calls >= max_calls:
            transcript += model.decode(new)
            break
        code = text[start + len(py_start):end]
        output = run_code(code)
        piece = text[:end + len(py_end)] + out_start + output + out_end
        transcript += piece
        ids = ids + model.tokenizer.encode(text[:end + len(py_end)], allowed_special="all") \
            + model.tokenizer.encode(out_start, allowed_special="all") + model.tokenizer.encode(output) \
            + model.tokenizer.encode(out_end, allowed_special="all")
        calls += 1
    return transcript, calls


def tool_use_check(model: EvalModel, n: int = 20, seed: int = 0, tasks: str = "big_arithmetic,count_letter",
                   run_code: Optional[Callable[[str], str]] = None) -> dict:
    """Held-out tool-use problems; right when the text after the last tool output contains the answer."""
    from jaxllm.data.generators.tool_use import generate

    convs = generate(n, seed=seed, split="test", tasks=tasks)
    ok, samples, used = [], [], 0
    for c in convs:
        q = c["messages"][-2]["content"]
        if model.kind == "chat":
            transcript, calls = run_with_tools(model, [{"role": "user", "content": q}], run_code=run_code)
        else:
            transcript, calls = ask(model, [q])[0], 0
        final = transcript.rsplit(model.tools[3], 1)[-1]
        answer = c["meta"]["answer"]
        good = re.search(rf"(?<![\w.]){re.escape(answer)}(?![\w]|\.\d)", final) is not None
        ok.append(good)
        used += calls > 0
        samples.append({"question": q, "task": c["meta"]["task"], "answer": answer, "reply": transcript,
                        "tool_calls": calls, "correct": good})
    return _result("tool-use", "tool_success", ok, samples, tool_call_rate=used / max(len(convs), 1))


BEHAVIOURS: dict[str, tuple[Callable[..., dict], str]] = {
    "identity": (identity_check, "identity answers on held-out questions (contains name/creator/cutoff)"),
    "hallucination": (hallucination_check, "refusal rate on questions about invented people"),
    "idk": (idk_check, "'I don't know' rate on unknowable questions"),
    "tool-use": (tool_use_check, "python-tool success on big arithmetic and letter counting"),
    "9.11-vs-9.9": (bigger_check, "share of sampled answers saying 9.9 is bigger than 9.11"),
}
