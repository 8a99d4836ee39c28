"""RLHF pure pieces: preference schema, Bradley–Terry / Plackett–Luce, DPO / IPO, the simulated labeller."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.data.sources import DataError
from jaxllm.rl import dpo, labeller
from jaxllm.rl.preferences import (Pair, Ranking, bradley_terry_loss, factual_summary_pairs, pair_to_ranking,
                                   pairwise_accuracy, parse_preference, plackett_luce_loss, ranking_to_pairs,
                                   read_preferences, wilson_interval, write_preferences)

S = jnp.array([[1.0, 0.0, -1.0]])


def test_bradley_terry_hand_computed():
    # pairs (1 vs 0), (1 vs -1), (0 vs -1): softplus(-1), softplus(-2), softplus(-1)
    want = (2 * math.log1p(math.exp(-1)) + math.log1p(math.exp(-2))) / 3
    assert float(bradley_terry_loss(S, jnp.array([[0, 1, 2]]))) == pytest.approx(want, rel=1e-6)
    assert want == pytest.approx(0.25115046, rel=1e-6)
    # the reversed ranking: every pair is now on the wrong side
    want_rev = (2 * math.log1p(math.exp(1)) + math.log1p(math.exp(2))) / 3
    assert float(bradley_terry_loss(S, jnp.array([[2, 1, 0]]))) == pytest.approx(want_rev, rel=1e-6)


def test_plackett_luce_hand_computed():
    # -[1 - log(e + 1 + e^-1)] - [0 - log(1 + e^-1)] = 0.40760596 + 0.31326169
    want = (math.log(math.e + 1 + math.exp(-1)) - 1) + math.log(1 + math.exp(-1))
    assert want == pytest.approx(0.72086765, rel=1e-6)
    assert float(plackett_luce_loss(S, jnp.array([[0, 1, 2]]))) == pytest.approx(want, rel=1e-6)
    # two groups average; order inside the group is what matters, not the candidate index
    two = plackett_luce_loss(jnp.array([[1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]), jnp.array([[0, 1, 2], [1, 2, 0]]))
    assert float(two) == pytest.approx(want, rel=1e-6)


def test_k2_losses_agree_and_gradient_signs():
    s, o = jnp.array([[0.3, 0.9]]), jnp.array([[0, 1]])  # candidate 0 preferred but scored lower
    bt, pl = bradley_terry_loss(s, o), plackett_luce_loss(s, o)
    assert float(bt) == pytest.approx(float(pl), rel=1e-6)
    assert float(bt) == pytest.approx(math.log1p(math.exp(0.6)), rel=1e-6)
    for loss in (bradley_terry_loss, plackett_luce_loss):
        g = jax.grad(lambda x: loss(x, jnp.array([[2, 0, 1]])))(S)[0]
        assert g[2] < 0 and g[1] > 0  # raise the best, lower the worst
        assert float(jnp.sum(g)) == pytest.approx(0.0, abs=1e-6)  # a common shift changes nothing


def test_dpo_ipo_values_and_gradient_signs():
    args = jnp.array([-1.0]), jnp.array([-2.0]), jnp.array([-1.5]), jnp.array([-1.5])  # margin h = 1
    loss, aux = dpo.dpo_loss(*args, beta=0.5)
    assert float(loss) == pytest.approx(math.log1p(math.exp(-0.5)), rel=1e-6)
    assert float(aux["margin"]) == pytest.approx(1.0)
    g_c, g_r = jax.grad(lambda c, r: dpo.dpo_loss(c, r, args[2], args[3], beta=0.5)[0], argnums=(0, 1))(*args[:2])
    sig = 1 / (1 + math.exp(0.5))
    assert float(g_c[0]) == pytest.approx(-0.5 * sig, rel=1e-5) and float(g_r[0]) == pytest.approx(0.5 * sig, rel=1e-5)
    # IPO: (h - 1/(2 beta))^2; beta=0.25 -> (1 - 2)^2 = 1, and the gradient pushes the margin up to 2
    ipo, _ = dpo.ipo_loss(*args, beta=0.25)
    assert float(ipo) == pytest.approx(1.0)
    g = jax.grad(lambda c: dpo.ipo_loss(c, *args[1:], beta=0.25)[0])(args[0])
    assert float(g[0]) < 0
    # past its target margin IPO pulls back (DPO never does)
    g_far = jax.grad(lambda c: dpo.ipo_loss(c, *args[1:], beta=0.25)[0])(jnp.array([5.0]))
    assert float(g_far[0]) > 0


def test_sequence_log_probs_masks():
    logits = jnp.log(jnp.array([[[0.5, 0.5], [0.25, 0.75]]]))
    lp = dpo.sequence_log_probs(logits, jnp.array([[0, 1]]), jnp.array([[0.0, 1.0]]))
    assert float(lp[0]) == pytest.approx(math.log(0.75), rel=1e-6)


def test_schema_round_trip_and_errors(tmp_path):
    r = Ranking("tell a joke", ("a", "b", "c"), (2, 0, 1))
    p = Pair("q", "good", "bad", {"src": "x"})
    path = tmp_path / "prefs.jsonl"
    write_preferences(path, [r, p])
    back = list(read_preferences(path))
    assert back == [r, p] and back[1].meta == {"src": "x"}
    assert [(q.chosen, q.rejected) for q in ranking_to_pairs(r)] == [("c", "a"), ("c", "b"), ("a", "b")]
    assert ranking_to_pairs(pair_to_ranking(p)) == [p]
    with pytest.raises(DataError, match="not a permutation"):
        parse_preference({"prompt": "x", "candidates": ["a", "b"], "ranking": [0, 0]}, "f.jsonl:3")
    with pytest.raises(DataError, match="f.jsonl:4.*'rejected'"):
        parse_preference({"prompt": "x", "chosen": "a"}, "f.jsonl:4")
    path.write_text(json.dumps({"prompt": "x", "chosen": "a", "rejected": "b"}) + "\n{oops\n")
    with pytest.raises(DataError, match=r"prefs.jsonl:2: not valid JSON"):
        list(read_preferences(path))


def test_accuracy_and_wilson():
    assert float(pairwise_accuracy(jnp.array([2.0, 1.0, 0.0]), jnp.array([1.0, 2.0, 0.0]))) == pytest.approx(0.5)
    lo, hi = wilson_interval(75, 100)
    assert 0.65 < lo < 0.66 and 0.82 < hi < 0.84  # textbook: 0.6569 .. 0.8245


def test_labeller_true_score_and_noise():
    assert labeller.true_score("sees a lovely cat.") > labeller.true_score("sees a cat.") > labeller.true_score(
        "sees a sad cat.")
    # distinct words count once and repeats are penalised: the hack a reward model misses
    assert labeller.true_score("sees a lovely lovely lovely cat.") < labeller.true_score("sees a lovely cat.")
    assert labeller.true_score("sees a cat") < labeller.true_score("sees a cat.")  # unfinished
    cands = ["sees a lovely cat.", "sees a cat.", "sees a sad cat."]
    exact = labeller.rank_candidates("the dog", cands, np.random.default_rng(0), noise=0.0)
    assert exact.ranking == (0, 1, 2)
    # noisy labels: deterministic under the seed, and swap the closest pair sometimes but not always
    a = labeller.label_groups(["p"] * 400, [cands] * 400, labeller.LabellerConfig(noise=1.0, seed=3))
    b = labeller.label_groups(["p"] * 400, [cands] * 400, labeller.LabellerConfig(noise=1.0, seed=3))
    assert [r.ranking for r in a] == [r.ranking for r in b]
    top = np.mean([r.ranking[0] == 0 for r in a])
    assert 0.5 < top < 0.95


def test_toy_language_round_trip():
    v, rng = labeller.ToyVocab(), np.random.default_rng(0)
    for _ in range(50):
        prompt, completion = labeller.toy_sentence(rng)
        assert v.decode(v.encode(prompt + " " + completion)) == prompt + " " + completion
    with pytest.raises(ValueError, match="unknown words"):
        v.encode("the zebra")


def test_factual_summary_pairs():
    pairs = factual_summary_pairs()
    assert len(pairs) >= 360 and all(p.chosen != p.rejected for p in pairs)
    train, test = factual_summary_pairs(split="train"), factual_summary_pairs(split="test")
    assert len(train) + len(test) == len(pairs) and len(test) > 30
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    assert pairs[0].prompt.endswith("radio rental's income last year.")


def test_ranking_batch_layout():
    from jaxllm.rl.reward_model import ranking_batch

    v = labeller.ToyVocab()
    r = [Ranking("the cat", ("sees a dog.", "sees a lovely dog.", "likes the tree."), (1, 2, 0)),
         Ranking("the dog", ("finds a cat.", "hears a song.", "sees a bird."), (0, 1, 2))]
    b = ranking_batch(r, v.encode, v.bos_id, 12)
    assert b["inputs"].shape == (6, 12)
    assert b["rank"][:, 0].tolist() == [2, 0, 1, 0, 1, 2]  # place of each candidate in its group
    assert b["loss_mask"].sum() == 6 and b["loss_mask"][1].argmax() == 1 + 2 + 5 - 1  # bos + prompt + completion (with ".")
    assert v.decode(b["inputs"][1][b["segment_ids"][1] == 1]) == "the cat sees a lovely dog."
    with pytest.raises(ValueError, match="different numbers of candidates"):
        ranking_batch(r + [Ranking("x", ("a", "b"), (0, 1))], v.encode, v.bos_id, 12)
