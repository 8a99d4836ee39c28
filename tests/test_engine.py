"""Engine: batched == one-by-one (greedy), seeded sampling, stops, bucketing, tool calls, SmolLM2 answers Paris."""
import json
import threading
import types

import pytest

from engine_helpers import chain, random_model, scripted_model
from jaxllm.infer import generate
from jaxllm.infer.engine import Engine, EngineConfig, SamplingParams, bucket, decode_block, extend_slot
from jaxllm.infer.tools import BM25Index, ToolConfig, Tools, find_call

GREEDY = SamplingParams(temperature=0.0, max_tokens=24)


@pytest.fixture(scope="module")
def tiny():
    model = random_model()
    engine = Engine(model, EngineConfig(max_batch=4, max_len=256, min_bucket=32))
    yield model, engine
    engine.close()


def prompts(tok):
    texts = ["hello", "a much longer prompt than the others, to get its own bucket", "x", "the quick brown fox",
             "zz top", "jumps over the lazy dog"]
    return [tok.encode(t) for t in texts]


def test_batched_equals_one_by_one_and_reference(tiny):
    model, engine = tiny
    ps = prompts(model.tokenizer)  # 6 prompts, 4 slots: two wait and join as slots free up
    one = [engine.generate([p], GREEDY)[0] for p in ps]
    steps = engine.stats["shared_steps"]
    many = engine.generate(ps, GREEDY)
    assert engine.stats["shared_steps"] > steps and engine.stats["max_rows"] == 4
    ref = generate(model.params, model.cfg, ps, max_new_tokens=24, temperature=0.0)
    for a, b, r in zip(one, many, ref):
        assert a.token_ids == b.token_ids == tuple(r)
        assert a.text == b.text and a.finish_reason == "length" and a.completion_tokens == 24


@pytest.mark.parametrize("kw", [dict(unroll_layers=False), dict(weight_dtype="bfloat16")])
def test_stacked_cache_and_bf16_weights_equal_reference(tiny, kw):
    import jax
    import jax.numpy as jnp
    model = tiny[0]
    params = model.params  # bf16 weights: generate() with the same cast params is the reference
    if "weight_dtype" in kw:
        params = jax.tree.map(lambda x: x.astype(jnp.bfloat16) if x.ndim >= 2 else x, params)
    ps = prompts(model.tokenizer)[:3]
    engine = Engine(model, EngineConfig(max_batch=2, max_len=256, min_bucket=32, **kw))
    try:
        got = [c.token_ids for c in engine.generate(ps, GREEDY)]
    finally:
        engine.close()
    assert got == [tuple(r) for r in generate(params, model.cfg, ps, max_new_tokens=24, temperature=0.0)]


def test_seeded_sampling_independent_of_batch(tiny):
    model, engine = tiny
    ps = prompts(model.tokenizer)[:3]
    params = SamplingParams(temperature=0.9, top_k=40, top_p=0.9, seed=7, max_tokens=16)
    alone = engine.generate([ps[1]], params)[0]
    batch = engine.generate(ps, params)
    assert batch[1].token_ids == alone.token_ids
    other = engine.generate([ps[1]], SamplingParams(temperature=0.9, top_k=40, top_p=0.9, seed=8, max_tokens=16))[0]
    assert other.token_ids != alone.token_ids


def test_streaming_and_stop_strings(tiny):
    model, engine = tiny
    p = prompts(model.tokenizer)[3]
    full = engine.generate([p], GREEDY)[0]
    req = engine.submit(p, GREEDY)
    deltas = list(req.stream())
    assert len(deltas) > 3 and "".join(deltas) == full.text == req.result().text
    stop = full.text[6:9]  # cut where this text first appears
    cut = full.text.index(stop)
    req = engine.submit(p, SamplingParams(temperature=0.0, max_tokens=24, stop=("never", stop)))
    streamed = "".join(req.stream())
    done = req.result()
    assert done.finish_reason == "stop" and done.text == streamed == full.text[:cut]


