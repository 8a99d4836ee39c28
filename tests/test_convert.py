"""Hugging Face safetensors import/export for GPT-2 and Llama, logit by logit against transformers.

transformers builds small randomly initialised models offline from a config; we import them and
compare logits, then export our own randomly initialised models and load them in transformers.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.linen import meta

from jaxllm.model import ModelConfig, Transformer
from jaxllm.model import convert

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = dict(rtol=1e-4, atol=1e-4)


def _hf_config(family: str, **kw):
    if family == "gpt2":
        return transformers.GPT2Config(vocab_size=301, n_positions=64, n_embd=48, n_layer=2, n_head=4,
                                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **kw)
    return transformers.LlamaConfig(vocab_size=301, hidden_size=48, intermediate_size=112, num_hidden_layers=2,
                                    num_attention_heads=6, num_key_value_heads=2, head_dim=8,
                                    max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=500.0, **kw)


def _hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.float().numpy()


def _our_logits(cfg: ModelConfig, params, tokens: np.ndarray) -> np.ndarray:
    return np.asarray(jax.jit(Transformer(cfg).apply)({"params": params}, jnp.asarray(tokens, jnp.int32)))


def _random_params(cfg: ModelConfig, seed: int = 1):
    """Every leaf random (norm scales around 1), in the tree Transformer(cfg).init makes; no compile."""
    shapes = jax.eval_shape(lambda: meta.unbox(Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))))
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        base = 1.0 if "norm" in jax.tree_util.keystr(path) and "scale" in jax.tree_util.keystr(path) else 0.0
        return jnp.asarray(base + 0.2 * rng.standard_normal(s.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(leaf, shapes["params"])


def _tokens(vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(2, 24))


def _randomize(model):
    """Norm weights/biases start at 1/0: give every tensor random values so a swapped leaf shows."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.ndim == 1 and p.shape[0] == 48 else 0.0))
    return model


@pytest.mark.parametrize("family,extra,scan_layers", [
    ("gpt2", {}, True),
    ("llama", {"tie_word_embeddings": False}, False),
    ("llama", {"tie_word_embeddings": True, "attention_bias": True, "mlp_bias": True}, True),
], ids=["gpt2", "llama-untied-noscan", "llama-tied-bias"])
def test_import_from_transformers(tmp_path, family, extra, scan_layers):
    torch.manual_seed(0)
    hf_cfg = _hf_config(family, **extra)
    hf = _randomize(transformers.AutoModelForCausalLM.from_config(hf_cfg)).eval()
    hf.save_pretrained(tmp_path)
    cfg, params = convert.load_hf_checkpoint(tmp_path, scan_layers=scan_layers)
    assert cfg.family == family and cfg.tie_embeddings == hf_cfg.tie_word_embeddings
    tokens = _tokens(cfg.vocab_size)
    np.testing.assert_allclose(_our_logits(cfg, params, tokens), _hf_logits(hf, tokens), **TOL)


@pytest.mark.parametrize("cfg", [
    ModelConfig(family="gpt2", vocab_size=257, max_seq_len=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4,
                d_ff=96, tie_embeddings=True, use_bias=True),
    ModelConfig(family="gpt2", vocab_size=257, max_seq_len=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4,
                d_ff=96, tie_embeddings=False, use_bias=True, scan_layers=False),
    ModelConfig(family="llama", vocab_size=257, max_seq_len=64, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2,
                head_dim=16, d_ff=80, rope_theta=1000.0, tie_embeddings=False),
    ModelConfig(family="llama", vocab_size=257, max_seq_len=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4,
                d_ff=80, tie_embeddings=True, use_bias=True, norm_eps=1e-6),
], ids=["gpt2-tied", "gpt2-untied-noscan", "llama-gqa", "llama-tied-bias"])
def test_export_to_transformers(tmp_path, cfg):
    params = _random_params(cfg)
    convert.save_hf_checkpoint(tmp_path, cfg, params, bos_id=0, eos_id=1)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    toks = _tokens(cfg.vocab_size, seed=3)
    np.testing.assert_allclose(_hf_logits(hf, toks), _our_logits(cfg, params, toks), **TOL)
    # and back: our import of our export gives the same tree
    cfg2, params2 = convert.load_hf_checkpoint(tmp_path, scan_layers=cfg.scan_layers)
    assert cfg2 == cfg
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_safetensors_roundtrip_bf16(tmp_path):
    import ml_dtypes
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.full((4,), 1.5, dtype=ml_dtypes.bfloat16),
               "c": np.array([1, 2], np.int64)}
    convert.write_safetensors(tmp_path / "x.safetensors", tensors)
    back = convert.read_safetensors(tmp_path / "x.safetensors")
    assert set(back) == set(tensors)
    for k in tensors:
        assert back[k].dtype == tensors[k].dtype and np.array_equal(back[k], tensors[k])
    # and torch's safetensors reader agrees with our writer (bf16 included)
    from safetensors.torch import load_file
    t = load_file(tmp_path / "x.safetensors")
    assert t["b"].dtype == torch.bfloat16 and float(t["b"][0]) == 1.5 and t["a"].tolist() == tensors["a"].tolist()


