"""Hugging Face checkpoints <-> our params, for the GPT-2 and Llama families.

A Hugging Face checkpoint is `config.json` + `model.safetensors` (or shards with an index) holding
torch-layout tensors (`nn.Linear.weight` is [out, in]; GPT-2's `Conv1D.weight` is [in, out]).
Our params are a plain pytree with per-layer leaves stacked on a leading [n_layers] axis
(scan_layers) or as `layers_{i}` subtrees. The mapping is one small table per family.

    cfg, params = load_hf_checkpoint("dir")          # transformers -> jaxllm
    save_hf_checkpoint("out", cfg, params)           # jaxllm -> transformers (from_pretrained("out"))
"""
from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax.linen import meta

from jaxllm.model.config import ModelConfig
from jaxllm.model.transformer import Transformer

SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
                      "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                      "BOOL": np.bool_}
_DTYPE_NAMES = {np.dtype(v): k for k, v in SAFETENSORS_DTYPES.items()}


# --- safetensors files (the format is an 8-byte header length, a JSON header, raw little-endian data) ----
def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of one .safetensors file as read-only numpy arrays backed by a memory map."""
    path = Path(path)
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        (n,) = struct.unpack("<Q", buf[:8])
        header = json.loads(bytes(buf[8:8 + n]))
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a safetensors file ({e})") from e
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        dtype = np.dtype(SAFETENSORS_DTYPES[info["dtype"]])
        out[name] = np.frombuffer(buf, dtype=dtype, count=(end - start) // dtype.itemsize,
                                  offset=8 + n + start).reshape(info["shape"])
    return out


def write_safetensors(path: str | Path, tensors: Mapping[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write tensors (C-contiguous, little-endian) to a .safetensors file, atomically."""
    path = Path(path)
    header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
    offset, arrays = 0, []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        header[name] = {"dtype": _DTYPE_NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # align the data to 8 bytes
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for a in arrays:
            f.write(a.tobytes())
    tmp.replace(path)


def read_hf_state(directory: str | Path) -> dict[str, np.ndarray]:
    """The state dict of a HF checkpoint directory: model.safetensors or sharded with an index."""
    d = Path(directory)
    index = d / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, np.ndarray] = {}
        for f in files:
            state.update(read_safetensors(d / f))
        return state
    if (d / "model.safetensors").exists():
        return read_safetensors(d / "model.safetensors")
    raise FileNotFoundError(f"{d}: no model.safetensors or model.safetensors.index.json "
                            "(pytorch_model.bin checkpoints are not supported: re-save with safe_serialization)")


# --- configs ------------------------------------------------------------------------------------
def model_config_from_hf(hf: Mapping[str, Any], **overrides) -> ModelConfig:
    """Our ModelConfig for a HF `config.json` dict of model_type "llama" or "gpt2"."""
    kind = hf.get("model_type")
    if kind == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"gpt2 config: activation_function={act!r} unsupported; we implement tanh-GELU (gelu_new)")
        if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("scale_attn_weights") is False:
            raise ValueError("gpt2 config: non-standard attention scaling is not supported")
        d = hf["n_embd"]
        kw = dict(family="gpt2", vocab_size=hf["vocab_size"], max_seq_len=hf["n_positions"], d_model=d,
                  n_layers=hf["n_layer"], n_heads=hf["n_head"], n_kv_heads=hf["n_head"], d_ff=hf.get("n_inner") or 4 * d,
                  norm_eps=hf.get("layer_norm_epsilon", 1e-5), tie_embeddings=hf.get("tie_word_embeddings", True),
                  use_bias=True)
    elif kind == "llama":
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"llama config: hidden_act={hf['hidden_act']!r} unsupported; only silu (SwiGLU)")
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise ValueError(f"llama config: rope scaling {rope} is not supported; only plain RoPE")
        if bool(hf.get("attention_bias", False)) != bool(hf.get("mlp_bias", False)):
            raise ValueError("llama config: attention_bias and mlp_bias must agree (we have one use_bias switch)")
        heads = hf["num_attention_heads"]
        hd = hf.get("head_dim") or hf["hidden_size"] // heads  # 0 in our config = d_model // n_heads
        kw = dict(family="llama", vocab_size=hf["vocab_size"], max_seq_len=hf.get("max_position_embeddings", 2048),
                  d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"], n_heads=heads,
                  n_kv_heads=hf.get("num_key_value_heads") or heads,
                  head_dim=0 if hd == hf["hidden_size"] // heads else hd, d_ff=hf["intermediate_size"],
                  norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
                  tie_embeddings=hf.get("tie_word_embeddings", False), use_bias=bool(hf.get("attention_bias", False)))
    else:
        raise ValueError(f"config model_type={kind!r}: only 'llama' and 'gpt2' checkpoints can be converted")
    kw.update(overrides)
    return ModelConfig(**kw)


