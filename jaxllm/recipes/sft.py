"""Supervised finetuning: a base model becomes an assistant by training on conversations with loss masks.

The same sharded train step and loop as pretraining (`train_loop`); only the data differ: rendered
conversations whose loss mask covers what the assistant writes. The stage measures identity and
tool use on held-out questions before and after, with the number of trials beside each rate.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal

import jax

from jaxllm.data.generators import option_value, write_mixture
from jaxllm.data.pipeline import token_byte_lengths
from jaxllm.data.sft import SFTDataConfig, load_sft_data, make_sft_eval_batches, make_sft_iterator
from jaxllm.eval.behaviour import identity_check, tool_use_check
from jaxllm.eval.model import from_parts
from jaxllm.model import ModelConfig, flops_per_token
from jaxllm.parallel import MeshConfig
from jaxllm.recipes.pretrain import Trainer, load_params, train_loop
from jaxllm.train.metrics import plot_curves
from jaxllm.train.optim import OptimConfig
from jaxllm.train.step import TrainConfig


@dataclasses.dataclass(frozen=True)
class IDKConfig:
    """Knowledge probing → "I don't know" (Llama 3 factuality), on the model the main SFT made.

    Train-split corpus questions are asked `samples` times (sampled); every-time misses become refusals,
    known ones (>= known_min right) answers; a short SFT on them (plus a replay of the main mixture)
    follows. Measured greedily on held-out documents' questions and invented people, before and after."""
    enabled: bool = True
    init: str = ""  # idk_pretrained_stage only: a pretrained chat model, e.g. "smollm2-135m-instruct"
    source: str = "wikipedia-summaries"  # the corpus the questions come from
    probe_questions: int = 200  # train-split questions probed
    samples: int = 3  # sampled answers per probed question
    temperature: float = 0.7
    known_min: int = 1  # right answers (of `samples`) that make a question "known"; 0 right → refusal
    known_weight: float = 1.0  # weight of the answer conversations against the refusals (2.0 = twice each)
    eval_questions: int = 100  # held-out corpus questions (their documents are never probed or trained)
    eval_people: int = 80  # held-out invented people (hallucination rate)
    max_new_tokens: int = 48
    # >0: each known question is also answered greedily with up to this many tokens, and that reply (whole
    # or cut after a full sentence) is the trained answer; 0 = the probe's right sampled reply (see own_answer)
    answer_max_new_tokens: int = 0
    # question kinds ("year", "location", "definition") whose every-time misses become refusals; () = all.
    # Refusing missed definitions taught SmolLM2 to refuse things it knows (experiments/idk_smollm2.py).
    refusal_kinds: tuple[str, ...] = ()
    # >=0: a missed question of another kind is refused too when at most this many pairs of its sampled
    # replies agree with each other (knowledge.agreeing_pairs: a made-up answer changes each time); -1 = off
    refusal_max_agreeing_pairs: int = -1
    batch_size: int = 32  # generation batch
    judge: str = ""  # "" = string/number match; a pretrained model name (e.g. smollm2-135m-instruct) adds a model judge
    replay_weight: float = 0.3  # the main SFT mixture mixed back in at this weight (0 = refusal/answer data only)
    max_drop_points: float = 5.0  # allowed drop in accuracy on held-out questions known before
    data: SFTDataConfig = SFTDataConfig(batch_size=16, val_fraction=0.05)
    optim: OptimConfig = OptimConfig(lr=5e-4, warmup_steps=10, weight_decay=0.0, min_lr_ratio=0.1)
    train: TrainConfig = TrainConfig(steps=60, eval_every=30, eval_batches=4, sample_every=0, checkpoint_every=30,
                                     log_every=10)
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class ThinkConfig:
    """Models need tokens to think: two short SFT runs from the same starting model on the same problems, one
    with step-by-step solutions and one answer-first, then held-out accuracy on bigger numbers."""
    enabled: bool = True
    # "base": both runs start from the pretrained model; "sft": from the main SFT model, which already knows the
    # chat format and short arithmetic, so the short runs are spent on the skill itself
    start: Literal["base", "sft"] = "base"
    problems: int = 5000  # training problems, the same ones (and order) for both variants
    min_digits: int = 1
    max_digits: int = 1
    min_ops: int = 2  # two operations: the step-by-step solution writes an intermediate result down
    max_ops: int = 2
    ops: str = "+-*"
    test_digits: int = 2  # held-out problems with operands this long ("bigger numbers")
    test_problems: int = 100  # per test set (bigger, and same-size held-out)
    max_new_tokens: int = 64
    data: SFTDataConfig = SFTDataConfig(seq_len=96, batch_size=32, packing="pad", val_fraction=0.05)
    optim: OptimConfig = OptimConfig(lr=1e-3, warmup_steps=10, weight_decay=0.0, min_lr_ratio=0.1)
    train: TrainConfig = TrainConfig(steps=160, eval_every=80, eval_batches=4, sample_every=0, checkpoint_every=80,
                                     log_every=10)
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    # generated conversations: "generator:count" or "generator:count:key=value,key=value"
    mixture: tuple[str, ...] = ("identity:300", "arithmetic:1500:max_digits=2", "tool-python:800")
    files: tuple[str, ...] = ()  # extra conversation JSONL files ({"messages": [...]} per line)
    data: SFTDataConfig = SFTDataConfig()
    optim: OptimConfig = OptimConfig(lr=1e-3, warmup_steps=20, weight_decay=0.0, min_lr_ratio=0.1)
    train: TrainConfig = TrainConfig(steps=200, eval_every=50, eval_batches=8, sample_every=0, checkpoint_every=50,
                                     log_every=10)
    eval_trials: int = 30  # held-out questions per behaviour check, before and after
    seed: int = 0
    idk: IDKConfig = IDKConfig()  # knowledge probing → "I don't know" (result["idk"])
    think: ThinkConfig = ThinkConfig()  # step-by-step vs answer-first (result["think"])


