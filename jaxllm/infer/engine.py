"""Continuous-batching generation engine: a preallocated KV cache of `max_batch` slots shared by requests.

Inside are pure jitted functions of arrays (`extend_slot`: run a chunk of tokens into one slot;
`decode_block`: up to 8 tokens for every slot in one dispatch; `sample_rows`: per-row sampling). Around them,
at the edge, a scheduler thread admits waiting requests into free slots between decode steps, so
concurrent requests share each decode step; text is streamed to each request's queue as it comes.

    engine = Engine(model)                       # model: ChatModel (params, cfg, tokenizer, template)
    req = engine.submit(prompt_ids, SamplingParams(max_tokens=64, temperature=0.0))
    for delta in req.stream(): print(delta, end="")

Shapes never depend on a request: prompt chunks and the attention window over the cache are
rounded up to powers of two (`bucket`), so a server compiles a handful of functions once.
"""
from __future__ import annotations

import codecs
import concurrent.futures
import dataclasses
import functools
import itertools
import queue
import threading
from typing import Any, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.infer.kv_cache import init_cache
from jaxllm.infer.sampling import mask_top_k, mask_top_p
from jaxllm.model import KVCache, ModelConfig, Transformer

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Sizes of the engine: cache slots, context per slot and shape buckets."""
    max_batch: int = 8  # decode slots: requests decoded together in one step
    max_len: int = 2048  # tokens per slot (prompt + completion + tool outputs); capped at the model's max_seq_len
    min_bucket: int = 64  # prompt chunks and attention windows are powers of two from this
    max_tokens: int = 512  # completion budget of a request that does not give one
    tool_workers: int = 4  # threads running tool calls (sandbox, search) while other rows decode
    unroll_layers: bool = True  # decode with per-layer params: on CPU a scan over layers copies each layer's weights
    weight_dtype: str = "float32"  # "bfloat16": matrices stored bf16, matmuls sum in float32 (faster on CPU)
    block: int = 8  # decode steps per dispatch (fewer Python round trips per token)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling: temperature 0 is greedy; top_k 0 and top_p 1 keep every token."""
    max_tokens: Optional[int] = None  # None: EngineConfig.max_tokens, cut to what the context has left
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: Optional[int] = None  # None: a random seed
    stop: tuple[str, ...] = ()  # texts that end the completion (not included)
    tools: bool = False  # run tool calls the model writes (needs Engine(tools=...))

    def check(self) -> None:
        """Raise ValueError naming the bad field and its valid range."""
        if self.max_tokens is not None and not (isinstance(self.max_tokens, int) and self.max_tokens >= 1):
            raise ValueError(f"max_tokens={self.max_tokens!r} must be an integer >= 1")
        if not 0.0 <= self.temperature <= 100.0:
            raise ValueError(f"temperature={self.temperature!r} must be between 0 and 100")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ValueError(f"top_k={self.top_k!r} must be an integer >= 0 (0 = off)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p!r} must be in (0, 1]")
        if self.seed is not None and not (isinstance(self.seed, int) and 0 <= self.seed < 2**32):
            raise ValueError(f"seed={self.seed!r} must be an integer in [0, 2**32)")
        if len(self.stop) > 8 or any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop must be up to 8 non-empty strings")


@dataclasses.dataclass
class ChatModel:
    """Everything the engine and server need to run one model."""
    name: str
    cfg: ModelConfig
    params: Any
    tokenizer: Any  # jaxllm Tokenizer or HFBPETokenizer: encode, decode_bytes, token_bytes, special_ids
    template: Any = "jaxllm"  # a jaxllm.data.chat template (name or ChatTemplate); None: no chat
    stop_ids: tuple[int, ...] = ()  # tokens that end a completion (end of turn, end of text)
    bos_prefix: tuple[int, ...] = ()  # put before a plain-text completion prompt (models trained with a BOS)

    def prompt_ids(self, messages: Sequence[dict], max_tokens: Optional[int] = None) -> list[int]:
        """Token ids of a chat (ending with a user message) plus the assistant header."""
        from jaxllm.data.chat import render_prompt
        if self.template is None:
            raise ValueError(f"model {self.name!r} has no chat template: use plain completions")
        return render_prompt({"messages": list(messages)}, self.tokenizer, self.template, where="messages",
                             max_tokens=max_tokens)