def test_bad_requests_raise_and_engine_keeps_serving(tiny):
    model, engine = tiny
    with pytest.raises(ValueError, match="context"):
        engine.submit(list(range(300)), GREEDY)
    with pytest.raises(ValueError, match="max_tokens"):
        engine.submit([1, 2, 3], SamplingParams(max_tokens=254))
    for bad in (dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=-2), dict(max_tokens=0), dict(seed=-1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            engine.submit([1, 2, 3], SamplingParams(**bad))
    with pytest.raises(ValueError, match="empty"):
        engine.submit([], GREEDY)
    assert engine.generate([[1, 2, 3]], GREEDY)[0].completion_tokens == 24


def test_shapes_are_bucketed(tiny):
    model, engine = tiny
    assert [bucket(n, 16, 256) for n in (1, 16, 17, 100, 256, 300)] == [16, 16, 32, 128, 256, 256]
    engine.generate([[5] * 40], GREEDY)  # prompt bucket 64; window 64 (then 128 if it grows past 64)
    before = extend_slot._cache_size(), decode_block._cache_size()
    engine.generate([[7] * n for n in (33, 38, 39)], GREEDY)  # same buckets: nothing new to compile
    assert (extend_slot._cache_size(), decode_block._cache_size()) == before


def test_concurrent_submitters(tiny):
    model, engine = tiny
    ps = prompts(model.tokenizer)
    expected = [engine.generate([p], GREEDY)[0].token_ids for p in ps]
    got = [None] * len(ps)

    def client(i):
        got[i] = engine.submit(ps[i], GREEDY).result(timeout=60).token_ids

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(ps))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected


# ---------------------------------------------------------------- tools
PY_SCRIPT = chain(["<|im_sep|>", "<|python_start|>", *"print(6*7)", "<|python_end|>", "X", "<|im_end|>"]) + \
    [("<|output_end|>", "="), ("=", "<|im_end|>")]


def test_find_call():
    m = {"python": ("<python>", "</python>"), "search": ("<search>", "</search>")}
    assert find_call("hi <python>print(1)", 0, m) is None  # still being written
    call = find_call("hi <python> print(1) </python>", 0, m)
    assert (call.tool, call.text) == ("python", "print(1)")
    text = "<python>1</python><output>1</output> then <search>Paris</search>"
    assert find_call(text, 0, m).tool == "search"
    assert find_call(text[:36], 36, m) is None  # calls before `start` are answered already


def test_python_tool_round_trip_in_generation():
    model = scripted_model(PY_SCRIPT)
    engine = Engine(model, EngineConfig(max_batch=2, max_len=256, min_bucket=16), tools=Tools(template="jaxllm"))
    try:
        ids = model.prompt_ids([{"role": "user", "content": "What is 6*7?"}])
        plain = engine.generate([ids], GREEDY)[0]
        assert plain.text == "<|python_start|>print(6*7)<|python_end|>X"  # tools off: the script as is
        req = engine.submit(ids, SamplingParams(temperature=0.0, max_tokens=24, tools=True))
        deltas = list(req.stream())
        done = req.result()
        assert done.text == "<|python_start|>print(6*7)<|python_end|><|output_start|>42<|output_end|>="
        assert "".join(deltas) == done.text and done.finish_reason == "stop"
    finally:
        engine.close()


