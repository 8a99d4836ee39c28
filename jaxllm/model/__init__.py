"""The Transformer (GPT-2 / Llama families), its config, presets, pure layers and losses."""
from jaxllm.model.config import ModelConfig, flops_per_token, param_count
from jaxllm.model.loss import cross_entropy_loss, token_log_probs
from jaxllm.model.presets import PRESETS, get_preset, tiny, tiny_hparams
from jaxllm.model.transformer import KVCache, Transformer

__all__ = [
    "ModelConfig", "Transformer", "KVCache", "get_preset", "tiny", "tiny_hparams", "PRESETS",
    "cross_entropy_loss", "token_log_probs", "param_count", "flops_per_token",
]