# ------------------------------------------------------------------------------ pure functions
def bucket(n: int, minimum: int, cap: int) -> int:
    """The power of two >= n (at least `minimum`, at most `cap`): one compiled shape per bucket."""
    size = max(minimum, 1 << max(n - 1, 0).bit_length())
    return min(size, cap)


def sample_rows(logits: Array, seeds: Array, counts: Array, temperature: Array, top_k: Array,
                top_p: Array) -> Array:
    """One token per row from logits [batch, vocab] with per-row settings [batch].

    Row i draws with key fold_in(key(seeds[i]), counts[i]), so a request samples the same tokens
    whatever else shares its batch. Greedy rows (temperature 0) take the argmax."""
    logits = logits.astype(jnp.float32)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def sampled(x):
        scaled = x / jnp.maximum(temperature, 1e-6)[:, None]
        filtering = jnp.any((top_k > 0) | (top_p < 1.0))
        scaled = jax.lax.cond(filtering, lambda s: jax.vmap(lambda r, k, p: mask_top_p(mask_top_k(r, k), p))(
            s, top_k, top_p), lambda s: s, scaled)
        keys = jax.vmap(lambda s, c: jax.random.fold_in(jax.random.key(s), c))(seeds, counts)
        return jax.vmap(lambda k, r: jax.random.categorical(k, r))(keys, scaled).astype(jnp.int32)

    drawn = jax.lax.cond(jnp.any(temperature > 0), sampled, lambda x: greedy, logits)
    return jnp.where(temperature > 0, drawn, greedy)


sample_rows_jit = jax.jit(sample_rows)  # compiled apart from the model steps: once per batch size


def _slot_view(buf: Array, slot: Array, window: int) -> Array:
    """Slot `slot`'s first `window` positions of a per-layer [batch, max_len, ...] buffer (or stacked [layers, batch, ...])."""
    lead = buf.ndim - 4  # 1 for a stacked cache
    return jax.lax.dynamic_slice(buf, (0,) * lead + (slot, 0, 0, 0), buf.shape[:lead] + (1, window) + buf.shape[-2:])


def _put_slot(buf: Array, view: Array, slot: Array) -> Array:
    return jax.lax.dynamic_update_slice(buf, view.astype(buf.dtype), (0,) * (buf.ndim - 4) + (slot, 0, 0, 0))


@functools.partial(jax.jit, static_argnames=("cfg", "window"), donate_argnames=("cache",))
def extend_slot(params, cfg: ModelConfig, cache: KVCache, tokens: Array, n_new: Array, slot: Array,
                start: Array, window: int) -> tuple[Array, KVCache]:
    """Feed tokens [1, P] (the first n_new real) into cache slot `slot` at positions start..

    Used for a prompt (start 0) and for tool output spliced into a running completion. Attention
    sees the slot's first `window` cache positions (start + P <= window). Returns the logits after
    the last real token [1, vocab] and the cache.
    """
    segments = (jnp.arange(tokens.shape[1]) < n_new)[None].astype(jnp.int32)
    view = jax.tree.map(lambda b: _slot_view(b, slot, window), (cache.k, cache.v))
    view = KVCache(*view, jnp.reshape(start, (1,)).astype(jnp.int32))
    logits, view = Transformer(cfg).apply({"params": params}, tokens, segment_ids=segments, cache=view,
                                          logits_at=jnp.reshape(n_new - 1, (1, 1)))
    k, v = jax.tree.map(lambda b, w: _put_slot(b, w, slot), (cache.k, cache.v), (view.k, view.v))
    return logits[:, 0], KVCache(k, v, cache.lengths.at[slot].set(view.lengths[0]))


