"""The pretraining loop: sharded steps, validation bpb, live samples, async checkpoints, exact resume."""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxllm.data.pipeline import PipelineConfig, make_eval_batches
from jaxllm.eval.bpb import evaluate_loss_and_bpb, token_byte_lengths

from jaxllm.model import ModelConfig, Transformer
from jaxllm.model.config import flops_per_token, param_count
from jaxllm.parallel import LOGICAL_RULES, MeshConfig, make_mesh
from jaxllm.parallel.distributed import global_batch_iterator
from jaxllm.train.checkpoint import Checkpointer, abstract_like
from jaxllm.train.metrics import MetricsWriter, device_peak_flops, plot_curves, read_metrics
from jaxllm.train.optim import OptimConfig, learning_rate_schedule, make_optimizer
from jaxllm.train.sharded import device_batch, init_sharded_state, jit_eval_step, jit_train_step
from jaxllm.train.step import TrainConfig, lm_loss_fn, make_eval_step, make_train_step


@dataclasses.dataclass
class Trainer:
    """Everything a loop needs for one model on one mesh: built once, reused by pretrain and SFT."""
    model: Transformer
    mesh: jax.sharding.Mesh
    state: object
    shardings: object
    train_step: Callable
    eval_step: Callable
    schedule: Callable

    @classmethod
    def create(cls, model_cfg: ModelConfig, mesh_cfg: MeshConfig, optim: OptimConfig, train: TrainConfig,
               seed: int, init_params=None, loss_fn_factory: Callable | None = None,
               devices=None) -> "Trainer":
        model = Transformer(model_cfg)
        mesh = make_mesh(mesh_cfg, devices)
        optimizer = make_optimizer(optim, train.steps)
        dummy = jnp.zeros((1, min(8, model_cfg.max_seq_len)), jnp.int32)

        def init_boxed(rng):
            params = model.init(rng, dummy)["params"]
            if init_params is not None:  # keep the boxes (for shardings) but start from given weights
                params = jax.tree.map(lambda box, w: box.replace_boxed(jnp.asarray(w, box.unbox().dtype))
                                      if isinstance(box, nn.LogicallyPartitioned) else jnp.asarray(w),
                                      params, init_params,
                                      is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
            return params

        with nn.logical_axis_rules(LOGICAL_RULES):
            state, shardings = init_sharded_state(init_boxed, optimizer, mesh, LOGICAL_RULES,
                                                  jax.random.key(seed))
        loss_fn = (loss_fn_factory or (lambda apply: lm_loss_fn(apply, train.z_loss)))(model.apply)
        step = jit_train_step(make_train_step(loss_fn, optimizer, train.grad_accum), shardings, mesh)
        eval_step = jit_eval_step(make_eval_step(loss_fn), shardings, mesh)
        return cls(model, mesh, state, shardings, step, eval_step, learning_rate_schedule(optim, train.steps))

    def step(self, batch: dict) -> dict:
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(LOGICAL_RULES):
            self.state, metrics = self.train_step(self.state, device_batch(batch, self.mesh))
        return metrics

    def evaluate(self, batches, byte_lengths: np.ndarray) -> dict:
        def run(batch):
            with jax.set_mesh(self.mesh), nn.logical_axis_rules(LOGICAL_RULES):
                return self.eval_step(self.state.params, device_batch(batch, self.mesh))
        return evaluate_loss_and_bpb(run, batches, byte_lengths)


def sample_texts(params, model_cfg: ModelConfig, tokenizer, prompts, max_new_tokens=40, temperature=0.8,
                 top_k=50, top_p=1.0, seed=0) -> list[str]:
    from jaxllm.infer.sampling import generate

    if not prompts:
        return []
    prompt_ids = [[tokenizer.bos_id] + tokenizer.encode(p) for p in prompts]
    out = generate(params, model_cfg, prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature,
                   top_k=top_k, top_p=top_p, seed=seed, stop_ids=(tokenizer.bos_id,))
    return [p + tokenizer.decode([t for t in o if t != tokenizer.bos_id]) for p, o in zip(prompts, out)]


def pretrain(out_dir: Path, model_cfg: ModelConfig, mesh_cfg: MeshConfig, optim: OptimConfig,
             train: TrainConfig, pipeline: PipelineConfig, train_shards: str, val_shards: str, tokenizer,
             sample_cfg=None, seed: int = 0) -> dict:
    """Train from scratch (or resume from `out_dir/checkpoints`) and return final metrics."""
    def make_trainer(train):
        return Trainer.create(model_cfg, mesh_cfg, optim, train, seed)

    train = fit_steps_to_budget(Path(out_dir), train, make_trainer, global_batch_iterator(train_shards, pipeline))
    trainer = make_trainer(train)
    data_iter = global_batch_iterator(train_shards, pipeline)  # same global batches on any process count
    eval_batches = list(make_eval_batches(val_shards, pipeline, train.eval_batches))

    def samples(params, step):
        if sample_cfg is None:
            return []
        return sample_texts(params, model_cfg, tokenizer, sample_cfg.prompts, sample_cfg.max_new_tokens,
                            sample_cfg.temperature, sample_cfg.top_k, sample_cfg.top_p, seed=sample_cfg.seed + step)

    return train_loop(out_dir, trainer, data_iter, eval_batches, token_byte_lengths(tokenizer), train,
                      tokens_per_step=pipeline.batch_size * pipeline.seq_len,  # batch_size is global rows per step
                      flops_per_tok=flops_per_token(model_cfg, pipeline.seq_len), sample_fn=samples,
                      title="pretraining") | {"params": param_count(model_cfg)}


def fit_steps_to_budget(out_dir: Path, train: TrainConfig, make_trainer: Callable, batches,
                        measure_steps: int = 10) -> TrainConfig:
    """With train.steps == 0, choose the schedule length that fills train.time_budget_s.

    The step time is measured once on throwaway steps and recorded in out_dir/calibration.json, so
    a resumed run keeps the same schedule (and so the same losses).
    """
    if train.steps > 0:
        return train
    if train.time_budget_s <= 0:
        raise ValueError("train.steps=0 needs train.time_budget_s > 0 (the schedule is fitted to the time budget)")
    record = Path(out_dir) / "calibration.json"
    if record.exists():
        return dataclasses.replace(train, steps=int(json.loads(record.read_text())["steps"]))
    probe = make_trainer(dataclasses.replace(train, steps=1000))
    for _ in range(3):  # compile and warm up
        jax.block_until_ready(probe.step(next(batches)))
    times = []
    for _ in range(measure_steps):  # the step alone (the loop prefetches batches), median: one slow step is noise
        batch = next(batches)
        t0 = time.perf_counter()
        jax.block_until_ready(probe.step(batch))
        times.append(time.perf_counter() - t0)
    step_time = float(np.median(times))
    steps = max(10, int(0.95 * train.time_budget_s / step_time))
    if jax.process_count() > 1:  # every process must use the same schedule: process 0 decides
        from jax.experimental import multihost_utils
        steps = int(multihost_utils.broadcast_one_to_all(np.int32(steps)))
    if jax.process_index() == 0:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"steps": steps, "step_seconds": step_time}))
    print(f"[jaxllm] {step_time:.3f} s/step: fitting the schedule to {steps} steps in {train.time_budget_s:.0f} s")
    return dataclasses.replace(train, steps=steps)


