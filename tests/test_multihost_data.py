"""The topology-independent data stream: the global batch does not depend on the process count, and a
position saved by P processes resumes on Q processes (2→1, 1→2, 4→2) without repeating or skipping rows."""
from types import SimpleNamespace

import numpy as np
import pytest
from etils import epath

from jaxllm.data.pipeline import PipelineConfig
from jaxllm.parallel.distributed import StreamCheckpointHandler, StreamIterator, num_streams, owned_streams

CFG = PipelineConfig(seq_len=16, batch_size=8, seed=5)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from jaxllm.data.shards import write_shards
    from jaxllm.tokenizer import TokenizerConfig, train_tokenizer

    root = tmp_path_factory.mktemp("stream-data")
    rng = np.random.default_rng(1)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "lambda"]
    docs = [{"id": f"d{i}", "text": " ".join(rng.choice(words, rng.integers(3, 40))), "source": "t", "meta": {}}
            for i in range(120)]
    tok = train_tokenizer((d["text"] for d in docs), TokenizerConfig(vocab_size=280))
    tok.save(root / "tok")
    write_shards(docs, str(root / "tok"), str(root / "train"), num_shards=3, num_workers=1)
    return str(root / "train")


def global_batches(shards, processes, steps, cfg=CFG, states=None):
    """`steps` global batches assembled from `processes` iterators (optionally restored from `states`)."""
    its = [StreamIterator(shards, cfg, p, processes) for p in range(processes)]
    if states is not None:
        merged = {"num_streams": states[0]["num_streams"], "streams": {}}
        for s in states:
            merged["streams"].update(s["streams"])
        for it in its:
            it.set_state(merged)
    out = []
    for _ in range(steps):
        parts = [next(it) for it in its]
        out.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    return out, [it.get_state() for it in its]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_global_batch_is_the_same_for_any_process_count(shards):
    ref, _ = global_batches(shards, 1, 5)
    assert ref[0]["inputs"].shape == (8, 16)
    assert ref[0]["loss_mask"].sum() > 0
    for p in (2, 4, 8):
        got, _ = global_batches(shards, p, 5)
        assert_same(got, ref)


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2), (4, 2)])
def test_resume_on_another_process_count_neither_repeats_nor_skips(shards, before, after):
    ref, _ = global_batches(shards, 1, 7)
    first, states = global_batches(shards, before, 3)
    rest, _ = global_batches(shards, after, 4, states=states)
    assert_same(first + rest, ref)


def test_checkpoint_files_name_streams_and_restore_on_other_counts(shards, tmp_path):
    ref, _ = global_batches(shards, 1, 4)
    its = [StreamIterator(shards, CFG, p, 2) for p in range(2)]
    for _ in range(2):
        [next(it) for it in its]
    handler = StreamCheckpointHandler()
    d = epath.Path(tmp_path)
    for it in its:  # what each of two processes writes into the shared checkpoint folder
        handler.save(d, args=it.checkpoint_save())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"stream_{k}.json" for k in range(8))
    single = handler.restore(d, args=StreamIterator(shards, CFG, 0, 1).checkpoint_restore())
    assert_same([next(single), next(single)], ref[2:])


def test_clear_errors(shards, tmp_path):
    with pytest.raises(ValueError, match="3 processes cannot split 8 data streams"):
        owned_streams(8, 0, 3)
    with pytest.raises(ValueError, match="must be a multiple"):
        num_streams(SimpleNamespace(batch_size=6, streams=4))  # the proposed PipelineConfig.streams field
    assert num_streams(SimpleNamespace(batch_size=6, streams=0)) == 6  # default: one stream per row
    it = StreamIterator(shards, CFG, 0, 1)
    with pytest.raises(ValueError, match="keep pipeline.batch_size"):
        it.set_state({"num_streams": 4, "streams": {}})
    handler = StreamCheckpointHandler()
    with pytest.raises(ValueError, match="lacks"):
        handler.restore(epath.Path(tmp_path), args=it.checkpoint_restore())



def test_json_round_trip_resumes_exactly_at_every_step(shards):
    """Checkpoints store states as JSON: tuples come back as lists, which grain's packer misreads for an
    empty buffer unless they are turned back into tuples (this failed at steps 1, 5 and 10 before)."""
    import json

    cfg = PipelineConfig(seq_len=32, batch_size=4, seed=3)
    for at in range(12):
        a = StreamIterator(shards, cfg)
        for _ in range(at):
            next(a)
        b = StreamIterator(shards, cfg)
        b.set_state(json.loads(json.dumps(a.get_state())))
        assert_same([next(b) for _ in range(2)], [next(a) for _ in range(2)])
