"""Evaluation: scorers on hand-made examples (ties, tokenization edge cases), batched == one-by-one,
bpb of a uniform model equals its theoretical value, arena ratings recover a known ordering."""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.eval import arena, behaviour, generative, scoring
from jaxllm.eval.bpb_task import model_bpb
from jaxllm.eval.model import from_parts
from jaxllm.eval.scoring import Request, choose, credit, mc_accuracy, score_requests, split_continuation
from jaxllm.eval.tasks import MCExample, build_prompt, parse_options, parse_record, run_mc_task
from jaxllm.model import ModelConfig, Transformer, token_log_probs
from jaxllm.tokenizer import Tokenizer, load_tokenizer


@pytest.fixture(scope="module")
def gpt2_tok():
    return load_tokenizer("gpt2")


@pytest.fixture(scope="module")
def byte_tok():
    """Byte-level tokenizer without merges: 256 byte tokens + BOS (257 ids)."""
    return Tokenizer({bytes([i]): i for i in range(256)}, {"<|bos|>": 256}, name="bytes")


def make_model(vocab, seed=1, uniform=False, max_seq_len=128):
    cfg = ModelConfig(vocab_size=vocab, max_seq_len=max_seq_len, d_model=32, n_layers=2, n_heads=2, n_kv_heads=2,
                      d_ff=64, init_std=0.3)
    params = jax.jit(lambda k: nn.unbox(Transformer(cfg).init(k, jnp.zeros((1, 4), jnp.int32))["params"]))(
        jax.random.key(seed))
    if uniform:  # a zero output head: every token gets logit 0, probability exactly 1/vocab
        params = jax.tree_util.tree_map_with_path(
            lambda p, x: jnp.zeros_like(x) if "lm_head" in jax.tree_util.keystr(p) else x, params)
    return cfg, params


@pytest.fixture(scope="module")
def random_byte_model(byte_tok):
    cfg, params = make_model(byte_tok.n_vocab)
    return from_parts("random", cfg, params, byte_tok)


@pytest.fixture(scope="module")
def uniform_byte_model(byte_tok):
    cfg, params = make_model(byte_tok.n_vocab, uniform=True)
    return from_parts("uniform", cfg, params, byte_tok)


# ---------------------------------------------------------------- tokenization of options
@pytest.mark.parametrize("context,option", [
    ("Answer:", " Paris"), ("Answer: ", "Paris"), ("Answer:  ", " Paris"), ("The cat sat on the ma", "t"),
    ("Q: 2+2=", "4"), ("Capital:", " New York City"), ("x", "\n\nyes"), ("naïve caf", "é au lait"),
])
def test_split_continuation_reassembles_and_matches_whole(gpt2_tok, context, option):
    ctx, cont = split_continuation(gpt2_tok.encode, context, option)
    assert cont, "the option always keeps at least one token"
    assert ctx + cont == gpt2_tok.encode(context.rstrip() + context[len(context.rstrip()):] + option)
    assert gpt2_tok.decode(ctx + cont) == context + option


def test_split_continuation_edge_cases(gpt2_tok):
    enc = gpt2_tok.encode
    # the leading space belongs to the option: " Paris" is one token, not " " + "Paris"
    assert split_continuation(enc, "Answer:", " Paris") == ([33706, 25], [6342])
    # trailing context whitespace moves to the option, giving the same tokens
    assert split_continuation(enc, "Answer: ", "Paris") == ([33706, 25], [6342])
    # the option merges with the end of the context ("ma" + "t" -> "mat"): score the merged token
    ctx, cont = split_continuation(enc, "The cat sat on the ma", "t")
    assert cont == enc(" mat") and ctx == enc("The cat sat on the")
    # a prefix (BOS) goes in front; with no context and no prefix there is nothing to condition on
    assert split_continuation(enc, "", "hi", prefix=[50256]) == ([50256], enc("hi"))
    with pytest.raises(ValueError, match="nothing to condition"):
        split_continuation(enc, "", "hi")
    with pytest.raises(ValueError, match="empty continuation"):
        split_continuation(enc, "Answer:", "")


def test_parse_options_and_records():
    assert parse_options("\nA. bank\nB. library\nC. two\nlines") == [("A", "bank"), ("B", "library"), ("C", "two\nlines")]
    ex = parse_record("mmlu", {"question": "Q?", "options": "A. x\nB. y", "answer": "B. y"}, "f:1")
    assert ex.options == ("x", "y") and ex.answer == 1
    ex = parse_record("boolq", {"question": "is it", "passage": "P", "answer": "True"}, "f:2")
    assert ex.options == ("no", "yes") and ex.answer == 1
    with pytest.raises(Exception, match="f:3"):
        parse_record("mmlu", {"question": "Q?", "options": "A. x\nB. y", "answer": "E. z"}, "f:3")


