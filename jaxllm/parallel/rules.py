"""The one table mapping logical axis names (from jaxllm.model) to mesh axes, and helpers that apply it.

Order matters: flax assigns rules top to bottom and never uses a mesh axis twice in one array, so an
activation [batch, length, embed] gets batch -> (data, fsdp) and leaves embed unsharded, while a
parameter [vocab, embed] gets vocab -> tensor and embed -> fsdp (FSDP/ZeRO-3 style).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("embed", "fsdp"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
)


def _axis_size(mesh: Mesh, entry) -> int:
    if entry is None:
        return 1
    names = (entry,) if isinstance(entry, str) else tuple(entry)
    size = 1
    for n in names:
        size *= mesh.shape[n]
    return size


def fit_spec(spec: PartitionSpec, shape: tuple, mesh: Mesh) -> PartitionSpec:
    """Drop mesh axes from dimensions they do not divide (e.g. 3 kv heads on tensor=2): replicate those."""
    entries = list(spec) + [None] * (len(shape) - len(spec))
    fixed = [e if e is not None and dim % _axis_size(mesh, e) == 0 else None for e, dim in zip(entries, shape)]
    return PartitionSpec(*fixed)


def logical_sharding(abstract_tree: Any, mesh: Mesh, rules=LOGICAL_RULES) -> Any:
    """NamedSharding tree for a (possibly abstract) tree of nn.LogicallyPartitioned params.

    Use with `jax.eval_shape(model.init, ...)`: the boxes carry the logical names; the result has
    the same structure as the unboxed params. Leaves without names are replicated.
    """
    specs = nn.get_partition_spec(abstract_tree)  # logical PartitionSpecs, boxes removed
    shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
    shapes = nn.unbox(abstract_tree)
    return jax.tree.map(
        lambda s, x: NamedSharding(mesh, fit_spec(s.spec, x.shape, mesh)), shardings, shapes,
        is_leaf=lambda s: isinstance(s, NamedSharding),
    )


def shard_batch_spec() -> PartitionSpec:
    """PartitionSpec for [batch, length] data arrays: batch over data and fsdp, length whole."""
    return PartitionSpec(("data", "fsdp"), None)


def per_device_bytes(tree: Any, shardings: Any) -> int:
    """Bytes one device holds for `tree` (arrays or ShapeDtypeStructs) laid out by `shardings`."""
    total = 0
    for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, NamedSharding))):
        shard = s.shard_shape(x.shape)
        n = 1
        for d in shard:
            n *= d
        total += n * x.dtype.itemsize
    return total
