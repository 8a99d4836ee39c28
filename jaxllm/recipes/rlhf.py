"""RLHF loops at toy scale: a policy, rankings from the simulated labeller, a reward model, GRPO against it.

    policy  = toy_sft(cfg)                                 # "SFT": a tiny model learns the toy language
    ranks   = label(policy samples, k per prompt)          # the simulated labeller ranks them (noisy)
    rm      = train_reward_model(policy, ranks)            # backbone from the policy + scalar head
    history = grpo_against_rm(policy, rm)                  # GRPO with RM rewards, KL leash to the SFT policy

`grpo_against_rm` also logs the labeller's hidden true score, which the optimiser never sees, and
checks it on held-out prompts every `eval_every` steps: early stopping keeps the policy from the best
check. Every piece trains through the same sharded, jitted train step as pretraining.
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Callable, Optional

import flax.linen as nn
import jax
import numpy as np
from tqdm.auto import tqdm

from jaxllm.model import ModelConfig, Transformer, tiny, token_log_probs
from jaxllm.parallel import LOGICAL_RULES, MeshConfig, make_mesh
from jaxllm.recipes.pretrain import Trainer
from jaxllm.recipes.rl import rl_loss_factory
from jaxllm.rl import labeller as lab
from jaxllm.rl.advantages import grpo_advantages
from jaxllm.rl.losses import grpo_loss
from jaxllm.rl.preferences import wilson_interval
from jaxllm.rl.reward_model import init_reward_params, ranking_batch, ranking_loss_fn, reward_scores, encode_rows
from jaxllm.rl.rollout import make_batch, sample_completions
from jaxllm.train.metrics import MetricsWriter, plot_curves, read_metrics
from jaxllm.train.optim import OptimConfig, learning_rate_schedule, make_optimizer
from jaxllm.train.sharded import init_sharded_state, jit_train_step
from jaxllm.train.step import TrainConfig, make_train_step


CHUNK = 64  # rows per sampling / scoring call: one compiled shape for all of them


@dataclasses.dataclass(frozen=True)
class RLHFConfig:
    """The whole toy RLHF run; the defaults take ~40 s of CPU time (the tested reward-hacking run)."""
    depth: int = 1  # tiny(depth) policy on the toy language
    seq_len: int = 32
    max_new_tokens: int = 14
    sft_steps: int = 150
    sft_batch: int = 64
    sft_lr: float = 3e-3
    # preference data: k samples of the SFT policy per prompt, ranked by the simulated labeller
    k: int = 4
    rm_groups: int = 256  # training rankings (k * rm_groups a multiple of 64)
    heldout_groups: int = 96  # held-out rankings: 96 * 6 = 576 pairs at k = 4
    label_noise: float = 0.3  # Gumbel scale of the labeller
    rm_loss: str = "bradley_terry"  # or "plackett_luce"
    rm_steps: int = 300  # at 150 the reward model was weaker on some machines (float order) and RL hacked it from step 0
    rm_groups_per_step: int = 16
    rm_lr: float = 1e-3
    # GRPO against the reward model
    rl_steps: int = 160  # at 120 (eval_every 10) 2 of seeds 0-7 failed the hacking demo; at 160 and 5, none (9/12 of 0-11)
    prompts_per_step: int = 8
    group_size: int = 8  # prompts_per_step * group_size = 64 rows
    rl_lr: float = 1e-3
    kl_coef: float = 0.01
    clip_eps: float = 0.2
    eval_every: int = 5  # every 10 missed the short window where RL helps before it hacks (seed 4)
    eval_prompts: int = 64
    patience: int = 3  # held-out checks without improvement before early stopping
    stop_early: bool = False  # False: keep going past the early-stop step to show what happens
    seed: int = 0


def _trainer_from(model_cfg: ModelConfig, lr: float, steps: int, seed: int, mesh: MeshConfig, devices,
                  init_params=None, loss_fn_factory=None) -> Trainer:
    optim = OptimConfig(lr=lr, warmup_steps=min(10, steps // 10), schedule="constant", weight_decay=0.0)
    return Trainer.create(model_cfg, mesh, optim, TrainConfig(steps=steps), seed, init_params=init_params,
                          loss_fn_factory=loss_fn_factory, devices=devices)


def _host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


# ---------------------------------------------------------------- the "SFT" policy
def toy_sft(cfg: RLHFConfig, mesh: MeshConfig = MeshConfig(), devices=None) -> tuple[ModelConfig, dict, dict]:
    """Train tiny(depth) on toy-grammar sentences (loss on the completion only); returns cfg, params, stats."""
    vocab = lab.ToyVocab()
    model_cfg = tiny(cfg.depth, vocab_size=vocab.n_vocab, seq_len=cfg.seq_len)
    trainer = _trainer_from(model_cfg, cfg.sft_lr, cfg.sft_steps, cfg.seed, mesh, devices)
    rng = np.random.default_rng(cfg.seed)
    loss = float("nan")
    for _ in tqdm(range(cfg.sft_steps), desc="toy sft", leave=False):
        pairs = [lab.toy_sentence(rng) for _ in range(cfg.sft_batch)]
        prompts = [[vocab.bos_id] + vocab.encode(p) for p, _ in pairs]
        batch = make_batch(prompts, [vocab.encode(c) for _, c in pairs], cfg.seq_len)
        batch["segment_ids"] = (batch["inputs"] != 0).astype(np.int32)
        loss = trainer.step(batch)["loss"]
    return model_cfg, _host(trainer.state.params), {"sft_loss": float(loss)}


def sample_groups(params, model_cfg: ModelConfig, prompts: list[str], k: int, seed: int, max_new_tokens: int,
                  temperature: float = 1.0) -> list[list[str]]:
    """k sampled completions (text) per prompt of the toy language."""
    vocab = lab.ToyVocab()
    ids = [[vocab.bos_id] + vocab.encode(p) for p in prompts]
    outs = sample_completions(params, model_cfg, ids, k, max_new_tokens=max_new_tokens, temperature=temperature,
                              seed=seed, stops=(vocab.stop_id,), pad_id=vocab.pad_id, batch_size=CHUNK)
    texts = [vocab.decode(o) for o in outs]
    return [texts[i * k:(i + 1) * k] for i in range(len(prompts))]


def preference_data(params, model_cfg: ModelConfig, cfg: RLHFConfig) -> tuple[list, list]:
    """(train, held-out) rankings of k samples of the policy, labelled by the simulated labeller."""
    out = []
    for split, n, salt in (("train", cfg.rm_groups, 1), ("heldout", cfg.heldout_groups, 2)):
        prompts = lab.toy_prompts(n, cfg.seed * 1000 + salt)
        groups = sample_groups(params, model_cfg, prompts, cfg.k, cfg.seed * 1000 + salt, cfg.max_new_tokens)
        out.append(lab.label_groups(prompts, groups, lab.LabellerConfig(noise=cfg.label_noise, seed=cfg.seed + salt)))
    return out[0], out[1]


# ---------------------------------------------------------------- reward model
def train_reward_model(model_cfg: ModelConfig, policy_params, rankings: list, cfg: RLHFConfig,
                       mesh: MeshConfig = MeshConfig(), devices=None) -> tuple[dict, list[float]]:
    """Backbone from the policy + scalar head, trained on rankings with cfg.rm_loss; returns params, losses."""
    vocab, model = lab.ToyVocab(), Transformer(model_cfg)
    optim = OptimConfig(lr=cfg.rm_lr, warmup_steps=min(10, cfg.rm_steps // 10), schedule="cosine", weight_decay=0.0)
    optimizer = make_optimizer(optim, cfg.rm_steps)
    mesh_ = make_mesh(mesh, devices)
    with nn.logical_axis_rules(LOGICAL_RULES):
        state, shardings = init_sharded_state(lambda rng: init_reward_params(model_cfg, policy_params, rng),
                                              optimizer, mesh_, LOGICAL_RULES, jax.random.key(cfg.seed))
    step = jit_train_step(make_train_step(ranking_loss_fn(model, cfg.k, cfg.rm_loss), optimizer), shardings, mesh_)
    trainer = Trainer(model, mesh_, state, shardings, step, None, learning_rate_schedule(optim, cfg.rm_steps))
    rng = np.random.default_rng(cfg.seed + 7)
    losses = []
    for _ in tqdm(range(cfg.rm_steps), desc="reward model", leave=False):
        idx = rng.choice(len(rankings), cfg.rm_groups_per_step, replace=False)
        batch = ranking_batch([rankings[i] for i in idx], vocab.encode, vocab.bos_id, cfg.seq_len)
        losses.append(trainer.step(batch)["loss"])
    return _host(trainer.state.params), [float(x) for x in jax.device_get(losses)]


def make_scorer(model_cfg: ModelConfig, seq_len: int) -> Callable[[dict, list[str], list[str]], np.ndarray]:
    """scorer(rm_params, prompts, completions) -> reward-model scores [n] (jitted forward)."""
    vocab, model = lab.ToyVocab(), Transformer(model_cfg)
    fwd = jax.jit(lambda p, x, s: reward_scores(model, p, x, s))

    def scorer(params, prompts, completions):
        x, s = encode_rows(vocab.encode, vocab.bos_id, list(prompts), list(completions), seq_len)
        n = len(x)
        pad = -n % CHUNK  # fixed chunk shapes: one compilation
        x, s = np.pad(x, ((0, pad), (0, 0))), np.pad(s, ((0, pad), (0, 0)), constant_values=1)
        return np.concatenate([np.asarray(fwd(params, x[i:i + CHUNK], s[i:i + CHUNK]))
                               for i in range(0, len(x), CHUNK)])[:n]

    return scorer


def evaluate_reward_model(scorer: Callable, rm_params, rankings: list) -> dict:
    """Held-out pairwise accuracy against the labeller's (noisy) labels and against the hidden true order."""
    pairs = lab.pairs_with_true_order(rankings)
    s_c = scorer(rm_params, [p.prompt for p, _ in pairs], [p.chosen for p, _ in pairs])
    s_r = scorer(rm_params, [p.prompt for p, _ in pairs], [p.rejected for p, _ in pairs])
    correct = float(np.sum(s_c > s_r) + 0.5 * np.sum(s_c == s_r))
    n = len(pairs)
    true_c = np.array([lab.true_score(p.chosen) for p, _ in pairs])
    true_r = np.array([lab.true_score(p.rejected) for p, _ in pairs])
    distinct = true_c != true_r
    true_acc = float(np.mean((np.sign(s_c - s_r) == np.sign(true_c - true_r))[distinct]))
    lo, hi = wilson_interval(correct, n)
    return {"pairs": n, "accuracy": correct / n, "ci95": [lo, hi], "accuracy_vs_true_order": true_acc,
            "label_agreement_with_true": float(np.mean([a for _, a in pairs]))}