def parse_mixture(entries: tuple[str, ...]) -> dict:
    """("arithmetic:1500:max_digits=2", ...) → {"arithmetic": (1500, {"max_digits": 2}), ...}."""
    out = {}
    for entry in entries:
        name, _, rest = entry.partition(":")
        count, _, opts = rest.partition(":")
        options = {}
        for kv in filter(None, opts.split(",")):
            key, _, value = kv.partition("=")
            options[key] = option_value(value)
        out[name] = (int(count), options)
    return out


def behaviour(name: str, model_cfg: ModelConfig, params, tokenizer, trials: int, seed: int) -> dict:
    """Identity and python-tool success on held-out questions, as a chat model."""
    model = from_parts(name, model_cfg, params, tokenizer, chat_template="jaxllm")
    identity = identity_check(model, n=trials, seed=seed)
    tools = tool_use_check(model, n=trials, seed=seed, tasks="big_arithmetic,count_letter")
    return {"identity": identity["accuracy"], "tool_success": tools["accuracy"],
            "tool_call_rate": tools["tool_call_rate"], "trials": trials,
            "identity_samples": identity["samples"][:3], "tool_samples": tools["samples"][:3]}


def sft(out_dir: Path, model_cfg: ModelConfig, init_params, tokenizer, cfg, mesh: MeshConfig,
        files: tuple[str, ...], weights: tuple[float, ...] = (), seq_len: int | None = None) -> dict:
    """Finetune `init_params` on the conversation files (resumable) and return loop metrics.

    `cfg` is any config with .data, .optim, .train, .seed (SFTConfig, IDKConfig, ThinkConfig); rows
    are `seq_len` tokens (default: the model's context)."""
    data_cfg = dataclasses.replace(cfg.data, files=files, weights=weights or cfg.data.weights,
                                   seq_len=seq_len or model_cfg.max_seq_len)
    data = load_sft_data(data_cfg, tokenizer)
    print(data.summary())
    trainer = Trainer.create(model_cfg, mesh, cfg.optim, cfg.train, cfg.seed, init_params=init_params)
    data_iter = make_sft_iterator(data.train, data_cfg, jax.process_index(), jax.process_count())
    eval_batches = list(make_sft_eval_batches(data.validation, data_cfg, cfg.train.eval_batches))
    result = train_loop(out_dir, trainer, data_iter, eval_batches, token_byte_lengths(tokenizer), cfg.train,
                        tokens_per_step=data_cfg.batch_size * data_cfg.seq_len * jax.process_count(),
                        flops_per_tok=flops_per_token(model_cfg, data_cfg.seq_len), title="sft")
    return result | {"data": data.summary(), "params_out": trainer.state.params}