def test_bad_checkpoints_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        convert.load_hf_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="only 'llama' and 'gpt2'"):
        convert.load_hf_checkpoint(tmp_path)
    hf = transformers.AutoModelForCausalLM.from_config(_hf_config("llama"))
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["num_hidden_layers"] = 3  # weights have only 2 layers
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(KeyError, match="model.layers.2"):
        convert.load_hf_checkpoint(tmp_path)


# --- tokenizer + hub download (real HTTP against a local server) ---------------------------------
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def _tiny_tokenizer():
    from jaxllm.tokenizer.hf_bpe import HFBPETokenizer, spell

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n")]
    tokens = specials + [spell(bytes([b])) for b in range(256)] + [a + b for a, b in merges]
    return HFBPETokenizer(tokens, merges, {t: i for i, t in enumerate(specials)}, bos="<|im_start|>", eos="<|im_end|>",
                          name="tiny")


def test_export_with_tokenizer_loads_in_autotokenizer(tmp_path):
    tok = _tiny_tokenizer()
    text = "in the thin <|im_end|> then"
    assert tok.encode(text) != tok.encode(text, allowed_special="all")
    cfg = ModelConfig(family="llama", vocab_size=tok.n_vocab, max_seq_len=32, d_model=32, n_layers=1, n_heads=2,
                      n_kv_heads=2, d_ff=64)
    convert.save_hf_checkpoint(tmp_path, cfg, _random_params(cfg), tokenizer=tok, chat_template=CHATML)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text, allowed_special="all")
    assert (hf_tok.bos_token, hf_tok.eos_token) == ("<|im_start|>", "<|im_end|>")
    chat = [{"role": "user", "content": "hi"}]
    from jaxllm.model.hub import load_pretrained
    model = load_pretrained(tmp_path)
    assert model.chat.render(chat) == hf_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert model.stop_ids == (2,) and model.tokenizer.encode(text) == tok.encode(text)


@pytest.fixture
def hub_server(tmp_path):
    """A local HTTP server over tmp_path/www, laid out like the hub ({repo}/resolve/{revision}/{file})."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_hub_download_sharded_checkpoint(tmp_path, hub_server, monkeypatch):
    from jaxllm.fetch import FetchError
    from jaxllm.model.hub import load_pretrained

    root, endpoint = hub_server
    monkeypatch.setenv("JAXLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    tok = _tiny_tokenizer()
    cfg = ModelConfig(family="gpt2", vocab_size=tok.n_vocab, max_seq_len=32, d_model=32, n_layers=2, n_heads=2,
                      n_kv_heads=2, d_ff=64, tie_embeddings=True, use_bias=True)
    params = _random_params(cfg, seed=5)
    repo = root / "someone" / "tiny-gpt2" / "resolve" / "main"
    convert.save_hf_checkpoint(repo, cfg, params, tokenizer=tok, chat_template=CHATML)
    # re-shard into two files with an index, as large hub checkpoints are
    state = convert.read_safetensors(repo / "model.safetensors")
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for fname, keys in shards.items():
        convert.write_safetensors(repo / fname, {k: np.array(state[k]) for k in keys})
    del state
    (repo / "model.safetensors").unlink()
    (repo / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}))

    model = load_pretrained("hf:someone/tiny-gpt2", progress=False)
    assert model.cfg == cfg and model.chat.render([{"role": "user", "content": "x"}]).startswith("<|im_start|>user")
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(model.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert model.tokenizer.encode("in the thin") == tok.encode("in the thin")
    # a second load is served from the cache, with the server gone
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    again = load_pretrained("hf:someone/tiny-gpt2", progress=False)
    assert again.cfg == cfg
    with pytest.raises(FetchError, match="someone/missing"):
        load_pretrained("hf:someone/missing", progress=False)
