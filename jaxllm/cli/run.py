"""`jaxllm run EXPERIMENT | RUN_DIR | RUN_DIR/config.json [--set key=value ...]`."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run", help="start or resume an experiment run",
        description="Start a new run of an experiment (a name in experiments/ or a .py file), resume a run "
                    "directory where it stopped, or start a fresh run from a saved config.json.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n  jaxllm run speedrun --set train.steps=200 --set model.n_layers=2\n"
               "  jaxllm run runs/speedrun-20261122-010203\n  jaxllm run runs/speedrun-20261122-010203/config.json")
    p.add_argument("target", help="experiment name or file, run directory, or config.json")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set optim.lr=1e-3 (type-checked)")
    p.add_argument("--depth", type=int, default=None,
                   help="the one dial: passed as config(depth=N) to experiments that take it")
    p.add_argument("--run-dir", default=None, help="directory for a new run (default runs/<name>-<timestamp>)")
    p.add_argument("--stage", action="append", default=[], help="run only these stages (again)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run_command)


def run_command(args) -> int:
    from jaxllm.config import ConfigError, to_json
    from jaxllm.recipes.experiment import load_experiment, open_run, run_stages, start_run

    target = Path(args.target)
    kwargs = {"depth": args.depth} if args.depth is not None else {}
    if target.is_dir():
        if args.overrides or kwargs:
            raise ConfigError(f"{target} is an existing run: it resumes with its saved config; "
                              f"to change settings start a new run from {target / 'config.json'} with --set")
        cfg, run_dir = open_run(target)
        print(f"[jaxllm] resuming run {run_dir}")
    else:
        cfg = load_experiment(args.target, tuple(args.overrides), **kwargs)
        if args.print_config:
            print(to_json(cfg))
            return 0
        run_dir = start_run(cfg, args.run_dir)
        print(f"[jaxllm] new run {run_dir}")
    print(to_json(cfg))
    run_stages(cfg, run_dir, tuple(args.stage))
    report = run_dir / "report.md"
    print(f"[jaxllm] run finished: {run_dir}" + (f" (report: {report})" if report.exists() else ""))
    return 0