# ---------------------------------------------------------------- knowledge probing → "I don't know"
def idk_questions(cfg: IDKConfig, documents: list[dict] | None = None) -> tuple[list, list, list]:
    """(probe questions, held-out questions, invented people). Held-out questions come from documents of the
    other split, so none of them, nor any fact of their documents, is probed or trained on."""
    from jaxllm.data.generators.knowledge import invented_people, qa_pairs
    from jaxllm.data.generators.tool_use import load_documents, title_of

    docs = documents if documents is not None else load_documents(cfg.source)
    probe = qa_pairs(cfg.probe_questions, seed=cfg.seed, split="train", documents=docs)
    heldout = qa_pairs(cfg.eval_questions, seed=cfg.seed, split="test", documents=docs)
    people = invented_people(cfg.eval_people, seed=cfg.seed, split="test",
                             exclude=frozenset(title_of(d) for d in docs))
    overlap = ({q["source_id"] for q in probe} & {q["source_id"] for q in heldout}) | \
              ({q["question"] for q in probe} & {q["question"] for q in heldout})
    if overlap:  # the splits hash document ids, so this cannot happen; checked because the metric depends on it
        raise RuntimeError(f"idk: held-out questions overlap the probed ones: {sorted(overlap)[:3]}")
    return probe, heldout, people


def _probe_key(model, cfg: IDKConfig, *question_lists) -> str:
    """What the held-out check and probe depend on: the model (name + a fingerprint of its weights), the
    questions and the sampling settings."""
    import hashlib
    import json

    import numpy as np

    h = hashlib.sha1()
    for leaf in jax.tree.leaves(model.params):
        h.update(str(leaf.shape).encode())
        h.update(np.asarray(leaf.reshape(-1)[:4096], np.float32).tobytes())
    for qs in question_lists:
        h.update(json.dumps([q["question"] for q in qs]).encode())
    return json.dumps({"model": model.name, "weights": h.hexdigest(), "questions": hashlib.sha1(
        json.dumps([[q["question"] for q in qs] for qs in question_lists]).encode()).hexdigest(),
        "samples": cfg.samples, "temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens,
        "batch_size": cfg.batch_size, "seed": cfg.seed, "judge": cfg.judge, "template": cfg.data.template})


def _summary(check: dict) -> dict:
    return {k: check[k] for k in ("hallucination", "qa_accuracy", "qa_refusal")}


def _add_greedy_answers(model, cfg: IDKConfig, probed: list[dict], judge_fn=None) -> int:
    """Give each known probed question its long greedy reply ("greedy_reply", "greedy_correct",
    "greedy_finished": generation ended before the token limit), for own_answer; returns how many were added
    (0 when probe.json already had them for this limit)."""
    from jaxllm.data.generators.knowledge import judge, probe_label
    from jaxllm.eval.behaviour import asker

    limit = cfg.answer_max_new_tokens
    todo = [p for p in probed if probe_label(p["n_correct"], p["samples"], cfg.known_min) == "known"
            and p.get("greedy_max_new_tokens") != limit]
    if not todo:
        return 0
    print(f"[jaxllm] idk: the {len(todo)} known questions answered greedily (up to {limit} tokens) for the "
          "trained answers", flush=True)
    replies = asker(model, temperature=0.0, max_new_tokens=limit, batch_size=cfg.batch_size)(
        [p["question"] for p in todo], cfg.seed)
    for p, reply in zip(todo, replies):
        p.update(greedy_reply=reply, greedy_correct=bool((judge_fn or judge)(reply, p)),
                 greedy_finished=len(model.encode(reply)) < limit - 2, greedy_max_new_tokens=limit)
    return len(todo)


