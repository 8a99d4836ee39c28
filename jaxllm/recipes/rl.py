"""The RL loop on verifiable rewards (GRPO and friends), and the speedrun's `rl` stage.

Each step is on-policy: sample `group_size` completions for `prompts_per_step` training problems with the
current policy, score them against the answer key, turn rewards into advantages (a pure function named
in RLConfig), recompute the sampling policy's and the frozen reference's token log-probs on the mesh,
then take `updates_per_step` optimizer steps of the configured policy loss through the same sharded,
jitted train step as pretraining. Held-out greedy accuracy is measured before the first step and every
`eval_every` steps. Checkpoints hold the train state; which problems and which sampling seed a step
uses depend only on (seed, step), so a resumed run repeats the same steps and ends at the same numbers.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding
from tqdm.auto import tqdm

from jaxllm.config import resolve_function
from jaxllm.model import ModelConfig
from jaxllm.model.loss import token_log_probs
from jaxllm.parallel import LOGICAL_RULES, MeshConfig
from jaxllm.recipes.pretrain import Trainer
from jaxllm.rl import rollout
from jaxllm.rl.config import RLConfig
from jaxllm.rl.losses import token_entropy
from jaxllm.rl.tasks import distinct_expressions, load_problems
from jaxllm.train.checkpoint import Checkpointer, abstract_like
from jaxllm.train.metrics import MetricsWriter, plot_curves, read_metrics
from jaxllm.train.sharded import BATCH_SPEC, device_batch
from jaxllm.train.step import TrainConfig


def rl_loss_factory(policy_loss, loss_kwargs: dict):
    """`loss_fn_factory` for Trainer.create: forward pass, token log-probs and entropy, then the policy loss.

    The batch carries old_logp, ref_logp, advantages and rewards as [batch, length] arrays; the loss's
    metrics (KL, entropy, clip fraction) come out of the train step through aux["metrics"].
    """
    entropy_grad = bool(loss_kwargs.get("entropy_coef"))  # else entropy is only a metric: no backward through it

    def factory(apply_fn):
        def loss_fn(params, batch):
            logits = apply_fn({"params": params}, batch["inputs"])  # [batch, length, vocab]
            logp = token_log_probs(logits, batch["targets"])
            entropy = token_entropy(logits if entropy_grad else jax.lax.stop_gradient(logits))
            loss, metrics = policy_loss(logp, batch["old_logp"], batch["ref_logp"], batch["advantages"],
                                        batch["loss_mask"], entropy, batch["rewards"], **loss_kwargs)
            return loss, {"metrics": metrics}
        return loss_fn
    return factory


def make_logprob_fn(trainer: Trainer):
    """`fn(params, batch) -> token log-probs [batch, length]` jitted on the trainer's mesh and shardings."""
    data = NamedSharding(trainer.mesh, BATCH_SPEC)
    fn = jax.jit(lambda p, b: token_log_probs(trainer.model.apply({"params": p}, b["inputs"]), b["targets"]),
                 in_shardings=(trainer.shardings.params, data), out_shardings=data)

    def run(params, batch):
        with trainer.mesh, nn.logical_axis_rules(LOGICAL_RULES):
            sub = device_batch({"inputs": batch["inputs"], "targets": batch["targets"]}, trainer.mesh)
            return np.asarray(jax.device_get(fn(params, sub)), np.float32)
    return run


def step_problems(n_train: int, k: int, seed: int, step: int) -> np.ndarray:
    """Indices of the training problems of one step: a function of (seed, step) only (exact resume)."""
    return np.random.default_rng([seed, step]).choice(n_train, size=min(k, n_train), replace=False)


def parse_level(level: str) -> dict:
    """"1-2:1-1" -> {"min_digits": 1, "max_digits": 2, "min_ops": 1, "max_ops": 1}."""
    try:
        digits, ops = level.split(":")
        (d0, d1), (o0, o1) = (map(int, digits.split("-")), map(int, ops.split("-")))
    except ValueError:
        raise ValueError(f"rl.difficulty_ladder entry {level!r}: write min_digits-max_digits:min_ops-max_ops, "
                         "e.g. '1-2:1-1'") from None
    return {"min_digits": d0, "max_digits": d1, "min_ops": o0, "max_ops": o1}


def pick_level(table: list[dict], rl: RLConfig) -> dict:
    """The probe row to train at: inside rl.target_accuracy first, then with at least rl.eval_problems
    held-out problems (fewer give wide intervals), then nearest the middle of the range."""
    lo, hi = rl.target_accuracy
    for row in table:
        row["heldout_problems"] = min(rl.eval_problems, int(0.9 * 0.2 * distinct_expressions(
            dataclasses.replace(rl, **parse_level(row["level"])))))

    def rank(row):
        return ((0.0 if lo <= row["accuracy"] <= hi else 1.0) + (0.5 if row["heldout_problems"] < rl.eval_problems else 0.0)
                + abs(row["accuracy"] - (lo + hi) / 2))
    return min(table, key=rank)


