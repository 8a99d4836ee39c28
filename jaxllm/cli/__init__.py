"""`jaxllm` command line: one subcommand per module in this package, each with `add_parser(subparsers)`."""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand modules (jaxllm/cli/<name>.py); each registers its parser and sets `func(args) -> int`
COMMANDS = ("run", "data", "tokenizer", "sample", "sft", "web", "chat", "serve", "eval", "plan", "launch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxllm",
        description="jaxllm: build a chat model end to end in JAX (web data → tokenizer → pretraining → "
                    "SFT → RL → RLHF → evaluation and serving).",
        epilog="Examples:\n  jaxllm run speedrun\n  jaxllm run experiments/speedrun.py --set train.steps=100\n"
               "  jaxllm run runs/speedrun-20261122-010203        (resume)\n"
               "  jaxllm tokenizer inspect --encoding cl100k_base \"hello world\"\n  jaxllm data fetch",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"jaxllm.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"jaxllm.cli.{name}":
                continue  # this command is not part of this build
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the process entry point: before jax is imported
        from jaxllm.allocator import reexec_under_tcmalloc

        reexec_under_tcmalloc()
    from jaxllm.config import ConfigError
    from jaxllm.data.sources import DataError
    from jaxllm.fetch import FetchError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"jaxllm: config error: {e}", file=sys.stderr)
        return 2
    except (DataError, FetchError) as e:
        print(f"jaxllm: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxllm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
