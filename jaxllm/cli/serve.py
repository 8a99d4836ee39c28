"""`jaxllm serve MODEL_OR_RUN_DIR --port N`: an OpenAI-compatible server with a web chat page at /."""
from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API (+ a web chat page)",
        description="Serve /v1/models, /v1/chat/completions and /v1/completions (streaming and not) and a chat page "
                    "at /. Concurrent requests are batched into the same decode steps (--max-batch slots).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n  jaxllm serve smollm2-135m-instruct --port 8000\n"
               "  jaxllm serve runs/speedrun-20261122-010203 --port 8001 --max-batch 16\n"
               "Then: OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='none') or open http://127.0.0.1:8000/")
    p.add_argument("model", help="pretrained model name, hf:owner/name, .gguf file, HF folder or run directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 = every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=8, help="requests decoded together")
    p.add_argument("--max-len", type=int, default=2048, help="context per request (prompt + completion)")
    p.add_argument("--max-tokens", type=int, default=512, help="default completion length")
    p.add_argument("--tools", action="store_true",
                   help="run tool calls by default (a request can still set jaxllm_tools: false)")
    p.add_argument("--verbose", action="store_true", help="log every HTTP request")
    p.set_defaults(func=serve_command)


def serve_command(args) -> int:
    from jaxllm.cli.chat import make_tools
    from jaxllm.cli.loader import load_model
    from jaxllm.infer.engine import Engine, EngineConfig
    from jaxllm.infer.server import make_server

    model = load_model(args.model)
    tools = make_tools(model, args.tools) if model.template is not None else None
    engine = Engine(model, EngineConfig(max_batch=args.max_batch, max_len=args.max_len, max_tokens=args.max_tokens),
                    tools=tools)
    server = make_server(model, engine, args.host, args.port, tools_default=args.tools, verbose=args.verbose)
    host, port = server.server_address[:2]
    print(f"[jaxllm] serving {model.name} on http://{host}:{port}/ (OpenAI API at http://{host}:{port}/v1)",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        engine.close()
    return 0