def hf_config_from_model(cfg: ModelConfig, bos_id: int | None = None, eos_id: int | None = None) -> dict[str, Any]:
    """A HF `config.json` dict that makes transformers build the same network as `cfg`."""
    common = {"vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_embeddings, "torch_dtype": "float32",
              "bos_token_id": bos_id, "eos_token_id": eos_id}
    if cfg.family == "gpt2":
        if cfg.n_kv_heads != cfg.n_heads or cfg.resolved_head_dim * cfg.n_heads != cfg.d_model or not cfg.use_bias:
            raise ValueError("gpt2 export needs n_kv_heads == n_heads, head_dim * n_heads == d_model and use_bias")
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": cfg.d_model,
                "n_layer": cfg.n_layers, "n_head": cfg.n_heads, "n_inner": cfg.d_ff, "n_positions": cfg.max_seq_len,
                "n_ctx": cfg.max_seq_len, "layer_norm_epsilon": cfg.norm_eps, "activation_function": "gelu_new",
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, **common}
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": cfg.d_model,
            "intermediate_size": cfg.d_ff, "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.resolved_head_dim, "hidden_act": "silu",
            "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "attention_bias": cfg.use_bias, "mlp_bias": cfg.use_bias, "attention_dropout": 0.0, **common}


# --- tensors --------------------------------------------------------------------------------------
def _layer_from_hf(get, cfg: ModelConfig, i: int) -> dict:
    """Our layer-i subtree from HF tensors (`get(name)` returns a float32 numpy array)."""
    d, h, kvh, hd, bias = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.resolved_head_dim, cfg.use_bias
    if cfg.family == "gpt2":
        p = f"h.{i}."
        w_qkv, b_qkv = get(p + "attn.c_attn.weight"), get(p + "attn.c_attn.bias")  # [d, 3d] (Conv1D: in, out)
        wq, wk, wv = np.split(w_qkv, 3, axis=1)
        bq, bk, bv = np.split(b_qkv, 3)
        return {
            "attn_norm": {"scale": get(p + "ln_1.weight"), "bias": get(p + "ln_1.bias")},
            "attn": {"q": {"kernel": wq.reshape(d, h, hd), "bias": bq.reshape(h, hd)},
                     "k": {"kernel": wk.reshape(d, h, hd), "bias": bk.reshape(h, hd)},
                     "v": {"kernel": wv.reshape(d, h, hd), "bias": bv.reshape(h, hd)},
                     "o": {"kernel": get(p + "attn.c_proj.weight").reshape(h, hd, d), "bias": get(p + "attn.c_proj.bias")}},
            "mlp_norm": {"scale": get(p + "ln_2.weight"), "bias": get(p + "ln_2.bias")},
            "mlp": {"up": {"kernel": get(p + "mlp.c_fc.weight"), "bias": get(p + "mlp.c_fc.bias")},
                    "down": {"kernel": get(p + "mlp.c_proj.weight"), "bias": get(p + "mlp.c_proj.bias")}},
        }
    p = f"model.layers.{i}."

    def lin(name, shape):  # nn.Linear [out, in] -> kernel [in, *out]
        out = {"kernel": get(p + name + ".weight").T.reshape(shape)}
        if bias:
            out["bias"] = get(p + name + ".bias").reshape(shape[1:])
        return out

    o = {"kernel": get(p + "self_attn.o_proj.weight").T.reshape(h, hd, d)}
    if bias:
        o["bias"] = get(p + "self_attn.o_proj.bias")
    return {
        "attn_norm": {"scale": get(p + "input_layernorm.weight")},
        "attn": {"q": lin("self_attn.q_proj", (d, h, hd)), "k": lin("self_attn.k_proj", (d, kvh, hd)),
                 "v": lin("self_attn.v_proj", (d, kvh, hd)), "o": o},
        "mlp_norm": {"scale": get(p + "post_attention_layernorm.weight")},
        "mlp": {"gate": lin("mlp.gate_proj", (d, cfg.d_ff)), "up": lin("mlp.up_proj", (d, cfg.d_ff)),
                "down": lin("mlp.down_proj", (cfg.d_ff, d))},
    }


