"""Advantages, losses and rewards of jaxllm.rl on hand-made batches, plus finite-difference gradient checks."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.config import resolve_function
from jaxllm.rl import advantages as A
from jaxllm.rl import losses as L
from jaxllm.rl import rewards as R


# ------------------------------------------------------------------ advantages
def test_grpo_hand_computed():
    r = jnp.array([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    adv = A.grpo_advantages(r, eps=0.0 + 1e-12)
    # group 0: mean 0.5, population std 0.5 -> +-1; group 1: all equal -> 0
    np.testing.assert_allclose(adv, [[1, -1, -1, 1], [0, 0, 0, 0]], atol=1e-6)
    np.testing.assert_allclose(A.grpo_advantages(r, normalize_std=False), [[.5, -.5, -.5, .5], [0, 0, 0, 0]])
    np.testing.assert_allclose(A.dr_grpo_advantages(jnp.array([[3.0, 0.0, 0.0]])), [[2, -1, -1]])


def test_rloo_and_reinforce_hand_computed():
    r = jnp.array([[1.0, 0.0, 0.0, 1.0]])
    # r_i - mean of the other three: 1 - 1/3, 0 - 2/3
    np.testing.assert_allclose(A.rloo_advantages(r), [[2 / 3, -2 / 3, -2 / 3, 2 / 3]], atol=1e-6)
    np.testing.assert_allclose(A.rloo_advantages(r), 4 / 3 * A.dr_grpo_advantages(r), atol=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        A.rloo_advantages(jnp.ones((3, 1)))
    np.testing.assert_allclose(A.reinforce_advantages(jnp.array([1.0, 0.0, 2.0])), [0, -1, 1])
    np.testing.assert_allclose(A.reinforce_advantages(jnp.array([1.0, 0.0]), baseline=0.25), [0.75, -0.25])


def test_gae_hand_computed():
    # one response of 3 tokens then padding; reward 1 on the last token
    rewards = jnp.array([[0.0, 0.0, 1.0, 0.0]])
    values = jnp.array([[0.5, 0.25, 0.5, 9.0]])
    mask = jnp.array([[1.0, 1.0, 1.0, 0.0]])
    gamma, lam = 0.9, 0.8
    d2 = 1.0 + 0 - 0.5
    d1 = 0.0 + gamma * 0.5 - 0.25
    d0 = 0.0 + gamma * 0.25 - 0.5
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    adv, ret = A.gae_advantages(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(adv, [[a0, a1, a2, 0.0]], atol=1e-6)
    np.testing.assert_allclose(ret, [[a0 + 0.5, a1 + 0.25, a2 + 0.5, 0.0]], atol=1e-6)
    # lam = 1, gamma = 1: advantage = return-to-go minus value
    adv1, _ = A.gae_advantages(rewards, values, mask, 1.0, 1.0)
    np.testing.assert_allclose(adv1, [[0.5, 0.75, 0.5, 0.0]], atol=1e-6)


# ------------------------------------------------------------------ losses
def test_kl_estimators_hand_computed_and_zero_against_itself():
    logp = jnp.log(jnp.array([[0.5, 0.25]]))
    ref = jnp.log(jnp.array([[0.25, 0.25]]))
    log_r = np.log([0.5, 1.0])  # ref - logp
    np.testing.assert_allclose(L.kl_estimate(logp, ref, "k1"), [-log_r], atol=1e-6)
    np.testing.assert_allclose(L.kl_estimate(logp, ref, "k2"), [0.5 * log_r ** 2], atol=1e-6)
    np.testing.assert_allclose(L.kl_estimate(logp, ref, "k3"), [np.exp(log_r) - 1 - log_r], atol=1e-6)
    x = jax.random.normal(jax.random.key(0), (3, 5))
    for k in ("k1", "k2", "k3"):
        np.testing.assert_array_equal(L.kl_estimate(x, x, k), 0.0)
    with pytest.raises(ValueError, match="k4"):
        L.kl_estimate(x, x, "k4")


def test_aggregation_modes():
    v = jnp.array([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
    m = jnp.array([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    assert float(L.aggregate(v, m, "token")) == pytest.approx(8 / 5)
    assert float(L.aggregate(v, m, "sequence")) == pytest.approx((1 + 4) / 2)
    assert float(L.aggregate(v, m, "constant")) == pytest.approx(8 / 8)
    assert float(L.aggregate(v, m, "constant", max_tokens=2)) == pytest.approx(8 / 4)


def test_ppo_clip_hand_computed():
    old = jnp.zeros((1, 4))
    logp = jnp.log(jnp.array([[1.5, 0.5, 1.5, 0.5]]))  # ratios
    adv = jnp.array([[1.0, 1.0, -1.0, -1.0]])
    loss, clipped = L.ppo_clip_objective(logp, old, adv, clip_eps=0.2)
    # A>0: min(1.5, 1.2)=1.2 (clipped), min(.5,.8)=.5; A<0: min(-1.5,-1.2)=-1.5, min(-.5,-.8)=-.8 (clipped)
    np.testing.assert_allclose(loss, [[-1.2, -0.5, 1.5, 0.8]], atol=1e-6)
    np.testing.assert_array_equal(clipped, [[1, 0, 0, 1]])
    loss_hi, _ = L.ppo_clip_objective(logp, old, adv, clip_eps=0.2, clip_eps_high=0.4)
    np.testing.assert_allclose(loss_hi[0, 0], -1.4, atol=1e-6)


def test_entropy_and_grpo_loss_values():
    logits = jnp.log(jnp.array([[[0.5, 0.5], [1.0, 1e-30]]]))
    np.testing.assert_allclose(L.token_entropy(logits), [[math.log(2), 0.0]], atol=1e-5)
    logp = jnp.array([[-1.0, -2.0]])
    mask = jnp.array([[1.0, 1.0]])
    adv = jnp.array([[2.0, 2.0]])
    ent = jnp.array([[0.5, 1.5]])
    loss, m = L.grpo_loss(logp, logp, logp, adv, mask, ent, kl_coef=0.1, entropy_coef=0.01)
    # ratio 1: pg = -A = -2; KL 0; entropy mean 1.0
    assert float(loss) == pytest.approx(-2.0 - 0.01 * 1.0)
    assert float(m["kl"]) == 0.0 and float(m["clip_frac"]) == 0.0 and float(m["entropy"]) == pytest.approx(1.0)


def test_rejection_sampling_loss_trains_only_on_correct():
    logp = jnp.array([[-1.0, -3.0], [-5.0, -7.0]])
    mask = jnp.ones((2, 2))
    rewards = jnp.array([[1.0, 1.0], [0.0, 0.0]])
    loss, m = L.rejection_sampling_loss(logp, logp, logp, jnp.zeros((2, 2)), mask, rewards=rewards)
    assert float(loss) == pytest.approx(2.0)  # mean NLL of the kept (first) sequence
    assert float(m["kept_frac"]) == pytest.approx(0.5)


def _finite_difference_check(f, x, eps=1e-3, rtol=2e-2, atol=2e-3):
    x = np.asarray(x, np.float64)
    f = jax.jit(f)
    g = np.asarray(jax.grad(f)(jnp.asarray(x, jnp.float32)))
    num = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += eps
        down[idx] -= eps
        num[idx] = (float(f(jnp.asarray(up, jnp.float32))) - float(f(jnp.asarray(down, jnp.float32)))) / (2 * eps)
    np.testing.assert_allclose(g, num, rtol=rtol, atol=atol)


@pytest.mark.parametrize("aggregation", ["token", "sequence", "constant"])
@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_grpo_loss_gradient_matches_finite_differences(aggregation, estimator):
    key = jax.random.key(1)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    old = -jnp.abs(jax.random.normal(k1, (3, 4)))
    # logp near old, away from the clip boundary (the loss has kinks there)
    logp0 = old + 0.05 * jax.random.normal(k2, (3, 4))
    ref = old + 0.3 * jax.random.normal(k3, (3, 4))
    adv = jax.random.normal(k4, (3, 4))
    mask = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], jnp.float32)
    f = lambda lp: L.grpo_loss(lp, old, ref, adv, mask, clip_eps=0.5, kl_coef=0.3, kl_estimator=estimator,
                               aggregation=aggregation)[0]
    _finite_difference_check(f, logp0)


def test_entropy_and_rejection_gradients_match_finite_differences():
    logits = jax.random.normal(jax.random.key(2), (1, 2, 5))
    _finite_difference_check(lambda z: L.token_entropy(z).sum(), logits)
    mask = jnp.ones((2, 3))
    rewards = jnp.array([[1.0] * 3, [0.0] * 3])
    f = lambda lp: L.rejection_sampling_loss(lp, lp, lp, mask, mask, rewards=rewards, aggregation="sequence")[0]
    _finite_difference_check(f, -jnp.abs(jax.random.normal(jax.random.key(3), (2, 3))))


def test_functions_are_selectable_by_reference():
    assert resolve_function("jaxllm.rl.losses:grpo_loss") is L.grpo_loss
    assert resolve_function("jaxllm.rl.advantages:rloo_advantages") is A.rloo_advantages
    assert resolve_function("jaxllm.rl.rewards:math_reward") is R.math_reward


# ------------------------------------------------------------------ rewards
@pytest.mark.parametrize("text,value", [
    ("The answer is 3.", 3.0), ("$3.00", 3.0), ("\\boxed{3}", 3.0), ("3 apples", 3.0), ("-3", -3.0),
    ("1,000", 1000.0), ("#### 1,000", 1000.0), ("So she pays $12.50 in total.\n#### $12.50", 12.5),
    ("First 2 + 3 = 5, then 5 * 4 = 20. The answer is: 20 apples.", 20.0),
    ("\\boxed{\\frac{3}{4}}", 0.75), ("She has −7 left", -7.0), ("#### 50%", 50.0),
    ("I think \\boxed{12} but the answer is 13", 12.0),  # boxed wins over the sentence
    ("3 + 4 = 7\n#### 7\nThat was easy, 1 2 3", 7.0),  # #### wins over a later last number
    ("1, 2, 3", 3.0),  # a list, not a thousands separator
])
def test_extraction_on_tricky_strings(text, value):
    assert R.extract_number(text) == pytest.approx(value)


def test_extraction_failures_and_method_choice():
    assert R.extract_number("I do not know.") is None
    assert R.extract_boxed("\\boxed{unclosed") is None
    assert R.extract_boxed("\\boxed{a{b}c}") == "a{b}c"
    assert R.extract_number("It is 5.", methods=("####",)) is None
    with pytest.raises(ValueError, match="unknown answer extraction"):
        R.extract_answer("5", methods=("magic",))


def test_correctness_and_format_rewards():
    assert R.correctness_reward("#### 1,000", 1000) == 1.0
    assert R.correctness_reward("The answer is 3.", "3.00") == 1.0
    assert R.correctness_reward("The answer is 3.0001", 3, rel_tol=1e-3) == 1.0
    assert R.correctness_reward("The answer is 4", 3) == 0.0
    assert R.correctness_reward("no idea", 3) == 0.0
    assert R.format_reward("#### 12") == 1.0 and R.format_reward("The answer is 12") == 0.0
    assert R.format_reward("\\boxed{1}", answer_format="boxed") == 1.0
    assert R.math_reward("#### 12", 12, format_weight=0.1) == pytest.approx(1.1)
    assert R.math_reward("#### 11", 12, format_weight=0.1) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="not a number"):
        R.correctness_reward("5", "five")


def test_checked_math_reward_pays_only_true_working():
    assert R.checked_math_reward("9 + 1 = 10\n10 - 3 = 7\n#### 7", 7) == 1.0
    assert R.checked_math_reward("9 + 1 = 11\n11 - 4 = 7\n#### 7", 7) == 0.0  # lucky guess after a false step
    assert R.checked_math_reward("9 + 1 = 10\n10 - 3 = 7\n#### 8", 7) == 0.0  # true working, wrong answer
    assert R.checked_math_reward("#### 7", 7) == 1.0  # no working shown: only the answer is checked
    assert R.checked_math_reward("347 * 28 = 347 * 20 + 347 * 8\n6940 + 2776 = 9716\n#### 9716", 9716) == 1.0
    assert R.equations_hold("x = 3, so 2 * (3 - 1) = 4") and not R.equations_hold("So -2 - 2 = 0.")
    assert R.checked_math_reward("9 + 1 = 10\n#### 10", 10, format_weight=0.5) == 1.5
