"""`jaxllm web run|recipe|stats`: the FineWeb-style pipeline from WARC files to clean JSONL documents."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _cfg(sets: list[str], engine: str | None):
    from jaxllm.config import override
    from jaxllm.data.web import WebConfig
    cfg = override(WebConfig(), sets)
    return override(cfg, [f"engine={engine}"]) if engine else cfg


def _run(args: argparse.Namespace) -> int:
    from jaxllm.data.web import PipelineError, RecipeConfig, run_pipeline
    from jaxllm.data.web.recipe import build_warcs
    cfg = _cfg(args.set, args.engine)
    inputs = list(args.inputs)
    out = Path(args.out)
    if args.recipe:
        recipe = RecipeConfig() if args.pages is None else RecipeConfig(pages_per_source=args.pages)
        inputs += [str(p) for p in build_warcs(recipe, out / "input")]
    if not inputs:
        print("jaxllm web run: give WARC files/HTML folders, or --recipe to build real input", file=sys.stderr)
        return 2
    try:
        run_pipeline(cfg, inputs, out / "web" if args.recipe else out, args.workers or os.cpu_count() or 1)
    except PipelineError as e:
        print(f"jaxllm web run: {e}", file=sys.stderr)
        return 2
    print((out / "web" if args.recipe else out).joinpath("stats.md").read_text())
    return 0


def _recipe(args: argparse.Namespace) -> int:
    from jaxllm.config import override
    from jaxllm.data.web import RecipeConfig
    from jaxllm.data.web.recipe import build_warcs
    paths = build_warcs(override(RecipeConfig(), args.set), args.out)
    print("\n".join(str(p) for p in paths))
    return 0


def _stats(args: argparse.Namespace) -> int:
    path = Path(args.dir) / "stats.md"
    if not path.exists():
        print(f"jaxllm web stats: {path} does not exist; is {args.dir} a finished pipeline run?", file=sys.stderr)
        return 2
    print(path.read_text())
    return 0


def _web(args: argparse.Namespace) -> int:
    args.web_parser.print_help()
    return 2


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("web", help="web pages → clean, deduplicated, PII-free text (FineWeb-style)",
                              description=__doc__)
    p.set_defaults(func=_web, web_parser=p)
    sub = p.add_subparsers(dest="web_command", metavar="ACTION")
    r = sub.add_parser("run", help="run the pipeline on WARC files / HTML folders (or --recipe)")
    r.add_argument("inputs", nargs="*", help=".warc/.warc.gz files or folders of HTML")
    r.add_argument("--out", required=True, help="output folder (rerun to resume)")
    r.add_argument("--workers", type=int, default=0, help="processes / Ray CPUs (default: all cores)")
    r.add_argument("--engine", choices=("local", "ray"), default=None)
    r.add_argument("--recipe", action="store_true", help="fetch the real Debian/npm pages as input first")
    r.add_argument("--pages", type=int, default=None, help="with --recipe: pages per source")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. quality.c4=false, language.languages=en,de")
    r.set_defaults(func=_run)
    b = sub.add_parser("recipe", help="fetch real pages and write them as WARC files with planted cases")
    b.add_argument("--out", required=True)
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="e.g. pages_per_source=50, sources=postgresql,spam, num_shards=2")
    b.set_defaults(func=_recipe)
    s = sub.add_parser("stats", help="print the per-stage stats table of a finished run")
    s.add_argument("dir")
    s.set_defaults(func=_stats)
