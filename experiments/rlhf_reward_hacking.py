"""Reward hacking, shown: GRPO against a learned reward model until it stops meaning what we wanted.

    jaxllm run rlhf_reward_hacking                     # the rlhf stage + report.md (~40 s CPU time)
    python experiments/rlhf_reward_hacking.py --out runs/rlhf_hack --rl-steps 200

What runs (jaxllm/recipes/rlhf.py, docs/rlhf.md): a tiny Llama-style policy learns a ~50-word toy
language ("the cat" → "sees a lovely bird."); a simulated labeller with a hidden true preference
(pleasant words, counted once; repeats, rambling and word salad penalised; Gumbel noise) ranks 4
samples per prompt; a reward model (the policy's backbone + a scalar head, Bradley–Terry on all pairs)
learns those rankings; then GRPO maximises the reward model's score with a KL leash (k3, 0.01) to
the SFT policy. The labeller's true score is logged but never optimised; every 10 steps it is
measured on 64 held-out prompts, and early stopping keeps the best of those checks.

What we saw (seed 0, defaults, CPU): the reward model reaches 0.806 held-out pairwise accuracy on 576
pairs (95% CI 0.771-0.836). Under GRPO its held-out score climbs 0.43 → 2.49 (step 70) → 2.80
(step 120) and never comes back down, while the held-out true score goes 0.70 → 1.00 at step 70 →
-0.40 at step 120. The policy first learns real improvements ("likes a sweet river and the good
song."), then the exploit: the reward model's favourite word in every noun phrase ("builds a sweet
fish and a sweet fish.") and ungrammatical run-ons, which the reward model never saw in its training
rankings and scores highest of all. Early stopping (3 checks without improvement) fires at step 100
and keeps step 70's policy. reward_hacking.png plots both scores against step.
"""
import argparse
import json

from jaxllm.recipes.experiment import Config


def config() -> Config:
    return Config(name="rlhf_reward_hacking", stages=("jaxllm.recipes.rlhf:rlhf_stage", "report"),
                  notes="Toy RLHF: reward model from simulated rankings, GRPO against it, reward hacking "
                        "and early stopping on a held-out true-score check.")


def main() -> None:
    import dataclasses

    from jaxllm.recipes.rlhf import RLHFConfig, run_rlhf

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/rlhf_reward_hacking")
    ap.add_argument("--rl-steps", type=int, default=RLHFConfig.rl_steps)
    ap.add_argument("--kl-coef", type=float, default=RLHFConfig.kl_coef)
    ap.add_argument("--rm-loss", default=RLHFConfig.rm_loss, choices=("bradley_terry", "plackett_luce"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cfg = dataclasses.replace(RLHFConfig(), rl_steps=args.rl_steps, kl_coef=args.kl_coef, rm_loss=args.rm_loss,
                              seed=args.seed)
    summary = run_rlhf(args.out, cfg)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