def choose_difficulty(params, model_cfg: ModelConfig, tokenizer, rl: RLConfig, pad_id: int = 0) -> tuple[RLConfig, list]:
    """The arithmetic level of rl.difficulty_ladder where the model's greedy accuracy on training problems is
    inside rl.target_accuracy, preferring levels with at least rl.eval_problems held-out problems, then the
    one nearest the middle of the range; returns (config, probe table)."""
    reward_fn = resolve_function(rl.eval_reward)
    lo, hi = rl.target_accuracy
    table = []
    for level in rl.difficulty_ladder:
        cand = dataclasses.replace(rl, **parse_level(level))
        probs = load_problems(cand, "train", rl.probe_problems, rl.seed + 1)
        ev = rollout.greedy_accuracy(params, model_cfg, tokenizer, probs, rl.template, reward_fn,
                                     max_new_tokens=rl.max_new_tokens, batch_size=rl.eval_batch, pad_id=pad_id,
                                     format_weight=0.0, answer_format=rl.answer_format)
        table.append({"level": level, "accuracy": ev["accuracy"], "n": ev["n"]})
        tqdm.write(f"  rl difficulty probe {level}: greedy accuracy {ev['accuracy']:.1%} of {ev['n']}")
        if ev["accuracy"] < lo:
            break  # harder levels will not be easier
    best = pick_level(table, rl)
    return dataclasses.replace(rl, **parse_level(best["level"])), table


