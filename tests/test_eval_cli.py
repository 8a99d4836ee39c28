"""`jaxllm eval RUN_DIR --tasks ...` on a real (tiny, untrained) run directory: config.json, tokenizer,
an orbax pretrain checkpoint; prints the table and writes the JSON."""
import json

import pytest

from jaxllm.cli import main
from jaxllm.model import ModelConfig
from jaxllm.parallel import MeshConfig
from jaxllm.recipes.experiment import Config, start_run
from jaxllm.recipes.pretrain import Trainer
from jaxllm.tokenizer import Tokenizer
from jaxllm.train.checkpoint import Checkpointer
from jaxllm.train.step import TrainConfig

pytestmark = pytest.mark.slow  # builds a real trainer and checkpoint (~20 s on an idle 2-core machine)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tok = Tokenizer({bytes([i]): i for i in range(256)}, {"<|bos|>": 256}, name="bytes")
    cfg = Config(name="evaltest", model=ModelConfig(vocab_size=tok.n_vocab, max_seq_len=512, d_model=32, n_layers=1,
                                                    n_heads=2, n_kv_heads=2, d_ff=64))
    run = start_run(cfg, tmp_path_factory.mktemp("runs") / "evaltest")
    tok.save(run / "tokenizer")
    trainer = Trainer.create(cfg.model, MeshConfig(), cfg.optim, TrainConfig(steps=1), seed=0)
    ckpt = Checkpointer(run / "pretrain" / "checkpoints", async_save=False)
    ckpt.save(1, trainer.state, force=True)
    ckpt.close()
    return run


def test_eval_cli_on_run_dir(run_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["eval", str(run_dir), "--tasks", "piqa,boolq", "--limit", "4", "--shots", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "evaltest/pretrain (base prompting)" in printed and "acc_norm" in printed and "0.5000" in printed
    report = json.loads(out.read_text())
    for task in ("piqa", "boolq"):
        r = report["results"][task]
        assert r["n"] == 4 and r["chance"] == 0.5 and r["shots"] == 1 and 0 <= r["accuracy"] <= 1
        assert len(r["items"]) == 4 and all(len(it["logprobs"]) == 2 for it in r["items"])


def test_eval_cli_errors(run_dir, capsys):
    assert main(["eval", str(run_dir), "--tasks", "nope"]) == 2
    assert "unknown task" in capsys.readouterr().err
    assert main(["eval", str(run_dir), "--stage", "sft", "--tasks", "piqa"]) == 2
    assert "no checkpoints for stage sft" in capsys.readouterr().err
    assert main(["eval", "--list"]) == 0 and "mmlu" in capsys.readouterr().out
