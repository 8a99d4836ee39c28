"""The speedrun shrunk to every stage in a few steps: CI runs it so the main job cannot break silently.

    jaxllm run speedrun_smoke
"""
import dataclasses
from pathlib import Path

from jaxllm.config import load_python_file, override


def config(depth: int = 2):
    base = load_python_file(Path(__file__).with_name("speedrun.py"), "config", depth=depth)
    cfg = override(base, [
        "name=speedrun_smoke",
        "data.max_documents=3000",
        "tokenizer.vocab_size=512",
        "pipeline.seq_len=64",
        "pipeline.batch_size=8",
        "train.steps=12",
        "train.time_budget_s=0",
        "train.eval_every=6",
        "train.eval_batches=4",
        "train.sample_every=6",
        "train.checkpoint_every=6",
        "train.log_every=3",
        "sample.max_new_tokens=8",
        "web_recipe.pages_per_source=12",
        "web_recipe.huge_page=false",
        "sft.mixture=identity:60,arithmetic:60:max_digits=1,tool-python:60",
        "sft.train.steps=4",
        "sft.train.eval_every=2",
        "sft.train.eval_batches=2",
        "sft.train.checkpoint_every=2",
        "sft.data.batch_size=8",
        "sft.eval_trials=2",
        "sft.idk.probe_questions=8",
        "sft.idk.eval_questions=6",
        "sft.idk.eval_people=4",
        "sft.idk.max_new_tokens=16",
        "sft.idk.batch_size=8",
        "sft.idk.data.batch_size=8",
        "sft.idk.train.steps=2",
        "sft.idk.train.eval_every=2",
        "sft.idk.train.eval_batches=2",
        "sft.idk.train.checkpoint_every=2",
        "sft.think.problems=48",
        "sft.think.max_digits=1",
        "sft.think.min_ops=2",  # three-operation problems do not fit seq_len 64
        "sft.think.max_ops=2",
        "sft.think.test_digits=2",
        "sft.think.test_problems=4",
        "sft.think.max_new_tokens=16",
        "sft.think.data.batch_size=8",
        "sft.think.train.steps=2",
        "sft.think.train.eval_every=2",
        "sft.think.train.eval_batches=2",
        "sft.think.train.checkpoint_every=2",
        "rl.steps=2",
        "rl.prompts_per_step=2",
        "rl.group_size=2",
        "rl.eval_problems=8",
        "rl.probe_problems=8",
        "rl.max_new_tokens=16",
        "rl.seq_len=64",
    ])
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=512, max_seq_len=64))