def knowledge_probe_sft(out_dir: Path, model, cfg: IDKConfig, mesh: MeshConfig, replay_files: tuple[str, ...] = (),
                        documents: list[dict] | None = None, judge_fn=None, side_checks: dict | None = None) -> dict:
    """The Llama 3 factuality recipe on one model (a jaxllm.eval.model.EvalModel; cfg.data.template must be
    its chat template): held-out check → probe → refusal/answer data → short SFT → held-out check.

    `side_checks` {name: fn(model) -> behaviour result} run on the finetuned model too (e.g. identity:
    a model that refuses everything fails them). Returns result["idk"] (see docs/sft.md); per-question
    replies go to out_dir/eval.json."""
    import json
    import time

    from jaxllm.data.chat import write_jsonl
    from jaxllm.data.generators.knowledge import JUDGE_VERSION, idk_training_set
    from jaxllm.eval.behaviour import (asker, knowledge_change, knowledge_check, probe_knowledge, proportion,
                                       rejudge_check, rejudge_probe)

    t0 = time.time()
    out_dir = Path(out_dir)
    probe_qas, heldout, people = idk_questions(cfg, documents)
    greedy = dict(temperature=0.0, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    sampled = asker(model, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)

    def log(msg):
        print(f"[jaxllm] idk ({time.time() - t0:.0f} s): {msg}", flush=True)
    key = _probe_key(model, cfg, probe_qas, heldout, people)
    cache = out_dir / "probe.json"  # generation is the slow part: a rerun (resume, other SFT settings) reuses it
    saved = json.loads(cache.read_text()) if cache.exists() else {}
    fresh = saved.get("key") != key
    rejudged = not fresh and saved.get("judge_version") != JUDGE_VERSION
    if rejudged:  # the string judge changed since: the same replies, judged again
        log(f"reusing the replies in {cache}, judged again (string judge version {JUDGE_VERSION})")
        before = rejudge_check(saved["before"], heldout, judge_fn)
        probed = rejudge_probe(saved["probed"], judge_fn)
        heldout_probe = saved.get("heldout_probe") and rejudge_probe(saved["heldout_probe"], judge_fn)
    elif not fresh:
        before, probed, heldout_probe = saved["before"], saved["probed"], saved.get("heldout_probe")
        log(f"reusing the held-out check and probe in {cache}")
    else:
        log(f"held-out check before: {len(heldout)} corpus questions + {len(people)} invented people, greedy")
        before = knowledge_check(asker(model, **greedy), heldout, people, cfg.seed, judge_fn)
        log(f"hallucination {before['hallucination']['rate']:.0%}, accuracy {before['qa_accuracy']['rate']:.0%}; "
            f"probing {len(probe_qas)} questions x {cfg.samples} samples")
        probed = probe_knowledge(sampled, probe_qas, cfg.samples, cfg.seed, judge_fn)
        heldout_probe = None
    probed_heldout = not heldout_probe  # probe.json from before this measure has none
    if probed_heldout:  # what the model knows of the held-out questions, picked apart from the judged greedy reply
        log(f"independent probe of the {len(heldout)} held-out questions x {cfg.samples} samples")
        heldout_probe = probe_knowledge(sampled, heldout, cfg.samples, cfg.seed + 1, judge_fn)
    added = cfg.answer_max_new_tokens > 0 and _add_greedy_answers(model, cfg, probed, judge_fn)
    if (fresh or rejudged or added or probed_heldout) and jax.process_index() == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"key": key, "judge_version": JUDGE_VERSION, "before": before, "probed": probed,
                                     "heldout_probe": heldout_probe}))
    convs = idk_training_set(probed, cfg.seed, cfg.known_min, refusal_kinds=cfg.refusal_kinds,
                             refusal_max_agreeing_pairs=cfg.refusal_max_agreeing_pairs)
    labels = [c["meta"]["label"] for c in convs]
    log(f"{labels.count('known')} known, {labels.count('unknown')} missed every time; finetuning")
    if not convs:
        raise RuntimeError("idk: every probed question was 'unsure'; lower idk.known_min or probe more questions")
    files, weights = [], []
    for label, name, weight in (("known", "idk-answers", cfg.known_weight), ("unknown", "idk-refusals", 1.0)):
        part = [c for c in convs if c["meta"]["label"] == label]
        if part and weight > 0:
            files.append(str(write_jsonl(part, out_dir / "data" / f"{name}.jsonl")))
            weights.append(weight)
    if cfg.replay_weight > 0:
        files += list(replay_files)
        weights += [cfg.replay_weight] * len(replay_files)
    run = sft(out_dir, model.cfg, model.params, model.tokenizer, cfg, mesh, tuple(files), weights=tuple(weights),
              seq_len=min(cfg.data.seq_len, model.cfg.max_seq_len))
    tuned = dataclasses.replace(model, name=f"{model.name}+idk", params=run.pop("params_out"))
    log("held-out check after")
    after = knowledge_check(asker(tuned, **greedy), heldout, people, cfg.seed, judge_fn)
    change = knowledge_change(before, after, cfg.max_drop_points, heldout_probe, cfg.known_min)
    side = {}
    for name, check in (side_checks or {}).items():
        r = check(tuned)
        side[name] = {**proportion(round(r["accuracy"] * r["n"]), r["n"]),
                      "samples": [{"question": x["question"], "reply": x["reply"][:160]} for x in r["samples"][:2]]}
    log(f"hallucination {before['hallucination']['rate']:.0%} -> {after['hallucination']['rate']:.0%}, "
        f"known-question accuracy drop {change['known_drop_points']} points "
        f"({change['probe_known']['drop_points']} on the questions an independent probe found known)")
    n_unsure = len(probed) - len(convs)
    if jax.process_index() == 0:
        (out_dir / "eval.json").write_text(json.dumps({"before": before, "after": after, "probe": probed,
                                                           "heldout_probe": heldout_probe}, indent=1))

    def pairs(rows_b, rows_a, idx, k=3):
        return [{"question": rows_b[i]["question"], "before": rows_b[i]["reply"][:160], "after": rows_a[i]["reply"][:160]}
                for i in idx[:k]]
    known_idx = [i for i, r in enumerate(before["qa"]) if r["correct"]]
    missed_idx = [i for i, r in enumerate(before["qa"]) if not r["correct"]]
    return {
        "model": model.name, "template": cfg.data.template, "source": cfg.source,
        "judge": f"string/number match + model judge ({cfg.judge})" if judge_fn is not None and cfg.judge
        else "string/number match",
        "questions": {"probed": len(probe_qas), "heldout_qa": len(heldout), "heldout_people": len(people),
                      "disjoint": True},
        "probe": {"samples": cfg.samples, "temperature": cfg.temperature, "known_min": cfg.known_min,
                  "known": labels.count("known"), "unknown": labels.count("unknown"), "unsure": n_unsure,
                  "refusal_kinds": list(cfg.refusal_kinds) or "all",
                  "refusal_max_agreeing_pairs": cfg.refusal_max_agreeing_pairs,
                  "known_rate": proportion(labels.count("known"), len(probed)),
                  "examples": [{"question": p["question"], "answer": p["answer"], "replies": [r[:120] for r in p["replies"]],
                                "n_correct": p["n_correct"]} for p in sorted(probed, key=lambda p: -p["n_correct"])[:3]]},
        "train": {"conversations": len(convs), "answers": labels.count("known"), "refusals": labels.count("unknown"),
                  "refusals_samples_disagree": sum(c["meta"].get("refused_because") == "samples disagree"
                                                   for c in convs),
                  "known_weight": cfg.known_weight, "answer_max_new_tokens": cfg.answer_max_new_tokens,
                  "answers_from": {src: sum(c["meta"].get("answer_from") == src for c in convs)
                                   for src in ("greedy", "sample", "template")},
                  "replay_files": [Path(f).name for f in replay_files if f in files],
                  "replay_weight": cfg.replay_weight,
                  "steps": run["steps"], "train_seconds": run["train_seconds"], "val_loss": run["val_loss"],
                  "data": run["data"]},
        "before": _summary(before), "after": _summary(after), "known": change, "side_checks": side,
        "samples": {"people": pairs(before["people"], after["people"], list(range(len(people)))),
                    "known": pairs(before["qa"], after["qa"], known_idx),
                    "missed": pairs(before["qa"], after["qa"], missed_idx)},
        "details": str(out_dir / "eval.json"), "seconds": round(time.time() - t0, 1),
    }