# ---------------------------------------------------------------- GRPO against the reward model
def grpo_against_rm(model_cfg: ModelConfig, sft_params, rm_params, cfg: RLHFConfig, writer: Optional[MetricsWriter] = None,
                    mesh: MeshConfig = MeshConfig(), devices=None) -> dict:
    """GRPO with reward-model rewards and a k3 KL penalty to the SFT policy; held-out true-score checks.

    Returns {"steps", "checks": [{step, heldout_true, heldout_rm, samples}], "early_stop_step",
    "best_params" (the policy at the best held-out check), "final_params"}.
    """
    vocab, model = lab.ToyVocab(), Transformer(model_cfg)
    scorer = make_scorer(model_cfg, cfg.seq_len)
    factory = rl_loss_factory(grpo_loss, {"clip_eps": cfg.clip_eps, "kl_coef": cfg.kl_coef, "kl_estimator": "k3",
                                          "aggregation": "token"})
    trainer = _trainer_from(model_cfg, cfg.rl_lr, cfg.rl_steps, cfg.seed, mesh, devices, init_params=sft_params,
                            loss_fn_factory=factory)
    logp_fn = jax.jit(lambda p, x, t: token_log_probs(model.apply({"params": p}, x), t))
    ref_params = jax.device_put(sft_params)
    heldout = lab.toy_prompts(cfg.eval_prompts, cfg.seed * 1000 + 3)
    g = cfg.group_size

    def check(step: int, params) -> dict:
        texts = [grp[0] for grp in sample_groups(params, model_cfg, heldout, 1, 4242, cfg.max_new_tokens)]
        rec = {"step": step, "heldout_true": float(np.mean([lab.true_score(t) for t in texts])),
               "heldout_rm": float(np.mean(scorer(rm_params, heldout, texts))), "samples": texts[:4]}
        if writer is not None:
            writer.write(step, heldout_true=rec["heldout_true"], heldout_rm=rec["heldout_rm"], samples=rec["samples"])
        return rec

    checks = [check(0, _host(trainer.state.params))]
    best_true, best_step, best_params = checks[0]["heldout_true"], 0, sft_params
    stop_step, bad = None, 0
    bar = tqdm(range(1, cfg.rl_steps + 1), desc="grpo vs reward model", leave=False)
    t0 = time.perf_counter()
    for step in bar:
        params = trainer.state.params
        prompts = lab.toy_prompts(cfg.prompts_per_step, cfg.seed * 100003 + step)
        pids = [[vocab.bos_id] + vocab.encode(p) for p in prompts]
        outs = sample_completions(params, model_cfg, pids, g, max_new_tokens=cfg.max_new_tokens, temperature=1.0,
                                  seed=cfg.seed * 7919 + step, stops=(vocab.stop_id,), pad_id=vocab.pad_id)
        texts = [vocab.decode(o) for o in outs]
        rows = [p for p in prompts for _ in range(g)]
        rm = scorer(rm_params, rows, texts)  # [prompts * g]
        true = np.array([lab.true_score(t) for t in texts])
        adv = np.asarray(grpo_advantages(rm.reshape(-1, g))).reshape(-1)
        batch = make_batch([pid for pid in pids for _ in range(g)], outs, cfg.seq_len, advantages=adv, rewards=rm)
        batch["old_logp"] = np.asarray(logp_fn(params, batch["inputs"], batch["targets"])) * batch["loss_mask"]
        batch["ref_logp"] = np.asarray(logp_fn(ref_params, batch["inputs"], batch["targets"])) * batch["loss_mask"]
        m = jax.device_get(trainer.step(batch))  # kl (k3, to the SFT policy), entropy, clip_frac from the loss
        rec = {"rm_score": float(rm.mean()), "true_score": float(true.mean()), "kl": float(m["kl"]),
               "entropy": float(m["entropy"]), "clip_frac": float(m["clip_frac"]),
               "response_len": float(batch["loss_mask"].sum(-1).mean())}
        if writer is not None:
            writer.write(step, **rec)
        bar.set_postfix(rm=f"{rec['rm_score']:.2f}", true=f"{rec['true_score']:.2f}", kl=f"{rec['kl']:.3f}")
        if step % cfg.eval_every == 0 or step == cfg.rl_steps:
            c = check(step, _host(trainer.state.params))
            checks.append(c)
            if c["heldout_true"] > best_true:
                best_true, best_step, best_params, bad = c["heldout_true"], step, _host(trainer.state.params), 0
            else:
                bad += 1
                if bad >= cfg.patience and stop_step is None:
                    stop_step = best_step
                    tqdm.write(f"  early stop: held-out true score has not beaten step {best_step}'s "
                               f"{best_true:.3f} for {bad} checks (now step {step})")
                    if cfg.stop_early:
                        break
    return {"steps": step, "seconds": round(time.perf_counter() - t0, 1), "checks": checks,
            "early_stop_step": stop_step if stop_step is not None else best_step, "stopped": stop_step is not None,
            "best_heldout_true": best_true, "best_params": best_params, "final_params": _host(trainer.state.params)}


