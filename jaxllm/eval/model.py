"""EvalModel: what an evaluation needs from any model (ours or a pretrained one), in one small object.

Base models see raw text (after an optional BOS); chat models see conversations rendered by their
chat template. `from_pretrained` wraps `jaxllm.model.hub.Pretrained`; `from_parts` wraps params
trained here (a `jaxllm.data.chat` template name makes it a chat model).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Optional, Sequence

from jaxllm.model import ModelConfig

Messages = Sequence[dict]


@dataclass(frozen=True)
class EvalModel:
    name: str
    cfg: ModelConfig
    params: dict = field(repr=False)
    tokenizer: object = field(repr=False)
    kind: Literal["base", "chat"] = "base"
    prefix: tuple[int, ...] = ()  # ids before raw text (BOS for our models)
    render_chat: Optional[Callable[[Messages], list[int]]] = field(default=None, repr=False)  # prompt ids
    stop_ids: tuple[int, ...] = ()
    # how the model writes tool calls: (python start, python end, output start, output end), and the
    # ids that end a call when "python end" is a single special token
    tools: tuple[str, str, str, str] = ("<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>")
    tool_stop_ids: tuple[int, ...] = ()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i not in self.stop_ids])

    def prompt_ids(self, prompt: str | Messages) -> list[int]:
        """Ids of a raw-text prompt (prefix + text) or a conversation ending with a user turn (+ assistant header)."""
        if isinstance(prompt, str):
            return list(self.prefix) + self.encode(prompt)
        if self.render_chat is None:
            raise ValueError(f"model {self.name!r} has no chat template; give it raw text or a template")
        return list(self.render_chat(prompt))

    def as_kind(self, kind: str) -> "EvalModel":
        """The same model prompted as 'base' or 'chat' ('auto' keeps its own kind)."""
        if kind in ("auto", self.kind):
            return self
        if kind == "chat" and self.render_chat is None:
            raise ValueError(f"model {self.name!r} has no chat template, so it cannot be prompted as 'chat'")
        import dataclasses
        return dataclasses.replace(self, kind=kind)


def from_parts(name: str, cfg: ModelConfig, params, tokenizer, chat_template: str | None = None) -> EvalModel:
    """A model trained here; with chat_template (e.g. "jaxllm"), a chat model using jaxllm.data.chat."""
    bos = getattr(tokenizer, "bos_id", None)
    prefix = (bos,) if bos is not None else ()
    if chat_template is None:
        return EvalModel(name, cfg, params, tokenizer, "base", prefix, None, prefix)
    from jaxllm.data import chat

    def render(messages: Messages) -> list[int]:
        return chat.render_prompt({"messages": list(messages)}, tokenizer, chat_template)

    ids = chat.stop_ids(tokenizer, chat_template)
    t = chat.get_template(chat_template)
    stops = tuple(sorted(set(ids["end"][:1]) | set(prefix)))
    tool_stops = tuple(ids["python"]) if len(ids["python"]) == 1 else ()
    return EvalModel(name, cfg, params, tokenizer, "chat", prefix, render, stops, (*t.python, *t.output), tool_stops)


def from_pretrained(model) -> EvalModel:
    """Wrap a `jaxllm.model.hub.Pretrained` (config, params, tokenizer, its own chat template)."""
    tok, template = model.tokenizer, model.chat

    def render(messages: Messages) -> list[int]:
        return tok.encode(template.render(list(messages)), allowed_special="all")

    # the chat template adds any BOS it wants; raw text gets no BOS (as these models were trained)
    tools = ("<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>")
    if template is not None:
        tools = tuple(template.tag(s) for s in tools)
    return EvalModel(model.name, model.cfg, model.params, tok, "chat" if template else "base", (),
                     render if template else None,
                     tuple(model.stop_ids), tools)