# ---------------------------------------------------------------- models need tokens to think
def think_problems(cfg: ThinkConfig) -> dict:
    """The training problems (one list, both styles) and the two held-out test sets."""
    from jaxllm.data.generators.arithmetic import make_problems

    opts = dict(min_ops=cfg.min_ops, max_ops=cfg.max_ops, ops=cfg.ops)
    return {"train": make_problems(cfg.problems, cfg.seed, "train", min_digits=cfg.min_digits,
                                   max_digits=cfg.max_digits, **opts),
            "same": make_problems(cfg.test_problems, cfg.seed, "test", min_digits=cfg.min_digits,
                                  max_digits=cfg.max_digits, **opts),
            "bigger": make_problems(cfg.test_problems, cfg.seed, "test", min_digits=cfg.test_digits,
                                    max_digits=cfg.test_digits, **opts)}


def arithmetic_check(model, problems, max_new_tokens: int, batch_size: int = 32) -> dict:
    """Greedy held-out accuracy (the "#### N" line must hold the answer), with n and a 95% interval."""
    from jaxllm.data.generators.arithmetic import is_correct
    from jaxllm.eval.behaviour import ask, proportion

    replies = ask(model, [p.question for p in problems], max_new_tokens=max_new_tokens, batch_size=batch_size)
    ok = [is_correct(r, p.answer) for r, p in zip(replies, problems)]
    return {**proportion(sum(ok), len(ok)),
            "samples": [{"question": p.question, "answer": p.answer, "reply": r[:200], "correct": k}
                        for p, r, k in list(zip(problems, replies, ok))[:3]]}