# ---------------------------------------------------------------- the whole toy pipeline
def run_rlhf(out_dir: str | Path, cfg: RLHFConfig = RLHFConfig(), mesh: MeshConfig = MeshConfig(), devices=None
             ) -> dict:
    """SFT → preference data → reward model → GRPO against it, with curves and a JSON-able summary.

    Writes out_dir/metrics.jsonl (per RL step: rm_score, true_score, kl, response_len; per check:
    heldout_true, heldout_rm, samples), reward_hacking.png, kl.png and rm_loss.png.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings, t = {}, time.perf_counter()
    model_cfg, sft_params, sft_stats = toy_sft(cfg, mesh, devices)
    timings["sft_s"], t = round(time.perf_counter() - t, 1), time.perf_counter()
    train_r, heldout_r = preference_data(sft_params, model_cfg, cfg)
    timings["label_s"], t = round(time.perf_counter() - t, 1), time.perf_counter()
    rm_params, rm_losses = train_reward_model(model_cfg, sft_params, train_r, cfg, mesh, devices)
    scorer = make_scorer(model_cfg, cfg.seq_len)
    rm_eval = evaluate_reward_model(scorer, rm_params, heldout_r)
    timings["reward_model_s"], t = round(time.perf_counter() - t, 1), time.perf_counter()
    writer = MetricsWriter(out_dir, tensorboard=False)
    try:
        rl = grpo_against_rm(model_cfg, sft_params, rm_params, cfg, writer, mesh, devices)
    finally:
        writer.close()
    timings["rl_s"] = round(time.perf_counter() - t, 1)
    records = read_metrics(out_dir / "metrics.jsonl")
    stop = rl["early_stop_step"]
    plot_curves(records, ["rm_score", "true_score", "heldout_rm", "heldout_true"], out_dir / "reward_hacking.png",
                title=f"GRPO against a learned reward model (early stop at step {stop})",
                hlines={"true score of the SFT policy": rl["checks"][0]["heldout_true"]})
    plot_curves(records, ["kl"], out_dir / "kl.png", title="KL(policy || SFT reference), k3 estimate")
    plot_curves([{"step": i + 1, "rm_loss": v} for i, v in enumerate(rm_losses)], ["rm_loss"], out_dir / "rm_loss.png",
                title=f"reward-model training loss ({cfg.rm_loss})")
    at = {c["step"]: c for c in rl["checks"]}
    final = rl["checks"][-1]
    summary = {
        "sft": sft_stats, "reward_model": {**rm_eval, "loss": cfg.rm_loss, "train_rankings": len(train_r),
                                           "final_loss": rm_losses[-1]},
        "early_stop_step": stop, "stopped": rl["stopped"], "rl_steps": rl["steps"],
        "sft_heldout_true": rl["checks"][0]["heldout_true"], "sft_heldout_rm": rl["checks"][0]["heldout_rm"],
        "early_stop_heldout_true": at[stop]["heldout_true"], "early_stop_heldout_rm": at[stop]["heldout_rm"],
        "final_heldout_true": final["heldout_true"], "final_heldout_rm": final["heldout_rm"],
        "rm_score_window": _windows(records, "rm_score", stop, rl["steps"]),
        "true_score_window": _windows(records, "true_score", stop, rl["steps"]),
        "samples": {"sft": rl["checks"][0]["samples"], "early_stop": at[stop]["samples"], "final": final["samples"]},
        "plots": [str(out_dir / n) for n in ("reward_hacking.png", "kl.png", "rm_loss.png")], "timings": timings,
    }
    return summary


def _windows(records: list[dict], key: str, stop: int, end: int, half: int = 5) -> dict:
    """Mean of a per-step metric around the early-stop step and over the last steps (noise-robust)."""
    def mean(lo, hi):
        vals = [r[key] for r in records if key in r and lo <= r["step"] <= hi]
        return float(np.mean(vals)) if vals else float("nan")
    return {"early_stop": mean(stop - half, stop + half), "end": mean(end - 2 * half + 1, end)}


HACKED_DROP = 0.25  # a fall of the held-out true score smaller than this is called a stall, not hacking
OVERSTATED_BY = 0.1  # the reward-model score rising this much more than the true score is over-optimisation


def report_markdown(s: dict, out_dir: Path, base: Path) -> str:
    """The run report's RLHF section: numbers, plots and what happened, written from the numbers."""
    rm, stop = s["reward_model"], s["early_stop_step"]
    rel = lambda p: os.path.relpath(p, base)  # noqa: E731
    fell = s["final_heldout_true"] < s["early_stop_heldout_true"] - HACKED_DROP
    rm_gain = s["final_heldout_rm"] - s["early_stop_heldout_rm"]
    true_gain = s["final_heldout_true"] - s["early_stop_heldout_true"]
    rose = rm_gain > 0
    verdict = ("the reward model was hacked: its score kept rising while the labeller's hidden true score fell"
               if fell and rose else
               f"the reward model was over-optimised: after the early stop its score rose {rm_gain:+.3f} while the "
               f"labeller's hidden true score moved {true_gain:+.3f}" if rose and rm_gain > true_gain + OVERSTATED_BY
               else "no reward hacking showed up in this run (the true score kept up with the reward-model score)")
    lines = [
        "## RLHF (toy language, simulated labeller)", "",
        f"Reward model (backbone from the SFT policy + scalar head, {rm['loss']} on {rm['train_rankings']} "
        f"rankings of {s.get('k', 4)}): held-out pairwise accuracy **{rm['accuracy']:.3f}** on {rm['pairs']} pairs "
        f"(95% CI {rm['ci95'][0]:.3f}-{rm['ci95'][1]:.3f}); the noisy labels themselves agree with the true "
        f"order on {rm['label_agreement_with_true']:.3f} of those pairs, the reward model on "
        f"{rm['accuracy_vs_true_order']:.3f} (pairs with different true scores).", "",
        "| policy | held-out true score | held-out reward-model score |", "|---|---|---|",
        f"| SFT (step 0) | {s['sft_heldout_true']:.3f} | {s['sft_heldout_rm']:.3f} |",
        f"| early stop (step {stop}) | {s['early_stop_heldout_true']:.3f} | {s['early_stop_heldout_rm']:.3f} |",
        f"| end (step {s['rl_steps']}) | {s['final_heldout_true']:.3f} | {s['final_heldout_rm']:.3f} |", "",
        f"What happened: {verdict}. Early stopping on the held-out true score keeps step {stop}.", "",
        f"![reward hacking]({rel(out_dir / 'reward_hacking.png')})", "", f"![kl]({rel(out_dir / 'kl.png')})", "",
        "Samples (held-out prompts):", ""]
    for when in ("sft", "early_stop", "final"):
        lines += [f"- {when}: " + "; ".join(f"`{t}`" for t in s["samples"][when][:3])]
    return "\n".join(lines)


def rlhf_stage(ctx) -> dict:
    """Speedrun stage: the toy RLHF run (~40 s CPU) with its report section.

    Reads `ctx.cfg.rlhf` (an RLHFConfig) when the experiment config has one, else the defaults.
    """
    cfg = getattr(ctx.cfg, "rlhf", None) or RLHFConfig()
    out_dir = ctx.stage_dir("rlhf")
    summary = run_rlhf(out_dir, cfg, ctx.cfg.mesh)
    summary["k"] = cfg.k
    return {**summary, "report_md": report_markdown(summary, out_dir, ctx.run_dir)}
