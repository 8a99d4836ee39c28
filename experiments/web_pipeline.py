"""Web data end to end: fetch real pages (Debian HTML docs, SpamAssassin e-mails), pack them as WARC
with planted cases, run the FineWeb-style pipeline, print the per-stage stats table.

    python experiments/web_pipeline.py [--out DIR] [--workers N] [--pages N] [--engine local|ray]
        [--set quality.c4=false ...]

The output folder's `docs/` is a JSONL source for tokenization: `jsonl:DIR/docs`, or
`jaxllm.data.web.register_output("web", DIR)` to use it by the name `web`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from jaxllm.config import override
from jaxllm.data.web import RecipeConfig, WebConfig, run_pipeline
from jaxllm.data.web.recipe import build_warcs


@dataclasses.dataclass(frozen=True)
class WebExperiment:
    """The pipeline config plus which real pages to feed it."""
    web: WebConfig = dataclasses.field(default_factory=WebConfig)
    recipe: RecipeConfig = dataclasses.field(default_factory=RecipeConfig)
    num_workers: int = 0                # 0 = all cores


def config() -> WebExperiment:
    return WebExperiment()


def run(out_dir: str | Path, cfg: WebExperiment | None = None) -> dict:
    """Build the WARC input under out_dir/input, run the pipeline into out_dir/web; returns the stats."""
    cfg = cfg or config()
    out = Path(out_dir)
    warcs = build_warcs(cfg.recipe, out / "input")
    return run_pipeline(cfg.web, warcs, out / "web", num_workers=cfg.num_workers or os.cpu_count() or 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/web_pipeline")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--pages", type=int, default=None, help="pages per source (0 = all)")
    ap.add_argument("--engine", choices=("local", "ray"), default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override, e.g. web.quality.c4=false or recipe.sources=postgresql,spam")
    args = ap.parse_args(argv)
    cfg = config()
    sets = list(args.set)
    if args.pages is not None:
        sets.append(f"recipe.pages_per_source={args.pages}")
    if args.engine:
        sets.append(f"web.engine={args.engine}")
    if args.workers:
        sets.append(f"num_workers={args.workers}")
    cfg = override(cfg, sets)
    stats = run(args.out, cfg)
    print((Path(args.out) / "web" / "stats.md").read_text())
    print(json.dumps({k: stats[k] for k in ("docs_in", "docs_out", "bytes_in", "bytes_out")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