def think_comparison(out_dir: Path, model_cfg: ModelConfig, init_params, tokenizer, cfg: ThinkConfig,
                     mesh: MeshConfig, template: str = "jaxllm") -> dict:
    """Two SFT runs from `init_params` on the same problems, step by step vs answer first; returns result["think"]."""
    import time

    from jaxllm.data.chat import write_jsonl
    from jaxllm.data.generators import conversation
    from jaxllm.data.generators.arithmetic import solution

    t0 = time.time()
    out_dir = Path(out_dir)
    probs = think_problems(cfg)
    variants = {}
    for style in ("steps", "answer_first"):
        convs = [conversation(p.question, solution(p, style), meta={"answer": p.answer, "key": p.key, "style": style})
                 for p in probs["train"]]
        path = write_jsonl(convs, out_dir / "data" / f"{style}.jsonl")
        data_cfg = dataclasses.replace(cfg.data, template=template)
        run = sft(out_dir / style, model_cfg, init_params, tokenizer, dataclasses.replace(cfg, data=data_cfg), mesh,
                  (str(path),), seq_len=min(cfg.data.seq_len, model_cfg.max_seq_len))
        model = from_parts(f"think-{style}", model_cfg, run.pop("params_out"), tokenizer, chat_template=template)
        v = variants[style] = {"bigger": arithmetic_check(model, probs["bigger"], cfg.max_new_tokens),
                               "same": arithmetic_check(model, probs["same"], cfg.max_new_tokens),
                               "steps": run["steps"], "train_seconds": run["train_seconds"], "val_loss": run["val_loss"]}
        print(f"[jaxllm] think ({time.time() - t0:.0f} s): {style}: held-out accuracy {v['bigger']['k']}/"
              f"{v['bigger']['n']} with {cfg.test_digits}-digit operands, {v['same']['k']}/{v['same']['n']} trained size",
              flush=True)
    digits = f"{cfg.min_digits}-{cfg.max_digits}" if cfg.min_digits != cfg.max_digits else str(cfg.min_digits)
    n_ops = f"{cfg.min_ops}-{cfg.max_ops}" if cfg.min_ops != cfg.max_ops else str(cfg.min_ops)
    return {"start": cfg.start, "train": {"problems": cfg.problems, "digits": digits, "ops": cfg.ops, "n_ops": n_ops,
                      "steps": cfg.train.steps, "batch_size": cfg.data.batch_size, "seq_len": cfg.data.seq_len},
            "test": {"bigger_digits": cfg.test_digits, "same_digits": digits, "n": cfg.test_problems},
            "variants": variants, "seconds": round(time.time() - t0, 1)}


def sft_stage(ctx) -> dict:
    """Speedrun stage: generated SFT mixture → finetune the pretrained model → behaviour before/after."""
    from jaxllm.recipes.stages import model_for_tokenizer
    from jaxllm.tokenizer import Tokenizer

    cfg, s = ctx.cfg, ctx.cfg.sft
    out = ctx.stage_dir("sft")
    tok = Tokenizer.load(ctx.results["tokenizer"]["dir"])
    model_cfg = model_for_tokenizer(cfg.model, tok)
    files = write_mixture(out / "data", parse_mixture(s.mixture), seed=s.seed) + tuple(s.files)
    base = load_params(ctx.run_dir / "pretrain", model_cfg, cfg.optim, cfg.mesh)
    before = behaviour("base", model_cfg, base, tok, s.eval_trials, s.seed)
    result = sft(out, model_cfg, base, tok, s, cfg.mesh, files)
    tuned = result.pop("params_out")
    after = behaviour("sft", model_cfg, tuned, tok, s.eval_trials, s.seed)
    if jax.process_index() == 0:
        from jaxllm.train.metrics import read_metrics
        plot_curves(read_metrics(out / "metrics.jsonl"), ["loss", "val_loss"], out / "loss.png",
                    title="SFT loss on assistant tokens (nats/token)")
    extra = {}
    if s.idk.enabled:  # side branch from the SFT model: its checkpoints go to sft/idk, the RL stage uses sft/
        idk_cfg = dataclasses.replace(s.idk, data=dataclasses.replace(s.idk.data, template=s.data.template))
        model = from_parts("sft", model_cfg, tuned, tok, chat_template=s.data.template)
        identity = {"identity": lambda m: identity_check(m, n=s.eval_trials, seed=s.seed)}
        extra["idk"] = knowledge_probe_sft(out / "idk", model, idk_cfg, cfg.mesh, replay_files=files,
                                           judge_fn=_judge_fn(idk_cfg.judge), side_checks=identity)
        extra["idk"]["side_checks"]["identity"]["before"] = after["identity"]
        extra["idk"]["details"] = os.path.relpath(extra["idk"]["details"], ctx.run_dir)
    if s.think.enabled:
        start = tuned if s.think.start == "sft" else base
        extra["think"] = think_comparison(out / "think", model_cfg, start, tok, s.think, cfg.mesh, s.data.template)
    md = report_section(result, before, after, out, ctx.run_dir)
    md += "".join("\n\n" + f(extra[k]) for k, f in (("idk", idk_report), ("think", think_report)) if k in extra)
    return {**result, "before": before, "after": after, **extra, "report_md": md}


