"""The report card's cross-stage table and Demonstrations section, the data stage's planted document,
and the demonstrations' measurements (BPE walk-through, one update, memorisation) on real small models."""
import json
import random

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxllm.data.shards import ShardSource
from jaxllm.data.sources import DataConfig
from jaxllm.model import ModelConfig, Transformer
from jaxllm.recipes import demos, stages
from jaxllm.recipes.experiment import Config, RunContext
from jaxllm.recipes.report import demos_md, eval_table_md
from jaxllm.tokenizer import Tokenizer, TokenizerConfig, load_encoding

WORDS = ("river mountain city people music history science language water forest village winter summer "
         "painter engineer castle island harbour railway library garden market bridge church school").split()


@pytest.fixture(scope="session")
def planted_run(tmp_path_factory):
    """A tiny real run through the data, tokenizer and shards stages with planting on (k=10)."""
    root = tmp_path_factory.mktemp("planted")
    rng = random.Random(0)
    with open(root / "docs.jsonl", "w") as f:
        for i in range(80):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(60, 160))) + f" (document {i})."
            f.write(json.dumps({"id": f"d{i}", "text": text}) + "\n")
    cfg = Config(name="t", stages=("data", "tokenizer", "shards", "demos"),
                 data=DataConfig(sources=(f"jsonl:{root / 'docs.jsonl'}",), val_fraction=0.25),
                 tokenizer=TokenizerConfig(vocab_size=300))
    ctx = RunContext(cfg=cfg, run_dir=root / "run", results={})
    ctx.run_dir.mkdir()
    for name, fn in (("data", stages.data_stage), ("tokenizer", stages.tokenizer_stage), ("shards", stages.shards_stage)):
        ctx.results[name] = fn(ctx)
    return ctx


def _records(shard_dir):
    src = ShardSource(shard_dir)
    return [tuple(int(t) for t in src[i]) for i in range(len(src))]


def test_planted_document_is_k_times_in_train_and_never_in_validation(planted_run):
    ctx = planted_run
    plan = json.loads((ctx.run_dir / "data" / "planted.json").read_text())
    tok = Tokenizer.load(ctx.results["tokenizer"]["dir"])
    repeated = (tok.bos_id, *tok.encode(plan["repeated"]["text"]))
    once = (tok.bos_id, *tok.encode(plan["once"]["text"]))
    train = _records(ctx.results["shards"]["train"]["dir"])
    val = _records(ctx.results["shards"]["validation"]["dir"])
    assert train.count(repeated) == 10 and train.count(once) == 1
    assert repeated not in val and once not in val and len(val) > 0
    # both were validation documents, held aside: the data stage's counts agree with the shards
    assert ctx.results["data"]["planted"]["repeats"] == 10
    assert ctx.results["data"]["train"]["documents"] == len(train)
    assert ctx.results["data"]["validation"]["documents"] == len(val)
    # without a demos stage nothing is planted
    off = RunContext(cfg=Config(stages=("data",), data=ctx.cfg.data), run_dir=ctx.run_dir, results={})
    assert stages.planted_documents(off) is None
    assert sum(d["source"] == "planted" for d in stages._documents(off, "train")) == 0


def test_bpe_walkthrough_reproduces_tiktoken(planted_run):
    tok = Tokenizer.load(planted_run.results["tokenizer"]["dir"])
    for word in (" mountain", " engineer", "harbour"):
        walk = demos.bpe_walkthrough(tok, word)
        assert walk["ids"] == tok.encode(word)
        assert len(walk["steps"]) == walk["bytes"] - len(walk["ids"])
        assert [s["rank"] for s in walk["steps"]] == sorted(s["rank"] for s in walk["steps"])  # lowest rank first
    cl = load_encoding("cl100k_base")
    walk = demos.bpe_walkthrough(cl, " strawberry")
    assert walk["ids"] == cl.encode(" strawberry") == [73700] and walk["steps"][-1]["pieces"] == [" strawberry"]
    # the one-update demo's window ends at a word-start token (a readable target), never past max_len
    ids = cl.encode("The river runs past the old mill, 42")
    assert cl.decode(demos.update_window(cl, ids, 64, min_len=2)) == "The river runs past the old mill"
    assert cl.decode(demos.update_window(cl, ids, 3, min_len=2)) == "The river runs"


def tiny_model(vocab, seed=0, max_seq_len=64):
    cfg = ModelConfig(vocab_size=vocab, max_seq_len=max_seq_len, d_model=32, n_layers=2, n_heads=2, n_kv_heads=2,
                      d_ff=64)
    params = nn.unbox(Transformer(cfg).init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))["params"])
    return cfg, params