# ---------------------------------------------------------------- decisions: normalisation and ties
def test_choose_credit_and_ties():
    assert choose([-1.0, -2.0, -1.0]) == [0, 2]
    assert credit([0, 2], 2) == 0.5 and credit([0, 2], 1) == 0.0 and credit([1], 1) == 1.0
    items = [  # option 1 is longer: higher per-byte score, lower sum
        {"logprobs": [-2.0, -3.0], "n_tokens": [1, 3], "n_bytes": [2, 6], "answer": 1},
        {"logprobs": [-4.0, -4.0, -9.0], "n_tokens": [2, 2, 2], "n_bytes": [4, 4, 4], "answer": 1},  # tie
    ]
    s = mc_accuracy(items, "sum")
    assert s["accuracy"] == pytest.approx((0 + 0.5) / 2) and s["ties"] == 1
    assert s["chance"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert mc_accuracy(items, "bytes")["accuracy"] == pytest.approx((1 + 0.5) / 2)
    assert mc_accuracy(items, "tokens")["accuracy"] == pytest.approx((1 + 0.5) / 2)


def test_bucket_lengths_are_few_and_tight():
    lengths = [scoring.bucket_length(n) for n in range(1, 2049)]
    assert sorted(set(lengths)) == [32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048]
    assert all(n <= b for n, b in zip(range(1, 2049), lengths))
    assert all(b <= max(32, 2 * n) and (n <= 64 or b <= 1.5 * n) for n, b in zip(range(1, 2049), lengths))


# ---------------------------------------------------------------- batched scoring
@functools.partial(jax.jit, static_argnames=("cfg",))
def _forward(cfg, params, x):
    logits = Transformer(cfg).apply({"params": params}, x[:, :-1])
    return token_log_probs(logits, x[:, 1:]), jnp.argmax(logits, -1) == x[:, 1:]


def reference_score(cfg, params, r: Request, width: int = 64):
    """Unbatched full forward; right padding to one width is harmless (causal attention)."""
    seq = list(r.context) + list(r.continuation)
    x = np.zeros((1, width + 1), np.int32)
    x[0, :len(seq)] = seq
    lp, greedy = (np.asarray(a)[0] for a in _forward(cfg, params, jnp.asarray(x)))
    n, end = len(r.continuation), len(seq) - 1
    return float(lp[end - n:end].sum()), bool(greedy[end - n:end].all())


def test_batched_scores_equal_reference_and_one_by_one(random_byte_model):
    m = random_byte_model
    rng = np.random.default_rng(0)
    reqs = [Request(tuple(rng.integers(0, 256, rng.integers(1, 40)).tolist()),
                    tuple(rng.integers(0, 256, rng.integers(1, 6)).tolist())) for _ in range(13)]
    # one continuation the model itself predicts greedily
    ctx = (256, 5, 7)
    nxt = int(np.argmax(np.asarray(Transformer(m.cfg).apply({"params": m.params}, jnp.asarray([ctx])))[0, -1]))
    reqs.append(Request(ctx, (nxt,)))
    batched = score_requests(m.params, m.cfg, reqs, batch_tokens=256)
    single = score_requests(m.params, m.cfg, reqs, max_rows=1)
    for r, b, s in zip(reqs, batched, single):
        ref_lp, ref_greedy = reference_score(m.cfg, m.params, r)
        assert b.logprob == pytest.approx(ref_lp, abs=1e-4) and s.logprob == pytest.approx(ref_lp, abs=1e-4)
        assert b.greedy == ref_greedy == s.greedy and b.n_tokens == len(r.continuation)
    assert batched[-1].greedy


def test_mc_task_on_uniform_model_exact(uniform_byte_model):
    """Uniform model: every byte costs log(257), so summed scores pick the shortest option and per-byte
    scores tie all options (credit 1/n); exact, hand-checkable numbers."""
    examples = [MCExample(f"q{i}", f"question {i}", ("ab", "abcd", "abcdef"), i % 3) for i in range(40)]
    r = run_mc_task(uniform_byte_model, "hand", examples=examples, shots=2, progress=False)
    first = r["items"][0]
    # " ab", " abcd", " abcdef": the leading space is part of each option
    assert first["logprobs"] == pytest.approx([-3 * math.log(257), -5 * math.log(257), -7 * math.log(257)], rel=1e-5)
    answers = [it["answer"] for it in r["items"]]
    assert r["acc"] == pytest.approx(sum(a == 0 for a in answers) / len(answers))
    assert r["acc_norm"] == pytest.approx(1 / 3) and r["ties"] == len(answers) and r["chance"] == pytest.approx(1 / 3)
    assert r["metric"] == "acc_norm" and r["accuracy"] == r["acc_norm"]


def test_prompts_base_fewshot_and_chat(byte_tok):
    ex = MCExample("q", "Where is Paris", ("France", "Peru"), 0, passage="")
    shot = MCExample("s", "Where is Lima?", ("Peru", "Chad"), 0)
    text, opts = build_prompt(ex, [shot], "base", "cloze")
    assert text == "Question: Where is Lima?\nAnswer: Peru\n\nQuestion: Where is Paris\nAnswer:"
    assert opts == [" France", " Peru"]
    msgs, opts = build_prompt(ex, [shot], "chat", "letter")
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"] and msgs[1]["content"] == "A"
    assert "B. Peru" in msgs[-1]["content"] and opts == ["A", "B"]


# ---------------------------------------------------------------- bits per byte
def test_bpb_of_uniform_model_is_theoretical(gpt2_tok):
    cfg, params = make_model(gpt2_tok.n_vocab, uniform=True, max_seq_len=32)
    model = from_parts("uniform", cfg, params, gpt2_tok)
    texts = ["The quick brown fox jumps over the lazy dog. " * 3, "Zwölf Boxkämpfer jagen Viktor quer über den Sylter Deich.",
             "short", "x"]
    r = model_bpb(model, texts, seq_len=16, batch_size=2)
    # every target is one non-BOS token of a document (the BOS prefix is never a target)
    tokens = sum(len(gpt2_tok.encode(t)) for t in texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    assert r["tokens"] == tokens and r["bytes"] == n_bytes
    assert r["loss"] == pytest.approx(math.log(gpt2_tok.n_vocab), rel=1e-6)
    assert r["bpb"] == pytest.approx(math.log2(gpt2_tok.n_vocab) / (n_bytes / tokens), rel=1e-6)


# ---------------------------------------------------------------- arena
def test_ratings_recover_known_ordering():
    truth = {"a": 1300.0, "b": 1150.0, "c": 1000.0, "d": 850.0, "e": 700.0}
    battles = arena.simulate_battles(truth, 3000, seed=0)
    bt = arena.bradley_terry(battles)
    elo = arena.elo_ratings(battles)
    order = sorted(truth, key=lambda m: -truth[m])
    assert sorted(bt, key=lambda m: -bt[m]) == order
    assert sorted(elo, key=lambda m: -elo[m]) == order
    mean = np.mean(list(truth.values()))
    for m in truth:  # BT is the MLE of the generating model: close to the true (mean-centred) strengths
        assert abs(bt[m] - (truth[m] - mean + 1000)) < 40
    rows = arena.leaderboard(battles, rounds=50)
    assert [r["model"] for r in rows] == order
    for r in rows:
        assert r["bt_lo"] <= r["bt"] <= r["bt_hi"] and r["games"] > 0
        assert r["bt_lo"] - 5 <= truth[r["model"]] - mean + 1000 <= r["bt_hi"] + 5
    assert all(a["bt_lo"] > b["bt_hi"] for a, b in zip(rows, rows[1:]))  # 150-point gaps are resolved


def test_bradley_terry_ties_and_symmetry():
    battles = [("x", "y", 0.5)] * 10 + [("x", "y", 1.0), ("y", "x", 1.0)]
    bt = arena.bradley_terry(battles)
    assert bt["x"] == pytest.approx(1000.0, abs=1e-6) and bt["y"] == pytest.approx(1000.0, abs=1e-6)
    voter = arena.reference_voter({"2+2": lambda ans: "4" in ans})
    got = arena.run_battles({"good": ["4"], "bad": ["5"], "also": ["it is 4"]}, ["2+2"], voter)
    outcomes = {frozenset((a, b)): (a, s) for a, b, s in got}
    a, s = outcomes[frozenset(("good", "bad"))]
    assert (a == "good") == (s == 1.0)
    assert outcomes[frozenset(("good", "also"))][1] == 0.5


def test_plot_leaderboard(tmp_path):
    rows = arena.leaderboard(arena.simulate_battles({"a": 1100.0, "b": 900.0}, 200), rounds=20)
    path = arena.plot_leaderboard(rows, tmp_path / "arena.png")
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------- answer checks
def test_answer_extraction_and_pass_at_k():
    assert generative.extract_number("So 3 + 4 = 7.\n#### 7") == 7
    assert generative.extract_number("The answer is 1,234 apples") == 1234
    assert generative.extract_number("I think 12 then 15") == 15
    assert generative.extract_number("no digits") is None
    assert generative.is_correct("There are 9 apples.", 9.0) and not generative.is_correct("8", 9.0)
    assert generative.pass_at_k(10, 0, 1) == 0.0 and generative.pass_at_k(10, 10, 5) == 1.0
    assert generative.pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert generative.pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)


@pytest.mark.parametrize("reply,says", [
    ("9.9 is bigger than 9.11.", "9.9"), ("9.11 is larger than 9.9", "9.11"),
    ("The bigger number is 9.9.", "9.9"), ("9.11", "9.11"), ("Well, 9.11 is greater.", "9.11"),
    ("9.9 is not bigger.", "unclear"), ("Hmm, numbers are fun.", "unclear"),
])
def test_which_bigger(reply, says):
    assert behaviour.which_bigger(reply) == says
