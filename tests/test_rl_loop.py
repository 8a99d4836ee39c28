"""The RL loop on a tiny model: one GRPO step raises the rewarded completion's log-probability; rollout
batches are laid out right; a killed run resumes to the same parameters and metrics; plots are written."""
import json

import jax
import numpy as np
import pytest

from jaxllm.data.generators import generate as generate_conversations
from jaxllm.model import ModelConfig, Transformer
from jaxllm.parallel import MeshConfig
from jaxllm.recipes.pretrain import Trainer
from jaxllm.recipes.rl import make_logprob_fn, report_section, rl_loss_factory, train_rl
from jaxllm.rl import rollout
from jaxllm.rl.advantages import grpo_advantages
from jaxllm.rl.config import RLConfig
from jaxllm.rl.losses import grpo_loss
from jaxllm.tokenizer import TokenizerConfig, train_tokenizer
from jaxllm.train.optim import OptimConfig
from jaxllm.train.step import TrainConfig


def digit_reward(completion: str, answer, **_) -> float:
    """A reward a random model earns sometimes (tests only): the fraction of digits in the completion."""
    return sum(c.isdigit() for c in completion) / max(len(completion), 1)


@pytest.fixture(scope="module")
def tok():
    convs = generate_conversations("arithmetic", 200, seed=0)
    texts = [m["content"] for c in convs for m in c["messages"]]
    return train_tokenizer(texts, TokenizerConfig(vocab_size=384), progress=False)


@pytest.fixture(scope="module")
def model_cfg(tok):
    return ModelConfig(vocab_size=tok.n_vocab, max_seq_len=128, d_model=64, n_layers=1, n_heads=2, n_kv_heads=2,
                       d_ff=128)


@pytest.fixture(scope="module")
def init_params(model_cfg):
    import jax.numpy as jnp
    import flax.linen as nn
    params = Transformer(model_cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    return nn.meta.unbox(params)


def test_make_batch_layout():
    b = rollout.make_batch([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]], seq_len=6, pad_id=0,
                           advantages=np.array([1.5, -1.0]))
    np.testing.assert_array_equal(b["inputs"][0], [1, 2, 3, 5, 6, 0])
    np.testing.assert_array_equal(b["targets"][0], [2, 3, 5, 6, 0, 0])
    np.testing.assert_array_equal(b["loss_mask"][0], [0, 0, 1, 1, 0, 0])  # targets 5, 6
    np.testing.assert_array_equal(b["loss_mask"][1], [1, 1, 1, 0, 0, 0])  # targets 7, 8, 9
    np.testing.assert_array_equal(b["advantages"][0], [0, 0, 1.5, 1.5, 0, 0])
    with pytest.raises(ValueError, match="seq_len"):
        rollout.make_batch([[1, 2, 3]], [[4, 5, 6, 7, 8]], seq_len=6)


def test_wilson_interval():
    lo, hi = rollout.wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert rollout.wilson_interval(0, 10)[0] == 0.0
    assert rollout.two_proportion_z(30, 100, 50, 100) == pytest.approx(2.89, abs=0.01)
    z, gained, lost = rollout.mcnemar_z([0, 0, 1, 1, 0, 0], [1, 1, 1, 0, 1, 0])
    assert (gained, lost) == (3, 1) and z == pytest.approx(2 / 2.0)


def test_one_grpo_step_raises_logprob_of_rewarded_completion(tok, model_cfg, init_params):
    prompt = rollout.prompt_ids([{"question": "What is 2 + 3?"}], tok, "jaxllm")[0]
    good, bad = tok.encode("#### 5"), tok.encode("#### 7")
    rewards = np.array([1.0, 0.0], np.float32)
    adv = np.asarray(grpo_advantages(rewards[None]))[0]
    batch = rollout.make_batch([prompt, prompt], [good, bad], seq_len=48, advantages=adv, rewards=rewards)
    batch = rollout.pad_rows(batch, jax.device_count())  # zero rows: the batch divides over the fake devices
    assert len(batch["inputs"]) % jax.device_count() == 0 and batch["loss_mask"][2:].sum() == 0
    optim = OptimConfig(lr=1e-2, warmup_steps=0, schedule="constant", weight_decay=0.0)
    trainer = Trainer.create(model_cfg, MeshConfig(), optim, TrainConfig(steps=1), seed=0, init_params=init_params,
                             loss_fn_factory=rl_loss_factory(grpo_loss, {"kl_coef": 0.1}))
    logprobs = make_logprob_fn(trainer)
    before = logprobs(trainer.state.params, batch)
    batch["old_logp"] = before
    batch["ref_logp"] = before
    m = trainer.step(batch)
    after = logprobs(trainer.state.params, batch)
    seq_before = (before * batch["loss_mask"]).sum(-1)
    seq_after = (after * batch["loss_mask"]).sum(-1)
    assert seq_after[0] > seq_before[0] + 0.05  # rewarded completion more likely
    assert seq_after[1] < seq_before[1] - 0.05  # unrewarded one less likely
    assert float(m["kl"]) == pytest.approx(0.0, abs=1e-6)  # policy == reference before the update
    assert float(m["clip_frac"]) == 0.0 and float(m["entropy"]) > 0


