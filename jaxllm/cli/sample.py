"""`jaxllm sample RUN_DIR --prompt TEXT`: sample continuations from a run's latest checkpoint."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="sample text from a run's latest pretraining checkpoint",
                       description="Load the newest checkpoint of a run directory and print continuations of a prompt.")
    p.add_argument("run_dir", help="a run directory (with config.json, tokenizer/ and pretrain/checkpoints)")
    p.add_argument("--prompt", default="", help="text to continue (the BOS token is put before it)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=50, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1.0 = off")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stage", default="pretrain", help="which stage's checkpoints to load (default pretrain)")
    p.set_defaults(func=sample_command)


def sample_command(args) -> int:
    from pathlib import Path

    from jaxllm.config import ConfigError
    from jaxllm.recipes.experiment import open_run
    from jaxllm.recipes.pretrain import load_params, sample_texts
    from jaxllm.recipes.stages import model_for_tokenizer
    from jaxllm.tokenizer import Tokenizer

    cfg, run_dir = open_run(args.run_dir)
    tok = Tokenizer.load(run_dir / "tokenizer")
    model_cfg = model_for_tokenizer(cfg.model, tok)
    n_prompt = len(tok.encode(args.prompt)) + 1
    if n_prompt + args.max_tokens > model_cfg.max_seq_len:
        raise ConfigError(f"prompt ({n_prompt} tokens) + --max-tokens {args.max_tokens} exceeds the model's context "
                          f"of {model_cfg.max_seq_len} tokens; shorten the prompt or lower --max-tokens")
    stage_dir = Path(run_dir) / args.stage
    if not (stage_dir / "checkpoints").exists():
        raise ConfigError(f"{stage_dir}/checkpoints does not exist; has the {args.stage} stage run?")
    params = load_params(stage_dir, model_cfg, cfg.optim, cfg.mesh)
    texts = sample_texts(params, model_cfg, tok, [args.prompt] * args.num_samples, args.max_tokens,
                         args.temperature, args.top_k, args.top_p, seed=args.seed)
    for i, text in enumerate(texts):
        if args.num_samples > 1:
            print(f"--- sample {i + 1}")
        print(text)
    return 0