def _layer_to_hf(layer: Mapping, cfg: ModelConfig, i: int) -> dict[str, np.ndarray]:
    """HF tensors of our layer-i subtree (inverse of `_layer_from_hf`)."""
    d = cfg.d_model
    a, m = layer["attn"], layer["mlp"]
    if cfg.family == "gpt2":
        p = f"transformer.h.{i}."
        return {
            p + "ln_1.weight": layer["attn_norm"]["scale"], p + "ln_1.bias": layer["attn_norm"]["bias"],
            p + "attn.c_attn.weight": np.concatenate([a[n]["kernel"].reshape(d, -1) for n in "qkv"], axis=1),
            p + "attn.c_attn.bias": np.concatenate([a[n]["bias"].reshape(-1) for n in "qkv"]),
            p + "attn.c_proj.weight": a["o"]["kernel"].reshape(-1, d), p + "attn.c_proj.bias": a["o"]["bias"],
            p + "ln_2.weight": layer["mlp_norm"]["scale"], p + "ln_2.bias": layer["mlp_norm"]["bias"],
            p + "mlp.c_fc.weight": m["up"]["kernel"], p + "mlp.c_fc.bias": m["up"]["bias"],
            p + "mlp.c_proj.weight": m["down"]["kernel"], p + "mlp.c_proj.bias": m["down"]["bias"],
        }
    p = f"model.layers.{i}."
    out = {p + "input_layernorm.weight": layer["attn_norm"]["scale"],
           p + "post_attention_layernorm.weight": layer["mlp_norm"]["scale"],
           p + "self_attn.o_proj.weight": a["o"]["kernel"].reshape(-1, d).T}
    for name, leaf in (("self_attn.q_proj", a["q"]), ("self_attn.k_proj", a["k"]), ("self_attn.v_proj", a["v"]),
                       ("mlp.gate_proj", m["gate"]), ("mlp.up_proj", m["up"]), ("mlp.down_proj", m["down"])):
        out[p + name + ".weight"] = leaf["kernel"].reshape(leaf["kernel"].shape[0], -1).T
        if "bias" in leaf:
            out[p + name + ".bias"] = leaf["bias"].reshape(-1)
    if "bias" in a["o"]:
        out[p + "self_attn.o_proj.bias"] = a["o"]["bias"]
    return out


def params_from_hf(state: Mapping[str, np.ndarray], cfg: ModelConfig) -> dict:
    """Our params (plain arrays of cfg.param_dtype) from a HF state dict of cfg.family."""
    prefix = "transformer." if cfg.family == "gpt2" and any(k.startswith("transformer.") for k in state) else ""
    used = set()

    def get(name: str) -> np.ndarray:
        key = prefix + name if cfg.family == "gpt2" and not name.startswith("lm_head") else name
        if key not in state:
            raise KeyError(f"checkpoint has no tensor {key!r} (needed for a {cfg.family} model with "
                           f"n_layers={cfg.n_layers}, use_bias={cfg.use_bias}); is it the right config.json?")
        used.add(key)
        return np.asarray(state[key], dtype=np.float32)

    layers = [_layer_from_hf(get, cfg, i) for i in range(cfg.n_layers)]
    if cfg.family == "gpt2":
        params = {"embed": {"embedding": get("wte.weight")}, "pos_embed": {"embedding": get("wpe.weight")},
                  "final_norm": {"scale": get("ln_f.weight"), "bias": get("ln_f.bias")}}
    else:
        params = {"embed": {"embedding": get("model.embed_tokens.weight")}, "final_norm": {"scale": get("model.norm.weight")}}
    if not cfg.tie_embeddings:
        params["lm_head"] = {"kernel": get("lm_head.weight").T}
    unused = [k for k in state if k not in used and not k.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq"))
              and not (k == "lm_head.weight" and cfg.tie_embeddings)]
    if unused:
        raise ValueError(f"checkpoint tensors not used by the {cfg.family} config: {unused[:5]}... "
                         "(config.json and weights disagree)")
    params.update(_put_layers(layers, cfg))
    dt = jnp.dtype(cfg.param_dtype)
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype=dt), params)
    check_params(params, cfg)
    return params