@pytest.mark.slow
def test_rl_loop_resumes_exactly(tok, model_cfg, init_params, tmp_path):
    problems = [{"question": f"What is {a} + {a}?", "answer": 2 * a} for a in range(12)]
    rl = RLConfig(steps=2, prompts_per_step=2, group_size=3, max_new_tokens=6, seq_len=48, eval_every=0,
                  checkpoint_every=0, reward="test_rl_loop:digit_reward", kl_coef=0.1, updates_per_step=2,
                  optim=OptimConfig(lr=3e-3, warmup_steps=0, schedule="constant", weight_decay=0.0))
    args = (model_cfg, MeshConfig(), rl, tok, init_params, problems[:8], problems[8:])
    full = train_rl(tmp_path / "full", *args)
    part = train_rl(tmp_path / "killed", *args, stop_at_step=1)
    assert part == {"steps": 1, "stopped_at": 1}
    resumed = train_rl(tmp_path / "killed", *args)
    assert resumed["after"] == full["after"] and resumed["before"] == full["before"]

    def lines(d):
        rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows]  # timings differ
    assert lines(tmp_path / "killed") == lines(tmp_path / "full")
    rows = lines(tmp_path / "full")
    stepped = [r for r in rows if "reward_mean" in r]
    assert [r["step"] for r in stepped] == [1, 2]
    assert all(r["reward_mean"] > 0 for r in stepped)  # digits appear: the loss had something to push
    assert stepped[-1]["kl"] > 0 and stepped[-1]["clip_frac"] >= 0
    assert [r["step"] for r in rows if "heldout_acc" in r] == [0, 2]
    for name in ("heldout_accuracy", "response_length"):
        assert (tmp_path / "full" / f"{name}.png").stat().st_size > 1000
    # final parameters agree bit for bit
    from jaxllm.recipes.pretrain import load_params
    pf, pk = (load_params(tmp_path / d, model_cfg, rl.optim) for d in ("full", "killed"))
    for a, b in zip(jax.tree.leaves(pf), jax.tree.leaves(pk)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(pf), jax.tree.leaves(init_params)))  # training moved them
    assert "before RL" in report_section(full)


def test_difficulty_levels_and_problem_counts():
    from jaxllm.recipes.rl import parse_level
    from jaxllm.rl.tasks import distinct_expressions, load_problems

    from jaxllm.recipes.rl import pick_level

    probe = [{"level": "1-1:1-1", "accuracy": 0.5}, {"level": "1-2:1-1", "accuracy": 0.17},
             {"level": "2-2:1-1", "accuracy": 0.0}]
    assert pick_level(probe, RLConfig(eval_problems=400))["level"] == "1-2:1-1"  # 1-1:1-1 has only 54 held out
    assert pick_level(probe, RLConfig(eval_problems=40))["level"] == "1-1:1-1"  # both big enough: nearer 40%
    assert pick_level(probe[2:], RLConfig())["level"] == "2-2:1-1"  # nothing in range: the nearest
    assert parse_level("1-2:1-1") == {"min_digits": 1, "max_digits": 2, "min_ops": 1, "max_ops": 1}
    with pytest.raises(ValueError, match="difficulty_ladder"):
        parse_level("easy")
    easy = RLConfig(min_digits=1, max_digits=1, min_ops=1, max_ops=1)
    assert distinct_expressions(easy) == 10 * 10 * 3
    train = load_problems(easy, "train", 2000)  # capped to what exists instead of failing
    test = load_problems(easy, "test", 20)
    assert 100 < len(train) < 300 and not {p["question"] for p in train} & {p["question"] for p in test}
    assert all(isinstance(p["answer"], int) for p in train)
