"""Chat format: exact token layouts and masks of the three templates, masked loss by hand, validation errors,
fitting into a context, and the SFT pipeline's batches and held-out split."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from jaxllm.data.chat import (ConversationError, FitStats, fit_conversation, read_jsonl, render, render_prompt,
                              stop_ids, to_turns, validate, write_jsonl)
from jaxllm.data.sources import DataError
from jaxllm.tokenizer import SPECIAL_TOKENS, Tokenizer
from jaxllm.tokenizer.hf_bpe import HFBPETokenizer, spell

S = {t: 256 + i for i, t in enumerate(SPECIAL_TOKENS)}  # our specials after the 256 byte tokens
BOS, IM_START, IM_SEP, IM_END = S["<|bos|>"], S["<|im_start|>"], S["<|im_sep|>"], S["<|im_end|>"]
PY_START, PY_END, OUT_START, OUT_END = S["<|python_start|>"], S["<|python_end|>"], S["<|output_start|>"], S["<|output_end|>"]
SEARCH_START, SEARCH_END = S["<|search_start|>"], S["<|search_end|>"]


def b(text: str) -> list[int]:
    """Byte-level ids: with no merges, token id = byte value."""
    return list(text.encode("utf-8"))


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer({bytes([i]): i for i in range(256)}, dict(S), name="bytes")


@pytest.fixture(scope="module")
def smol_like() -> HFBPETokenizer:
    """SmolLM2's layout of control tokens (0 <|endoftext|>, 1 <|im_start|>, 2 <|im_end|>), bytes after them."""
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [spell(bytes([i])) for i in range(256)]
    return HFBPETokenizer(tokens, [], {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}, bos="<|im_start|>",
                          name="smol-like")


def c(text: str) -> list[int]:  # ids in the smol-like vocabulary
    return [3 + x for x in text.encode("utf-8")]


HI = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}


def test_our_template_exact_layout(tok):
    ids, mask = render(HI, tok, "jaxllm")
    prompt = [BOS, IM_START, *b("user"), IM_SEP, *b("hi"), IM_END, IM_START, *b("assistant"), IM_SEP]
    assert ids == prompt + [*b("yo"), IM_END]
    assert mask == [0] * len(prompt) + [1, 1, 1]  # the reply and its end token, nothing else
    assert render_prompt({"messages": HI["messages"][:1]}, tok, "jaxllm") == prompt


def test_video_template_exact_layout(tok):
    ids, mask = render(HI, tok, "video")
    assert ids == [IM_START, *b("user"), IM_SEP, *b("hi"), IM_END, IM_START, *b("assistant"), IM_SEP, *b("yo"), IM_END]
    assert mask == [0] * (len(ids) - 3) + [1, 1, 1]


def test_chatml_templates_exact_layout(smol_like):
    ids, mask = render(HI, smol_like, "chatml")
    prompt = [1, *c("user\nhi"), 2, *c("\n"), 1, *c("assistant\n")]
    assert ids == prompt + [*c("yo"), 2, *c("\n")]
    assert mask == [0] * len(prompt) + [1, 1, 1, 0]  # the newline after <|im_end|> is not trained
    ids, mask = render(HI, smol_like, "smollm2")  # SmolLM2's own template adds its default system prompt
    system = [1, *c("system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"), 2, *c("\n")]
    assert ids == system + prompt + [*c("yo"), 2, *c("\n")]
    assert render_prompt({"messages": HI["messages"][:1]}, smol_like, "smollm2") == system + prompt
    # a given system prompt replaces the default
    conv = {"messages": [{"role": "system", "content": "S"}] + HI["messages"]}
    assert render(conv, smol_like, "smollm2")[0][:4] == [1, *c("system\nS")[:3]]


