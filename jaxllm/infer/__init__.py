"""Inference: KV-cache decoding and samplers (engine and server build on these)."""
from jaxllm.infer.kv_cache import cache_bytes, init_cache
from jaxllm.infer.sampling import decode_step, generate, mask_top_k, mask_top_p, prefill, sample_logits

__all__ = [
    "init_cache", "cache_bytes", "prefill", "decode_step", "generate", "sample_logits", "mask_top_k", "mask_top_p",
]
