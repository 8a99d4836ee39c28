"""Behaviour checks, generative tasks, the judge and the harness end to end on a tiny random chat model,
and the tool loop on a scripted generator (sandboxed code replaced by a recorder)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from jaxllm.eval import arena, behaviour, generative, harness, judge, plots
from jaxllm.eval.model import from_parts
from jaxllm.model import ModelConfig, Transformer
from jaxllm.tokenizer import SPECIAL_TOKENS, Tokenizer


@pytest.fixture(scope="module")
def tok():
    return Tokenizer({bytes([i]): i for i in range(256)}, {s: 256 + i for i, s in enumerate(SPECIAL_TOKENS)},
                     name="bytes+specials")


@pytest.fixture(scope="module")
def models(tok):
    cfg = ModelConfig(vocab_size=tok.n_vocab, max_seq_len=512, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2,
                      d_ff=64)
    params = jax.jit(lambda k: nn.unbox(Transformer(cfg).init(k, jnp.zeros((1, 4), jnp.int32))["params"]))(
        jax.random.key(0))
    return {"base": from_parts("tiny-base", cfg, params, tok), "chat": from_parts("tiny-chat", cfg, params, tok, "jaxllm")}


def test_chat_model_prompts_and_stops(models, tok):
    chat = models["chat"]
    ids = chat.prompt_ids([{"role": "user", "content": "hi"}])
    assert ids[0] == tok.special_ids["<|bos|>"] and ids[-1] == tok.special_ids["<|im_sep|>"]
    assert tok.special_ids["<|im_end|>"] in chat.stop_ids
    assert chat.tool_stop_ids == (tok.special_ids["<|python_end|>"],)
    assert models["base"].prompt_ids("hi") == [tok.bos_id, ord("h"), ord("i")]
    assert models["base"].as_kind("auto") is models["base"]
    with pytest.raises(ValueError, match="no chat template"):
        models["base"].as_kind("chat")


@pytest.mark.slow
def test_behaviours_and_generative_run(models):
    """Every behaviour check and a generative task run end to end (chat model; base model on two)."""
    for kind, checks in (("chat", list(behaviour.BEHAVIOURS)), ("base", ["9.11-vs-9.9"])):
        m = models[kind]
        for name in checks:
            kw = {"run_code": lambda code: "0"} if name == "tool-use" else {}
            r = behaviour.BEHAVIOURS[name][0](m, n=2, seed=0, **kw)
            assert r["n"] == 2 and 0.0 <= r["accuracy"] <= 1.0 and len(r["samples"]) == 2, name
    r = generative.run_gen_task(models["chat"], "arithmetic", limit=2, n_samples=2, k=1)
    assert r["n"] == 2 and 0 <= r["pass@1"] <= 1 and all(isinstance(s["reply"], str) for s in r["samples"])
    prompts = ["What is 2+2?", "Name a colour."]
    res = arena.model_arena(models, prompts, checks={p: (lambda a: len(a) % 2 == 0) for p in prompts}, rounds=10)
    assert {r["model"] for r in res["rows"]} == {"base", "chat"} and len(res["battles"]) == 2
    for j, (a, b, s) in enumerate(res["battles"]):  # one pair per prompt: the verdict follows the voter's check
        ok_a, ok_b = (len(res["answers"][m][j]) % 2 == 0 for m in (a, b))
        assert s == (0.5 if ok_a == ok_b else 1.0 if ok_a else 0.0)


def test_tool_loop_runs_code_and_splices_output(models, tok):
    chat = models["chat"]
    script = [tok.encode("Let me compute.<|python_start|>print(2**10)<|python_end|>", allowed_special="all"),
              tok.encode("It is 1024.<|im_end|>", allowed_special="all")]
    seen_prompts, ran = [], []

    def fake_generate(params, cfg, prompts, **kw):
        seen_prompts.append(list(prompts[0]))
        return [script[len(seen_prompts) - 1]]

    def run_code(code):
        ran.append(code)
        return "1024"

    text, calls = behaviour.run_with_tools(chat, [{"role": "user", "content": "2**10?"}], run_code=run_code,
                                           generate_fn=fake_generate)
    assert ran == ["print(2**10)"] and calls == 1
    assert text == "Let me compute.<|python_start|>print(2**10)<|python_end|><|output_start|>1024<|output_end|>It is 1024."
    spliced = tok.decode(seen_prompts[1][len(seen_prompts[0]):])
    assert spliced == "Let me compute.<|python_start|>print(2**10)<|python_end|><|output_start|>1024<|output_end|>"


def test_judge_grades_are_distributions(models):
    for m in models.values():
        g = judge.grade(m, "What is 2+2?", "4", "4")
        assert len(g["probs"]) == 5 and sum(g["probs"]) == pytest.approx(1.0) and 1 <= g["expected"] <= 5
        p = judge.prefer_a(m, "What is 2+2?", "4", "5", reference="4")
        assert 0.0 <= p <= 1.0
        # both orders averaged: swapping the answers gives the complement exactly
        assert judge.prefer_a(m, "What is 2+2?", "5", "4", reference="4") == pytest.approx(1 - p, abs=1e-6)


def test_harness_table_and_stage_plot(models, tmp_path):
    texts = ["Hello world. " * 20, "Another held-out text."]
    reports = {}
    for kind, m in models.items():
        rep = {"model": m.name, "kind": m.kind, "results": {
            "bpb": {**__import__("jaxllm.eval.bpb_task", fromlist=["x"]).run_bpb_task(m, texts=texts, seq_len=64)},
            "9.11-vs-9.9": behaviour.bigger_check(m, n=3)}}
        reports[kind] = rep
    rows = harness.summary_rows(reports["base"])
    assert [r["metric"] for r in rows] == ["bpb", "says_9.9_bigger"] and rows[0]["value"] > 0
    assert "says_9.9_bigger" in harness.format_table(rows)
    table = plots.stage_table(reports)
    assert {"base", "chat"} <= set(table[0]) and "| task |" in plots.markdown_table(table, ["task", "metric", "base", "chat"])
    png = plots.plot_stage_bars(reports, tmp_path / "stages.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    out = harness.write_json(reports["base"], tmp_path / "r.json")
    assert out.exists()
