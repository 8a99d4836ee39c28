"""The C++ CPU kernels (jaxllm/kernels): fused attention and BLAS matmuls, against XLA's ops, their oracles."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.kernels import blas_matmul, cpu_attention, native
from jaxllm.model import ModelConfig, Transformer, layers

if os.environ.get("CI") and not (cpu_attention.available() and all(map(blas_matmul._build, blas_matmul.LIBRARIES))):
    raise RuntimeError("the native CPU kernels did not build: .ci/apt-packages.txt installs g++, "
                       "pyproject.toml's dependencies mkl-static and scipy-openblas32")
# off CI, only a machine without g++ (or, for the matmul, without mkl-static and scipy-openblas32) skips
needs_attention_kernel = pytest.mark.skipif(not cpu_attention.available(), reason="no C++ compiler here")
needs_blas_kernel = pytest.mark.skipif(not blas_matmul.available(), reason="no C++ compiler or no BLAS here")


def qkv(batch, length, heads, kv_heads, head_dim, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(keys[0], (batch, length, heads, head_dim))
    k, v = (jax.random.normal(kk, (batch, length, kv_heads, head_dim)) for kk in keys[1:3])
    return q, k, v, jax.random.normal(keys[3], q.shape)


@needs_attention_kernel
@pytest.mark.parametrize("length,heads,kv_heads,head_dim,segments", [
    (16, 2, 2, 16, None), (64, 4, 2, 32, "packed"), (48, 6, 3, 64, "shuffled"), (128, 4, 1, 64, "packed"),
    (208, 2, 1, 16, "shuffled")])  # 208: blocks of 64 query rows and a last one of 16
def test_fused_attention_equals_xla(length, heads, kv_heads, head_dim, segments):
    """Outputs and all three gradients, with grouped-query heads, packed documents and segment ids that
    are not contiguous runs."""
    q, k, v, g = qkv(3, length, heads, kv_heads, head_dim, seed=length)
    rng = np.random.default_rng(length)
    seg = None
    if segments:
        ids = rng.integers(0, 4, (3, length))
        seg = jnp.asarray(np.sort(ids, axis=1) if segments == "packed" else ids, jnp.int32)

    def run(impl):
        out, vjp = jax.vjp(lambda q, k, v: layers.attention(q, k, v, segment_ids=seg, impl=impl), q, k, v)
        return (out, *vjp(g))

    fused, oracle = jax.jit(functools.partial(run, "fused"))(), jax.jit(functools.partial(run, "xla"))()
    for name, a, b in zip(("out", "dq", "dk", "dv"), fused, oracle):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5, err_msg=name)


@needs_attention_kernel
def test_fused_attention_is_deterministic_and_runs_under_vmap():
    """Bitwise-equal repeats (each thread-pool task owns its outputs), and vmap over a leading axis."""
    q, k, v, g = qkv(4, 64, 4, 2, 16, seed=1)
    step = jax.jit(lambda q, k, v: jax.vjp(cpu_attention.fused_causal_attention, q, k, v)[1](g))
    first, second = step(q, k, v), step(q, k, v)
    for a, b in zip(first, second):
        assert np.array_equal(a, b)
    stacked = jax.vmap(cpu_attention.fused_causal_attention)(q[None].repeat(2, 0), k[None].repeat(2, 0),
                                                            v[None].repeat(2, 0))
    np.testing.assert_array_equal(stacked[1], cpu_attention.fused_causal_attention(q, k, v))


@needs_attention_kernel
def test_unsupported_inputs_fall_back_to_xla():
    """Lengths or head dims that are not multiples of 16, bfloat16 and multi-device meshes take the XLA
    path under impl="fused" instead of failing."""
    q, k, v, _ = qkv(2, 40, 2, 2, 16)
    np.testing.assert_allclose(layers.attention(q, k, v, impl="fused"), layers.attention(q, k, v, impl="xla"),
                               atol=2e-6)
    q, k, v, _ = qkv(2, 32, 2, 2, 16)
    assert layers._fused_kernel_applies(q, k)
    assert not layers._fused_kernel_applies(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16))
    mesh = jax.make_mesh((len(jax.devices()),), ("data",))
    with jax.set_mesh(mesh):
        assert layers._fused_kernel_applies(q, k) == (mesh.size == 1)


@needs_attention_kernel
def test_build_errors_name_the_problem(tmp_path, monkeypatch):
    source = tmp_path / "broken.cc"
    source.write_text("this is not C++\n")
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler 'no-such-c\\+\\+'"):
        native.build(source, "no-such-c++")
    monkeypatch.setenv("JAXLLM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match="compiling broken.cc failed"):
        native.build(source)
    assert not list((tmp_path / "cache" / "kernels").glob("*.so"))  # nothing half-written is left


@pytest.mark.parametrize("library", blas_matmul.LIBRARIES)
@pytest.mark.parametrize("rows,inner,cols", [(64, 48, 80), (37, 5, 300), (300, 20, 7)])
def test_blas_matmul_and_its_gradient_equal_xla(rows, inner, cols, library, monkeypatch):
    """Forward, dx and dw through each BLAS, for shapes split by rows or by columns over the pool, odd sizes
    included, with w as given and transposed."""
    monkeypatch.setenv("JAXLLM_BLAS", library)
    if not blas_matmul.available():
        pytest.skip(f"no C++ compiler or no {library} here")
    keys = jax.random.split(jax.random.key(rows), 3)
    x, w = jax.random.normal(keys[0], (rows, inner)), jax.random.normal(keys[1], (inner, cols))
    g = jax.random.normal(keys[2], (rows, cols))

    def run(f, w):
        out, vjp = jax.vjp(f, x, w)
        return (out, *vjp(g))

    # transpose_w: w given as [cols, inner] (a tied embedding table used as the output head)
    for label, ours, oracle, weight in (("", blas_matmul.matmul, jnp.matmul, w),
                                        ("transpose_w ", lambda x, w: blas_matmul.matmul(x, w, True),
                                         lambda x, w: x @ w.T, w.T)):
        for name, a, b in zip(("out", "dx", "dw"), jax.jit(lambda: run(ours, weight))(),
                              jax.jit(lambda: run(oracle, weight))()):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4, err_msg=label + name)


@needs_attention_kernel
@needs_blas_kernel
def test_model_with_native_kernels_equals_xla():
    """A whole GPT-2-style model's loss and gradients with matmul_impl='blas' and attention_impl='fused'
    equal the XLA ones; bfloat16 compute falls back to XLA's dot."""
    base = ModelConfig(family="gpt2", vocab_size=1024, max_seq_len=32, d_model=64, n_layers=2, n_heads=2,
                       n_kv_heads=2, d_ff=256, tie_embeddings=True, use_bias=True, scan_layers=False)
    native_cfg = ModelConfig(**{**base.__dict__, "attention_impl": "fused", "matmul_impl": "blas"})
    tokens = jax.random.randint(jax.random.key(0), (2, 32), 0, 1024)
    params = Transformer(base).init(jax.random.key(1), tokens)["params"]

    def loss(cfg, params):
        logits = Transformer(cfg).apply({"params": params}, tokens)
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    lx, gx = jax.jit(jax.value_and_grad(functools.partial(loss, base)))(params)
    ln, gn = jax.jit(jax.value_and_grad(functools.partial(loss, native_cfg)))(params)
    np.testing.assert_allclose(ln, lx, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(gn), jax.tree.leaves(gx)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    text = jax.jit(functools.partial(loss, native_cfg)).lower(params).as_text()
    assert "jaxllm_matmul" in text and "jaxllm_attention_fwd" in text
    bf16 = ModelConfig(**{**native_cfg.__dict__, "dtype": "bfloat16"})
    assert "jaxllm_matmul" not in jax.jit(functools.partial(loss, bf16)).lower(params).as_text()


def test_wrong_impl_names_are_clear(monkeypatch):
    with pytest.raises(ValueError, match="matmul_impl='mkl' must be one of 'xla', 'blas'"):
        ModelConfig(matmul_impl="mkl")
    monkeypatch.setenv("JAXLLM_BLAS", "atlas")
    with pytest.raises(ValueError, match="JAXLLM_BLAS='atlas' must be one of mkl, openblas"):
        blas_matmul.library()
    with pytest.raises(ValueError, match="attention_impl='flash'"):
        ModelConfig(attention_impl="flash")