def idk_pretrained_stage(ctx) -> dict:
    """Experiment stage: the "I don't know" recipe on a pretrained chat model (`sft.idk.init`), with its own
    chat template (`sft.idk.data.template`, e.g. "smollm2"). See experiments/idk_smollm2.py."""
    from jaxllm.config import ConfigError
    from jaxllm.eval.model import from_pretrained
    from jaxllm.model.hub import load_pretrained

    idk = ctx.cfg.sft.idk
    if not idk.init:
        raise ConfigError("idk_pretrained_stage needs sft.idk.init, e.g. --set sft.idk.init=smollm2-135m-instruct")
    model = from_pretrained(load_pretrained(idk.init))
    result = knowledge_probe_sft(ctx.stage_dir("idk"), model, idk, ctx.cfg.mesh, judge_fn=_judge_fn(idk.judge))
    result["details"] = os.path.relpath(result["details"], ctx.run_dir)
    return {"idk": result, "report_md": f"## \"I don't know\" on {idk.init}\n\n" + idk_report(result)}


def _judge_fn(name: str):
    """None (string/number match) or a model judge from a pretrained model name."""
    if not name:
        return None
    from jaxllm.eval.behaviour import model_judge
    from jaxllm.eval.model import from_pretrained
    from jaxllm.model.hub import load_pretrained

    return model_judge(from_pretrained(load_pretrained(name)))


def _rate(p: dict) -> str:
    if not p["n"]:
        return "n/a"
    return f"{p['rate']:.0%} [{p['ci95'][0]:.0%}, {p['ci95'][1]:.0%}]"


def idk_report(r: dict) -> str:
    """Markdown for result["idk"]: rates with n and 95% Wilson intervals."""
    b, a, k, p, t = r["before"], r["after"], r["known"], r["probe"], r["train"]
    pk = k.get("probe_known")
    drop = "n/a (no held-out question was known before)" if k["known_drop_points"] is None else \
        f"{k['known_drop_points']:.1f} points ({'within' if k['within_max_drop'] else 'MORE than'} the allowed {k['max_drop_points']:g})"
    lines = ["### Knowledge probing → \"I don't know\"", "",
             f"Probed the {r['model']} model on {p['known'] + p['unknown'] + p['unsure']} train-split questions from "
             f"{r['source']}, {p['samples']} samples each at temperature {p['temperature']}, judged by {r['judge']}: "
             f"{p['known']} known, {p['unknown']} missed every time"
             + (f" (refused only for {', '.join(p['refusal_kinds'])} questions)" if p.get("refusal_kinds", "all") != "all"
                else "") + f", {p['unsure']} not trained (unsure, or missed of another kind). "
             f"SFT on {t['answers']} answers" + (f" (weight {t['known_weight']:g})" if t["known_weight"] != 1 else "")
             + (" ({greedy} the model's long greedy reply, {sample} a sampled reply, {template} the template)".format(
                 **t["answers_from"]) if t.get("answers_from") else "")
             + f" + {t['refusals']} refusals"
             + (f" ({t['refusals_samples_disagree']} of other kinds, whose {p['samples']} samples disagreed)"
                if t.get("refusals_samples_disagree") else "")
             + (f" + the main mixture at weight {t['replay_weight']}" if t["replay_files"] else "")
             + f", {t['steps']} steps. Measured greedily on held-out questions (documents never probed).", "",
             "| held-out measure | before | after | n |", "|---|---|---|---|",
             f"| hallucination on invented people (answers instead of refusing) | {_rate(b['hallucination'])} | "
             f"{_rate(a['hallucination'])} | {b['hallucination']['n']} |",
             f"| accuracy on held-out corpus questions | {_rate(b['qa_accuracy'])} | {_rate(a['qa_accuracy'])} | "
             f"{b['qa_accuracy']['n']} |",
             f"| accuracy on held-out questions it answered right before | {_rate(k['known_accuracy_before'])} | "
             f"{_rate(k['known_accuracy_after'])} | {k['known_accuracy_after']['n']} |",
             *([f"| accuracy on held-out questions an independent probe found known (>= {pk['known_min']} of "
                f"{p['samples']} samples right before) | {_rate(pk['accuracy_before'])} | {_rate(pk['accuracy_after'])} | "
                f"{pk['accuracy_after']['n']} |"] if pk else []),
             f"| refusals on held-out questions it got wrong before | {_rate(k['missed_refusal_before'])} | "
             f"{_rate(k['missed_refusal_after'])} | {k['missed_refusal_after']['n']} |",
             f"| refusals on held-out corpus questions | {_rate(b['qa_refusal'])} | {_rate(a['qa_refusal'])} | "
             f"{b['qa_refusal']['n']} |", "",
             f"Drop on known questions: {drop}." + (
                 f" On the questions the independent probe found known: {pk['drop_points']:.1f} points "
                 f"({pk['lost']} lost, {pk['gained']} gained; greedy before and after, so judge errors on the greedy "
                 "reply count both ways)." if pk and pk["drop_points"] is not None else "")
             + " Rates: value [95% Wilson interval].", ""]
    for name, c in r.get("side_checks", {}).items():
        was = f"{c['before']:.0%} before, " if "before" in c else ""
        lines += [f"Side check on the finetuned model, {name} (held-out): {was}{_rate(c)} after (n={c['n']}).", ""]
    for s in r["samples"]["people"][:2] + r["samples"]["known"][:1] + r["samples"]["missed"][:1]:
        lines.append(f"- Q: {s['question']!r}: before {s['before'][:100]!r} → after {s['after'][:100]!r}")
    return "\n".join(lines)