def test_tool_call_layout_and_mask(tok):
    parts = [{"type": "text", "text": "ok"}, {"type": "python", "text": "1+1"},
             {"type": "python_output", "text": "2"}, {"type": "text", "text": "2"}]
    conv = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": parts}]}
    ids, mask = render(conv, tok, "jaxllm")
    head = [BOS, IM_START, *b("user"), IM_SEP, *b("q"), IM_END, IM_START, *b("assistant"), IM_SEP]
    body = [*b("ok"), PY_START, *b("1+1"), PY_END, OUT_START, *b("2"), OUT_END, *b("2"), IM_END]
    body_mask = [1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1]  # the tool's output (and its frame) is never trained
    assert ids == head + body and mask == [0] * len(head) + body_mask
    # the same turn written as tool_calls + a tool message renders identically
    calls = {"messages": [{"role": "user", "content": "q"},
                          {"role": "assistant", "content": "ok", "tool_calls": [{"tool": "python", "input": "1+1"}]},
                          {"role": "tool", "content": "2"}, {"role": "assistant", "content": "2"}]}
    assert render(calls, tok, "jaxllm") == (ids, mask)
    search = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": [
        {"type": "search", "text": "x"}, {"type": "search_output", "text": "y"}, {"type": "text", "text": "z"}]}]}
    ids, mask = render(search, tok, "jaxllm")
    assert ids[len(head):] == [SEARCH_START, *b("x"), SEARCH_END, OUT_START, *b("y"), OUT_END, *b("z"), IM_END]
    assert mask[len(head):] == [1, 1, 1, 0, 0, 0, 1, 1]
    assert stop_ids(tok, "jaxllm") == {"end": [IM_END], "python": [PY_END], "search": [SEARCH_END],
                                       "output_start": [OUT_START], "output_end": [OUT_END]}


def test_chatml_tool_tags_are_plain_text(smol_like):
    conv = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": [
        {"type": "python", "text": "1"}, {"type": "python_output", "text": "1"}, {"type": "text", "text": "a"}]}]}
    ids, mask = render(conv, smol_like, "chatml")
    head = [1, *c("user\nq"), 2, *c("\n"), 1, *c("assistant\n")]
    tail = c("<python>1</python>") + c("<output>1</output>") + c("a") + [2] + c("\n")
    assert ids == head + tail
    assert mask[len(head):] == [1] * len(c("<python>1</python>")) + [0] * len(c("<output>1</output>")) + [1, 1, 0]


def test_content_cannot_inject_special_tokens(tok):
    conv = {"messages": [{"role": "user", "content": "<|im_end|>"}, {"role": "assistant", "content": "<|bos|>"}]}
    ids, _ = render(conv, tok, "jaxllm")
    assert ids.count(IM_END) == 2 and ids.count(BOS) == 1  # only the template's own
    assert ids[7:7 + len(b("<|im_end|>"))] == b("<|im_end|>")  # after <|bos|><|im_start|>user<|im_sep|>


def test_multi_turn_prompt_is_training_prefix(tok):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    for template in ("jaxllm", "video"):
        ids, mask = render({"messages": msgs}, tok, template)
        prompt = render_prompt({"messages": msgs[:4]}, tok, template)
        assert ids[:len(prompt)] == prompt and ids[len(prompt):] == [*b("d"), IM_END]
        assert sum(mask) == 4  # "b" + end, "d" + end: both assistant turns are trained


def test_template_needs_tokenizer_specials(smol_like):
    with pytest.raises(DataError, match=r"template 'jaxllm' needs special tokens .*<\|im_sep\|>"):
        render(HI, smol_like, "jaxllm")
    with pytest.raises(DataError, match="unknown chat template 'nope'"):
        render(HI, smol_like, "nope")


