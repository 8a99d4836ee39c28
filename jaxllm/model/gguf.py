"""Read a GGUF file (llama.cpp's format) into our ModelConfig, params, tokenizer and chat template.

Weights are dequantised to float32 with `gguf.quants.dequantize`, renamed to Hugging Face Llama
names and handed to `convert.params_from_hf`, so GGUF and safetensors share one mapping. The one
GGUF-specific step: llama.cpp stores the q/k projection rows permuted for interleaved-pair RoPE;
we undo that permutation, because our RoPE (like HF Llama's) rotates half-split pairs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jaxllm.model import convert
from jaxllm.model.config import ModelConfig
from jaxllm.tokenizer.hf_bpe import HFBPETokenizer

_BIG_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores")

# GGUF tensor name (per block) -> HF Llama name
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias", "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}


@dataclass(frozen=True)
class GGUFModel:
    """Everything a GGUF file holds, converted: cfg, params (plain float32 arrays), tokenizer, template."""

    cfg: ModelConfig
    params: dict
    tokenizer: HFBPETokenizer
    chat_template: str | None
    metadata: dict[str, Any]


def _reader(path: str | Path):
    import gguf  # a runtime dependency only for GGUF files

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"GGUF file {path} not found")
    try:
        return gguf.GGUFReader(path)
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: not a readable GGUF file ({e})") from e


def read_metadata(reader, arrays: tuple[str, ...] = ()) -> dict[str, Any]:
    """Metadata key -> value; the big tokenizer arrays only if named in `arrays` (they take a second)."""
    out = {}
    for key, field in reader.fields.items():
        if key in _BIG_ARRAYS and key not in arrays:
            continue
        out[key] = field.contents()
    return out


def hf_config_from_gguf(meta: dict[str, Any]) -> dict[str, Any]:
    """The HF Llama config.json dict a GGUF's `llama.*` metadata describes."""
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF architecture {arch!r} is not supported; only 'llama' (Llama, SmolLM, Mistral-style)")
    a = "llama."
    heads = meta[a + "attention.head_count"]
    d = meta[a + "embedding_length"]
    hd = meta.get(a + "rope.dimension_count", d // heads)
    vocab = meta.get(a + "vocab_size") or len(meta["tokenizer.ggml.tokens"])
    return {"model_type": "llama", "vocab_size": vocab, "hidden_size": d, "intermediate_size": meta[a + "feed_forward_length"],
            "num_hidden_layers": meta[a + "block_count"], "num_attention_heads": heads,
            "num_key_value_heads": meta.get(a + "attention.head_count_kv", heads), "head_dim": hd,
            "max_position_embeddings": meta.get(a + "context_length", 2048),
            "rms_norm_eps": float(meta.get(a + "attention.layer_norm_rms_epsilon", 1e-5)),
            "rope_theta": float(meta.get(a + "rope.freq_base", 10000.0)),
            "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"), "eos_token_id": meta.get("tokenizer.ggml.eos_token_id")}


def unpermute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (interleaved-pair RoPE -> half-split). w: [n_heads*head_dim, d]."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's permutation (what its converter applies to HF q/k weights); inverse of `unpermute_rope`."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_state_from_gguf(reader, hf_cfg: dict[str, Any], progress: bool = True) -> dict[str, np.ndarray]:
    """Dequantised float32 tensors under HF Llama names, q/k rows un-permuted. [out, in] like torch."""
    from gguf.quants import dequantize
    from tqdm.auto import tqdm

    state = {}
    for t in tqdm(reader.tensors, desc="dequantise gguf", disable=not progress, leave=False):
        name = t.name
        if name in _TOP_NAMES:
            hf_name = _TOP_NAMES[name]
        else:
            parts = name.split(".", 2)
            if parts[0] != "blk" or parts[2] not in _LAYER_NAMES:
                raise ValueError(f"GGUF tensor {name!r} has no Llama counterpart; the file is not a plain Llama model")
            hf_name = f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)  # numpy shape = reversed GGUF dims
        if name.endswith(("attn_q.weight", "attn_q.bias")):
            w = unpermute_rope(w, hf_cfg["num_attention_heads"])
        elif name.endswith(("attn_k.weight", "attn_k.bias")):
            w = unpermute_rope(w, hf_cfg["num_key_value_heads"])
        state[hf_name] = w
    return state


def tokenizer_from_gguf(meta: dict[str, Any], name: str = "gguf") -> HFBPETokenizer:
    """The byte-level BPE tokenizer in `tokenizer.ggml.*` (needs the big arrays in `meta`)."""
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"GGUF tokenizer model {kind!r} is not supported; only byte-level BPE ('gpt2')")
    if "tokenizer.ggml.merges" not in meta:
        raise ValueError("GGUF has no tokenizer.ggml.merges; cannot rebuild its BPE tokenizer")
    return HFBPETokenizer.from_gguf_metadata(
        meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.merges"], meta["tokenizer.ggml.token_type"],
        bos_id=meta["tokenizer.ggml.bos_token_id"], eos_id=meta.get("tokenizer.ggml.eos_token_id"),
        pre=meta.get("tokenizer.ggml.pre"), name=name)


def load_gguf(path: str | Path, progress: bool = True, **overrides) -> GGUFModel:
    """Config, float32 params, tokenizer and chat template of a Llama-architecture GGUF file."""
    reader = _reader(path)
    meta = read_metadata(reader, arrays=_BIG_ARRAYS)
    hf_cfg = hf_config_from_gguf(meta)
    names = {t.name for t in reader.tensors}
    hf_cfg["tie_word_embeddings"] = "output.weight" not in names
    hf_cfg["attention_bias"] = hf_cfg["mlp_bias"] = "blk.0.attn_q.bias" in names
    cfg = convert.model_config_from_hf(hf_cfg, **overrides)
    params = convert.params_from_hf(hf_state_from_gguf(reader, hf_cfg, progress), cfg)
    tokenizer = tokenizer_from_gguf(meta, name=Path(path).stem)
    small = {k: v for k, v in meta.items() if k not in _BIG_ARRAYS}
    return GGUFModel(cfg, params, tokenizer, meta.get("tokenizer.chat_template"), small)
