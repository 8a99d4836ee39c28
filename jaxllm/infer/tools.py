"""Tool calls inside generation: find a finished call in the model's text, run it, format its output.

Markers come from the chat template (jaxllm.data.chat): special tokens for our tokenizer
(`<|python_start|>print(2**10)<|python_end|>`), plain-text tags for models without them
(SmolLM2: `<python>...</python>`). Python runs in the sandbox (jaxllm.infer.sandbox); search is
answered from a BM25 index (`bm25s`) over a corpus the user chooses (any jaxllm.data.sources
spec; the Wikipedia summaries by default). The engine splices `output_block(...)` back into the
completion and goes on decoding.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Optional, Sequence

from jaxllm.data.chat import get_template
from jaxllm.infer.sandbox import SandboxConfig, run_python, tool_output_text


@dataclasses.dataclass(frozen=True)
class ToolConfig:
    """Which tools run and how much they may say."""
    python: bool = True
    search: bool = True
    corpus: str = "wikipedia-summaries"  # a jaxllm.data.sources spec: a name, jsonl:PATH, text:DIR, ...
    top_k: int = 3  # search results per query
    snippet_chars: int = 300  # characters of each search result
    max_output_chars: int = 2000  # longer tool output is cut (head kept, with a note)
    max_calls: int = 4  # tool calls per request; later calls are left as text
    sandbox: SandboxConfig = SandboxConfig()


@dataclasses.dataclass(frozen=True)
class ToolCall:
    tool: str  # "python" | "search"
    text: str  # the code or the query


def find_call(text: str, start: int, markers: dict[str, tuple[str, str]]) -> Optional[ToolCall]:
    """The finished call in text[start:] (open marker, body, close marker), or None.

    markers: tool -> (open, close). The latest opened call wins; an unclosed one is still being written."""
    best = None
    for tool, (open_, close) in markers.items():
        i = text.rfind(open_, start)
        if i < 0 or (best is not None and i < best[0]):
            continue
        j = text.find(close, i + len(open_))
        if j >= 0:
            best = (i, ToolCall(tool, text[i + len(open_):j].strip()))
    return None if best is None else best[1]


def clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... {len(text) - limit} characters cut]"


class BM25Index:
    """A BM25 index (bm25s, English stopwords) over documents {"id", "text", ...}."""

    def __init__(self, docs: Sequence[dict]):
        import bm25s

        if not docs:
            raise ValueError("BM25Index: the corpus has no documents")
        self.docs = list(docs)
        self._bm25s = bm25s
        self.retriever = bm25s.BM25()
        self.retriever.index(bm25s.tokenize([d["text"] for d in self.docs], stopwords="en", show_progress=False),
                             show_progress=False)

    @classmethod
    def from_source(cls, spec: str = "wikipedia-summaries") -> "BM25Index":
        from jaxllm.data.sources import get_source
        return cls(list(get_source(spec).documents("all")))

    def search(self, query: str, k: int = 3) -> list[tuple[float, dict]]:
        """The k best documents for `query` as (score, doc), best first; documents scoring 0 are left out."""
        tokens = self._bm25s.tokenize([query], stopwords="en", show_progress=False)
        if not tokens.vocab:  # only stopwords / punctuation
            return []
        ids, scores = self.retriever.retrieve(tokens, k=min(k, len(self.docs)), show_progress=False)
        return [(float(s), self.docs[int(i)]) for i, s in zip(ids[0], scores[0]) if s > 0]


class Tools:
    """The tools one model may call: markers from its chat template, python and search runners."""

    def __init__(self, cfg: ToolConfig = ToolConfig(), template="jaxllm", index: Optional[BM25Index] = None):
        t = get_template(template)
        self.cfg, self.max_calls = cfg, cfg.max_calls
        self.markers = {name: m for name, m, on in (("python", t.python, cfg.python), ("search", t.search, cfg.search))
                        if on}
        self.output = t.output
        self._index, self._lock = index, threading.Lock()

    @property
    def index(self) -> BM25Index:
        with self._lock:  # built once, on the first search (10k Wikipedia summaries: about 2 s)
            if self._index is None:
                self._index = BM25Index.from_source(self.cfg.corpus)
            return self._index

    def find_call(self, text: str, start: int = 0) -> Optional[ToolCall]:
        return find_call(text, start, self.markers)

    def run(self, call: ToolCall) -> str:
        """The tool's output text for a call (errors are output too: the model reads them)."""
        if call.tool == "python":
            return clip(tool_output_text(run_python(call.text, self.cfg.sandbox)), self.cfg.max_output_chars)
        if call.tool == "search":
            hits = self.index.search(call.text, self.cfg.top_k)
            if not hits:
                return "no results"
            lines = [f"[{doc['id'].rsplit('/', 1)[-1]}] {clip(doc['text'], self.cfg.snippet_chars)}"
                     for _, doc in hits]
            return clip("\n".join(lines), self.cfg.max_output_chars)
        raise ValueError(f"unknown tool {call.tool!r}")

    def output_block(self, output: str, tokenizer) -> tuple[str, list[int]]:
        """(text, token ids) of output_start + output + output_end; the output never becomes special tokens."""
        open_, close = self.output
        specials = getattr(tokenizer, "special_ids", {})

        def marker(m: str) -> list[int]:
            return tokenizer.encode(m, allowed_special={m} if m in specials else "none")

        ids = marker(open_) + tokenizer.encode(output, allowed_special="none") + marker(close)
        return open_ + output + close, ids
