"""Put a train state and its step on a device mesh: shardings come from the logical-axis rules."""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxllm.parallel import logical_sharding, shard_batch_spec
from jaxllm.train.step import TrainState

BATCH_SPEC = shard_batch_spec()  # [batch, length]: batch split over data and fsdp


def state_shardings(init_boxed: Callable, optimizer: optax.GradientTransformation, mesh: Mesh,
                    rules: Sequence[tuple]) -> TrainState:
    """NamedShardings for every leaf of the train state, from the params' logical axis names.

    `init_boxed(rng)` returns params still wrapped in `nn.LogicallyPartitioned`; optax states
    built from boxed params carry the same boxes, so moments shard like their parameters and
    scalars (the step count) are replicated.
    """
    def boxed_state(rng):
        params = init_boxed(rng)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

    abstract = jax.eval_shape(boxed_state, jax.random.key(0))
    return logical_sharding(abstract, mesh, rules)


def init_sharded_state(init_boxed: Callable, optimizer: optax.GradientTransformation, mesh: Mesh,
                       rules: Sequence[tuple], rng) -> tuple[TrainState, TrainState]:
    """Initialise params and optimizer state directly into their shardings (no host copy)."""
    shardings = state_shardings(init_boxed, optimizer, mesh, rules)

    def init(rng):
        params = nn.meta.unbox(init_boxed(rng))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=shardings)(rng)
    return state, shardings


def jit_train_step(train_step: Callable, shardings: TrainState, mesh: Mesh):
    batch_sharding = NamedSharding(mesh, BATCH_SPEC)
    return jax.jit(train_step, in_shardings=(shardings, batch_sharding),
                   out_shardings=(shardings, NamedSharding(mesh, P())), donate_argnums=(0,))


def jit_eval_step(eval_step: Callable, shardings: TrainState, mesh: Mesh):
    batch_sharding = NamedSharding(mesh, BATCH_SPEC)
    return jax.jit(eval_step, in_shardings=(shardings.params, batch_sharding),
                   out_shardings=NamedSharding(mesh, P()))


def device_batch(batch: dict, mesh: Mesh) -> dict:
    """Process-local numpy batch `[local_batch, length]` → global jax arrays sharded over the mesh."""
    sharding = NamedSharding(mesh, BATCH_SPEC)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def bytes_per_device(tree) -> dict:
    """Bytes each device holds for the arrays in `tree` (to check that sharding really splits memory)."""
    totals: dict = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            totals[shard.device] = totals.get(shard.device, 0) + shard.data.nbytes
    return totals
