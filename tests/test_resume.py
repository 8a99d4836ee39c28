"""kill -9 at seeded moments (one while an async checkpoint save is in flight), resume, and compare
per-step losses and final parameters bit for bit with an uninterrupted run."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from jaxllm.data.pipeline import PipelineConfig
    from jaxllm.model import tiny
    from jaxllm.parallel import MeshConfig
    from jaxllm.recipes import pretrain as P
    from jaxllm.tokenizer import Tokenizer
    from jaxllm.train import checkpoint as C
    from jaxllm.train.optim import OptimConfig
    from jaxllm.train.step import TrainConfig

    data, out, kill_step, kill_after_save = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if kill_step:  # die inside the loop, between checkpoints
        step_fn = P.Trainer.step
        count = {"n": 0}
        def dying_step(self, batch):
            m = step_fn(self, batch)
            if int(self.state.step) >= kill_step:
                os.kill(os.getpid(), signal.SIGKILL)
            return m
        P.Trainer.step = dying_step
    if kill_after_save:  # die right after an async save started: its commit is still in flight
        save = C.Checkpointer.save
        def dying_save(self, step, *a, **k):
            r = save(self, step, *a, **k)
            if step == kill_after_save:
                os.kill(os.getpid(), signal.SIGKILL)
            return r
        C.Checkpointer.save = dying_save
    tok = Tokenizer.load(Path(data) / "tokenizer")
    # the speedrun's native CPU kernels (jaxllm/kernels): their results must not depend on thread timing
    model = tiny(1, vocab_size=tok.n_vocab, seq_len=32, scan_layers=False, attention_impl="fused", matmul_impl="blas")
    P.pretrain(Path(out), model, MeshConfig(), OptimConfig(lr=1e-2, warmup_steps=3),
               TrainConfig(steps=20, eval_every=10, eval_batches=2, sample_every=0, checkpoint_every=5, log_every=1),
               PipelineConfig(seq_len=32, batch_size=4, seed=3), str(Path(data) / "train"), str(Path(data) / "val"),
               tok, None, seed=0)
""")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from jaxllm.data.shards import write_shards
    from jaxllm.tokenizer import TokenizerConfig, train_tokenizer

    root = tmp_path_factory.mktemp("resume-data")
    rng = np.random.default_rng(0)
    words = ["river", "stone", "light", "quiet", "north", "garden", "silver", "winter", "paper", "market"]
    docs = [{"id": f"d{i}", "text": " ".join(rng.choice(words, rng.integers(20, 80))) + ".", "source": "t", "meta": {}}
            for i in range(300)]
    tok = train_tokenizer((d["text"] for d in docs), TokenizerConfig(vocab_size=300))
    tok.save(root / "tokenizer")
    write_shards(docs[:260], str(root / "tokenizer"), str(root / "train"), num_shards=2, num_workers=1)
    write_shards(docs[260:], str(root / "tokenizer"), str(root / "val"), num_shards=1, num_workers=1)
    return root


def child(data_dir, out, kill_step=0, kill_after_save=0):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device: fast
    return subprocess.run([sys.executable, "-c", CHILD, str(data_dir), str(out), str(kill_step), str(kill_after_save)],
                          env=env, capture_output=True, text=True, timeout=300)


def losses(out: Path) -> dict:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def final_params(out: Path):
    import orbax.checkpoint as ocp

    step = max(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore((out / "checkpoints" / str(step) / "state").absolute())["params"]


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    r = child(data_dir, out)
    assert r.returncode == 0, r.stderr[-3000:]
    return losses(out), final_params(out)


@pytest.mark.slow
@pytest.mark.parametrize("kill_step, kill_after_save", [(3, 0), (12, 0), (0, 15)])
def test_kill_9_and_resume_reproduces_the_uninterrupted_run(data_dir, tmp_path, reference, kill_step, kill_after_save):
    ref_losses, ref_params = reference
    killed = child(data_dir, tmp_path, kill_step, kill_after_save)
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = child(data_dir, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if kill_step != 3:
        assert "resumed from checkpoint" in resumed.stdout
    got = losses(tmp_path)
    assert sorted(got) == list(range(1, 21))
    assert got == ref_losses  # exactly equal floats, every step
    import jax

    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), final_params(tmp_path), ref_params)
