"""OpenAI-compatible HTTP server over the engine: /v1/models, /v1/chat/completions, /v1/completions.

Standard library only (`http.server`, one thread per connection); every request goes to the one
shared Engine, whose scheduler batches concurrent requests into the same decode steps. Streaming
responses are server-sent events (`data: {chunk}` ... `data: [DONE]`). Bad requests get a 4xx with
an OpenAI-style body `{"error": {"message", "type", "param", "code"}}` and the server keeps
serving. `GET /` is a small streaming chat page (static/chat.html).

    server = make_server(model, engine, "127.0.0.1", 8000); server.serve_forever()
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional

from jaxllm.infer.engine import ChatModel, Engine, Request, SamplingParams

CHAT_PAGE = Path(__file__).parent / "static" / "chat.html"
MAX_BODY = 4 << 20  # bytes of request JSON


class ApiError(Exception):
    """A request the server refuses: HTTP status and the OpenAI error fields."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def _number(body: dict, name: str, default, kind=float, lo=None, hi=None):
    value = body.get(name, default)
    if value is None:
        return default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok or (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f" between {lo} and {hi}" if lo is not None and hi is not None else (f" >= {lo}" if lo is not None else "")
        raise ApiError(400, f"'{name}' must be {'an integer' if kind is int else 'a number'}{rng}, got {value!r}",
                       param=name, code="invalid_value")
    return kind(value)


def sampling_params(body: dict, tools_default: bool) -> SamplingParams:
    """SamplingParams from an OpenAI request body; ApiError(400) naming the bad parameter."""
    n = _number(body, "n", 1, int, 1)
    if n != 1:
        raise ApiError(400, "only n=1 is supported", param="n", code="invalid_value")
    for name, fine in (("logprobs", (None, False)), ("top_logprobs", (None, 0)), ("echo", (None, False)),
                       ("best_of", (None, 1)), ("suffix", (None, "")), ("logit_bias", (None, {}))):
        if body.get(name) not in fine:
            raise ApiError(400, f"'{name}' is not supported by this server", param=name, code="unsupported_parameter")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        max_tokens = _number({"max_tokens": max_tokens}, "max_tokens", None, int, 1)
    stop = body.get("stop")
    if stop is None:
        stop = ()
    elif isinstance(stop, str):
        stop = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stop = tuple(stop)
    else:
        raise ApiError(400, "'stop' must be a string or a list of strings", param="stop", code="invalid_value")
    tools = body.get("jaxllm_tools", tools_default)
    if not isinstance(tools, bool):
        raise ApiError(400, "'jaxllm_tools' must be true or false", param="jaxllm_tools", code="invalid_value")
    params = SamplingParams(
        max_tokens=max_tokens, temperature=_number(body, "temperature", 1.0, float, 0.0, 2.0),
        top_k=_number(body, "top_k", 0, int, 0), top_p=_number(body, "top_p", 1.0, float, 0.0, 1.0),
        seed=_number(body, "seed", None, int, 0, 2**32 - 1), stop=stop, tools=tools)
    try:
        params.check()
    except ValueError as e:
        raise ApiError(400, str(e), code="invalid_value") from None
    return params


def _messages(body: dict) -> list[dict]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages", code="invalid_value")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
            raise ApiError(400, f"messages[{i}] must be an object with role system, user or assistant",
                           param=f"messages[{i}]", code="invalid_value")
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            if any(not isinstance(p, dict) or p.get("type") != "text" for p in content):
                raise ApiError(400, f"messages[{i}]: only text content parts are supported",
                               param=f"messages[{i}].content", code="invalid_value")
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string", param=f"messages[{i}].content",
                           code="invalid_value")
        out.append({"role": "system" if m["role"] == "developer" else m["role"], "content": content})
    return out


