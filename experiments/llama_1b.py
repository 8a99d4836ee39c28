"""A Llama-style 1.2B pretraining run at pod scale (the Llama-3.2-1B shape: 16 layers, d_model 2048,
32 query / 8 key-value heads, SwiGLU 8192, tied embeddings), bf16 compute with float32 master weights,
FSDP over every chip. Plan it, then launch it (docs/scale.md):

    jaxllm plan llama_1b --hardware tpu-v5p --chips 64
    jaxllm launch tpu --tpu-name my-v5p-128 --zone us-east5-a -- run llama_1b --run-dir gs://BUCKET/runs/llama_1b
    jaxllm run llama_1b --depth 1 --set train.steps=20      # the same recipe shrunk to a CPU-sized model

Full size: 2048 tokens, 512 sequences per step (~1M tokens). The vocabulary is our own BPE of 32768 ids
(the data here is small; Llama 3 uses 128256). `depth=N` takes the CPU speedrun's sizes.
"""
import dataclasses

from jaxllm.data.pipeline import PipelineConfig
from jaxllm.data.sources import DataConfig
from jaxllm.model.presets import get_preset, tiny
from jaxllm.parallel import MeshConfig
from jaxllm.recipes.experiment import Config
from jaxllm.tokenizer import TokenizerConfig
from jaxllm.train.optim import OptimConfig
from jaxllm.train.step import TrainConfig

NUMERICS = {"dtype": "bfloat16", "param_dtype": "float32"}


def config(depth: int | None = None) -> Config:
    if depth is None:
        vocab, seq_len, batch = 32768, 2048, 512
        model = get_preset("llama-1b", vocab_size=vocab, max_seq_len=seq_len, remat="full", **NUMERICS)
        data = DataConfig()
        train = TrainConfig(steps=20_000, eval_every=1000, eval_batches=20, sample_every=2000, checkpoint_every=1000,
                            log_every=10)
    else:  # reduced size for CPU runs and CI: same family (GQA, tied embeddings), dtypes and optimizer
        vocab, seq_len, batch = 512, 64, 8
        model = tiny(depth, vocab_size=vocab, seq_len=seq_len, family="llama", tie_embeddings=True, **NUMERICS)
        model = dataclasses.replace(model, n_heads=2 * model.n_heads, n_kv_heads=model.n_heads,
                                    head_dim=model.d_model // (2 * model.n_heads))
        data = DataConfig(max_documents=3000)
        train = TrainConfig(steps=20, eval_every=10, eval_batches=4, sample_every=0, checkpoint_every=10, log_every=5)
    return Config(
        name="llama_1b" if depth is None else f"llama_1b-depth{depth}",
        data=data,
        tokenizer=TokenizerConfig(vocab_size=vocab),
        pipeline=PipelineConfig(seq_len=seq_len, batch_size=batch, seed=0),
        model=model,
        mesh=MeshConfig(data=1, fsdp=-1, tensor=1),
        optim=OptimConfig(lr=3e-4 if depth is None else 3e-3, warmup_steps=1000 if depth is None else 5,
                          schedule="cosine", min_lr_ratio=0.1, weight_decay=0.1),
        train=train,
    )
