"""GPT-2 XL (1.5B) pretraining at pod scale: bf16 compute, float32 master weights and AdamW, FSDP over
every chip. Plan it, then launch it (docs/scale.md):

    jaxllm plan gpt2_1p5b --hardware h100 --chips 8
    jaxllm launch slurm --nodes 1 -- run gpt2_1p5b --run-dir runs/gpt2_1p5b > job.sbatch && sbatch job.sbatch
    jaxllm run gpt2_1p5b --depth 1 --set train.steps=20     # the same recipe shrunk to a CPU-sized model

Full size: 48 layers, d_model 1600, 25 heads, 1024 tokens, 512 sequences per step (~0.5M tokens), the
GPT-2 byte-level vocabulary size (50257; the BPE is trained on our corpus with the GPT-2 split pattern).
`depth=N` keeps the family, dtypes and optimizer and takes the model and data sizes of the CPU speedrun.
"""
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
        model = get_preset("gpt2-1.5b", remat="full", **NUMERICS)
        vocab, seq_len, batch, steps, data = 50257, 1024, 512, 20_000, DataConfig()
        train = TrainConfig(steps=steps, eval_every=1000, eval_batches=20, sample_every=2000, checkpoint_every=1000,
                            log_every=10)
    else:  # reduced size for CPU runs and CI
        vocab, seq_len, batch, steps = 512, 64, 8, 20
        model = tiny(depth, vocab_size=vocab, seq_len=seq_len, family="gpt2", **NUMERICS)
        data = DataConfig(max_documents=3000)
        train = TrainConfig(steps=steps, eval_every=10, eval_batches=4, sample_every=0, checkpoint_every=10, log_every=5)
    return Config(
        name="gpt2_1p5b" if depth is None else f"gpt2_1p5b-depth{depth}",
        data=data,
        tokenizer=TokenizerConfig(vocab_size=vocab, pattern="gpt2"),
        pipeline=PipelineConfig(seq_len=seq_len, batch_size=batch, seed=0),
        model=model,
        mesh=MeshConfig(data=1, fsdp=-1, tensor=1),  # ZeRO-3 style: params, grads and moments split over all chips
        optim=OptimConfig(lr=2e-4 if depth is None else 3e-3, warmup_steps=700 if depth is None else 5,
                          schedule="cosine", min_lr_ratio=0.1, weight_decay=0.1),
        train=train,
    )
