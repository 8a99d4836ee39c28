"""Mesh construction and the logical-axis rules on 8 fake CPU devices (tests/conftest.py sets XLA_FLAGS)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from jaxllm.infer import generate
from jaxllm.model import ModelConfig, Transformer
from jaxllm.parallel import (
    LOGICAL_RULES, MeshConfig, fit_spec, logical_sharding, make_mesh, mesh_shape, per_device_bytes, shard_batch_spec,
)

CFG = ModelConfig(family="llama", vocab_size=64, max_seq_len=32, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                  d_ff=64, init_std=0.2)


@pytest.fixture(scope="module")
def mesh():
    if jax.device_count() < 8:
        pytest.fail("test_parallel needs 8 devices: run via pytest so tests/conftest.py sets "
                    "XLA_FLAGS=--xla_force_host_platform_device_count=8")
    return make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))


def test_mesh_shapes_and_errors(mesh):
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == AxisType.Auto for t in mesh.axis_types)
    assert mesh_shape(MeshConfig(), 8) == (8, 1, 1)
    assert mesh_shape(MeshConfig(data=-1, fsdp=2, tensor=2), 8) == (2, 2, 2)
    assert mesh_shape(MeshConfig(data=1, fsdp=-1, tensor=4), 8) == (1, 2, 4)
    assert make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1]).size == 1
    with pytest.raises(ValueError, match=r"data\*fsdp\*tensor = 3 but there are 8 devices"):
        make_mesh(MeshConfig(data=3, fsdp=1, tensor=1))
    with pytest.raises(ValueError, match="does not divide the 8 devices"):
        make_mesh(MeshConfig(data=-1, fsdp=3))
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        mesh_shape(MeshConfig(data=-1, fsdp=-1), 8)


# What the rules table must give each parameter of CFG on a data=2, fsdp=2, tensor=2 mesh.
EXPECTED_SPECS = {
    "embed": {"embedding": P("tensor", "fsdp")},
    "lm_head": {"kernel": P("fsdp", "tensor")},
    "final_norm": {"scale": P(None)},
    "layers": {
        "attn_norm": {"scale": P(None, None)},
        "mlp_norm": {"scale": P(None, None)},
        "attn": {
            "q": {"kernel": P(None, "fsdp", "tensor", None)},
            "k": {"kernel": P(None, "fsdp", "tensor", None)},
            "v": {"kernel": P(None, "fsdp", "tensor", None)},
            "o": {"kernel": P(None, "tensor", None, "fsdp")},
        },
        "mlp": {
            "gate": {"kernel": P(None, "fsdp", "tensor")},
            "up": {"kernel": P(None, "fsdp", "tensor")},
            "down": {"kernel": P(None, "tensor", "fsdp")},
        },
    },
}


@pytest.fixture(scope="module")
def sharded(mesh):
    model = Transformer(CFG)
    x = jnp.zeros((8, 16), jnp.int32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    shardings = logical_sharding(abstract, mesh)
    params = jax.jit(lambda k: nn.unbox(model.init(k, x)["params"]), out_shardings=shardings)(jax.random.key(0))
    return abstract, shardings, params


def _is_sharding(s):
    return isinstance(s, NamedSharding)


def test_every_param_gets_the_rules_sharding(sharded, mesh):
    abstract, shardings, params = sharded
    specs = jax.tree.map(lambda s: s.spec, shardings, is_leaf=_is_sharding)
    normalise = lambda spec: P(*(tuple(spec) + (None,) * 4)[:4])  # P(None) == P(None, None) for comparison
    assert jax.tree.structure(specs) == jax.tree.structure(EXPECTED_SPECS)
    jax.tree.map(lambda got, want: (normalise(got) == normalise(want)) or pytest.fail(f"{got} != {want}"),
                 specs, EXPECTED_SPECS)
    # and the materialised arrays actually live that way
    jax.tree.map(lambda x, s: x.sharding.is_equivalent_to(s, x.ndim) or pytest.fail(f"{x.sharding} != {s}"),
                 params, shardings)


def test_per_device_bytes_shrink(sharded, mesh):
    abstract, shardings, params = sharded
    total = sum(x.nbytes for x in jax.tree.leaves(params))
    on_device0 = sum(next(s for s in x.addressable_shards if s.device == mesh.devices.flat[0]).data.nbytes
                     for x in jax.tree.leaves(params))
    assert on_device0 == per_device_bytes(params, shardings)
    assert on_device0 <= total / 3.5, (on_device0, total)  # fsdp x tensor = 4-way for all big matrices
    replicated = jax.tree.map(lambda s: NamedSharding(mesh, P()), shardings, is_leaf=_is_sharding)
    assert per_device_bytes(params, replicated) == total  # a fully replicated layout would fail the check above


def test_indivisible_dims_fall_back_to_replication(mesh):
    assert fit_spec(P("fsdp", "tensor"), (8, 3), mesh) == P("fsdp", None)  # e.g. 3 kv heads on tensor=2
    cfg = ModelConfig(family="llama", vocab_size=64, d_model=36, n_layers=1, n_heads=6, n_kv_heads=3, d_ff=64)
    abstract = jax.eval_shape(Transformer(cfg).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    shardings = logical_sharding(abstract, mesh)
    assert shardings["layers"]["attn"]["k"]["kernel"].spec == P(None, "fsdp", None, None)
    assert shardings["layers"]["attn"]["q"]["kernel"].spec == P(None, "fsdp", "tensor", None)


def test_sharded_forward_matches_single_device(sharded, mesh):
    _, shardings, params = sharded
    model = Transformer(CFG)
    x = jnp.asarray(np.random.RandomState(0).randint(0, 64, (8, 16)), jnp.int32)
    batch_sharding = NamedSharding(mesh, shard_batch_spec())
    assert shard_batch_spec() == P(("data", "fsdp"), None)
    with nn.logical_axis_rules(LOGICAL_RULES), jax.set_mesh(mesh):
        fn = jax.jit(lambda p, x: model.apply({"params": p}, x), in_shardings=(shardings, batch_sharding))
        hlo = fn.lower(params, jax.device_put(x, batch_sharding)).as_text()
        out = fn(params, jax.device_put(x, batch_sharding))
    assert "sharding_constraint" in hlo  # activations carry logical constraints
    assert out.sharding.spec == P(("data", "fsdp"), None, "tensor")  # [batch, length, vocab]
    ref = model.apply({"params": jax.device_get(params)}, x)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)


def test_sampling_with_sharded_params_inside_the_mesh(sharded, mesh):
    _, _, params = sharded
    prompts = [[1, 2, 3], [4, 5], [6]]  # 3 rows: not divisible by data*fsdp = 4
    ref = generate(jax.device_get(params), CFG, prompts, max_new_tokens=4, temperature=0.0)
    with nn.logical_axis_rules(LOGICAL_RULES), jax.set_mesh(mesh):
        assert generate(params, CFG, prompts, max_new_tokens=4, temperature=0.0) == ref