def _prompt_ids(model: ChatModel, body: dict) -> list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return list(model.bos_prefix) + model.tokenizer.encode(prompt, allowed_special="none")
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and 0 <= t < model.cfg.vocab_size
                                                   for t in prompt):
        return list(prompt)
    raise ApiError(400, "'prompt' must be a string, or a list of token ids, (one prompt per request)",
                   param="prompt", code="invalid_value")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "ApiServer"

    def log_message(self, fmt, *args):  # quiet unless asked
        if self.server.verbose:
            super().log_message(fmt, *args)

    # ---- plumbing
    def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            raise ApiError(413 if length > MAX_BODY else 400, f"request body must be 0..{MAX_BODY} bytes")
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ApiError(400, f"We could not parse the JSON body of your request ({e}); send valid JSON.") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return body

    def _model(self, body: dict) -> ChatModel:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "'model' is required", param="model", code="missing_required_parameter")
        if name != self.server.model.name:
            raise ApiError(404, f"The model '{name}' does not exist; this server has '{self.server.model.name}'",
                           param="model", code="model_not_found")
        return self.server.model

    def _guard(self, fn) -> None:
        try:
            fn()
        except ApiError as e:
            self._send(e.status, e.body())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a bug must not take the server down: report it as a 500
            self._send(500, ApiError(500, f"{type(e).__name__}: {e}", kind="server_error").body())

    # ---- routes
    def do_GET(self) -> None:  # noqa: N802
        self._guard(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._guard(self._post)

    def _get(self) -> None:
        path = self.path.split("?")[0]
        if path in ("/", "/index.html"):
            return self._send(200, CHAT_PAGE.read_bytes(), "text/html; charset=utf-8")
        if path == "/health":
            return self._send(200, {"status": "ok", **self.server.engine.stats})
        card = {"id": self.server.model.name, "object": "model", "created": self.server.created,
                "owned_by": "jaxllm", "context_length": self.server.engine.max_len}
        if path == "/v1/models":
            return self._send(200, {"object": "list", "data": [card]})
        if path == f"/v1/models/{self.server.model.name}":
            return self._send(200, card)
        if path.startswith("/v1/models/"):
            raise ApiError(404, f"The model '{path[len('/v1/models/'):]}' does not exist", code="model_not_found")
        raise ApiError(404, f"no route {path}; see /v1/models, /v1/chat/completions, /v1/completions",
                       code="not_found")

    def _post(self) -> None:
        path = self.path.split("?")[0]
        if path not in ("/v1/chat/completions", "/v1/completions"):
            raise ApiError(404, f"no route {path}; POST /v1/chat/completions or /v1/completions", code="not_found")
        body = self._body()
        model = self._model(body)
        chat = path.endswith("chat/completions")
        params = sampling_params(body, self.server.tools_default)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise ApiError(400, "'stream' must be true or false", param="stream", code="invalid_value")
        try:
            ids = model.prompt_ids(_messages(body)) if chat else _prompt_ids(model, body)
            req = self.server.engine.submit(ids, params)
        except ApiError:
            raise
        except ValueError as e:  # includes malformed conversations (ConversationError)
            code = "context_length_exceeded" if "context" in str(e) else "invalid_value"
            raise ApiError(400, str(e), param="messages" if chat else "prompt", code=code) from None
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        if stream:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return self._stream(req, rid, chat, include_usage)
        done = req.result()
        if done.finish_reason == "error":
            raise ApiError(500, f"generation failed: {done.error}", kind="server_error")
        choice = ({"index": 0, "message": {"role": "assistant", "content": done.text}, "logprobs": None,
                   "finish_reason": done.finish_reason} if chat else
                  {"index": 0, "text": done.text, "logprobs": None, "finish_reason": done.finish_reason})
        self._send(200, {"id": rid, "object": "chat.completion" if chat else "text_completion",
                         "created": int(time.time()), "model": model.name, "choices": [choice],
                         "usage": _usage(done.prompt_tokens, done.completion_tokens)})

    def _stream(self, req: Request, rid: str, chat: bool, include_usage: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        created, name = int(time.time()), self.server.model.name

        def event(delta: Optional[str], finish: Optional[str] = None, first: bool = False, usage=None) -> None:
            if chat:
                d = {"role": "assistant", "content": ""} if first else ({} if delta is None else {"content": delta})
                choices = [{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}]
                obj = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": name,
                       "choices": [] if usage else choices}
            else:
                obj = {"id": rid, "object": "text_completion", "created": created, "model": name,
                       "choices": [] if usage else [{"index": 0, "text": delta or "", "logprobs": None,
                                                     "finish_reason": finish}]}
            if usage:
                obj["usage"] = usage
            self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
            self.wfile.flush()

        try:
            if chat:
                event(None, first=True)
            for delta in req.stream():
                event(delta)
            done = req.result()
            if done.finish_reason == "error":
                err = ApiError(500, f"generation failed: {done.error}", kind="server_error").body()
                self.wfile.write(b"data: " + json.dumps(err).encode() + b"\n\n")
            else:
                event(None, finish=done.finish_reason)
                if include_usage:
                    event(None, usage=_usage(done.prompt_tokens, done.completion_tokens))
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            req.cancel()  # the client left: free its slot


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, addr, model: ChatModel, engine: Engine, tools_default: bool = False, verbose: bool = False):
        self.model, self.engine, self.tools_default, self.verbose = model, engine, tools_default, verbose
        self.created = int(time.time())
        super().__init__(addr, Handler)


def make_server(model: ChatModel, engine: Engine, host: str = "127.0.0.1", port: int = 8000,
                tools_default: bool = False, verbose: bool = False) -> ApiServer:
    """A bound server (port 0 picks a free one: see server.server_address); call serve_forever()."""
    return ApiServer((host, port), model, engine, tools_default, verbose)


def serve_in_thread(server: ApiServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="api-server", daemon=True)
    thread.start()
    return thread