def params_to_hf(params: Mapping, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """HF state dict (float32 numpy, torch layout) of our params; accepts boxed or unboxed trees."""
    params = jax.tree.map(lambda x: np.asarray(x, dtype=np.float32), meta.unbox(params))
    check_params(params, cfg)
    out: dict[str, np.ndarray] = {}
    for i, layer in enumerate(_get_layers(params, cfg)):
        out.update(_layer_to_hf(layer, cfg, i))
    if cfg.family == "gpt2":
        out.update({"transformer.wte.weight": params["embed"]["embedding"],
                    "transformer.wpe.weight": params["pos_embed"]["embedding"],
                    "transformer.ln_f.weight": params["final_norm"]["scale"],
                    "transformer.ln_f.bias": params["final_norm"]["bias"]})
    else:
        out.update({"model.embed_tokens.weight": params["embed"]["embedding"],
                    "model.norm.weight": params["final_norm"]["scale"]})
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = params["lm_head"]["kernel"].T
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _put_layers(layers: list[dict], cfg: ModelConfig) -> dict:
    if cfg.scan_layers:
        return {"layers": jax.tree.map(lambda *xs: np.stack(xs), *layers)}
    return {f"layers_{i}": layer for i, layer in enumerate(layers)}


def _get_layers(params: Mapping, cfg: ModelConfig) -> list:
    if cfg.scan_layers:
        return [jax.tree.map(lambda x: x[i], params["layers"]) for i in range(cfg.n_layers)]
    return [params[f"layers_{i}"] for i in range(cfg.n_layers)]


def check_params(params: Mapping, cfg: ModelConfig) -> None:
    """Raise a clear error if `params` does not have exactly the tree and shapes `Transformer(cfg)` makes."""
    tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    want = jax.eval_shape(lambda t: meta.unbox(Transformer(cfg).init(jax.random.key(0), t)["params"]), tokens)
    flat_want = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(want)}
    flat_have = {jax.tree_util.keystr(k): np.shape(v) for k, v in jax.tree_util.tree_leaves_with_path(params)}
    if flat_want != flat_have:
        diff = sorted(set(flat_want.items()) ^ set(flat_have.items()))[:4]
        raise ValueError(f"params do not fit the {cfg.family} config (first differences, expected vs got): {diff}")


# --- checkpoint directories -------------------------------------------------------------------------
def load_hf_checkpoint(directory: str | Path, **overrides) -> tuple[ModelConfig, dict]:
    """(ModelConfig, params) of a HF checkpoint directory (config.json + safetensors)."""
    d = Path(directory)
    if not (d / "config.json").exists():
        raise FileNotFoundError(f"{d}/config.json not found: not a Hugging Face checkpoint directory")
    cfg = model_config_from_hf(json.loads((d / "config.json").read_text()), **overrides)
    return cfg, params_from_hf(read_hf_state(d), cfg)


def save_hf_checkpoint(directory: str | Path, cfg: ModelConfig, params: Mapping, tokenizer=None,
                       bos_id: int | None = None, eos_id: int | None = None, chat_template: str | None = None) -> Path:
    """Write config.json + model.safetensors for transformers; with a tokenizer that writes tokenizer.json
    (HFBPETokenizer), also tokenizer_config.json (bos/eos, chat template) so AutoTokenizer loads it."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        bos_id = tokenizer.bos_id if bos_id is None else bos_id
        eos_id = getattr(tokenizer, "eos_id", None) if eos_id is None else eos_id
        tokenizer.save(d)
        if (d / "tokenizer.json").exists():
            names = {i: t for t, i in tokenizer.special_ids.items()}
            tc = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                  "model_max_length": cfg.max_seq_len, "bos_token": names.get(bos_id), "eos_token": names.get(eos_id)}
            if chat_template:
                tc["chat_template"] = chat_template
            (d / "tokenizer_config.json").write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n")
    state = params_to_hf(params, cfg)
    if cfg.family == "gpt2" and cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    write_safetensors(d / "model.safetensors", state, {"format": "pt"})
    (d / "config.json").write_text(json.dumps(hf_config_from_model(cfg, bos_id, eos_id), indent=2) + "\n")
    return d
