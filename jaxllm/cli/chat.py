"""`jaxllm chat MODEL_OR_RUN_DIR [--prompt TEXT] [--system TEXT]`: talk to a model in the terminal, streaming."""
from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "chat", help="chat with a model (pretrained name or run directory), streaming",
        description="Interactive chat with streaming replies, or one turn with --prompt. MODEL is a pretrained name "
                    "(smollm2-135m-instruct), hf:owner/name, a .gguf file, a HF checkpoint folder or a jaxllm run "
                    "directory (its newest checkpoint). In the interactive chat, /reset starts over, /exit quits.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='Examples:\n  jaxllm chat smollm2-135m-instruct --prompt "What is the capital of France?"\n'
               "  jaxllm chat runs/speedrun-20261122-010203 --temperature 0.7\n"
               '  jaxllm chat smollm2-135m-instruct --tools --prompt "Use python to compute 2**100"')
    p.add_argument("model", help="pretrained model name, hf:owner/name, .gguf file, HF folder or run directory")
    p.add_argument("--prompt", default=None, help="one user turn: print the reply and exit")
    p.add_argument("--system", default=None, help="system prompt (default: the model template's)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=512, help="reply length limit")
    p.add_argument("--max-len", type=int, default=4096, help="context length (prompt + reply)")
    p.add_argument("--tools", action="store_true", help="run python/search tool calls the model writes")
    p.set_defaults(func=chat_command)


def make_tools(model, enabled: bool):
    """Tools for a model when asked (checks the sandbox once, loudly), else None."""
    if not enabled:
        return None
    from jaxllm.infer.sandbox import check_sandbox
    from jaxllm.infer.tools import Tools

    check_sandbox()
    return Tools(template=model.template)


def chat_command(args) -> int:
    from jaxllm.cli.loader import load_model
    from jaxllm.infer.engine import Engine, EngineConfig, SamplingParams

    model = load_model(args.model)
    if model.template is None:
        print(f"jaxllm chat: {model.name} has no chat template; use `jaxllm serve` and /v1/completions",
              file=sys.stderr)
        return 2
    # one turn: the scanned layers compile ~4x faster; a conversation: unrolled layers decode faster on CPU
    engine = Engine(model, EngineConfig(max_batch=1, max_len=args.max_len, unroll_layers=args.prompt is None),
                    tools=make_tools(model, args.tools))
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed, tools=args.tools)
    head = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict] = []

    def turn(text: str) -> None:
        history.append({"role": "user", "content": text})
        req = engine.submit(model.prompt_ids(head + history), params)
        for delta in req.stream():
            print(delta, end="", flush=True)
        done = req.result()
        print()
        if done.finish_reason == "error":
            raise RuntimeError(done.error)
        history.append({"role": "assistant", "content": done.text})

    try:
        if args.prompt is not None:
            turn(args.prompt)
            return 0
        print(f"[jaxllm] chatting with {model.name} (context {engine.max_len} tokens); /reset, /exit", file=sys.stderr)
        while True:
            try:
                text = input("> ").strip()
            except EOFError:
                return 0
            if text in ("/exit", "/quit"):
                return 0
            if text == "/reset":
                history.clear()
                continue
            if text:
                try:
                    turn(text)
                except ValueError as e:  # e.g. the conversation outgrew the context
                    history.pop()
                    print(f"jaxllm chat: {e} (/reset starts over)", file=sys.stderr)
    finally:
        engine.close()
