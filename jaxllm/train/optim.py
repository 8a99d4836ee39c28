"""AdamW with warmup + decay, gradient clipping, and no weight decay on norms, biases and embeddings."""
from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float = 3e-3
    warmup_steps: int = 50
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.1  # the schedule ends at lr * min_lr_ratio
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # global norm; 0 disables


def learning_rate_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup to `lr`, then cosine/linear decay to `lr * min_lr_ratio` at `total_steps`."""
    warmup = max(0, min(cfg.warmup_steps, total_steps - 1))
    end = cfg.lr * cfg.min_lr_ratio
    decay_steps = max(1, total_steps - warmup)
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.min_lr_ratio)
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(cfg.lr, end, decay_steps)
    else:
        decay = optax.constant_schedule(cfg.lr)
    if warmup == 0:
        return decay
    # step s < warmup gets lr * (s + 1) / warmup, so the first step already learns
    ramp = optax.linear_schedule(cfg.lr / warmup, cfg.lr, max(1, warmup - 1))
    return optax.join_schedules([ramp, decay], [warmup])


_NO_DECAY_NAMES = ("embed", "pos_embed", "norm", "bias", "scale")


def decay_mask(params) -> object:
    """True for leaves that get weight decay: matrices that are not embeddings, norms or biases."""
    def keep(path, leaf) -> bool:
        names = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
        if any(any(tag in name for tag in _NO_DECAY_NAMES) for name in names):
            return False
        return getattr(leaf, "ndim", 0) >= 2
    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(cfg, total_steps)
    parts = []
    if cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=decay_mask))
    return optax.chain(*parts)