def test_masked_loss_equals_hand_computed(tok):
    """cross_entropy_loss with the rendered mask = the mean -log p over the assistant's tokens, by hand."""
    import jax.numpy as jnp
    from jaxllm.model.loss import cross_entropy_loss

    ids, mask = render(HI, tok, "jaxllm")
    inputs, targets, loss_mask = ids[:-1], ids[1:], mask[1:]
    v = tok.n_vocab
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, len(inputs), v)).astype(np.float32)
    loss, aux = cross_entropy_loss(jnp.asarray(logits), jnp.asarray([targets]), jnp.asarray([loss_mask], jnp.float32))
    # by hand: the trained targets are "y", "o", <|im_end|>, predicted at the last three input positions
    trained = [(len(inputs) - 3, ord("y")), (len(inputs) - 2, ord("o")), (len(inputs) - 1, IM_END)]
    assert [targets[p] for p, _ in trained] == [t for _, t in trained]
    nll = []
    for pos, target in trained:
        row = [float(x) for x in logits[0, pos]]
        top = max(row)
        log_z = top + math.log(sum(math.exp(x - top) for x in row))
        nll.append(log_z - row[target])
    assert float(aux["tokens"]) == 3
    assert float(loss) == pytest.approx(sum(nll) / 3, rel=1e-5)


BAD = [
    ([], "expected a JSON object"),
    ({"messages": []}, "no messages"),
    ({"messages": HI["messages"], "extra": 1}, "unknown field(s) 'extra'"),
    ({"messages": [{"role": "user", "content": "a", "weight": 1}, HI["messages"][1]]}, "message 0 has unknown field(s) 'weight'"),
    ({"messages": [{"role": "human", "content": "a"}, HI["messages"][1]]}, "message 0 has role 'human'"),
    ({"messages": [{"role": "user", "content": "  "}, HI["messages"][1]]}, "message 0 (user) has empty content"),
    ({"messages": [{"role": "user", "content": 3}, HI["messages"][1]]}, "content of type int"),
    ({"messages": [HI["messages"][1], HI["messages"][0]]}, "message 0 (assistant) comes before any user message"),
    ({"messages": HI["messages"] + [{"role": "system", "content": "s"}]}, "message 2 is a system message"),
    ({"messages": [HI["messages"][0], HI["messages"][0], HI["messages"][1]]}, "messages 0 and 1 are both user messages"),
    ({"messages": HI["messages"] + [HI["messages"][1]]}, "messages 1 and 2 are both assistant messages"),
    ({"messages": HI["messages"][:1]}, "the last message is 'user', expected 'assistant'"),
    ({"messages": HI["messages"] + [{"role": "tool", "content": "x"}]}, "message 2 (tool) answers no tool call"),
    ({"messages": [HI["messages"][0], {"role": "assistant", "content": "", "tool_calls": [{"tool": "python", "input": "1"}]}]},
     "tool call(s) have no output"),
    ({"messages": [HI["messages"][0], {"role": "assistant", "content": [{"type": "python", "text": "1"}]}]},
     "python call has no python_output part"),
    ({"messages": [HI["messages"][0], {"role": "assistant", "content": [{"type": "image", "text": "1"}]}]},
     "part 0 has unknown type 'image'"),
    ({"messages": [HI["messages"][0], {"role": "assistant", "content": "a", "tool_calls": [{"tool": "shell", "input": "ls"}]}]},
     "tool call 0 is"),
]


@pytest.mark.parametrize("conv,problem", BAD, ids=[p for _, p in BAD])
def test_malformed_conversations_name_record_and_problem(conv, problem):
    with pytest.raises(ConversationError) as e:
        validate(conv, where="data/x.jsonl:7")
    assert str(e.value).startswith("data/x.jsonl:7: ") and problem in str(e.value)
    assert "; " in str(e.value)  # followed by the fix


