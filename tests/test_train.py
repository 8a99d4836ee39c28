"""The sharded train step: accumulation, mesh invariance, shardings, dtypes, checkpoints across meshes."""
import dataclasses
import shutil

import jax
import numpy as np
import pytest

from jaxllm.model import tiny
from jaxllm.parallel import LOGICAL_RULES, MeshConfig, make_mesh
from jaxllm.recipes.pretrain import Trainer
from jaxllm.train.checkpoint import Checkpointer, abstract_like
from jaxllm.train.optim import OptimConfig
from jaxllm.train.sharded import bytes_per_device
from jaxllm.train.step import TrainConfig

MODEL = tiny(1, vocab_size=256, seq_len=32)
OPTIM = OptimConfig(lr=1e-2, warmup_steps=2)
TRAIN = TrainConfig(steps=50)
MESH_1 = MeshConfig(data=1)
MESH_222 = MeshConfig(data=2, fsdp=2, tensor=2)


def batches(n, batch=16, seq=32, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        starts = rng.integers(1, 256, (batch, 1))
        x = ((starts + np.arange(seq + 1)) % 255 + 1).astype(np.int32)  # learnable: next = previous + 1
        seg = np.ones((batch, seq), np.int32)
        seg[:, seq // 2:] = 2  # two documents per row
        pos = np.concatenate([np.arange(seq // 2), np.arange(seq - seq // 2)]).astype(np.int32)
        mask = np.ones((batch, seq), np.float32)
        mask[::3, -5:] = 0  # uneven token counts per micro-batch
        out.append({"inputs": x[:, :-1], "targets": x[:, 1:], "segment_ids": seg,
                    "positions": np.tile(pos, (batch, 1)), "loss_mask": mask})
    return out


def trainer(mesh=MESH_1, model=MODEL, train=TRAIN, devices=1):
    return Trainer.create(model, mesh, OPTIM, train, seed=0, devices=jax.devices()[:devices])


def run(tr, data):
    return [float(tr.step(b)["loss"]) for b in data]


@pytest.fixture(scope="module")
def data():
    return batches(4)


@pytest.fixture(scope="module")
def reference_losses(data):
    return run(trainer(), data)


def test_loss_falls(reference_losses):
    assert reference_losses[-1] < reference_losses[0]


def test_gradient_accumulation_equals_big_batch(data, reference_losses):
    accum = run(trainer(train=dataclasses.replace(TRAIN, grad_accum=4)), data)
    np.testing.assert_allclose(accum, reference_losses, rtol=2e-5)


def test_eight_devices_equal_one(data, reference_losses):
    assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
    losses = run(trainer(MESH_222, devices=8), data)
    np.testing.assert_allclose(losses, reference_losses, rtol=2e-5)


def leaves_follow_rules(state, shardings) -> bool:
    return all(leaf.sharding.is_equivalent_to(s, leaf.ndim)
               for leaf, s in zip(jax.tree.leaves(state), jax.tree.leaves(shardings)))


def test_state_shardings_follow_rules_and_shrink_memory():
    tr = trainer(MESH_222, devices=8)
    assert leaves_follow_rules(tr.state, tr.shardings)
    # embeddings, attention and MLP kernels, and their Adam moments are split over fsdp x tensor
    embed = tr.state.params["embed"]["embedding"]
    assert embed.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    mu = tr.state.opt_state[1][0].mu["layers"]["mlp"]["up"]["kernel"]
    assert mu.sharding.shard_shape(mu.shape) == (mu.shape[0], mu.shape[1] // 2, mu.shape[2] // 2)
    total = sum(x.nbytes for x in jax.tree.leaves(tr.state))
    per_device = bytes_per_device(tr.state)
    assert len(per_device) == 8 and max(per_device.values()) < 0.4 * total
    # a fully replicated layout of the same state fails both checks
    replicated = jax.device_put(tr.state, jax.sharding.NamedSharding(tr.mesh, jax.sharding.PartitionSpec()))
    assert not leaves_follow_rules(replicated, tr.shardings)
    assert max(bytes_per_device(replicated).values()) >= total


def test_bf16_compute_close_to_f32(data, reference_losses):
    losses = run(trainer(model=dataclasses.replace(MODEL, dtype="bfloat16")), data)
    np.testing.assert_allclose(losses, reference_losses, rtol=3e-2)


@pytest.mark.parametrize("save_devices, restore_devices", [(8, 1), (1, 8)])
def test_checkpoint_restores_across_meshes(tmp_path, data, save_devices, restore_devices):
    mesh_of = {1: MESH_1, 8: MESH_222}
    first = trainer(mesh_of[save_devices], devices=save_devices)
    run(first, data[:2])
    ckpt = Checkpointer(tmp_path, async_save=True)
    ckpt.save(2, first.state)
    ckpt.wait()
    expected = run(first, data[2:])
    other = trainer(mesh_of[restore_devices], devices=restore_devices)
    step, other.state, _ = Checkpointer(tmp_path).restore(abstract_like(other.state, other.shardings))
    assert step == 2 and leaves_follow_rules(other.state, other.shardings)
    np.testing.assert_allclose(run(other, data[2:]), expected, rtol=2e-5)


def test_corrupted_checkpoint_falls_back_to_previous(tmp_path, data):
    tr = trainer()
    ckpt = Checkpointer(tmp_path, async_save=False)
    run(tr, data[:1])
    ckpt.save(1, tr.state)
    params_1 = jax.device_get(tr.state.params)
    run(tr, data[1:2])
    ckpt.save(2, tr.state)
    ckpt.close()
    for f in (tmp_path / "2" / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
            f.write_bytes(b"\0garbage" * 3)
    shutil.rmtree(tmp_path / "2" / "state" / "ocdbt.process_0", ignore_errors=True)
    fresh = trainer()
    with pytest.warns(UserWarning, match="could not be restored"):
        step, state, _ = Checkpointer(tmp_path).restore(abstract_like(fresh.state, fresh.shardings))
    assert step == 1
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), params_1)


def test_mesh_that_does_not_fit_is_a_clear_error():
    with pytest.raises(ValueError, match="does not divide|make the product"):
        make_mesh(MeshConfig(data=3, fsdp=1, tensor=1))
    assert dict(LOGICAL_RULES)["batch"] == ("data", "fsdp")
