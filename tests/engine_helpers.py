"""Tiny models for the engine/server/page tests: a random one and a scripted (bigram) one."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.infer.engine import ChatModel
from jaxllm.model import ModelConfig, Transformer
from jaxllm.tokenizer import Tokenizer
from jaxllm.tokenizer.core import SPECIAL_TOKENS


def byte_tokenizer() -> Tokenizer:
    """256 byte tokens + our special tokens: a real tiktoken-backed tokenizer with no training."""
    return Tokenizer({bytes([i]): i for i in range(256)}, {s: 256 + i for i, s in enumerate(SPECIAL_TOKENS)},
                     name="bytes")


def random_model(max_seq_len: int = 256, d_model: int = 64, n_layers: int = 2, seed: int = 0) -> ChatModel:
    tok = byte_tokenizer()
    cfg = ModelConfig(vocab_size=tok.n_vocab, max_seq_len=max_seq_len, d_model=d_model, n_layers=n_layers,
                      n_heads=4, n_kv_heads=2, d_ff=2 * d_model, init_std=0.3)
    rng = np.random.default_rng(seed)
    params = init_params(cfg, lambda path, shape: rng.normal(0.0, cfg.init_std, shape))
    return ChatModel("tiny-random", cfg, params, tok, "jaxllm", stop_ids=())


def scripted_model(script: list, name: str = "tiny-scripted") -> ChatModel:
    """A model whose greedy next token depends only on the current one: script = [(token, next), ...].

    Blocks are identities (attention and MLP outputs zeroed), embeddings are one-hot and the head maps
    each token's dimension to its successor, so greedy decoding follows the script exactly."""
    tok = byte_tokenizer()
    ids = [(_id(tok, a), _id(tok, b)) for a, b in script]
    vocab = tok.n_vocab
    cfg = ModelConfig(vocab_size=vocab, max_seq_len=256, d_model=272, n_layers=1, n_heads=2, n_kv_heads=2,
                      d_ff=16, tie_embeddings=False)
    params = init_params(cfg, lambda path, shape: np.zeros(shape))  # zero attention and MLP: identity blocks
    params["embed"]["embedding"] = jnp.eye(vocab, cfg.d_model, dtype=jnp.float32)
    head = np.zeros((cfg.d_model, vocab), np.float32)
    for a, b in ids:
        head[a, b] = 10.0
    params["lm_head"]["kernel"] = jnp.asarray(head)
    stop = (tok.special_ids["<|im_end|>"],)
    return ChatModel(name, cfg, params, tok, "jaxllm", stop_ids=stop)


def init_params(cfg: ModelConfig, fill) -> dict:
    """Params with Transformer(cfg)'s exact tree, filled by fill(path, shape) without compiling an init
    (norm scales are ones)."""
    shapes = jax.eval_shape(lambda: nn.unbox(Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
                                             ["params"]))

    def make(path, s):
        if getattr(path[-1], "key", None) == "scale":
            return jnp.ones(s.shape, s.dtype)
        return jnp.asarray(fill(path, s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(make, shapes)


def _id(tok: Tokenizer, t) -> int:
    if isinstance(t, int):
        return t
    if t in tok.special_ids:
        return tok.special_ids[t]
    (i,) = tok.encode(t)
    return i


def chain(tokens: list) -> list:
    """[(t0, t1), (t1, t2), ...] for a sequence whose tokens are all different."""
    assert len(set(map(str, tokens))) == len(tokens), "a bigram script needs distinct tokens"
    return list(zip(tokens[:-1], tokens[1:]))