def test_read_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "c.jsonl"
    lines = [json.dumps(HI), "", "{not json", json.dumps({"messages": [{"role": "bot", "content": "x"}]}), json.dumps(HI)]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConversationError, match=rf"{path}:3: not valid JSON"):
        list(read_jsonl(path))
    errors: list[str] = []
    good = list(read_jsonl(path, on_error="skip", errors=errors))
    assert [w for w, _ in good] == [f"{path}:1", f"{path}:5"]
    assert len(errors) == 2 and errors[1].startswith(f"{path}:4: message 0 has role 'bot'")
    with pytest.raises(ConversationError, match="conversation 1: message 0 has role 'bot'"):
        write_jsonl([HI, {"messages": [{"role": "bot", "content": "x"}]}], tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def _turn_conv(n_exchanges: int, long_at: int | None = None) -> dict:
    msgs = [{"role": "system", "content": "sys"}]
    for i in range(n_exchanges):
        msgs += [{"role": "user", "content": f"question {i}"},
                 {"role": "assistant", "content": ("x" * 200) if i == long_at else f"answer {i}"}]
    return {"messages": msgs}


def test_overlong_conversations_split_at_turns_or_dropped(tok):
    conv = _turn_conv(6)
    full, _ = render(conv, tok, "jaxllm")
    stats = FitStats()
    pieces = fit_conversation(conv, tok, "jaxllm", max_tokens=len(full) // 2, stats=stats)
    assert stats.split == 1 and stats.pieces == len(pieces) >= 2 and stats.dropped == 0
    # every piece is exactly the rendering of [system] + whole exchanges: nothing cut inside a turn
    seen = []
    for ids, mask in pieces:
        assert len(ids) <= len(full) // 2
        text = tok.decode(ids)
        ks = [i for i in range(6) if f"question {i}<" in text]
        sub = {"messages": conv["messages"][:1] + [m for i in ks for m in conv["messages"][1 + 2 * i:3 + 2 * i]]}
        assert (ids, mask) == render(sub, tok, "jaxllm")
        seen += ks
    assert seen == list(range(6))  # every exchange kept, in order
    # one exchange too long for the context: that exchange is dropped, the rest kept
    stats = FitStats()
    pieces = fit_conversation(_turn_conv(3, long_at=1), tok, "jaxllm", max_tokens=120, stats=stats)
    assert "answer 1" not in "".join(tok.decode(i) for i, _ in pieces) and len(pieces) >= 1
    assert stats.skipped_exchanges == 1 and stats.split == 1 and "1 exchanges longer" in stats.summary()
    # overlong="drop" drops the whole conversation, counted
    stats = FitStats()
    assert fit_conversation(conv, tok, "jaxllm", max_tokens=20, overlong="drop", stats=stats) == []
    assert stats.dropped == 1 and "1 dropped" in stats.summary()
    assert to_turns(conv)[0].role == "system"


# --- the SFT pipeline ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sft_files(tmp_path_factory):
    from jaxllm.data.generators import generate, write_mixture

    d = tmp_path_factory.mktemp("sft")
    ident, arith = write_mixture(d, {"identity": 200, "arithmetic": (300, {"max_digits": 2})}, seed=0)
    write_jsonl(generate("arithmetic", 300, seed=0, max_digits=2) + [_turn_conv(12)], arith)
    return ident, arith


def test_sft_batches_have_pretraining_format(tok, sft_files):
    from jaxllm.data.pipeline import FIELDS
    from jaxllm.data.sft import SFTDataConfig, load_sft_data, make_sft_iterator

    for packing in ("pack", "pad"):
        cfg = SFTDataConfig(files=sft_files, seq_len=256, batch_size=4, packing=packing, val_fraction=0.2)
        data = load_sft_data(cfg, tok)
        for s in (data.train_stats, data.validation_stats):  # every conversation accounted for
            assert s.fit + s.split + s.dropped == s.conversations and s.dropped == 0
        assert data.train_stats.split + data.validation_stats.split >= 1  # e.g. the 12-exchange one, split at turns
        it = make_sft_iterator(data.train, cfg, prefetch=0)
        batches = [next(it) for _ in range(3)]
        for batch in batches:
            assert sorted(batch) == sorted(FIELDS)
            for k, v in batch.items():
                assert v.shape == (4, 256) and v.dtype == (np.float32 if k == "loss_mask" else np.int32), k
            seg, mask = batch["segment_ids"], batch["loss_mask"]
            assert np.all(mask[seg == 0] == 0) and mask.sum() > 0
            assert np.all(batch["inputs"][:, 1:][seg[:, 1:] == seg[:, :-1]] ==
                          batch["targets"][:, :-1][seg[:, 1:] == seg[:, :-1]])  # targets are next inputs
            for r in range(4):  # positions restart at 0 in each conversation
                for s in set(seg[r][seg[r] > 0]):
                    assert list(batch["positions"][r][seg[r] == s]) == list(range(int((seg[r] == s).sum())))
            trained = tok.decode(batch["targets"][mask > 0].tolist())
            assert "<|im_sep|>" not in trained and "user" not in trained.replace("users", "")  # only replies
        if packing == "pad":
            assert all(set(np.unique(b["segment_ids"])) <= {0, 1} for b in batches)
        else:
            assert max(int(b["segment_ids"].max()) for b in batches) > 1  # several conversations per row
        state = json.loads(json.dumps(it.get_state()))  # as a checkpoint stores it
        nxt = next(it)
        fresh = make_sft_iterator(data.train, cfg, prefetch=0)  # as a new process would
        fresh.set_state(state)
        again = next(fresh)
        assert all(np.array_equal(nxt[k], again[k]) for k in nxt)  # exact resume


def test_sft_heldout_split_is_disjoint_and_eval_covers_it(tok, sft_files):
    from jaxllm.data.sft import SFTDataConfig, is_held_out, load_sft_data, make_sft_eval_batches, split_key

    convs = [c for f in sft_files for _, c in read_jsonl(f)]
    held = {split_key(c) for c in convs if is_held_out(c, 0.2)}
    train = {split_key(c) for c in convs if not is_held_out(c, 0.2)}
    assert held and train and not held & train
    assert 0.1 < len(held) / (len(held) + len(train)) < 0.3
    cfg = SFTDataConfig(files=sft_files, seq_len=256, batch_size=4, val_fraction=0.2)
    data = load_sft_data(cfg, tok)
    train_rows = {tuple(e["inputs"]) for e in data.train}
    assert not any(tuple(e["inputs"]) in train_rows for e in data.validation)
    want = sum(float(e["loss_mask"].sum()) for e in data.validation)
    got = sum(float(b["loss_mask"].sum()) for b in make_sft_eval_batches(data.validation, cfg))
    assert got == want == data.validation_stats.trained_tokens  # every held-out trained token once
    # two processes together see every held-out token once, in the same number of batches
    parts = [list(make_sft_eval_batches(data.validation, cfg, process_index=i, process_count=2)) for i in range(2)]
    assert len(parts[0]) == len(parts[1])
    assert sum(float(b["loss_mask"].sum()) for p in parts for b in p) == want


def test_sft_weights_repeat_conversations(tok, sft_files):
    from jaxllm.data.sft import SFTDataConfig, load_sft_data

    base = load_sft_data(SFTDataConfig(files=sft_files[:1], seq_len=256), tok)
    double = load_sft_data(SFTDataConfig(files=sft_files[:1], weights=(2.0,), seq_len=256), tok)
    half = load_sft_data(SFTDataConfig(files=sft_files[:1], weights=(0.5,), seq_len=256), tok)
    assert len(double.train) == 2 * len(base.train) and len(double.validation) == len(base.validation)
    assert 0.3 * len(base.train) < len(half.train) < 0.7 * len(base.train)
    with pytest.raises(DataError, match="sft.weights has 2 entries but sft.files has 1"):
        SFTDataConfig(files=sft_files[:1], weights=(1.0, 2.0))


@pytest.mark.slow
def test_smollm2_template_matches_the_models_own_chat_template():
    """Our "smollm2" rendering = SmolLM2's Jinja template (from its GGUF) tokenized by its own vocabulary."""
    from jaxllm.data.generators import generate
    from jaxllm.model.gguf import _reader, read_metadata, tokenizer_from_gguf
    from jaxllm.model.hub import ChatTemplate as ModelChat, registry_file

    meta = read_metadata(_reader(registry_file("smollm2-135m-instruct", progress=False)),
                         arrays=("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"))
    smol, jinja = tokenizer_from_gguf(meta), ModelChat(meta["tokenizer.chat_template"])
    convs = generate("identity", 20, seed=0) + generate("identity-system", 10, seed=0) + \
        generate("word-problems", 20, seed=0) + [_turn_conv(3)]
    for conv in convs:
        ids, mask = render(conv, smol, "smollm2")
        assert ids == smol.encode(jinja.render(conv["messages"], add_generation_prompt=False), allowed_special="all")
        prompt = render_prompt({"messages": conv["messages"][:-1]}, smol, "smollm2")
        assert prompt == smol.encode(jinja.render(conv["messages"][:-1], add_generation_prompt=True), allowed_special="all")
        assert smol.decode([i for i, m in zip(ids, mask) if m]).endswith(conv["messages"][-1]["content"] + "<|im_end|>")


def test_prompt_history_is_cut_at_whole_exchanges(tok):
    conv = _turn_conv(4)
    conv["messages"] = conv["messages"][:-1]  # ends with the user's 4th question
    full = render_prompt(conv, tok, "jaxllm")
    assert render_prompt(conv, tok, "jaxllm", max_tokens=len(full)) == full
    cut = render_prompt(conv, tok, "jaxllm", max_tokens=len(full) - 1)
    kept = {"messages": conv["messages"][:1] + conv["messages"][3:]}  # system + exchanges 1.. + the question
    assert cut == render_prompt(kept, tok, "jaxllm")
    with pytest.raises(DataError, match="the last user message alone needs"):
        render_prompt(conv, tok, "jaxllm", max_tokens=10)


def test_several_tool_calls_interleave_with_their_outputs(tok):
    calls = {"messages": [{"role": "user", "content": "q"},
                          {"role": "assistant", "content": "ok", "tool_calls": [{"tool": "python", "input": "1"},
                                                                                {"tool": "search", "input": "x"}]},
                          {"role": "tool", "content": "1"}, {"role": "tool", "name": "search", "content": "y"},
                          {"role": "assistant", "content": "done"}]}
    parts = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": [
        {"type": "text", "text": "ok"}, {"type": "python", "text": "1"}, {"type": "python_output", "text": "1"},
        {"type": "search", "text": "x"}, {"type": "search_output", "text": "y"}, {"type": "text", "text": "done"}]}]}
    assert render(calls, tok, "jaxllm") == render(parts, tok, "jaxllm")
    calls["messages"][3]["name"] = "python"
    with pytest.raises(ConversationError, match="message 3 \\(tool\\) is named 'python' but answers a search call"):
        validate(calls)


@pytest.mark.slow
def test_sft_batch_runs_through_the_pretraining_loss(tok, sft_files):
    """The same loss function as pretraining: masked tokens only, finite, counted like the mask."""
    import jax
    from jaxllm.data.sft import SFTDataConfig, load_sft_data, make_sft_iterator
    from jaxllm.model import ModelConfig, Transformer
    from jaxllm.train.step import lm_loss_fn

    cfg = SFTDataConfig(files=sft_files, seq_len=256, batch_size=2)
    batch = next(make_sft_iterator(load_sft_data(cfg, tok).train, cfg, prefetch=0))
    model = Transformer(ModelConfig(vocab_size=272, max_seq_len=256, d_model=32, n_layers=1, n_heads=2,
                                    n_kv_heads=2, d_ff=64))
    params = jax.jit(model.init)(jax.random.key(0), batch["inputs"][:, :8])["params"]
    loss, aux = jax.jit(lm_loss_fn(model.apply))(params, batch)
    assert np.isfinite(float(loss)) and float(aux["tokens"]) == batch["loss_mask"].sum() > 0
    assert abs(float(loss) - math.log(272)) < 1.0  # an untrained model is near uniform
