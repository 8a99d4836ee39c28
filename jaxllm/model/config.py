"""ModelConfig: the one typed description of a Transformer (GPT-2 or Llama family).

Simple field types only, so `--set model.d_model=256` works through jaxllm.config.
"""
from __future__ import annotations

import dataclasses
from typing import Literal, get_args

Family = Literal["gpt2", "llama"]
AttentionImpl = Literal["xla", "cudnn", "auto", "blocked", "fused"]
MatmulImpl = Literal["xla", "blas"]  # "blas": float32 CPU matmuls through MKL (jaxllm/kernels)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a decoder-only Transformer.

    family "gpt2": learned positions, LayerNorm (+bias), GELU(tanh) MLP, biases everywhere.
    family "llama": RoPE (half-split), RMSNorm, SwiGLU MLP, grouped-query attention, no biases.
    """

    family: Family = "llama"
    vocab_size: int = 4096
    max_seq_len: int = 256
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 2
    n_kv_heads: int = 2
    head_dim: int = 0  # 0 = d_model // n_heads
    d_ff: int = 512
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_embeddings: bool = False
    use_bias: bool = False
    dtype: str = "float32"  # compute dtype of activations and matmuls
    param_dtype: str = "float32"  # storage dtype of parameters
    remat: Literal["none", "full", "dots"] = "none"
    attention_impl: AttentionImpl = "xla"
    matmul_impl: MatmulImpl = "xla"
    scan_layers: bool = True
    init_std: float = 0.02

    def __post_init__(self):
        def bad(msg: str):
            raise ValueError(f"ModelConfig: {msg}")

        if self.family not in ("gpt2", "llama"):
            bad(f"family={self.family!r} must be 'gpt2' or 'llama'")
        for name in ("vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff"):
            if getattr(self, name) <= 0:
                bad(f"{name}={getattr(self, name)} must be positive")
        if self.n_heads % self.n_kv_heads:
            bad(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim == 0 and self.d_model % self.n_heads:
            bad(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; set head_dim explicitly")
        if self.family == "llama" and self.resolved_head_dim % 2:
            bad(f"head_dim={self.resolved_head_dim} must be even for RoPE")
        for name, allowed in (("attention_impl", get_args(AttentionImpl)), ("matmul_impl", get_args(MatmulImpl))):
            if getattr(self, name) not in allowed:
                bad(f"{name}={getattr(self, name)!r} must be one of {', '.join(map(repr, allowed))}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in ("float32", "bfloat16", "float16"):
                bad(f"{name}={getattr(self, name)!r} must be float32, bfloat16 or float16")

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.d_model // self.n_heads


def param_count(cfg: ModelConfig, include_embeddings: bool = True) -> int:
    """Number of parameters, computed from the config (matches the initialised tree)."""
    d, hd, bias = cfg.d_model, cfg.resolved_head_dim, cfg.use_bias
    attn = d * hd * (cfg.n_heads * 2 + cfg.n_kv_heads * 2)
    if bias:
        attn += hd * (cfg.n_heads + 2 * cfg.n_kv_heads) + d
    n_mlp_in = 2 if cfg.family == "llama" else 1
    mlp = d * cfg.d_ff * (n_mlp_in + 1) + ((cfg.d_ff + d) if bias else 0)
    norm = d * (2 if cfg.family == "gpt2" else 1)
    per_layer = attn + mlp + 2 * norm
    total = cfg.n_layers * per_layer + norm
    if include_embeddings:
        total += cfg.vocab_size * d
        if cfg.family == "gpt2":
            total += cfg.max_seq_len * d
        if not cfg.tie_embeddings:
            total += d * cfg.vocab_size
    elif not cfg.tie_embeddings:
        total += d * cfg.vocab_size  # the lm_head is a real matmul
    return total


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward), PaLM-style.

    6 * (non-embedding matmul params incl. the output projection) + 12 * layers * seq_len * heads * head_dim
    for attention scores and values.
    """
    matmul_params = param_count(cfg, include_embeddings=False)
    if cfg.tie_embeddings:
        matmul_params += cfg.vocab_size * cfg.d_model  # tied output projection is still a matmul
    attn = 12 * cfg.n_layers * seq_len * cfg.n_heads * cfg.resolved_head_dim
    return 6.0 * matmul_params + attn