def test_one_update_raises_the_probability_of_the_target(planted_run):
    tok = Tokenizer.load(planted_run.results["tokenizer"]["dir"])
    cfg, params = tiny_model(tok.n_vocab)
    ids = [tok.bos_id] + tok.encode("the river runs past the old mill and the village church")
    seq = demos.update_window(tok, ids, 64, min_len=4)
    r = demos.one_update(cfg, params, seq, lrs=(0.01, 0.1), tokenizer=tok)
    assert r["p_after"] > r["p_before"] > 0 and r["target_id"] == seq[-1]
    assert r["p_before"] < r["sweep"][0]["p_after"] < r["sweep"][1]["p_after"]  # a bigger step, a bigger rise
    assert r["top_after"][0]["p"] >= r["p_after"] - 1e-6


def test_memorisation_separates_a_trained_document_from_an_unseen_one():
    rng = np.random.default_rng(0)
    cfg, params = tiny_model(64)
    seen, unseen = [0] + list(rng.integers(1, 64, 40)), [0] + list(rng.integers(1, 64, 40))
    opt = optax.adam(1e-2)
    state = opt.init(params)
    x, y = jnp.asarray([seen[:-1]]), jnp.asarray([seen[1:]])

    @jax.jit
    def step(p, s):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(Transformer(cfg).apply({"params": p}, x), y).mean()
        g = jax.grad(loss)(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s
    for _ in range(150):
        params, state = step(params, state)
    a = demos.memorisation(cfg, params, seen, prefix=8, length=16, bos_id=0)
    b = demos.memorisation(cfg, params, unseen, prefix=8, length=16, bos_id=0)
    assert a["compared"] == b["compared"] == 16
    assert a["loss"] < 0.5 < b["loss"] and a["verbatim_tokens"] == 16 and b["token_match"] < 0.5


def test_first_number_scoring_is_strict():
    assert demos.first_number_is("There are 3 r's in strawberry.", "3")
    assert not demos.first_number_is("the 1, and the 3, and the 1", "3")  # babble does not score
    assert not demos.first_number_is("no digits here", "0")


# ---------------------------------------------------------------- the report's table and section
SFT = {"before": {"identity": 0.1, "tool_success": 0.0, "tool_call_rate": 0.0, "trials": 30},
       "after": {"identity": 0.9, "tool_success": 0.5, "tool_call_rate": 0.8, "trials": 30}, "seconds": 9}
RL = {"init_from": "sft", "before": {"accuracy": 0.2, "correct": 80, "n": 400, "ci95": [0.16, 0.24], "response_len": 20.0},
      "after": {"accuracy": 0.3, "correct": 120, "n": 400, "ci95": [0.26, 0.35], "response_len": 18.0},
      "plots": {"heldout_accuracy": "rl/heldout_accuracy.png", "response_length": "rl/response_length.png"}}


def _header(md):
    return next(line for line in md.splitlines() if line.startswith("| evaluation"))


def test_table_lists_exactly_the_stages_that_ran():
    base = {"pretrain": {"val_bpb": 1.5}, "evaluate": {"eval_tokens": 1000.0}}
    assert _header(eval_table_md(base)) == "| evaluation | better | base (pretrained) |"
    md = eval_table_md({**base, "sft": SFT})
    assert _header(md) == "| evaluation | better | base (pretrained) | SFT |"
    md = eval_table_md({**base, "sft": SFT, "rl": RL})
    assert _header(md) == "| evaluation | better | base (pretrained) | SFT | RL |"
    # reused numbers: sft's before/after, rl's before (= the SFT model) and after, pretrain's bpb
    row = {line.split(" | ")[0]: line for line in md.splitlines()}
    assert "10% (3/30" in row["| identity answers correct"] and "90% (27/30" in row["| identity answers correct"]
    assert "20% (80/400; 95% CI 16%-24%) ‡ | 30% (120/400" in row["| held-out arithmetic, greedy accuracy"]
    assert "1.5000 (1,000 tokens)" in row["| validation bits per byte"]
    # without the demos stage nothing else measured them: "not run", never an invented number
    assert row["| hallucination rate on invented people"].count("not run") == 3
    # RL from a pretrained model (rl.init) is not this run's model: no RL column
    md = eval_table_md({**base, "sft": SFT, "rl": {**RL, "init_from": "smollm2-135m-instruct"}})
    assert _header(md) == "| evaluation | better | base (pretrained) | SFT |"
    # an RLHF stage (its own toy policy) gets a column that says so
    rlhf = {"plots": ["/x/rlhf/reward_hacking.png"]}
    md = eval_table_md({**base, "jaxllm.recipes.rlhf:rlhf_stage": rlhf})
    assert _header(md).endswith("| RLHF |") and "toy policy" in md
    assert eval_table_md({}) == ""


def test_demonstrations_say_not_run_when_inputs_are_missing(tmp_path):
    md = demos_md({"pretrain": {"val_bpb": 1.5}}, tmp_path)
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| demonstration")]
    rows = rows[:rows.index(next(r for r in rows if r.startswith("| arena"))) + 1]
    assert len(rows) == 16 and all("not run" in r for r in rows)
    assert "did not run" in md
    # other stages' results are rendered when present: rl curves, the sft stage's idk and think numbers
    def prop(k, n):
        return {"rate": k / n, "k": k, "n": n, "ci95": [0.1, 0.9]}
    idk = {"before": {"hallucination": prop(24, 30), "qa_accuracy": prop(6, 30), "qa_refusal": prop(0, 30)},
           "after": {"hallucination": prop(6, 30), "qa_accuracy": prop(5, 30), "qa_refusal": prop(9, 30)}}
    think = {"test": {"bigger_digits": 3, "same_digits": "1-2", "n": 40},
             "variants": {"steps": {"bigger": prop(8, 40), "same": prop(30, 40)},
                          "answer_first": {"bigger": prop(1, 40), "same": prop(20, 40)}}}
    md = demos_md({"sft": {**SFT, "idk": idk, "think": think}, "rl": RL}, tmp_path)
    line = next(r for r in md.splitlines() if "I don't know" in r)
    assert "80% (24/30" in line and "20% (6/30" in line and "not run" not in line
    line = next(r for r in md.splitlines() if "answer-first" in r)
    assert "20% (8/40" in line and "2% (1/40" in line and "not run" not in line
    line = next(r for r in md.splitlines() if r.startswith("| RL accuracy"))
    assert "20.0% → 30.0%" in line and "rl/heldout_accuracy.png" in line
    assert "not run in this run" in next(r for r in md.splitlines() if r.startswith("| reward hacking"))
    # an unexpected shape still shows its numbers rather than failing the report
    md = demos_md({"sft": {"idk": {"hallucination_rate": 0.8}}}, tmp_path)
    assert "hallucination_rate: 0.800" in next(r for r in md.splitlines() if "I don't know" in r)


def test_demonstrations_render_every_result(tmp_path, planted_run):
    tok = Tokenizer.load(planted_run.results["tokenizer"]["dir"])
    cell = demos.rate_cell
    mem = {"loss": 0.4, "verbatim_tokens": 30, "compared": 32, "token_match": 0.97, "prefix_tokens": 16,
           "continuation": "a | b\nc", "truth": "a | b\nc"}
    d = {"seconds": 100.0, "trials": 30,
         "bpe": {"walk": demos.bpe_walkthrough(tok, " mountain"), "text": demos.tokenize_both(tok, "The river")},
         "one_update": {"target": " the", "target_id": 5, "p_before": 0.01, "p_after": 0.2, "lr": 0.01, "grad_norm": 3.0,
                        "sweep": [{"lr": 0.01, "p_after": 0.2}], "context_tokens": 20, "context": "x",
                        "top_before": [{"token": " a", "p": 0.1}], "top_after": [{"token": " the", "p": 0.2}]},
         "pretrain_samples": [{"step": 0, "val_bpb": None, "sample": "x"}, {"step": 50, "val_bpb": 2.0, "sample": "y"}],
         "regurgitation": {"repeats": 10, "repeated": mem, "once": {**mem, "loss": 3.0}, "never": {**mem, "loss": 3.5},
                           "png": "demos/regurgitation.png"},
         "fewshot": {"shots": 3, "few_shot": cell(5, 24, "demos"), "zero_shot": cell(1, 24, "demos"), "samples": []},
         "fake_conversation": [{"question": "Hi?", "reply": "Hello."}],
         "letters": {"model": "rl", "with_tool": cell(20, 30, "demos"), "without_tool": cell(2, 30, "demos")},
         "nine": {"model": "rl", **cell(9, 50, "demos"), "counts": {"9.9": 9, "9.11": 1, "unclear": 40},
                  "png": "demos/nine.png"},
         "arena": {"judge": "simulated voter", "prompts": 9, "battles": 27, "png": "demos/arena.png",
                   "rows": [{"model": "rl", "bt": 1040.0, "bt_lo": 1000.0, "bt_hi": 1080.0, "wins": 5, "losses": 1, "ties": 12}]},
         "reward_hacking": {"stage": "rlhf", "png": "rlhf/reward_hacking.png"}}
    md = demos_md({"pretrain": {"val_bpb": 1.5}, "sft": SFT, "rl": RL, "demos": d,
                   "evaluate": {"resamples": ["a", "b", "a"]}}, tmp_path)
    rows = {line.split(" | ")[0][2:]: line for line in md.splitlines() if line.startswith("| ") and " | " in line}
    not_run = [k for k, v in rows.items() if "not run" in v]
    assert not_run == ["hallucination before/after the \"I don't know\" data",
                       "answer-first vs step-by-step, tested on bigger numbers"]
    assert "repeated 10x: **0.40 nats/token, 30/32 tokens verbatim" in rows["regurgitation: document seen ~10x vs once"]
    assert "3 samples, 2 different" in rows["resampling the same prefix"]
    assert "rl 1040 [1000, 1080]" in rows["arena leaderboard of the run's checkpoints"]
    assert "![reward hacking](rlhf/reward_hacking.png)" in md and "took 100.0 s" in md
    assert "a \\| b⏎c" in md  # model text cannot break the table
