"""The main job cannot break silently: every speedrun stage, a few steps each, through the real CLI."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_speedrun_smoke_runs_every_stage_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    cmd = [sys.executable, "-m", "jaxllm", "run", "speedrun_smoke", "--run-dir", str(run_dir)]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    stages = json.loads((run_dir / "stages.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    assert list(stages) == list(config["stages"])
    assert stages["web"]["docs_out"] > 0 and stages["data"]["train"]["documents"] > 0
    assert stages["pretrain"]["steps"] == config["train"]["steps"]
    assert 0 < stages["evaluate"]["val_bpb"] < 10 and stages["evaluate"]["unigram_bpb"] > 0
    report = (run_dir / "report.md").read_text()
    for section in ("## Web data", "## Tokenizer", "## Pretraining", "## Evaluation", "## Supervised finetuning", "## RL on verifiable rewards"):
        assert section in report
    assert (run_dir / "pretrain" / "loss.png").stat().st_size > 1000
    # running the finished directory again resumes: every stage is skipped, nothing is redone
    again = subprocess.run([sys.executable, "-m", "jaxllm", "run", str(run_dir)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stdout.count("done earlier, skipping") == len(config["stages"])


def test_stage_selection_accepts_commas_and_names_stages_missing_from_the_run(tmp_path):
    from jaxllm.config import override
    from jaxllm.recipes.experiment import load_experiment, run_stages

    cfg = override(load_experiment("speedrun_smoke"), ["stages=data,report"])
    with pytest.raises(ValueError, match=r"demos not in this run's stages \(data, report\).*config.json"):
        run_stages(cfg, tmp_path, ("demos,report",))
