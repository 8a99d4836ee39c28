"""RLConfig: the `rl` section of an experiment (task, rollouts, advantage/loss/reward functions, optimiser)."""
from __future__ import annotations

import dataclasses
from typing import Literal, Optional

from jaxllm.train.optim import OptimConfig


@dataclasses.dataclass(frozen=True)
class RLConfig:
    init: str = ""  # "" = the run's sft (else pretrain) checkpoint; or a pretrained model (load_pretrained spec)
    remat: Literal["", "none", "full", "dots"] = ""  # "" keeps the model's setting; "full" saves memory on big models
    # task: problems {"question", "answer"}; "arithmetic" uses jaxllm.data.generators.arithmetic's knobs
    task: Literal["arithmetic", "gsm_symbolic", "asdiv"] = "arithmetic"
    kind: Literal["expression", "word", "mixed"] = "expression"  # arithmetic only
    min_digits: int = 1
    max_digits: int = 2
    min_ops: int = 1
    max_ops: int = 1
    ops: str = "+-*"
    # auto_difficulty (arithmetic): probe the starting model's greedy accuracy on `probe_problems` training
    # problems at each level "min_digits-max_digits:min_ops-max_ops" and train at the level whose accuracy is
    # inside target_accuracy and nearest its middle (all-wrong or all-right groups have zero advantage)
    auto_difficulty: bool = True
    difficulty_ladder: tuple[str, ...] = ("1-1:1-1", "1-2:1-1", "2-2:1-1", "1-2:1-2", "2-2:2-2", "2-3:2-2")
    target_accuracy: tuple[float, float] = (0.1, 0.7)
    probe_problems: int = 48
    train_problems: int = 2000
    eval_problems: int = 200  # held-out split, greedy accuracy
    template: str = "jaxllm"  # chat template the model was fine-tuned with
    # rollouts
    steps: int = 30  # rollout + update rounds
    prompts_per_step: int = 8
    group_size: int = 8  # completions per prompt (the video samples 15)
    max_new_tokens: int = 64
    seq_len: int = 128  # prompt + completion tokens per row (padded)
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    rollout_batch: int = 0  # sequences decoded at once (0 = all)
    # update: pure functions by reference, hyperparameters passed as keyword arguments
    advantage: str = "jaxllm.rl.advantages:grpo_advantages"
    loss: str = "jaxllm.rl.losses:grpo_loss"
    reward: str = "jaxllm.rl.rewards:math_reward"  # what the rollouts are paid (checked_math_reward: working must hold too)
    eval_reward: str = "jaxllm.rl.rewards:math_reward"  # held-out accuracy and the difficulty probe: the answer key only
    format_weight: float = 0.0  # math_reward: + format_weight if the answer is in the expected format
    answer_format: str = "####"
    updates_per_step: int = 1  # optimizer steps on each rollout batch (> 1: PPO-style reuse, clipping bites)
    clip_eps: float = 0.2
    clip_eps_high: Optional[float] = None
    kl_coef: float = 0.02
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    entropy_coef: float = 0.0
    aggregation: Literal["token", "sequence", "constant"] = "token"
    reward_threshold: float = 1.0  # rejection_sampling_loss: train on completions with reward >= this
    optim: OptimConfig = OptimConfig(lr=1e-4, warmup_steps=0, schedule="constant", weight_decay=0.0, grad_clip=1.0)
    # evaluation, checkpoints
    eval_every: int = 10
    eval_batch: int = 64
    checkpoint_every: int = 10
    keep_checkpoints: int = 2
    seed: int = 0

    def __post_init__(self):
        if self.group_size < 2:
            raise ValueError(f"rl.group_size={self.group_size}: need >= 2 completions per prompt for group advantages")
        if self.max_new_tokens >= self.seq_len:
            raise ValueError(f"rl.max_new_tokens={self.max_new_tokens} must be below rl.seq_len={self.seq_len} "
                             "(the prompt needs room too)")

    def loss_kwargs(self) -> dict:
        """Hyperparameters handed to the loss function (each loss ignores the ones it does not use)."""
        return {"clip_eps": self.clip_eps, "clip_eps_high": self.clip_eps_high, "kl_coef": self.kl_coef,
                "kl_estimator": self.kl_estimator, "entropy_coef": self.entropy_coef,
                "aggregation": self.aggregation, "max_tokens": self.max_new_tokens,
                "reward_threshold": self.reward_threshold}
