"""`jaxllm eval RUN_OR_MODEL --tasks mmlu,boolq --limit N [--shots K] [--out FILE]`: print a table, write JSON."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

STAGE_ORDER = ("rlhf", "rl", "sft", "pretrain")  # the latest trained stage of a run is evaluated by default


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a run directory or a pretrained model on task suites",
        description="Scores multiple-choice tasks by option log-likelihood (few-shot text for base models, chat "
                    "format for chat models), generative tasks by checked answers, bits per byte on held-out text, "
                    "and behaviour checks. Prints a table with chance levels and writes the full JSON.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n  jaxllm eval smollm2-135m-instruct --tasks mmlu --limit 50\n"
               "  jaxllm eval runs/speedrun-20261122-010203 --tasks bpb,piqa,boolq --limit 200 --shots 5\n"
               "  jaxllm eval smollm2-135m-instruct --tasks arithmetic,9.11-vs-9.9 --limit 20\n  jaxllm eval --list")
    p.add_argument("model", nargs="?", help="run directory, pretrained name (smollm2-135m-instruct), hf:owner/name, "
                                            ".gguf file or HF checkpoint directory")
    p.add_argument("--tasks", default="mmlu", help="comma-separated task names (see --list)")
    p.add_argument("--limit", type=int, default=None, help="examples per task (default: all; 50 for generative)")
    p.add_argument("--shots", type=int, default=None, help="few-shot examples (default: 5 for base, 0 for chat models)")
    p.add_argument("--style", choices=("cloze", "letter"), default="cloze",
                   help="multiple choice: score option texts (cloze, acc_norm) or listed letters (letter, acc)")
    p.add_argument("--prompt", choices=("auto", "base", "chat"), default="auto",
                   help="prompt as a base model (raw few-shot text) or through the chat template")
    p.add_argument("--stage", default=None, help="run directory: which stage's checkpoint (default: the latest)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-tokens", type=int, default=2048, help="tokens per scoring batch")
    p.add_argument("--out", default=None, help="JSON file (default: <run>/eval/<tasks>.json or eval-<model>.json)")
    p.add_argument("--list", action="store_true", help="list the tasks and exit")
    p.set_defaults(func=eval_command)


def load_run(run_dir: Path, stage: str | None = None):
    """An EvalModel from a run directory: its tokenizer and the latest (or named) stage's parameters."""
    import dataclasses

    from jaxllm.eval.model import from_parts
    from jaxllm.recipes.experiment import open_run
    from jaxllm.recipes.pretrain import load_params
    from jaxllm.tokenizer import Tokenizer

    cfg, run_dir = open_run(run_dir)
    tok = Tokenizer.load(run_dir / "tokenizer")
    stages = [stage] if stage else [s for s in STAGE_ORDER if (run_dir / s / "checkpoints").exists()]
    if not stages or not (run_dir / stages[0] / "checkpoints").exists():
        raise FileNotFoundError(f"{run_dir}: no checkpoints for stage {stage or 'any of ' + ', '.join(STAGE_ORDER)} "
                                f"(expected {run_dir}/<stage>/checkpoints); run the experiment first")
    model_cfg = cfg.model if cfg.model.vocab_size == tok.n_vocab else dataclasses.replace(cfg.model, vocab_size=tok.n_vocab)
    optim = getattr(getattr(cfg, stages[0], None), "optim", cfg.optim)  # a stage's own optimizer (e.g. cfg.sft.optim)
    params = load_params(run_dir / stages[0], model_cfg, optim, cfg.mesh)
    return from_parts(f"{run_dir.name}/{stages[0]}", model_cfg, params, tok,
                      chat_template=None if stages[0] == "pretrain" else "jaxllm")


def load_model(spec: str, stage: str | None = None):
    """A run directory (has config.json) or anything jaxllm.model.hub.load_pretrained accepts."""
    from jaxllm.eval.model import from_pretrained

    if (Path(spec) / "config.json").exists() and not (Path(spec) / "model.safetensors").exists() \
            and not (Path(spec) / "model.safetensors.index.json").exists():
        return load_run(Path(spec), stage)
    from jaxllm.model.hub import load_pretrained
    return from_pretrained(load_pretrained(spec))


def eval_command(args) -> int:
    from jaxllm.eval.harness import evaluate, format_table, known_tasks, summary_rows, write_json

    if args.list:
        for name, desc in known_tasks().items():
            print(f"{name:16s} {desc}")
        return 0
    if not args.model:
        print("jaxllm eval: give a run directory or model name (see --help)", file=sys.stderr)
        return 2
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in known_tasks()]
    if unknown:
        print(f"jaxllm eval: unknown task(s) {', '.join(unknown)}; known: {', '.join(known_tasks())}", file=sys.stderr)
        return 2
    try:
        model = load_model(args.model, args.stage).as_kind(args.prompt)
    except (FileNotFoundError, ValueError) as e:
        print(f"jaxllm eval: {e}", file=sys.stderr)
        return 2
    report = evaluate(model, tasks, limit=args.limit, shots=args.shots, style=args.style, seed=args.seed,
                      batch_tokens=args.batch_tokens)
    report["args"] = {k: v for k, v in vars(args).items() if k != "func"}
    print(f"{model.name} ({model.kind} prompting)")
    print(format_table(summary_rows(report)))
    if args.out:
        out = Path(args.out)
    elif (Path(args.model) / "config.json").exists():
        out = Path(args.model) / "eval" / f"{'_'.join(tasks)}.json"
    else:
        out = Path(f"eval-{Path(args.model).name.replace(':', '_').replace('/', '_')}.json")
    print(f"wrote {write_json(report, out)}")
    return 0
