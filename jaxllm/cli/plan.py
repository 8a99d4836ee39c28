"""`jaxllm plan EXPERIMENT --hardware NAME`: per-device memory, micro-batch / accumulation that fits,
step time and tokens/s at a stated MFU (see jaxllm.recipes.plan and docs/scale.md)."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    from jaxllm.recipes.plan import ACCELERATORS

    p = sub.add_parser(
        "plan", help="estimate memory, batch split and step time of an experiment on an accelerator",
        description="Plan an experiment on a known accelerator: per-device memory for params, optimizer state and "
                    "activations (with and without rematerialisation), the micro-batch and gradient accumulation "
                    "that fit, and step time and tokens/s at a stated MFU.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n  jaxllm plan experiments/speedrun.py --hardware h100\n"
               "  jaxllm plan gpt2_1p5b --hardware h100 --chips 8\n  jaxllm plan llama_1b --hardware tpu-v5p --chips 64\n"
               "  jaxllm plan speedrun_smoke --check-cpu     (compare with XLA's memory analysis here)\n\n"
               "hardware: " + ", ".join(ACCELERATORS))
    p.add_argument("target", help="experiment name or file, or a run's config.json")
    p.add_argument("--hardware", default="h100", help="accelerator name (default h100)")
    p.add_argument("--chips", type=int, default=None, help="number of chips (default: one host's worth)")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation assumed for step time (default 0.4)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--depth", type=int, default=None, help="passed as config(depth=N)")
    p.add_argument("--check-cpu", action="store_true",
                   help="also compile the train step on this machine's first CPU device and print XLA's memory analysis")
    p.set_defaults(func=plan_command)


def plan_command(args) -> int:
    import dataclasses

    from jaxllm.config import ConfigError
    from jaxllm.recipes.experiment import load_experiment
    from jaxllm.recipes.plan import compiled_memory, format_plan, get_accelerator, memory_per_device, plan

    kwargs = {"depth": args.depth} if args.depth is not None else {}
    cfg = load_experiment(args.target, tuple(args.overrides), **kwargs)
    try:
        acc = get_accelerator(args.hardware)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    chips = args.chips or acc.chips_per_host
    model = dataclasses.replace(cfg.model, max_seq_len=max(cfg.model.max_seq_len, cfg.pipeline.seq_len))
    try:
        r = plan(model, cfg.pipeline.seq_len, cfg.pipeline.batch_size, cfg.mesh, acc, chips, args.mfu)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    print(format_plan(cfg.name, model, cfg.pipeline.seq_len, cfg.pipeline.batch_size, acc, chips, args.mfu, r))
    if args.check_cpu:
        import jax

        from jaxllm.parallel import MeshConfig

        one = MeshConfig(data=1, fsdp=1, tensor=1)
        xla = compiled_memory(model, cfg.pipeline.seq_len, cfg.pipeline.batch_size, one, cfg.train.grad_accum,
                              devices=jax.devices()[:1])
        est = memory_per_device(model, cfg.pipeline.seq_len, cfg.pipeline.batch_size // cfg.train.grad_accum,
                                (1, 1, 1), cfg.train.grad_accum)
        print(f"\nCPU check (1 device, batch {cfg.pipeline.batch_size}, accumulation {cfg.train.grad_accum}, "
              f"remat={model.remat}): XLA memory analysis {xla['peak'] / 1e6:,.1f} MB "
              f"(arguments {xla['arguments'] / 1e6:,.1f}, temporaries {xla['temp'] / 1e6:,.1f}); "
              f"estimate {est['total'] / 1e6:,.1f} MB ({est['total'] / xla['peak']:.2f}x)")
    return 0
