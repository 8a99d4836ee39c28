"""Same results on any topology: pretraining on 1 process x 1 device, 1 x 8 and 2 processes x 4
devices (real jax.distributed over 127.0.0.1, gloo collectives) gives the same per-step losses; a
checkpoint written on 2x4 continues identically on 1x8 and 1x1, one written on 1x1 continues on
2x4, and the data iterator neither repeats nor skips rows across the change."""
import json
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from jaxllm.recipes.launch import launch_local

STEPS, SAVE_AT = 6, 3

CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from jaxllm.parallel.distributed import initialize
    initialize()
    import jax
    from jaxllm.data.pipeline import PipelineConfig
    from jaxllm.model import tiny
    from jaxllm.parallel import MeshConfig
    from jaxllm.recipes import pretrain as P
    from jaxllm.tokenizer import Tokenizer
    from jaxllm.train.optim import OptimConfig
    from jaxllm.train.step import TrainConfig

    data, out, steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    if len(sys.argv) > 4:  # "PROCESS:STEP": that process kills itself (SIGKILL) right after that step
        import os, signal
        who, at = map(int, sys.argv[4].split(":"))
        step_fn = P.Trainer.step
        def dying_step(self, batch):
            m = step_fn(self, batch)
            if jax.process_index() == who and int(self.state.step) >= at:
                os.kill(os.getpid(), signal.SIGKILL)
            return m
        P.Trainer.step = dying_step
    print("topology", jax.process_count(), jax.local_device_count(), jax.device_count(), flush=True)
    tok = Tokenizer.load(data / "tokenizer")
    P.pretrain(out, tiny(1, vocab_size=tok.n_vocab, seq_len=32), MeshConfig(), OptimConfig(lr=1e-2, warmup_steps=2),
               TrainConfig(steps=steps, eval_every=0, eval_batches=1, sample_every=0, checkpoint_every=3,
                           keep_checkpoints=5, log_every=1, async_checkpointing=False),
               PipelineConfig(seq_len=32, batch_size=8, seed=1), str(data / "train"), str(data / "val"), tok, None)
""")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from jaxllm.data.shards import write_shards
    from jaxllm.tokenizer import TokenizerConfig, train_tokenizer

    root = tmp_path_factory.mktemp("multihost-data")
    rng = np.random.default_rng(0)
    words = ["river", "stone", "light", "quiet", "north", "garden", "silver", "winter", "paper", "market"]
    docs = [{"id": f"d{i}", "text": " ".join(rng.choice(words, rng.integers(10, 60))) + ".", "source": "t", "meta": {}}
            for i in range(200)]
    tok = train_tokenizer((d["text"] for d in docs), TokenizerConfig(vocab_size=300))
    tok.save(root / "tokenizer")
    write_shards(docs[:180], str(root / "tokenizer"), str(root / "train"), num_shards=2, num_workers=1)
    write_shards(docs[180:], str(root / "tokenizer"), str(root / "val"), num_shards=1, num_workers=1)
    return root


def train(data_dir: Path, out: Path, processes: int, devices: int, steps: int = STEPS) -> dict:
    r = launch_local([sys.executable, "-c", CHILD, str(data_dir), str(out), str(steps)], processes, devices,
                     timeout_s=240, grace_s=30)
    text = "\n".join(r["output"])
    assert r["returncode"] == 0, text[-4000:]
    assert f"topology {processes} {devices} {processes * devices}" in text
    return r


def losses(out: Path) -> dict:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def resume_copy(src: Path, dst: Path, at: int) -> Path:
    """A run directory as it was right after the checkpoint at step `at` (later checkpoints removed)."""
    shutil.copytree(src, dst)
    for ckpt in (dst / "checkpoints").iterdir():
        if ckpt.name.isdigit() and int(ckpt.name) > at:
            shutil.rmtree(ckpt)
    return dst


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("topologies")
    for name, (p, d) in {"1x1": (1, 1), "1x8": (1, 8), "2x4": (2, 4)}.items():
        train(data_dir, root / name, p, d)
    return root


@pytest.mark.slow
def test_same_losses_on_1x1_1x8_and_2x4(runs):
    ref = losses(runs / "1x1")
    assert sorted(ref) == list(range(1, STEPS + 1))
    assert ref[STEPS] < ref[1]  # it learns
    for name in ("1x8", "2x4"):
        got = losses(runs / name)
        assert sorted(got) == sorted(ref), name
        np.testing.assert_allclose([got[s] for s in sorted(ref)], [ref[s] for s in sorted(ref)], rtol=2e-5,
                                   err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("src, processes, devices", [("2x4", 1, 8), ("2x4", 1, 1), ("1x1", 2, 4)])
def test_checkpoint_continues_identically_on_another_topology(runs, data_dir, tmp_path, src, processes, devices):
    out = resume_copy(runs / src, tmp_path / "run", SAVE_AT)
    r = train(data_dir, out, processes, devices)
    assert f"resumed from checkpoint at step {SAVE_AT}" in "\n".join(r["output"])
    ref, got = losses(runs / "1x1"), losses(out)
    assert sorted(got) == list(range(1, STEPS + 1))  # metrics past the checkpoint were dropped and redone
    np.testing.assert_allclose([got[s] for s in range(SAVE_AT + 1, STEPS + 1)],
                               [ref[s] for s in range(SAVE_AT + 1, STEPS + 1)], rtol=2e-5)
    # the data position is stored per stream, not per process: the files name streams only
    for step in (SAVE_AT, STEPS):  # written by the old and by the new topology
        names = sorted(p.name for p in (out / "checkpoints" / str(step) / "data_iter").iterdir() if p.suffix == ".json")
        assert names == sorted(f"stream_{k}.json" for k in range(8))


@pytest.mark.slow
def test_dead_process_stops_the_job_and_the_relaunch_resumes(runs, data_dir, tmp_path):
    out = tmp_path / "run"
    r = launch_local([sys.executable, "-c", CHILD, str(data_dir), str(out), str(STEPS), "1:5"], 2, 4,
                     grace_s=60, timeout_s=240)
    assert r["returncodes"][1] == -9  # killed after step 5: the checkpoint of step 3 is the last complete one
    assert r["returncodes"][0] != 0 and r["exit_seconds"][0] is not None  # process 0 stopped by itself...
    assert r["exit_seconds"][0] - r["exit_seconds"][1] < 60  # ...within a minute
    assert "another task died" in r["output"][0]
    assert sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == [SAVE_AT]
    resumed = train(data_dir, out, 2, 4)  # rerunning the same launch resumes
    assert f"resumed from checkpoint at step {SAVE_AT}" in "\n".join(resumed["output"])
    ref, got = losses(runs / "1x1"), losses(out)
    assert sorted(got) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([got[s] for s in sorted(ref)], [ref[s] for s in sorted(ref)], rtol=2e-5)