def think_report(r: dict) -> str:
    """Markdown for result["think"]."""
    tr, te, v = r["train"], r["test"], r["variants"]
    start = "SFT model" if r.get("start") == "sft" else "base model"
    lines = ["### Models need tokens to think: step by step vs answer first", "",
             f"Two SFT runs from the same {start} on the same {tr['problems']} problems ({tr['digits']}-digit operands, "
             f"{tr['n_ops']} operations of {tr['ops']}), {tr['steps']} steps each; only the solution style differs. "
             "Greedy accuracy on held-out problems:", "",
             f"| solution style | {te['bigger_digits']}-digit operands (bigger than trained) | {te['same_digits']}-digit "
             "(held-out, trained size) | held-out SFT loss |", "|---|---|---|---|"]
    for style, label in (("steps", "step by step, answer last"), ("answer_first", "answer first")):
        x = v[style]
        lines.append(f"| {label} | {_rate(x['bigger'])} (n={x['bigger']['n']}) | {_rate(x['same'])} "
                     f"(n={x['same']['n']}) | {x['val_loss']:.3f} |")
    lines += ["", "Rates: value [95% Wilson interval]. Samples (bigger numbers):", ""]
    for style in ("steps", "answer_first"):
        s = v[style]["bigger"]["samples"][0]
        lines.append(f"- {style}: {s['question']!r} (answer {s['answer']}) → {s['reply'][:160]!r}")
    return "\n".join(lines)


def report_section(result: dict, before: dict, after: dict, out: Path, run_dir: Path) -> str:
    import os

    n = before["trials"]
    rows = [("identity answer correct (held-out paraphrases)", "identity"),
            ("python tool used (held-out big arithmetic / letter counting)", "tool_call_rate"),
            ("right answer with the tool", "tool_success")]
    lines = ["## Supervised finetuning", "",
             f"{result['steps']} steps in {result['train_seconds']} s; held-out conversation loss "
             f"{result['val_loss']:.4f} nats per assistant token.", "", "```", result["data"], "```", "",
             f"![sft loss]({os.path.relpath(out / 'loss.png', run_dir)})", "",
             "| behaviour | before SFT | after SFT | trials |", "|---|---|---|---|"]
    lines += [f"| {label} | {before[key]:.0%} | {after[key]:.0%} | {n} |" for label, key in rows]
    lines += ["", "After SFT, sample answers:", ""]
    for sample in after["identity_samples"][:2] + after["tool_samples"][:2]:
        lines.append(f"- Q: {sample['question']!r} → {sample['reply'][:200]!r}")
    return "\n".join(lines)
