"""KV-cache decoding and samplers: cache == full forward, batching, compile-once, masks, seeds, log-probs."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.infer import decode_step, generate, init_cache, mask_top_k, mask_top_p, prefill, sample_logits
from jaxllm.infer import sampling
from jaxllm.model import ModelConfig, Transformer, token_log_probs

VOCAB = 53


def make(family):
    cfg = ModelConfig(family=family, vocab_size=VOCAB, max_seq_len=48, d_model=32, n_layers=2, n_heads=4,
                      n_kv_heads=2 if family == "llama" else 4, d_ff=64, tie_embeddings=family == "gpt2",
                      use_bias=family == "gpt2", init_std=0.3)
    params = jax.jit(lambda k: nn.unbox(Transformer(cfg).init(k, jnp.zeros((1, 4), jnp.int32))["params"]))(
        jax.random.key(1))
    return cfg, params


@functools.partial(jax.jit, static_argnames=("cfg",))
def full_forward(cfg, params, x):
    return Transformer(cfg).apply({"params": params}, x)


def reference_logits(cfg, params, seqs, width=16):
    """Full-forward logits per sequence [len, vocab]; right padding to one width is harmless (causality)."""
    x = np.zeros((len(seqs), width), np.int32)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
    out = np.asarray(full_forward(cfg, params, jnp.asarray(x)))
    return [out[i, : len(s)] for i, s in enumerate(seqs)]


@pytest.fixture(scope="module")
def llama():
    return make("llama")


@pytest.fixture(scope="module")
def gpt2():
    return make("gpt2")


PROMPTS = [[5, 9, 2], [7, 1, 1, 4, 8, 3, 30], [11, 12, 13, 14, 15]]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_incremental_decoding_equals_full_forward(family, llama, gpt2):
    cfg, params = llama if family == "llama" else gpt2
    rng = np.random.RandomState(0)
    cont = rng.randint(0, VOCAB, (3, 4)).astype(np.int32)  # teacher-forced continuations
    padded = np.zeros((3, 8), np.int32)
    for i, p in enumerate(PROMPTS):
        padded[i, : len(p)] = p
    lengths = jnp.asarray([len(p) for p in PROMPTS], jnp.int32)
    logits, cache = prefill(params, cfg, jnp.asarray(padded), lengths, init_cache(cfg, 3, 16))
    np.testing.assert_array_equal(np.asarray(cache.lengths), [3, 7, 5])
    refs = reference_logits(cfg, params, [p + cont[i].tolist() for i, p in enumerate(PROMPTS)])
    before = sampling.TRACE_COUNTS["decode_step"]
    for step in range(cont.shape[1] + 1):
        for i, p in enumerate(PROMPTS):
            ref = refs[i][len(p) - 1 + step]
            np.testing.assert_allclose(np.asarray(logits[i]), ref, atol=2e-5, rtol=1e-5)
        if step < cont.shape[1]:
            logits, cache = decode_step(params, cfg, cache, jnp.asarray(cont[:, step]))
    np.testing.assert_array_equal(np.asarray(cache.lengths), [7, 11, 9])
    assert sampling.TRACE_COUNTS["decode_step"] - before == 1  # [batch, 1] decode step compiled once


def test_greedy_batched_equals_one_by_one_and_naive_loop(llama):
    cfg, params = llama
    batched = generate(params, cfg, PROMPTS, max_new_tokens=6, temperature=0.0)
    assert [len(s) for s in batched] == [6, 6, 6]
    for prompt, got in zip(PROMPTS, batched):
        assert generate(params, cfg, [prompt], max_new_tokens=6, temperature=0.0) == [got]
    seq = list(PROMPTS[1])  # naive: full forward + argmax per token
    for _ in range(6):
        seq.append(int(np.argmax(reference_logits(cfg, params, [seq])[0][-1])))
    assert seq[len(PROMPTS[1]):] == batched[1]


def test_generate_compiles_once_across_prompts_and_settings(llama):
    cfg, params = llama
    generate(params, cfg, PROMPTS, max_new_tokens=5, temperature=0.0)
    counts = dict(sampling.TRACE_COUNTS)
    other_prompts = [[3, 3], [1, 2, 3, 4, 5, 6, 7, 8, 9], [40]]  # different lengths, same 16-token bucket
    generate(params, cfg, other_prompts, max_new_tokens=5, temperature=0.8, top_k=5, top_p=0.9, seed=3)
    generate(params, cfg, other_prompts, max_new_tokens=5, temperature=1.3, stop_ids=(4, 5), seed=4)
    assert dict(sampling.TRACE_COUNTS) == counts


def test_seeds_reproducible_and_logprobs_match_model(llama):
    cfg, params = llama
    kw = dict(max_new_tokens=8, temperature=1.5, top_k=20, top_p=0.95)
    a, lp = generate(params, cfg, PROMPTS, seed=7, return_logprobs=True, **kw)
    assert generate(params, cfg, PROMPTS, seed=7, **kw) == a
    assert generate(params, cfg, PROMPTS, seed=8, **kw) != a
    for prompt, toks, lps in zip(PROMPTS, a, lp):
        seq = prompt + toks
        logits = reference_logits(cfg, params, [seq])[0]
        ref = token_log_probs(jnp.asarray(logits[None, :-1]), jnp.asarray([seq[1:]]))[0, len(prompt) - 1:]
        np.testing.assert_allclose(lps, np.asarray(ref), atol=1e-4)


def test_stop_ids_end_rows(llama):
    cfg, params = llama
    free = generate(params, cfg, PROMPTS, max_new_tokens=8, temperature=1.0, seed=2)
    stop = free[0][2]  # make row 0 stop at its third token
    stopped = generate(params, cfg, PROMPTS, max_new_tokens=8, temperature=1.0, seed=2, stop_ids=(stop,))
    for f, s in zip(free, stopped):
        cut = f.index(stop) + 1 if stop in f else len(f)
        assert s == f[:cut]
    assert stopped[0][-1] == stop and len(stopped[0]) <= 3


def test_top_k_and_top_p_masks():
    logits = jnp.asarray([[1.0, 3.0, 2.0, 0.0, 2.0], [0.0, 0.0, 5.0, -1.0, 1.0]])
    keep = lambda x: (np.asarray(x) > -1e29).astype(int).tolist()
    assert keep(mask_top_k(logits, 1)) == [[0, 1, 0, 0, 0], [0, 0, 1, 0, 0]]
    assert keep(mask_top_k(logits, 2)) == [[0, 1, 1, 0, 1], [0, 0, 1, 0, 1]]  # ties at the k-th value kept
    assert keep(mask_top_k(logits, 0)) == [[1] * 5] * 2
    probs = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    assert keep(mask_top_p(probs, 0.5)) == [[1, 0, 0, 0]]
    assert keep(mask_top_p(probs, 0.6)) == [[1, 1, 0, 0]]
    assert keep(mask_top_p(probs, 0.9)) == [[1, 1, 1, 0]]
    assert keep(mask_top_p(probs, 0.1)) == [[1, 0, 0, 0]]  # the top token always survives
    assert keep(mask_top_p(probs, 1.0)) == [[1, 1, 1, 1]]
    np.testing.assert_array_equal(mask_top_p(probs, 1.0), probs)


def test_sample_logits():
    logits = jnp.asarray(np.random.RandomState(0).randn(4, 30), jnp.float32)
    greedy = np.asarray(jnp.argmax(logits, -1))
    np.testing.assert_array_equal(sample_logits(jax.random.key(0), logits, 0.0), greedy)
    np.testing.assert_array_equal(sample_logits(jax.random.key(0), logits, 2.0, top_k=1), greedy)
    draws = jax.vmap(lambda k: sample_logits(k, logits, 1.0, top_k=3))(jax.random.split(jax.random.key(1), 200))
    top3 = np.argsort(-np.asarray(logits), -1)[:, :3]
    assert all(set(np.asarray(draws)[:, r]) <= set(top3[r]) for r in range(4))
    assert len(set(np.asarray(draws)[:, 0])) > 1


def test_generate_input_errors(llama, gpt2):
    cfg, params = llama
    with pytest.raises(ValueError, match="at least one token"):
        generate(params, cfg, [[1], []], max_new_tokens=2)
    gcfg, gparams = gpt2
    with pytest.raises(ValueError, match="max_seq_len=48"):
        generate(gparams, gcfg, [[1] * 40], max_new_tokens=10)