@functools.partial(jax.jit, static_argnames=("cfg", "window", "steps"), donate_argnames=("cache",))
def decode_block(params, cfg: ModelConfig, cache: KVCache, tokens: Array, budget: Array, sampling: tuple,
                 stop_ids: Array, window: int, steps: int = 8) -> tuple[Array, Array, KVCache]:
    """Up to `steps` tokens for every row in one dispatch (a lax.while_loop), to save Python work per token.

    tokens [batch]: each row's last sampled token, fed first; budget [batch]: how many tokens a row may
    sample (0: idle row); a row is done after its budget or a stop id, and the loop ends when all are.
    sampling: sample_rows' per-row (seeds, counts, temperature, top_k, top_p). Attention reads the
    first `window` cache positions. Returns sampled tokens [batch, steps], how many per row [batch]
    and the cache (each row's length advanced by its count)."""
    seeds, counts, temperature, top_k, top_p = sampling
    batch = tokens.shape[0]

    def body(state):
        j, cache, tok, out, n, done = state
        logits, new = Transformer(cfg).apply({"params": params}, tok[:, None], cache=cache, kv_window=window)
        cache = new._replace(lengths=jnp.where(done, cache.lengths, new.lengths))
        nxt = sample_rows(logits[:, 0], seeds, counts + n, temperature, top_k, top_p)
        n = n + (~done).astype(jnp.int32)
        out = out.at[:, j].set(nxt)
        done = done | (n >= budget) | jnp.any(nxt[:, None] == stop_ids[None, :], axis=-1)
        return j + 1, cache, nxt, out, n, done

    state = (jnp.int32(0), cache, tokens, jnp.zeros((batch, steps), jnp.int32), jnp.zeros((batch,), jnp.int32),
             budget <= 0)
    _, cache, _, out, n, _ = jax.lax.while_loop(lambda s: (s[0] < steps) & ~jnp.all(s[5]), body, state)
    return out, n, cache


def unroll_layers(cfg: ModelConfig, params: dict) -> tuple[ModelConfig, dict]:
    """The same model with per-layer params `layers_{i}` (scan_layers=False) instead of one stacked tree."""
    out = {k: v for k, v in params.items() if k != "layers"}
    for i in range(cfg.n_layers):
        out[f"layers_{i}"] = jax.tree.map(lambda x: x[i], params["layers"])
    return dataclasses.replace(cfg, scan_layers=False), out


# ------------------------------------------------------------------------------ requests
@dataclasses.dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled" | "error"
    prompt_tokens: int
    completion_tokens: int
    error: Optional[str] = None
    token_ids: tuple[int, ...] = ()  # sampled tokens (no stop token, no spliced tool output)


class Request:
    """One submitted generation; its text arrives on a queue as the scheduler produces it."""

    _ids = itertools.count()

    def __init__(self, prompt: list[int], params: SamplingParams, max_tokens: int, seed: int):
        self.id = next(self._ids)
        self.prompt, self.params, self.max_tokens, self.seed = prompt, params, max_tokens, seed
        self.events: queue.Queue = queue.Queue()
        self.text = ""  # everything generated so far (tool outputs included), before stop truncation
        self.sent = 0  # characters of text already streamed
        self.completion_tokens = 0
        self.token_ids: list[int] = []
        self.tool_calls = 0
        self.finish_reason: Optional[str] = None
        self.error: Optional[str] = None
        self.max_rows_seen = 0  # most requests sharing one decode step with this one
        self.cancelled = False
        self.done = threading.Event()

    def cancel(self) -> None:
        """Stop generating (e.g. the client went away); the slot frees at the next step."""
        self.cancelled = True

    def stream(self, timeout: Optional[float] = None) -> Iterator[str]:
        """Text deltas as they are generated; ends when the request finishes."""
        while True:
            kind, value = self.events.get(timeout=timeout)
            if kind == "done":
                return
            yield value

    def result(self, timeout: Optional[float] = None) -> Completion:
        """Wait for the end and return the whole completion."""
        if not self.done.wait(timeout):
            raise TimeoutError(f"request {self.id} did not finish in {timeout} s")
        return Completion(self.text, self.finish_reason, len(self.prompt), self.completion_tokens, self.error,
                          tuple(self.token_ids))


