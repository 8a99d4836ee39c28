"""The fused C++ CPU attention kernel (jaxllm/kernels) against XLA's attention, its oracle."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.kernels import cpu_attention
from jaxllm.model import layers

if not cpu_attention.available():
    if os.environ.get("CI"):
        raise RuntimeError("the fused CPU attention kernel did not build; .ci/apt-packages.txt installs g++")
    pytest.skip("no C++ compiler here", allow_module_level=True)


def qkv(batch, length, heads, kv_heads, head_dim, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(keys[0], (batch, length, heads, head_dim))
    k, v = (jax.random.normal(kk, (batch, length, kv_heads, head_dim)) for kk in keys[1:3])
    return q, k, v, jax.random.normal(keys[3], q.shape)


@pytest.mark.parametrize("length,heads,kv_heads,head_dim,segments", [
    (16, 2, 2, 16, None), (64, 4, 2, 32, "packed"), (48, 6, 3, 64, "shuffled"), (128, 4, 1, 64, "packed")])
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


def test_build_errors_name_the_problem(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler 'no-such-c\\+\\+'"):
        cpu_attention.build("no-such-c++")
    broken = tmp_path / "cpu_attention.cc"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(cpu_attention, "SOURCE", broken)
    monkeypatch.setenv("JAXLLM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match="compiling cpu_attention.cc failed"):
        cpu_attention.build()
    assert not list((tmp_path / "cache" / "kernels").glob("*.so"))  # nothing half-written is left
