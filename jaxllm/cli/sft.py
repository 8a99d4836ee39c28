"""`jaxllm sft list | generate NAME | show FILE`: SFT conversation generators and a look at rendered data."""
from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sft", help="generate SFT conversations and inspect how they render",
        description="Seeded generators write conversation JSONL ({\"messages\": [...]} per line) for supervised "
                    "finetuning; `show` renders a file with a chat template and marks what is trained on.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n  jaxllm sft list\n  jaxllm sft generate identity --out data/identity.jsonl -n 300 --seed 0\n"
               "  jaxllm sft generate arithmetic --out data/arith_test.jsonl -n 200 --split test "
               "--option max_digits=3 --option style=answer_first\n"
               "  jaxllm sft generate messages --option path=mine.jsonl --out data/mine.jsonl\n"
               "  jaxllm sft show data/identity.jsonl --tokenizer runs/tok -n 2")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    s = p.add_subparsers(dest="sft_command", metavar="SUBCOMMAND")

    lst = s.add_parser("list", help="the generators and what each teaches")
    lst.set_defaults(func=list_command)

    gen = s.add_parser("generate", help="write conversations from a generator to JSONL")
    gen.add_argument("name", help="generator name (see `jaxllm sft list`)")
    gen.add_argument("--out", required=True, help="output .jsonl file")
    gen.add_argument("-n", type=int, default=None, help="number of conversations (default: the generator's)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--split", choices=("train", "test"), default="train", help="held-out problems: test")
    gen.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="generator option, e.g. max_digits=3, style=answer_first, name=my-model (repeatable)")
    gen.set_defaults(func=generate_command)

    show = s.add_parser("show", help="render conversations of a file; [brackets] mark trained tokens")
    show.add_argument("file")
    show.add_argument("--tokenizer", default="cl100k_base",
                      help="tokenizer directory or encoding name (an encoding gets our special tokens appended)")
    show.add_argument("--template", default="jaxllm", help="chat template: jaxllm, video, chatml, smollm2")
    show.add_argument("-n", type=int, default=2, help="conversations to show")
    show.set_defaults(func=show_command)


def _options(pairs: list[str]) -> dict:
    from jaxllm.data.generators import option_value

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"jaxllm sft: --option {pair!r} must look like KEY=VALUE")
        out[key] = option_value(value)
    return out


def _errors(fn):
    def wrapper(args) -> int:
        from jaxllm.data.sources import DataError
        try:
            return fn(args)
        except DataError as e:
            print(f"jaxllm sft: {e}", file=sys.stderr)
            return 2
    return wrapper


def list_command(args) -> int:
    from jaxllm.data.generators import generator_names, get_generator

    for name in generator_names():
        doc = (get_generator(name).__doc__ or "").strip().splitlines()
        print(f"{name:28s} {doc[0] if doc else ''}")
    return 0


@_errors
def generate_command(args) -> int:
    from jaxllm.data.generators import generate, write_jsonl

    convs = generate(args.name, args.n, seed=args.seed, split=args.split, **_options(args.option))
    path = write_jsonl(convs, args.out)
    print(f"wrote {len(convs)} {args.name} conversations ({args.split} split, seed {args.seed}) to {path}")
    return 0


@_errors
def show_command(args) -> int:
    from jaxllm.data.chat import read_jsonl, render
    from jaxllm.tokenizer import ENCODINGS, load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    if args.tokenizer in ENCODINGS:  # OpenAI's ranks plus our chat/tool special tokens after them
        from jaxllm.tokenizer import SPECIAL_TOKENS, Tokenizer
        extra = {t: tok.n_vocab + i for i, t in enumerate(t for t in SPECIAL_TOKENS if t not in tok.special_ids)}
        tok = Tokenizer(tok.ranks, {**tok.special_ids, **extra}, pattern=tok.pattern, name=tok.name + "+chat", bos=tok.bos)
    shown = 0
    for where, conv in read_jsonl(args.file):
        if shown >= args.n:
            break
        ids, mask = render(conv, tok, args.template, where)
        text, prev = [], 0
        for i, m in zip(ids, mask):
            if m != prev:
                text.append("[" if m else "]")
            text.append(tok.decode([i]))
            prev = m
        text.append("]" if prev else "")
        print(f"--- {where}: {len(ids)} tokens, {sum(mask)} trained")
        print("".join(text))
        shown += 1
    return 0
