"""Supervised finetuning: a base model becomes an assistant by training on conversations with loss masks.

The same sharded train step and loop as pretraining (`train_loop`); only the data differ: rendered
conversations whose loss mask covers what the assistant writes. The stage measures identity and
tool use on held-out questions before and after, with the number of trials beside each rate.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax

from jaxllm.data.generators import write_mixture
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


def parse_mixture(entries: tuple[str, ...]) -> dict:
    """("arithmetic:1500:max_digits=2", ...) → {"arithmetic": (1500, {"max_digits": 2}), ...}."""
    out = {}
    for entry in entries:
        name, _, rest = entry.partition(":")
        count, _, opts = rest.partition(":")
        options = {}
        for kv in filter(None, opts.split(",")):
            key, _, value = kv.partition("=")
            options[key] = int(value) if value.lstrip("-").isdigit() else value
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


def sft(out_dir: Path, model_cfg: ModelConfig, init_params, tokenizer, cfg: SFTConfig, mesh: MeshConfig,
        files: tuple[str, ...]) -> dict:
    """Finetune `init_params` on the conversation files (resumable) and return loop metrics."""
    data_cfg = dataclasses.replace(cfg.data, files=files, seq_len=model_cfg.max_seq_len)
    data = load_sft_data(data_cfg, tokenizer)
    print(data.summary())
    trainer = Trainer.create(model_cfg, mesh, cfg.optim, cfg.train, cfg.seed, init_params=init_params)
    data_iter = make_sft_iterator(data.train, data_cfg, jax.process_index(), jax.process_count())
    eval_batches = list(make_sft_eval_batches(data.validation, data_cfg, cfg.train.eval_batches))
    result = train_loop(out_dir, trainer, data_iter, eval_batches, token_byte_lengths(tokenizer), cfg.train,
                        tokens_per_step=data_cfg.batch_size * data_cfg.seq_len * jax.process_count(),
                        flops_per_tok=flops_per_token(model_cfg, data_cfg.seq_len), title="sft")
    return result | {"data": data.summary(), "params_out": trainer.state.params}


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
    after = behaviour("sft", model_cfg, result.pop("params_out"), tok, s.eval_trials, s.seed)
    if jax.process_index() == 0:
        from jaxllm.train.metrics import read_metrics
        plot_curves(read_metrics(out / "metrics.jsonl"), ["loss", "val_loss"], out / "loss.png",
                    title="SFT loss on assistant tokens (nats/token)")
    return {**result, "before": before, "after": after, "report_md": report_section(result, before, after, out, ctx.run_dir)}


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