def test_search_tool_round_trip(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    docs = [{"id": "oslo", "text": "Oslo is the capital of Norway."},
            {"id": "paris", "text": "Paris is the capital of France."},
            {"id": "rome", "text": "Rome is the capital of Italy."}]
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    script = chain(["<|im_sep|>", "<|search_start|>", *"France", "<|search_end|>", "<|im_end|>"]) + \
        [("<|output_end|>", "!"), ("!", "<|im_end|>")]
    model = scripted_model(script)
    tools = Tools(ToolConfig(corpus=f"jsonl:{corpus}", top_k=1), template="jaxllm")
    engine = Engine(model, EngineConfig(max_batch=2, max_len=256, min_bucket=16), tools=tools)
    try:
        ids = model.prompt_ids([{"role": "user", "content": "capital of France?"}])
        done = engine.submit(ids, SamplingParams(temperature=0.0, max_tokens=24, tools=True)).result(timeout=60)
        assert done.text == ("<|search_start|>France<|search_end|><|output_start|>[paris] Paris is the capital of "
                             "France.<|output_end|>!")
    finally:
        engine.close()


def test_bm25_over_wikipedia_summaries():
    index = BM25Index.from_source("wikipedia-summaries")
    assert len(index.docs) > 10_000 - 100
    hits = index.search("Eiffel Tower Paris", k=3)
    assert hits and any("Eiffel" in doc["text"] for _, doc in hits)
    assert index.search("the of and") == []


# ---------------------------------------------------------------- SmolLM2 (real weights)
@pytest.fixture(scope="session")
def smollm2():
    from jaxllm.cli.loader import load_model
    return load_model("smollm2-135m-instruct", progress=False)


@pytest.mark.slow
def test_smollm2_answers_paris_via_chat_cli(smollm2, monkeypatch, capsys):
    from jaxllm.cli import chat, loader

    monkeypatch.setattr(loader, "load_model", lambda spec, progress=True: smollm2)
    args = types.SimpleNamespace(model="smollm2-135m-instruct", prompt="What is the capital of France?", system=None,
                                 temperature=0.0, top_k=0, top_p=1.0, seed=0, max_tokens=24, max_len=256, tools=False)
    assert chat.chat_command(args) == 0
    out = capsys.readouterr().out
    assert "Paris" in out, out


# ---------------------------------------------------------------- loading a run directory
@pytest.mark.slow
def test_load_model_from_run_dir(tmp_path):
    import jax
    import numpy as np

    from engine_helpers import byte_tokenizer
    from jaxllm.cli.loader import load_model
    from jaxllm.model import ModelConfig
    from jaxllm.parallel import MeshConfig
    from jaxllm.recipes.experiment import Config, start_run
    from jaxllm.recipes.pretrain import Trainer
    from jaxllm.train.checkpoint import Checkpointer
    from jaxllm.train.step import TrainConfig

    tok = byte_tokenizer()
    cfg = Config(name="tiny", model=ModelConfig(vocab_size=tok.n_vocab, max_seq_len=64, d_model=32, n_layers=2,
                                                 n_heads=2, n_kv_heads=2, d_ff=64))
    run_dir = start_run(cfg, tmp_path / "run")
    tok.save(run_dir / "tokenizer")
    (run_dir / "stages.json").write_text(json.dumps({"tokenizer": {"dir": str(run_dir / "tokenizer")}}))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_model(run_dir)
    trainer = Trainer.create(cfg.model, MeshConfig(), cfg.optim, TrainConfig(steps=1), seed=3)
    ckpt = Checkpointer(run_dir / "pretrain" / "checkpoints", async_save=False)
    ckpt.save(7, trainer.state, meta={})
    ckpt.close()
    model = load_model(run_dir)
    assert model.name == "run/pretrain" and model.template == "jaxllm" and model.bos_prefix == (tok.bos_id,)
    assert tok.special_ids["<|im_end|>"] in model.stop_ids
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(trainer.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    engine = Engine(model, EngineConfig(max_batch=2, max_len=64, min_bucket=16))
    try:
        done = engine.submit(model.prompt_ids([{"role": "user", "content": "hi"}]), GREEDY).result(timeout=120)
        assert done.finish_reason in ("stop", "length") and done.prompt_tokens > 5
    finally:
        engine.close()


def test_chat_cli_interactive_turns(monkeypatch, capsys):
    import io

    from jaxllm.cli import chat, loader

    model = scripted_model(chain(["<|im_sep|>", *"Hi, Bob!", "<|im_end|>"]))
    monkeypatch.setattr(loader, "load_model", lambda spec, progress=True: model)
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\n\nWho are you?\n/reset\nAgain\n/exit\n"))
    args = types.SimpleNamespace(model="x", prompt=None, system="Be brief.", temperature=0.0, top_k=0, top_p=1.0,
                                 seed=0, max_tokens=24, max_len=256, tools=False)
    assert chat.chat_command(args) == 0
    assert capsys.readouterr().out.count("Hi, Bob!\n") == 3