def train_rl(out_dir: str | Path, model_cfg: ModelConfig, mesh_cfg: MeshConfig, rl: RLConfig, tokenizer,
             init_params, train_problems: Sequence[dict] | None = None, eval_problems: Sequence[dict] | None = None,
             pad_id: int = 0, stop_at_step: int = 0) -> dict:
    """Run (or resume from out_dir/checkpoints) RL from `init_params`; returns before/after held-out accuracy.

    stop_at_step > 0 stops after that step as if the run were killed (tests resume with it).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if rl.remat:
        model_cfg = dataclasses.replace(model_cfg, remat=rl.remat)
    probe = None
    if rl.auto_difficulty and rl.task == "arithmetic" and train_problems is None:
        probe_file = out_dir / "difficulty.json"  # decided once, so a resumed run trains on the same problems
        if probe_file.exists():
            probe = json.loads(probe_file.read_text())
        else:
            chosen, table = choose_difficulty(init_params, model_cfg, tokenizer, rl, pad_id)
            probe = {"chosen": {k: getattr(chosen, k) for k in ("min_digits", "max_digits", "min_ops", "max_ops")},
                     "probe": table}
            if jax.process_index() == 0:
                probe_file.write_text(json.dumps(probe, indent=2))
        rl = dataclasses.replace(rl, **probe["chosen"])
    train_problems = list(train_problems or load_problems(rl, "train", rl.train_problems, rl.seed))
    eval_problems = list(eval_problems or load_problems(rl, "test", rl.eval_problems, rl.seed))
    advantage_fn = resolve_function(rl.advantage)
    reward_fn, eval_reward_fn = resolve_function(rl.reward), resolve_function(rl.eval_reward)
    reward_opts = {"format_weight": rl.format_weight, "answer_format": rl.answer_format}
    factory = rl_loss_factory(resolve_function(rl.loss), rl.loss_kwargs())
    total_updates = rl.steps * rl.updates_per_step
    trainer = Trainer.create(model_cfg, mesh_cfg, rl.optim, TrainConfig(steps=total_updates), rl.seed,
                             init_params=init_params, loss_fn_factory=factory)
    ref_params = jax.device_put(jax.tree.map(np.asarray, init_params), trainer.shardings.params)
    logprobs = make_logprob_fn(trainer)
    data_parallel = trainer.mesh.shape["data"] * trainer.mesh.shape["fsdp"]  # batch rows must divide over these
    prompts = rollout.prompt_ids(train_problems, tokenizer, rl.template)
    fits = [i for i, p in enumerate(prompts) if len(p) + rl.max_new_tokens <= rl.seq_len + 1]
    if len(fits) < len(prompts):  # a prompt that leaves no room for the answer is of no use
        print(f"[jaxllm] rl: {len(prompts) - len(fits)} of {len(prompts)} training prompts are longer than "
              f"rl.seq_len - rl.max_new_tokens = {rl.seq_len + 1 - rl.max_new_tokens} tokens; left out")
        if not fits:
            raise ValueError(f"rl: no training prompt fits in rl.seq_len={rl.seq_len} with max_new_tokens="
                             f"{rl.max_new_tokens}; raise rl.seq_len")
        train_problems, prompts = [train_problems[i] for i in fits], [prompts[i] for i in fits]
    stops = rollout.end_ids(tokenizer, rl.template)

    ckpt = Checkpointer(out_dir / "checkpoints", keep=rl.keep_checkpoints, async_save=False)
    restored = ckpt.restore(abstract_like(trainer.state, trainer.shardings))
    step, before = 0, None
    if restored is not None:
        _, trainer.state, meta = restored
        step, before = int(meta["step"]), meta.get("before")
        print(f"[jaxllm] rl: resumed from checkpoint at step {step}")
    metrics = MetricsWriter(out_dir, resume_step=step)

    def evaluate(at: int) -> dict:
        ev = rollout.greedy_accuracy(trainer.state.params, model_cfg, tokenizer, eval_problems, rl.template, eval_reward_fn,
                                     max_new_tokens=rl.max_new_tokens, batch_size=rl.eval_batch, pad_id=pad_id,
                                     **reward_opts)
        metrics.write(at, heldout_acc=ev["accuracy"], heldout_ci_low=ev["ci95"][0], heldout_ci_high=ev["ci95"][1],
                      heldout_response_len=ev["response_len"], heldout_answer_first=ev["answer_first"])
        tqdm.write(f"  rl step {at}: held-out greedy accuracy {ev['accuracy']:.1%} ({ev['correct']}/{ev['n']}, "
                   f"95% CI {ev['ci95'][0]:.1%}-{ev['ci95'][1]:.1%})")
        return ev

    try:
        if before is None:
            before = evaluate(0)
        bar = tqdm(total=rl.steps, initial=step, desc="rl", unit="step", dynamic_ncols=True)
        while step < rl.steps:
            t0 = time.perf_counter()
            idx = step_problems(len(train_problems), rl.prompts_per_step, rl.seed, step)
            group_prompts = [prompts[i] for i in idx]
            completions = rollout.sample_completions(
                trainer.state.params, model_cfg, group_prompts, rl.group_size, max_new_tokens=rl.max_new_tokens,
                temperature=rl.temperature, top_k=rl.top_k, top_p=rl.top_p, seed=rl.seed * 1_000_003 + step,
                stops=stops, pad_id=pad_id, batch_size=rl.rollout_batch)
            texts = [rollout.decode_completion(tokenizer, c, stops) for c in completions]
            answers = [train_problems[i]["answer"] for i in idx for _ in range(rl.group_size)]
            rewards = rollout.score(texts, answers, reward_fn, **reward_opts)
            adv = np.asarray(advantage_fn(rewards.reshape(len(idx), rl.group_size)), np.float32).reshape(-1)
            rows = [p for p in group_prompts for _ in range(rl.group_size)]
            batch = rollout.make_batch(rows, completions, rl.seq_len, pad_id, advantages=adv, rewards=rewards)
            batch = rollout.pad_rows(batch, data_parallel)
            batch["old_logp"] = logprobs(trainer.state.params, batch)
            batch["ref_logp"] = logprobs(ref_params, batch)
            t_roll = time.perf_counter() - t0
            for _ in range(rl.updates_per_step):
                m = trainer.step(batch)
            m = {k: float(v) for k, v in jax.device_get(m).items()}
            step += 1
            grouped = rewards.reshape(len(idx), rl.group_size)
            record = {"reward_mean": float(rewards.mean()), "train_acc": float((rewards >= 1.0).mean()),
                      "response_len": float(np.mean([len(c) for c in completions])),
                      "zero_adv_groups": float(np.mean(grouped.max(1) == grouped.min(1))),
                      "kl": m.get("kl"), "entropy": m.get("entropy"), "clip_frac": m.get("clip_frac"),
                      "loss": m["objective"], "grad_norm": m["grad_norm"], "rollout_s": t_roll,
                      "step_s": time.perf_counter() - t0}
            if not np.isfinite(record["loss"]):
                raise FloatingPointError(f"rl loss became {record['loss']} at step {step}; lower rl.optim.lr")
            metrics.write(step, **record)
            bar.set_postfix(reward=f"{record['reward_mean']:.2f}", len=f"{record['response_len']:.0f}",
                            kl=f"{record['kl'] or 0:.3f}")
            bar.update(1)
            last = step == rl.steps
            if rl.eval_every and step % rl.eval_every == 0 and not last:
                evaluate(step)
            if last or (rl.checkpoint_every and step % rl.checkpoint_every == 0) or step == stop_at_step:
                ckpt.save(step, trainer.state, meta={"step": step, "before": before}, force=True)
            if step == stop_at_step:
                break
        bar.close()
        if step < rl.steps:
            return {"steps": step, "stopped_at": step}
        after = evaluate(step)
        out = {"steps": step, "task": rl.task, "difficulty": probe, "before": _summary(before), "after": _summary(after),
               "z": rollout.two_proportion_z(before["correct"], before["n"], after["correct"], after["n"]),
               "paired": dict(zip(("z", "gained", "lost"), rollout.mcnemar_z(before.get("per_problem", []), after["per_problem"]))),
               "examples_after": after["examples"]}
        if jax.process_index() == 0:
            records = read_metrics(out_dir / "metrics.jsonl")
            out["plots"] = {
                "heldout_accuracy": str(plot_curves(records, ["heldout_acc", "heldout_answer_first"],
                                                    out_dir / "heldout_accuracy.png",
                                                    title="held-out greedy accuracy (and share answering first) during RL")),
                "response_length": str(plot_curves(records, ["response_len"], out_dir / "response_length.png",
                                                   title="mean response length (tokens) during RL")),
                "reward": str(plot_curves(records, ["reward_mean", "train_acc"], out_dir / "reward.png",
                                          title="mean reward of the rollouts")),
            }
            (out_dir / "result.json").write_text(json.dumps(out, indent=2, default=str))
        return out
    finally:
        ckpt.close()
        metrics.close()


def _summary(ev: dict) -> dict:
    return {k: ev.get(k) for k in ("accuracy", "correct", "n", "ci95", "response_len", "answer_first")}


def report_section(result: dict) -> str:
    """Markdown for report.md: held-out accuracy before/after RL with n and 95% CIs, and the two curves."""
    b, a = result["before"], result["after"]
    lines = ["## RL on verifiable rewards", "",
             f"Task `{result.get('task')}`, {result['steps']} steps. Held-out greedy accuracy on {a['n']} problems:", "",
             "| | accuracy | correct | 95% CI (Wilson) | mean response tokens |", "|---|---|---|---|---|",
             f"| before RL | {b['accuracy']:.1%} | {b['correct']}/{b['n']} | {b['ci95'][0]:.1%}-{b['ci95'][1]:.1%} | "
             f"{b['response_len']:.1f} |",
             f"| after RL | {a['accuracy']:.1%} | {a['correct']}/{a['n']} | {a['ci95'][0]:.1%}-{a['ci95'][1]:.1%} | "
             f"{a['response_len']:.1f} |", "",
             f"Two-proportion z = {result['z']:.2f} ({'beyond' if abs(result['z']) > 1.96 else 'within'} noise at 95%); "
             f"paired on the same problems: {result['paired']['gained']} newly right, {result['paired']['lost']} newly "
             f"wrong, McNemar z = {result['paired']['z']:.2f}.", ""]
    if b.get("answer_first") is not None and a.get("answer_first") is not None:
        lines += [f"Replies that state the answer before any working: {b['answer_first']:.0%} before RL, "
                  f"{a['answer_first']:.0%} after.", ""]
    if result.get("difficulty"):
        probe = ", ".join(f"{row['level']}: {row['accuracy']:.0%}" for row in result["difficulty"]["probe"])
        lines += [f"Difficulty (digits:operations) probed on {result['difficulty']['probe'][0]['n']} training problems "
                  f"per level before RL ({probe}); trained at {result['difficulty']['chosen']}.", ""]
    for name, path in (result.get("plots") or {}).items():
        lines.append(f"![{name}]({path})")
    return "\n".join(lines) + "\n"


def rl_stage(ctx) -> dict:
    """Experiment stage: RL (GRPO by default) from the run's SFT checkpoint (else its pretraining one), or
    from a pretrained model when `rl.init` names one (e.g. "smollm2-135m-instruct")."""
    cfg = ctx.cfg
    rl = getattr(cfg, "rl", None) or RLConfig()
    if rl.init:
        from jaxllm.model.hub import load_pretrained

        pre = load_pretrained(rl.init)
        model_cfg, tok, params, source = pre.cfg, pre.tokenizer, pre.params, rl.init
    else:
        from jaxllm.recipes.pretrain import load_params
        from jaxllm.recipes.stages import model_for_tokenizer
        from jaxllm.tokenizer import Tokenizer

        tok = Tokenizer.load(ctx.results["tokenizer"]["dir"])
        model_cfg = model_for_tokenizer(cfg.model, tok)
        source = "sft" if "sft" in ctx.results else "pretrain"
        params = load_params(ctx.run_dir / source, model_cfg, cfg.optim, cfg.mesh)
    result = train_rl(ctx.stage_dir("rl"), model_cfg, cfg.mesh, rl, tok, params)
    if "plots" in result:
        result["plots"] = {k: os.path.relpath(v, ctx.run_dir) for k, v in result["plots"].items()}
        result["report_md"] = report_section(result)
    return {**result, "init_from": source}