def train_loop(out_dir: Path, trainer: Trainer, data_iter, eval_batches: list[dict], byte_lengths: np.ndarray,
               train: TrainConfig, tokens_per_step: int, flops_per_tok: float,
               sample_fn: Callable[[object, int], list[str]] | None = None, title: str = "training") -> dict:
    """Steps, logging, validation, samples and checkpoints around `trainer`; resumes from `out_dir/checkpoints`.

    Shared by pretraining and SFT: the data iterator (a grain iterator, restored in place) decides
    what is trained on. Per-step losses go to metrics.jsonl; a killed run resumes to the same numbers.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = Checkpointer(out_dir / "checkpoints", keep=train.keep_checkpoints, async_save=train.async_checkpointing)
    restored = ckpt.restore(abstract_like(trainer.state, trainer.shardings), data_iter)
    step, elapsed = 0, 0.0
    if restored is not None:
        step, trainer.state, meta = restored
        elapsed = float(meta.get("train_seconds", 0.0))
        print(f"[jaxllm] {title}: resumed from checkpoint at step {step}")
    metrics = MetricsWriter(out_dir, resume_step=step)
    flops_over_peak = flops_per_tok / device_peak_flops()

    def validate(step):
        ev = trainer.evaluate(eval_batches, byte_lengths)
        metrics.write(step, val_loss=ev["loss"], val_bpb=ev["bpb"])
        return ev

    def samples(step):
        texts = sample_fn(trainer.state.params, step) if sample_fn else []
        if texts:
            metrics.write(step, samples=texts)
            for t in texts:
                tqdm.write(f"  step {step} sample: {t!r}")
        return texts

    def flush(pending, rate=None):
        for (s, _), hm in zip(pending, jax.device_get([m for _, m in pending])):
            extra = {"tokens_per_s": rate, "mfu": rate * flops_over_peak} if rate else {}
            metrics.write(s, loss=float(hm["loss"]), grad_norm=float(hm["grad_norm"]),
                          lr=float(trainer.schedule(s - 1)), **extra)
        return float(hm["loss"])

    try:
        if step == 0 and train.sample_every:
            samples(0)
        pending: list[tuple[int, dict]] = []
        bar = tqdm(total=train.steps, initial=step, desc=title, unit="step", dynamic_ncols=True)
        t_last, step_last = time.perf_counter(), step
        stopped_by_budget = False
        saved_step = step
        compile_seconds = None  # the first step after a (re)start compiles: not training time
        while step < train.steps:
            if train.time_budget_s and elapsed >= train.time_budget_s:
                stopped_by_budget = True
                break
            t0 = time.perf_counter()
            m = trainer.step(next(data_iter))
            step += 1
            pending.append((step, m))
            last = step == train.steps
            if step % train.log_every == 0 or last:
                jax.block_until_ready([m for _, m in pending])  # the rate counts finished steps only
                now = time.perf_counter()
                rate = (step - step_last) * tokens_per_step / max(now - t_last, 1e-9)
                t_last, step_last = now, step
                loss = flush(pending, rate)
                pending = []
                if not math.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss} at step {step}; lower the learning rate or check the data")
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}", mfu=f"{rate * flops_over_peak:.1%}")
            if compile_seconds is None:
                jax.block_until_ready(m)
                compile_seconds = time.perf_counter() - t0
                t_last, step_last = time.perf_counter(), step
            else:
                elapsed += time.perf_counter() - t0
            bar.update(1)
            if train.eval_every and (step % train.eval_every == 0 or last):
                ev = validate(step)
                tqdm.write(f"  step {step}: val loss {ev['loss']:.4f}, val bpb {ev['bpb']:.4f}")
            if train.sample_every and step % train.sample_every == 0:
                samples(step)
            if train.checkpoint_every and (step % train.checkpoint_every == 0 or last):
                ckpt.save(step, trainer.state, data_iter, {"train_seconds": elapsed, "step": step})
                saved_step = step
        bar.close()
        if pending:  # stopped by the time budget between log points
            flush(pending)
        if saved_step != step:
            ckpt.save(step, trainer.state, data_iter, {"train_seconds": elapsed, "step": step}, force=True)
        final = validate(step)
        final_samples = samples(step)
        records = read_metrics(out_dir / "metrics.jsonl")
        if jax.process_index() == 0:
            plot_curves(records, ["loss", "val_loss"], out_dir / "loss.png", title=f"{title} loss (nats/token)")
            plot_curves(records, ["val_bpb"], out_dir / "val_bpb.png", title="validation bits per byte")
        return {"steps": step, "train_seconds": round(elapsed, 1), "compile_seconds": round(compile_seconds or 0, 1),
                "val_loss": final["loss"], "val_bpb": final["bpb"],
                "samples": final_samples, "stopped_by_time_budget": stopped_by_budget}
    finally:
        ckpt.close()  # never exit with an async save in flight
        metrics.close()


def load_params(out_dir: Path, model_cfg: ModelConfig, optim: OptimConfig, mesh_cfg: MeshConfig | None = None):
    """Latest parameters of a run's checkpoints (for sampling/eval); `optim` must match the run's."""
    trainer = Trainer.create(model_cfg, mesh_cfg or MeshConfig(), optim, TrainConfig(steps=1), seed=0)
    ckpt = Checkpointer(Path(out_dir) / "checkpoints", async_save=False)
    restored = ckpt.restore(abstract_like(trainer.state, trainer.shardings))
    ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint under {out_dir}/checkpoints")
    return restored[1].params
