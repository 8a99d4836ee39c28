"""RLHF end to end at toy scale: reward model accuracy, reward hacking with early stopping, DPO on a model."""
import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.model import Transformer, tiny, token_log_probs
from jaxllm.parallel import MeshConfig
from jaxllm.recipes import rlhf
from jaxllm.recipes.pretrain import Trainer
from jaxllm.rl import dpo, labeller as lab
from jaxllm.rl.reward_model import final_hidden, init_reward_params, reward_scores
from jaxllm.rl.rollout import make_batch
from jaxllm.train.optim import OptimConfig
from jaxllm.train.step import TrainConfig

ONE = jax.devices()[:1]  # the toy model is faster unsharded; the 8-device path is checked separately


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rlhf")
    return out, rlhf.run_rlhf(out, rlhf.RLHFConfig(), devices=ONE)


@pytest.mark.slow
def test_reward_model_accuracy(run):
    _, s = run
    rm = s["reward_model"]
    assert rm["pairs"] >= 500
    assert rm["accuracy"] >= 0.70 and rm["ci95"][0] > 0.5, rm
    json.dumps(s)  # the stage result must be JSON-able


@pytest.mark.slow
def test_reward_hacking_and_early_stop(run):
    out, s = run
    stop, end = s["early_stop_step"], s["rl_steps"]
    assert s["stopped"] and 0 < stop < end
    # after the early stop the reward model's score kept rising well beyond what the hidden true score did
    # (how far the true score then falls depends on the machine's float order: from -0.02 to over -0.5 seen)
    assert s["final_heldout_rm"] - s["early_stop_heldout_rm"] > 0.1 + max(
        0.0, s["final_heldout_true"] - s["early_stop_heldout_true"]), s
    assert s["early_stop_heldout_true"] > s["sft_heldout_true"]  # RL helped first
    assert s["final_heldout_rm"] > s["early_stop_heldout_rm"] > s["sft_heldout_rm"], s
    assert s["rm_score_window"]["end"] > s["rm_score_window"]["early_stop"]
    rm_w, true_w = s["rm_score_window"], s["true_score_window"]  # the same over a window of training steps
    assert rm_w["end"] - rm_w["early_stop"] > true_w["end"] - true_w["early_stop"], (rm_w, true_w)
    for png in ("reward_hacking.png", "kl.png", "rm_loss.png"):
        assert (out / png).stat().st_size > 1000
    md = rlhf.report_markdown({**s, "k": 4}, out, out.parent)
    assert ("reward model was hacked" in md or "reward model was over-optimised" in md) and f"early stop (step {stop})" in md


def test_final_hidden_matches_model_and_backbone_is_the_policy():
    cfg = tiny(1, vocab_size=44, seq_len=16)
    model = Transformer(cfg)
    x = jnp.arange(12, dtype=jnp.int32).reshape(2, 6) % 44
    policy = nn.unbox(model.init(jax.random.key(0), x)["params"])
    h, logits = jax.jit(lambda p: (final_hidden(model, p, x), model.apply({"params": p}, x)))(policy)
    # the hidden state times the lm_head is exactly the model's logits
    np.testing.assert_allclose(h @ policy["lm_head"]["kernel"], logits, rtol=1e-5, atol=1e-5)
    params = nn.unbox(init_reward_params(cfg, policy, jax.random.key(1), head_std=0.1))
    assert jax.tree.structure(params["backbone"]) == jax.tree.structure(policy)
    jax.tree.map(np.testing.assert_array_equal, params["backbone"], policy)
    segs = jnp.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    score = jax.jit(lambda p, inputs: reward_scores(model, p, inputs, segs))
    r = score(params, x)
    np.testing.assert_allclose(r[0], h[0, 2] @ params["head"]["kernel"] + params["head"]["bias"], rtol=1e-5)
    # padding after the last real token does not change the score
    np.testing.assert_allclose(score(params, x.at[0, 3:].set(7)), r, rtol=1e-6)


def test_reward_model_training_deterministic_and_same_on_8_devices():
    cfg = dataclasses.replace(rlhf.RLHFConfig(), rm_steps=3, rm_groups_per_step=16)
    model_cfg = tiny(1, vocab_size=lab.ToyVocab().n_vocab, seq_len=cfg.seq_len)
    policy = nn.unbox(Transformer(model_cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    rng = np.random.default_rng(0)
    prompts = [lab.toy_sentence(rng)[0] for _ in range(32)]
    groups = [[lab.toy_sentence(rng)[1] for _ in range(4)] for _ in range(32)]
    rankings = lab.label_groups(prompts, groups)
    a, la = rlhf.train_reward_model(model_cfg, policy, rankings, cfg, devices=ONE)
    b, lb = rlhf.train_reward_model(model_cfg, policy, rankings, cfg, devices=ONE)
    assert la == lb
    jax.tree.map(np.testing.assert_array_equal, a, b)
    c, lc = rlhf.train_reward_model(model_cfg, policy, rankings, cfg, MeshConfig(data=4, fsdp=2))
    np.testing.assert_allclose(lc, la, rtol=1e-4)
    # Adam divides by sqrt(v): a near-zero gradient's float-order difference can move a parameter by a
    # few percent of lr (1e-3) per step, so compare parameters to a small fraction of lr
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-4), c, a)


def test_dpo_step_on_a_tiny_model_raises_the_chosen_margin():
    vocab = lab.ToyVocab()
    cfg = tiny(1, vocab_size=vocab.n_vocab, seq_len=16)
    model = Transformer(cfg)
    pairs = [("the cat", "sees a lovely dog.", "sees a sad dog."), ("the dog", "finds a warm tree.", "finds a cold tree.")]
    prompts, completions = [], []
    for p, c, r in pairs * 2:  # 4 pairs -> 8 rows, interleaved chosen / rejected
        prompts += [[vocab.bos_id] + vocab.encode(p)] * 2
        completions += [vocab.encode(c), vocab.encode(r)]
    batch = make_batch(prompts, completions, 15)
    optim = OptimConfig(lr=3e-3, warmup_steps=0, schedule="constant", weight_decay=0.0)
    trainer = Trainer.create(cfg, MeshConfig(), optim, TrainConfig(steps=8), 0, devices=ONE,
                             loss_fn_factory=lambda apply: dpo.pairs_loss_fn(apply, "dpo", beta=0.5))
    ref = jax.device_get(trainer.state.params)
    lp = jax.jit(lambda p: dpo.sequence_log_probs(model.apply({"params": p}, batch["inputs"]), batch["targets"],
                                                  batch["loss_mask"]))
    ref_seq = np.asarray(lp(ref))
    batch["ref_logp"] = np.asarray(jax.jit(lambda p: token_log_probs(
        model.apply({"params": p}, batch["inputs"]), batch["targets"]))(ref)) * batch["loss_mask"]
    losses = [float(trainer.step(batch)["loss"]) for _ in range(8)]
    assert losses[0] == pytest.approx(np.log(2), abs=1e-4)  # policy == reference: margin 0
    assert losses[-1] < losses[0]
    seq = np.asarray(lp(trainer.state.params))
    margin = (seq[0::2] - ref_seq[0::2]) - (seq[1::2] - ref_seq[1::2])
    assert np.all(margin > 0)