@dataclasses.dataclass
class _Slot:
    req: Request
    length: int  # tokens in the cache
    last: int = -1  # sampled, not yet fed
    decoder: Any = None
    tool_future: Any = None
    tool_start: int = 0  # text offset after the last tool output (search for new calls from here)


class Engine:
    """A scheduler thread over a fixed batch of cache slots; `submit` is thread-safe."""

    def __init__(self, model: ChatModel, cfg: EngineConfig = EngineConfig(), tools=None):
        self.model, self.tools = model, tools
        self.max_len = min(cfg.max_len, model.cfg.max_seq_len)
        self.cfg = dataclasses.replace(cfg, max_len=self.max_len)
        self.run_cfg, self.run_params = model.cfg, model.params
        if cfg.unroll_layers and model.cfg.scan_layers:
            self.run_cfg, self.run_params = unroll_layers(model.cfg, model.params)
        if cfg.weight_dtype != "float32":  # matrices only: norm scales and biases stay as they are
            wdt = jnp.dtype(cfg.weight_dtype)
            self.run_params = jax.tree.map(lambda x: x.astype(wdt) if x.ndim >= 2 else x, self.run_params)
        self.cache = init_cache(self.run_cfg, cfg.max_batch, self.max_len)
        stops = sorted(model.stop_ids)[:8]
        self._stop_arr = jnp.asarray(stops + [-1] * (8 - len(stops)), jnp.int32)
        self.slots: list[Optional[_Slot]] = [None] * cfg.max_batch
        self.waiting: queue.Queue = queue.Queue()
        self.resumed: queue.Queue = queue.Queue()  # (row, output text) of finished tool calls
        self.pool = concurrent.futures.ThreadPoolExecutor(cfg.tool_workers, thread_name_prefix="tool")
        self.stop_ids = frozenset(model.stop_ids)
        self.stats = {"decode_steps": 0, "tokens": 0, "max_rows": 0, "shared_steps": 0}
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="engine-scheduler", daemon=True)
        self._thread.start()

    # ---- public
    def submit(self, prompt: Sequence[int], params: SamplingParams = SamplingParams()) -> Request:
        """Queue a completion of `prompt` (token ids). Raises ValueError for a bad request."""
        params.check()
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise ValueError("the prompt is empty: give at least one token")
        room = self.max_len - len(prompt)
        if room < 1:
            raise ValueError(f"the prompt has {len(prompt)} tokens but this model's context is {self.max_len} "
                             "tokens; shorten the prompt")
        if params.max_tokens is not None and params.max_tokens > room:
            raise ValueError(f"the prompt has {len(prompt)} tokens and max_tokens={params.max_tokens}: together more "
                             f"than the context of {self.max_len} tokens; lower max_tokens to at most {room}")
        if params.tools and self.tools is None:
            raise ValueError("tools were requested but this engine has none (start it with tools enabled)")
        max_tokens = params.max_tokens or min(self.cfg.max_tokens, room)
        seed = params.seed if params.seed is not None else int(np.random.randint(0, 2**31))
        req = Request(prompt, params, max_tokens, seed)
        self.waiting.put(req)
        self._wake.set()
        return req

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams = SamplingParams()) -> list[Completion]:
        """Submit all prompts at once (they are batched together) and wait for every completion."""
        reqs = [self.submit(p, params) for p in prompts]
        return [r.result() for r in reqs]

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=30)
        self.pool.shutdown(wait=False, cancel_futures=True)

    # ---- scheduler
    def _loop(self) -> None:
        while not self._closed:
            try:
                self._admit()
                self._resume_tools()
                rows = [i for i, s in enumerate(self.slots) if s and s.tool_future is None]
                if rows:
                    self._step(rows)
                else:
                    self._wake.wait(timeout=0.5)
                    self._wake.clear()
            except Exception as e:  # a failed step fails its requests; the engine keeps serving
                for i, s in enumerate(self.slots):
                    if s is not None:
                        self._finish(i, "error", error=f"{type(e).__name__}: {e}")
        for i in range(len(self.slots)):  # closed: nobody waits forever
            self._finish(i, "cancelled")
        while not self.waiting.empty():
            self._done(self.waiting.get(), "cancelled")

    def _sampling(self, reqs: Sequence[Optional[Request]], counts: Sequence[int]) -> tuple:
        p = [r.params if r else SamplingParams(temperature=0.0) for r in reqs]
        return (jnp.asarray([r.seed if r else 0 for r in reqs], jnp.uint32), jnp.asarray(counts, jnp.int32),
                jnp.asarray([x.temperature for x in p], jnp.float32), jnp.asarray([x.top_k for x in p], jnp.int32),
                jnp.asarray([x.top_p for x in p], jnp.float32))

    def _admit(self) -> None:
        while None in self.slots and not self.waiting.empty():
            req = self.waiting.get()
            if req.cancelled:
                self._done(req, "cancelled")
                continue
            row = self.slots.index(None)
            self.slots[row] = _Slot(req, 0, decoder=codecs.getincrementaldecoder("utf-8")("replace"))
            try:
                self._extend(row, req.prompt)
            except Exception as e:
                self._finish(row, "error", error=f"{type(e).__name__}: {e}")

    def _extend(self, row: int, tokens: list[int]) -> None:
        """Run tokens into a slot after what it holds, sample the next token and accept it."""
        slot = self.slots[row]
        size = bucket(len(tokens), self.cfg.min_bucket, self.max_len)
        window = bucket(slot.length + size, self.cfg.min_bucket, self.max_len)
        padded = np.zeros((1, size), np.int32)
        padded[0, :len(tokens)] = tokens
        logits, self.cache = extend_slot(self.run_params, self.run_cfg, self.cache, jnp.asarray(padded),
                                         jnp.int32(len(tokens)), jnp.int32(row), jnp.int32(slot.length), window)
        token = sample_rows_jit(logits, *self._sampling([slot.req], [slot.req.completion_tokens]))
        slot.length += len(tokens)
        self._accept(row, int(token[0]))

    def _step(self, rows: list[int]) -> None:
        """Decode a block of up to cfg.block tokens for the busy rows, then accept them token by token."""
        batch = len(self.slots)
        tokens, counts, budget = (np.zeros(batch, np.int32) for _ in range(3))
        for i in rows:
            s = self.slots[i]
            tokens[i], counts[i] = s.last, s.req.completion_tokens
            budget[i] = min(s.req.max_tokens - s.req.completion_tokens, self.max_len - s.length)
        window = bucket(max(self.slots[i].length for i in rows) + self.cfg.block, self.cfg.min_bucket, self.max_len)
        reqs = [self.slots[i].req if budget[i] else None for i in range(batch)]
        out, n, self.cache = decode_block(self.run_params, self.run_cfg, self.cache, jnp.asarray(tokens),
                                          jnp.asarray(budget), self._sampling(reqs, counts), self._stop_arr,
                                          window, self.cfg.block)
        out, n = np.asarray(out), np.asarray(n)
        steps = int(n.max())
        self.stats["decode_steps"] += steps
        self.stats["tokens"] += int(n.sum())
        self.stats["max_rows"] = max(self.stats["max_rows"], len(rows))
        self.stats["shared_steps"] += steps if len(rows) > 1 else 0
        for i in rows:
            slot = self.slots[i]
            slot.req.max_rows_seen = max(slot.req.max_rows_seen, len(rows))
            for token in out[i, :n[i]]:
                slot.length += 1
                self._accept(i, int(token))
                if self.slots[i] is not slot or slot.tool_future is not None:
                    break  # finished or paused for a tool: the rest of its block is discarded

    def _accept(self, row: int, token: int) -> None:
        """A newly sampled token: stop, stream its text, start a tool call, or keep decoding."""
        slot = self.slots[row]
        req = slot.req
        req.completion_tokens += 1
        if req.cancelled:
            return self._finish(row, "cancelled")
        if token in self.stop_ids:
            return self._finish(row, "stop")
        req.token_ids.append(token)
        req.text += slot.decoder.decode(self.model.tokenizer.token_bytes(token))
        slot.last = token
        if self._check_stop(row):
            return
        if req.params.tools and self.tools is not None and req.tool_calls < self.tools.max_calls:
            call = self.tools.find_call(req.text, slot.tool_start)
            if call is not None:
                req.tool_calls += 1
                self._emit(req, len(req.text))
                slot.tool_future = self.pool.submit(self.tools.run, call)
                slot.tool_future.add_done_callback(lambda f, row=row: (self.resumed.put(row), self._wake.set()))
                return
        if req.completion_tokens >= req.max_tokens or slot.length + 1 > self.max_len:
            return self._finish(row, "length")
        self._emit(req, self._safe_end(req))

    def _resume_tools(self) -> None:
        while not self.resumed.empty():
            row = self.resumed.get()
            slot = self.slots[row]
            if slot is None or slot.tool_future is None:
                continue
            future, slot.tool_future = slot.tool_future, None
            try:
                output = future.result()
            except Exception as e:  # a broken tool is reported to the model, not to the server
                output = f"[tool error: {type(e).__name__}: {e}]"
            # the last sampled token closes the call and is not in the cache yet: feed it with the output
            text, ids = self.tools.output_block(output, self.model.tokenizer)
            ids = [slot.last] + ids
            if slot.length + len(ids) + 1 > self.max_len or slot.req.cancelled:
                self._finish(row, "cancelled" if slot.req.cancelled else "length")
                continue
            slot.req.text += text
            slot.tool_start = len(slot.req.text)
            try:
                self._extend(row, ids)
            except Exception as e:
                self._finish(row, "error", error=f"{type(e).__name__}: {e}")

    # ---- text
    def _check_stop(self, row: int) -> bool:
        req = self.slots[row].req
        stops = req.params.stop
        if not stops:
            return False
        longest = max(len(s) for s in stops)
        region = max(0, req.sent - longest)
        hits = [i for i in (req.text.find(s, region) for s in stops) if i >= 0]
        if not hits:
            return False
        req.text = req.text[:min(hits)]
        self._finish(row, "stop")
        return True

    @staticmethod
    def _safe_end(req: Request) -> int:
        """How much text can be streamed: hold back a tail that may still become a stop string."""
        end = len(req.text)
        for s in req.params.stop:
            for k in range(min(len(s) - 1, len(req.text)), 0, -1):
                if req.text.endswith(s[:k]):
                    end = min(end, len(req.text) - k)
                    break
        return end

    def _emit(self, req: Request, end: int) -> None:
        if end > req.sent:
            req.events.put(("delta", req.text[req.sent:end]))
            req.sent = end

    def _finish(self, row: int, reason: str, error: Optional[str] = None) -> None:
        slot = self.slots[row]
        self.slots[row] = None
        if slot is None:
            return
        if slot.tool_future is not None:
            slot.tool_future.cancel()
        if reason != "stop" or not slot.req.params.stop:
            slot.req.text += slot.decoder.decode(b"", final=True)
        self._done(slot.req, reason, error)

    def _done(self, req: Request, reason: str, error: Optional[str] = None) -> None:
        req.finish_reason, req.error = reason, error
        self._emit(req, len(req.text))
        req.events.put(("done", reason))
        req.done.set()

