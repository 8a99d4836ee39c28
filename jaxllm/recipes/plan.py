"""The planner: per-device memory, a micro-batch / gradient-accumulation choice that fits, and step
time and tokens/s at a stated MFU, for an experiment config on a named accelerator.

Memory model (bytes per device; P params, p = param bytes, a = activation bytes, T = tokens per
device per micro-batch, L layers, d model width, f MLP width, h/kv heads, hd head dim, s seq len):
  params P*p/S, gradients P*p/S (x2 with accumulation), AdamW moments 2*P*p/S, S = fsdp*tensor shards,
  optimizer-update temporaries P*p/S;
  activations kept for the backward pass, per layer (no remat): a*T*(every intermediate the layer makes:
      block input, norm outputs, residuals, q/k/v, rotated q/k, attention output, MLP hidden states)
      + 4*T*(float32 norm/RoPE internals when a = 2) + 4*2*b*h*s*s (float32 attention logits and
      probabilities: the XLA attention path), x1.3 under nn.scan (measured on XLA:CPU);
  remat "full" keeps 2*a*T*d per layer plus one layer recomputed at a time; logits 4*T*V (float32).
See docs/scale.md for how this compares with XLA's memory analysis and published figures.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from jaxllm.model import ModelConfig
from jaxllm.model.config import flops_per_token, param_count
from jaxllm.parallel import MeshConfig, mesh_shape

GB = 1e9


@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str
    memory_gb: float  # HBM per chip
    bf16_tflops: float  # dense bf16 peak per chip
    interconnect_gbs: float  # chip-to-chip bandwidth per chip, GB/s one direction (NVLink / ICI, all links)
    chips_per_host: int
    note: str = ""


# Vendor datasheets (NVIDIA H100/H200 SXM, A100 SXM 80GB; Google Cloud TPU system architecture pages);
# interconnect as in "How to Scale Your Model" (one direction, summed over a chip's links).
ACCELERATORS: dict[str, Accelerator] = {
    "h100": Accelerator("NVIDIA H100 SXM", 80, 989, 450, 8, "NVLink 4: 900 GB/s bidirectional"),
    "h200": Accelerator("NVIDIA H200 SXM", 141, 989, 450, 8, "NVLink 4: 900 GB/s bidirectional"),
    "a100": Accelerator("NVIDIA A100 SXM 80GB", 80, 312, 300, 8, "NVLink 3: 600 GB/s bidirectional"),
    "tpu-v4": Accelerator("Cloud TPU v4", 32, 275, 270, 4, "3D torus, 6 ICI links x 45 GB/s"),
    "tpu-v5e": Accelerator("Cloud TPU v5e", 16, 197, 180, 8, "2D torus, 4 ICI links x 45 GB/s"),
    "tpu-v5p": Accelerator("Cloud TPU v5p", 95, 459, 540, 4, "3D torus, 6 ICI links x 90 GB/s"),
    "tpu-v6e": Accelerator("Cloud TPU v6e (Trillium)", 32, 918, 360, 8, "2D torus, 4 ICI links x 90 GB/s"),
}
_ALIASES = {"v4": "tpu-v4", "v5e": "tpu-v5e", "v5p": "tpu-v5p", "v6e": "tpu-v6e", "tpuv5p": "tpu-v5p"}


def get_accelerator(name: str) -> Accelerator:
    key = name.lower().replace("_", "-").replace(" ", "-")
    key = _ALIASES.get(key.replace("-", ""), _ALIASES.get(key, key))
    if key not in ACCELERATORS:
        raise ValueError(f"unknown hardware {name!r}; known: {', '.join(ACCELERATORS)}")
    return ACCELERATORS[key]


def _bytes(dtype: str) -> int:
    return {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]


SCAN_OVERHEAD = 1.3  # nn.scan keeps stacked residuals plus loop copies: measured 1.3x on XLA:CPU (docs/scale.md)


def _saved_per_token(model: ModelConfig, tensor: int = 1) -> float:
    """Elements per token one layer leaves for its backward pass without remat: every intermediate
    that is not fused away (inputs, norm outputs, projections, RoPE'd q/k, MLP hidden states)."""
    d, f = model.d_model, model.d_ff / tensor
    q, kv = model.n_heads * model.resolved_head_dim / tensor, model.n_kv_heads * model.resolved_head_dim / tensor
    if model.family == "llama":  # block input, 2 norm outputs, mid residual, attention and MLP outputs;
        # q k v, rotated q k, attention out; gate, up, silu, hidden
        return 6 * d + (q + 2 * kv) + (q + kv) + q + 4 * f
    # as above plus the centred LayerNorm inputs; q k v, attention out; up, tanh input, tanh, gelu
    return 8 * d + 3 * q + q + 4 * f


def _f32_per_token(model: ModelConfig, tensor: int = 1) -> float:
    """Extra float32 elements per token when activations are 16-bit: norms and RoPE compute in float32."""
    if model.dtype == "float32":
        return 0.0
    rope = (model.n_heads + model.n_kv_heads) * model.resolved_head_dim / tensor if model.family == "llama" else 0
    return 2 * model.d_model + rope


def memory_per_device(model: ModelConfig, seq_len: int, micro_rows: int, mesh: tuple[int, int, int],
                      grad_accum: int = 1, remat: Optional[str] = None) -> dict:
    """Estimated bytes per device for one train step; `micro_rows` = sequences per device per micro-batch."""
    data, fsdp, tensor = mesh
    remat = model.remat if remat is None else remat
    shards = fsdp * tensor
    n = param_count(model)
    p, a = _bytes(model.param_dtype), _bytes(model.dtype)
    d, f, h, kv, hd, L = (model.d_model, model.d_ff, model.n_heads, model.n_kv_heads, model.resolved_head_dim,
                          model.n_layers)
    T = micro_rows * seq_len
    params = n * p / shards
    opt_state = 2 * n * p / shards
    grads = n * p / shards * (2 if grad_accum > 1 else 1)
    one_layer = (a * T * _saved_per_token(model, tensor) + 4 * T * _f32_per_token(model, tensor)
                 + 4 * 2 * micro_rows * (h / tensor) * seq_len ** 2)  # + f32 attention logits and probabilities
    if remat == "full":  # keep each layer's input (and a loop copy), recompute one layer at a time
        activations = L * 2 * a * T * d + one_layer
    elif remat == "dots":  # matmul outputs kept, elementwise results recomputed
        activations = L * a * T * (2 * d + hd * (h + 2 * kv) / tensor + 2 * f / tensor) + one_layer
    else:
        activations = L * one_layer * (SCAN_OVERHEAD if model.scan_layers else 1.0)
    logits = 4 * T * model.vocab_size / tensor  # f32 logits (their gradient is fused into the matmuls)
    update = n * p / shards  # optimizer-update temporaries
    total = params + opt_state + grads + update + activations + logits
    return {"params": params, "opt_state": opt_state, "grads": grads, "update": update, "activations": activations,
            "logits": logits, "total": total}


def step_time(model: ModelConfig, seq_len: int, global_rows: int, chips: int, acc: Accelerator, mfu: float,
              mesh: tuple[int, int, int]) -> dict:
    """Compute time at `mfu` of peak, and the FSDP/data-parallel traffic over the interconnect."""
    tokens = global_rows * seq_len
    flops = flops_per_token(model, seq_len) * tokens
    compute_s = flops / (chips * acc.bf16_tflops * 1e12 * mfu)
    n_bytes = param_count(model) * _bytes(model.param_dtype)
    data, fsdp, tensor = mesh
    comm = 0.0  # bytes each chip sends per step
    if fsdp > 1:  # all-gather params (forward and backward) + reduce-scatter grads
        comm += 3 * n_bytes / tensor * (fsdp - 1) / fsdp
    if data > 1:  # all-reduce the (fsdp-sharded) grads
        comm += 2 * n_bytes / (fsdp * tensor) * (data - 1) / data
    comm_s = comm / (acc.interconnect_gbs * GB)
    step_s = max(compute_s, comm_s)  # FSDP collectives overlap with compute when compute dominates
    return {"flops": flops, "compute_s": compute_s, "comm_s": comm_s, "step_s": step_s,
            "tokens_per_s": tokens / step_s, "tokens_per_step": tokens}


def plan(model: ModelConfig, seq_len: int, global_rows: int, mesh_cfg: MeshConfig, acc: Accelerator, chips: int,
         mfu: float = 0.4, headroom: float = 0.9) -> dict:
    """Pick the largest micro-batch (fewest accumulation steps) that fits, with the least remat that
    makes it fit (none, then dots, then full): big micro-batches keep the matmuls efficient."""
    mesh = mesh_shape(mesh_cfg, chips)
    batch_shards = mesh[0] * mesh[1]
    if global_rows % batch_shards:
        raise ValueError(f"global batch {global_rows} rows does not split over {batch_shards} data*fsdp shards; "
                         f"use a multiple of {batch_shards}")
    rows_per_device = global_rows // batch_shards
    budget = acc.memory_gb * GB * headroom
    base = {"mesh": mesh, "budget": budget, "rows_per_device": rows_per_device,
            "no_remat_full_batch": memory_per_device(model, seq_len, rows_per_device, mesh, 1, "none"),
            **step_time(model, seq_len, global_rows, chips, acc, mfu, mesh)}
    for accum in [k for k in range(1, rows_per_device + 1) if rows_per_device % k == 0]:
        for remat in ("none", "dots", "full"):
            mem = memory_per_device(model, seq_len, rows_per_device // accum, mesh, accum, remat)
            if mem["total"] <= budget:
                return {**base, "fits": True, "remat": remat, "grad_accum": accum,
                        "micro_rows": rows_per_device // accum, "memory": mem}
    mem = memory_per_device(model, seq_len, 1, mesh, rows_per_device, "full")
    return {**base, "fits": False, "remat": "full", "grad_accum": rows_per_device, "micro_rows": 1, "memory": mem}


def format_plan(name: str, model: ModelConfig, seq_len: int, global_rows: int, acc: Accelerator, chips: int,
                mfu: float, r: dict) -> str:
    g = lambda b: f"{b / GB:8.2f} GB"  # noqa: E731
    m, m0 = r["memory"], r["no_remat_full_batch"]
    lines = [
        f"plan for {name} on {chips} x {acc.name} ({acc.memory_gb:g} GB, {acc.bf16_tflops:g} TFLOP/s bf16, "
        f"{acc.interconnect_gbs:g} GB/s interconnect)",
        f"model: {model.family}, {param_count(model) / 1e9:.3f}B params, {model.n_layers} layers, d_model "
        f"{model.d_model}, dtype {model.dtype}, params {model.param_dtype}",
        f"mesh (data, fsdp, tensor) = {r['mesh']}; global batch {global_rows} x {seq_len} tokens",
        "", "per-device memory            chosen   | no remat, no accumulation",
    ]
    for key in ("params", "grads", "opt_state", "update", "activations", "logits", "total"):
        lines.append(f"  {key:<14}{g(m[key])}   | {g(m0[key])}")
    lines += [
        f"  budget        {g(r['budget'])}   (90% of HBM)",
        "",
        (f"fits: micro-batch {r['micro_rows']} sequences per device x {r['grad_accum']} accumulation steps, "
         f"remat={r['remat']}") if r["fits"] else
        "DOES NOT FIT even with remat=full and micro-batch 1: add chips, use tensor parallelism or bf16 params",
        f"step: {r['flops']:.3g} FLOP; compute {r['compute_s']:.3f} s at {mfu:.0%} MFU, "
        f"collectives {r['comm_s']:.3f} s -> ~{r['step_s']:.3f} s/step, "
        f"{r['tokens_per_s']:,.0f} tokens/s ({r['tokens_per_s'] / chips:,.0f} per chip)",
    ]
    return "\n".join(lines)


def compiled_memory(model: ModelConfig, seq_len: int, global_rows: int, mesh_cfg: MeshConfig = MeshConfig(),
                    grad_accum: int = 1, devices=None) -> dict:
    """XLA's own memory analysis of the compiled train step (bytes per device), to check the estimate."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding

    from jaxllm.parallel import shard_batch_spec
    from jaxllm.recipes.pretrain import Trainer
    from jaxllm.train.optim import OptimConfig
    from jaxllm.train.step import TrainConfig

    trainer = Trainer.create(model, mesh_cfg, OptimConfig(), TrainConfig(steps=10, grad_accum=grad_accum), 0,
                             devices=devices)
    sharding = NamedSharding(trainer.mesh, shard_batch_spec())
    batch = {k: jax.ShapeDtypeStruct((global_rows, seq_len), np.float32 if k == "loss_mask" else np.int32,
                                     sharding=sharding)
             for k in ("inputs", "targets", "segment_ids", "positions", "loss_mask")}
    with trainer.mesh:
        ma = trainer.train_step.lower(trainer.state, batch).compile().memory_analysis()
    return {"arguments": ma.argument_size_in_bytes, "outputs": ma.output_size_in_bytes,
            "aliased": ma.alias_size_in_bytes, "temp": ma.temp_size_in_bytes,
            "peak": ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes
            + ma.temp_size_in_bytes}
