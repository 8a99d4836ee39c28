"""Conversations: the schema, its validation, chat templates and the renderer to (token ids, loss mask).

A conversation is `{"messages": [...], "id"?: str, "meta"?: dict}`; a message is
`{"role": "system"|"user"|"assistant"|"tool", "content": str}`. Tool use comes in two equivalent shapes:

    parts:  {"role": "assistant", "content": [{"type": "text", "text": "Let me compute."},
                                              {"type": "python", "text": "print(2**64)"},
                                              {"type": "python_output", "text": "18446744073709551616"},
                                              {"type": "text", "text": "It is 18446744073709551616."}]}
    calls:  {"role": "assistant", "content": "Let me compute.", "tool_calls": [{"tool": "python", "input": "print(2**64)"}]},
            {"role": "tool", "content": "18446744073709551616"},
            {"role": "assistant", "content": "It is 18446744073709551616."}

Both render to one assistant turn. The renderer trains (mask 1) only on what the assistant writes,
its end token included; the tool's output is fed in by the engine, so it is never trained on.
Special tokens are only ever produced by the template: message text is encoded with no specials
allowed, so a user typing "<|im_end|>" gets ordinary text tokens.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from jaxllm.data.sources import DataError

ROLES = ("system", "user", "assistant", "tool")
PART_TYPES = ("text", "python", "python_output", "search", "search_output")
TOOLS = ("python", "search")
CONVERSATION_KEYS = ("messages", "id", "meta")
MESSAGE_KEYS = ("role", "content", "tool_calls", "name")


class ConversationError(DataError):
    """A malformed conversation; the message names the record (file:line or index), the message and the fix."""


@dataclass(frozen=True)
class Turn:
    """One rendered turn: a role and its parts [(type, text)]; tool messages are folded into assistant turns."""
    role: str
    parts: tuple[tuple[str, str], ...]


def _fail(where: str, problem: str, fix: str) -> None:
    raise ConversationError(f"{where}: {problem}; {fix}")


def _message_parts(m: dict, i: int, where: str) -> list[tuple[str, str]]:
    """A message's content (string or list of parts) as [(type, text)]; its tool_calls are only checked."""
    role, content, at = m["role"], m.get("content"), f"message {i} ({m['role']})"
    parts: list[tuple[str, str]] = []
    if isinstance(content, str):
        if content.strip():
            parts.append(("text", content))
        elif not m.get("tool_calls"):
            _fail(where, f"{at} has empty content", "give it text or drop the message")
    elif isinstance(content, list):
        if role != "assistant":
            _fail(where, f"{at} has a list of parts; only assistant messages may", "make content a string")
        if not content:
            _fail(where, f"{at} has an empty list of parts", "give it at least one part")
        for j, p in enumerate(content):
            if not isinstance(p, dict) or set(p) != {"type", "text"}:
                _fail(where, f"{at} part {j} is {json.dumps(p)[:80]}", 'parts look like {"type": "text", "text": "..."}')
            if p["type"] not in PART_TYPES:
                _fail(where, f"{at} part {j} has unknown type {p['type']!r}", f"use one of {', '.join(PART_TYPES)}")
            if not isinstance(p["text"], str) or (p["type"] != "python_output" and not p["text"].strip()):
                _fail(where, f"{at} part {j} ({p['type']}) has empty text", "give it text or drop the part")
            if p["type"].endswith("_output"):
                call = p["type"][: -len("_output")]
                if not parts or parts[-1][0] != call:
                    _fail(where, f"{at} part {j} ({p['type']}) does not follow a {call} part",
                          f"put it right after the {call} call it answers")
            parts.append((p["type"], p["text"]))
    else:
        _fail(where, f"{at} has content of type {type(content).__name__}", "make content a string")
    calls = m.get("tool_calls")
    if calls is not None:
        if role != "assistant" or not isinstance(calls, list) or not calls:
            _fail(where, f"{at} has tool_calls", "only assistant messages carry a non-empty list of tool_calls")
        for j, c in enumerate(calls):
            if not isinstance(c, dict) or set(c) != {"tool", "input"} or c["tool"] not in TOOLS \
                    or not isinstance(c["input"], str) or not c["input"].strip():
                _fail(where, f"{at} tool call {j} is {json.dumps(c)[:80]}",
                      'tool calls look like {"tool": "python"|"search", "input": "non-empty text"}')
    return parts  # tool_calls join the turn with their outputs, when the tool messages come


def to_turns(conversation: dict, where: str = "conversation", require_last: Optional[str] = "assistant") -> list[Turn]:
    """Validate a conversation and fold it into turns; raises ConversationError naming `where` and the message.

    Rules: known fields only; system only first; then user and assistant alternate (tool messages answer
    the preceding assistant's tool_calls, one each, and the assistant may continue after them); every
    tool call has its output; the last turn has role `require_last` (None: any).
    """
    if not isinstance(conversation, dict):
        _fail(where, f"expected a JSON object, got {type(conversation).__name__}", 'write {"messages": [...]}')
    unknown = sorted(set(conversation) - set(CONVERSATION_KEYS))
    if unknown:
        _fail(where, f"unknown field(s) {', '.join(map(repr, unknown))}", f"allowed: {', '.join(CONVERSATION_KEYS)}")
    messages = conversation.get("messages")
    if not isinstance(messages, list) or not messages:
        _fail(where, "no messages", 'give "messages" as a non-empty list')
    turns: list[list] = []  # [role, parts]
    pending: list[tuple[str, str]] = []  # (tool, input) of calls still waiting for their tool message
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            _fail(where, f"message {i} is a {type(m).__name__}", 'messages look like {"role": ..., "content": ...}')
        unknown = sorted(set(m) - set(MESSAGE_KEYS))
        if unknown:
            _fail(where, f"message {i} has unknown field(s) {', '.join(map(repr, unknown))}",
                  f"allowed: {', '.join(MESSAGE_KEYS)}")
        role = m.get("role")
        if role not in ROLES:
            _fail(where, f"message {i} has role {role!r}", f"use one of {', '.join(ROLES)}")
        if "name" in m and role != "tool":
            _fail(where, f"message {i} ({role}) has a name", "only tool messages may name their tool")
        prev = turns[-1][0] if turns else None
        if role == "tool":
            if not pending:
                _fail(where, f"message {i} (tool) answers no tool call",
                      "put tool messages right after an assistant message with tool_calls")
            tool, call = pending.pop(0)
            if m.get("name", tool) != tool:
                _fail(where, f"message {i} (tool) is named {m['name']!r} but answers a {tool} call", "fix the name")
            if not isinstance(m.get("content"), str):
                _fail(where, f"message {i} (tool) content is not a string", "make it the tool's output text")
            turns[-1][1] += [(tool, call), (f"{tool}_output", m["content"])]  # call k, then its output
            continue
        if pending:
            _fail(where, f"message {i} ({role}) comes before the output of {len(pending)} tool call(s)",
                  "add one tool message per call")
        parts = _message_parts(m, i, where)
        pending = [(c["tool"], c["input"]) for c in m.get("tool_calls") or []]
        if role == "system" and i != 0:
            _fail(where, f"message {i} is a system message", "only the first message may be a system message")
        elif role == "user" and prev == "user":
            _fail(where, f"messages {i - 1} and {i} are both user messages", "merge them or add the assistant reply")
        elif role == "assistant" and prev in (None, "system"):
            _fail(where, f"message {i} (assistant) comes before any user message", "start with a user message")
        elif role == "assistant" and prev == "assistant":
            continues = any(t.endswith("_output") for t, _ in turns[-1][1][-1:])
            if not continues:
                _fail(where, f"messages {i - 1} and {i} are both assistant messages", "merge them into one")
            turns[-1][1].extend(parts)
            continue
        turns.append([role, parts])
    if pending:
        _fail(where, f"the last {len(pending)} tool call(s) have no output", "add one tool message per call")
    for role, parts in turns:  # a parts-form call must be answered inside its message too
        for k, (t, _) in enumerate(parts):
            if t in TOOLS and (k + 1 == len(parts) or parts[k + 1][0] != f"{t}_output"):
                _fail(where, f"an assistant {t} call has no {t}_output part after it", "add the tool's output")
    if require_last and turns[-1][0] != require_last:
        _fail(where, f"the last message is {turns[-1][0]!r}, expected {require_last!r}",
              "end training conversations with the assistant reply (prompts with the user message)")
    return [Turn(role, tuple(parts)) for role, parts in turns]


def validate(conversation: dict, where: str = "conversation", require_last: Optional[str] = "assistant") -> dict:
    """The conversation itself if it is well formed, else ConversationError naming `where`."""
    to_turns(conversation, where, require_last)
    return conversation


# --- templates ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChatTemplate:
    """How turns become text. Each turn is `start + role + sep + content + end + after_end`.

    Markers listed in `specials` must be single special tokens of the tokenizer; every other marker is
    ordinary text (e.g. ChatML's "\\n", or plain-text tool tags for models without our tool tokens).
    """
    name: str
    bos: str = ""  # once at the very start ("" = none)
    start: str = "<|im_start|>"
    sep: str = "<|im_sep|>"
    end: str = "<|im_end|>"  # trained on in assistant turns: the model learns to stop
    after_end: str = ""  # never trained (ChatML's newline)
    python: tuple[str, str] = ("<|python_start|>", "<|python_end|>")  # written by the model: trained
    search: tuple[str, str] = ("<|search_start|>", "<|search_end|>")
    output: tuple[str, str] = ("<|output_start|>", "<|output_end|>")  # spliced in by the engine: not trained
    default_system: str = ""  # system prompt inserted when a conversation has none ("" = none)
    specials: tuple[str, ...] = ("<|bos|>", "<|im_start|>", "<|im_sep|>", "<|im_end|>", "<|python_start|>",
                                 "<|python_end|>", "<|output_start|>", "<|output_end|>", "<|search_start|>",
                                 "<|search_end|>")


SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
TEMPLATES: dict[str, ChatTemplate] = {
    # ours: <|bos|><|im_start|>user<|im_sep|>hi<|im_end|><|im_start|>assistant<|im_sep|>hello<|im_end|>
    "jaxllm": ChatTemplate("jaxllm", bos="<|bos|>"),
    # the video's (GPT-4o style, as shown in tiktokenizer): the same turns without a leading BOS
    "video": ChatTemplate("video", specials=ChatTemplate("x").specials[1:]),
    # ChatML with newlines, as SmolLM2-Instruct's tokenizer_config renders it (specials from its vocabulary)
    "chatml": ChatTemplate("chatml", sep="\n", after_end="\n", python=("<python>", "</python>"),
                           search=("<search>", "</search>"), output=("<output>", "</output>"),
                           specials=("<|im_start|>", "<|im_end|>")),
}
TEMPLATES["smollm2"] = dataclasses.replace(TEMPLATES["chatml"], name="smollm2", default_system=SMOLLM2_SYSTEM)


def get_template(template: str | ChatTemplate) -> ChatTemplate:
    if isinstance(template, ChatTemplate):
        return template
    if template not in TEMPLATES:
        raise DataError(f"unknown chat template {template!r}; use one of {', '.join(TEMPLATES)}")
    return TEMPLATES[template]


class _Encoder:
    """Encodes markers (with the template's specials allowed) and text (no specials), caching markers."""

    def __init__(self, tokenizer, template: ChatTemplate):
        have = set(getattr(tokenizer, "special_ids", {}))
        used = {template.bos, template.start, template.sep, template.end, template.after_end,
                *template.python, *template.search, *template.output}
        missing = sorted(s for s in template.specials if s in used and s not in have)
        if missing:
            raise DataError(f"chat template {template.name!r} needs special tokens {missing} that tokenizer "
                            f"{getattr(tokenizer, 'name', tokenizer)!r} lacks; pick a template whose markers it "
                            f"has (e.g. 'chatml' for SmolLM2)")
        self.tok, self.allowed, self.cache = tokenizer, frozenset(s for s in template.specials if s in have), {}

    def marker(self, text: str) -> list[int]:
        if text not in self.cache:
            self.cache[text] = self.tok.encode(text, allowed_special=self.allowed) if text else []
        return self.cache[text]

    def text(self, text: str) -> list[int]:
        return self.tok.encode(text, allowed_special="none")


def _turn_pieces(turn: Turn, t: ChatTemplate) -> list[tuple[str, bool, bool]]:
    """(string, is_marker, trained) pieces of one turn, in order."""
    train = turn.role == "assistant"
    pieces = [(t.start, True, False), (turn.role, False, False), (t.sep, True, False)]
    for kind, text in turn.parts:
        if kind == "text":
            pieces.append((text, False, train))
        elif kind in TOOLS:
            open_, close = t.python if kind == "python" else t.search
            pieces += [(open_, True, train), (text, False, train), (close, True, train)]
        else:  # tool output: the engine writes it, the model only reads it
            pieces += [(t.output[0], True, False), (text, False, False), (t.output[1], True, False)]
    pieces += [(t.end, True, train), (t.after_end, True, False)]
    return pieces


def _with_default_system(turns: list[Turn], t: ChatTemplate) -> list[Turn]:
    if t.default_system and turns[0].role != "system":
        return [Turn("system", (("text", t.default_system),))] + turns
    return turns


def render_turns(turns: list[Turn], tokenizer, template: str | ChatTemplate, with_bos: bool = True,
                 encoder: _Encoder | None = None) -> tuple[list[int], list[int], list[int]]:
    """Token ids, loss mask (1 = ids[i] is trained as a target) and the token offset where each turn starts."""
    t = get_template(template)
    enc = encoder or _Encoder(tokenizer, t)
    ids: list[int] = enc.marker(t.bos)[:] if with_bos else []
    mask = [0] * len(ids)
    starts = []
    for turn in turns:
        starts.append(len(ids))
        for text, is_marker, trained in _turn_pieces(turn, t):
            piece = enc.marker(text) if is_marker else enc.text(text)
            ids += piece
            mask += [int(trained)] * len(piece)
    return ids, mask, starts


def render(conversation: dict, tokenizer, template: str | ChatTemplate = "jaxllm",
           where: str = "conversation") -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of a training conversation (ending with the assistant); mask[i] = 1 when ids[i] is
    something the assistant writes (text, tool calls and their markers, its end token)."""
    t = get_template(template)
    turns = _with_default_system(to_turns(conversation, where, "assistant"), t)
    ids, mask, _ = render_turns(turns, tokenizer, t)
    return ids, mask


def render_prompt(conversation: dict, tokenizer, template: str | ChatTemplate = "jaxllm",
                  where: str = "conversation", max_tokens: int | None = None) -> list[int]:
    """Ids of a conversation ending with a user message plus the assistant header, exactly as the same
    tokens appear in training (`render(conv + answer)` starts with these ids). With max_tokens, the
    oldest whole exchanges are left out (the system prompt stays) until the prompt fits."""
    t = get_template(template)
    turns = _with_default_system(to_turns(conversation, where, "user"), t)
    enc = _Encoder(tokenizer, t)
    header = enc.marker(t.start) + enc.text("assistant") + enc.marker(t.sep)
    head = turns[:1] if turns[0].role == "system" else []
    for first in range(len(head), len(turns), 2):  # drop (user, assistant) pairs from the front
        ids = render_turns(head + turns[first:], tokenizer, t, encoder=enc)[0] + header
        if max_tokens is None or len(ids) <= max_tokens:
            return ids
    raise DataError(f"{where}: the last user message alone needs {len(ids)} tokens, more than max_tokens="
                    f"{max_tokens}; shorten it or raise the context")


def stop_ids(tokenizer, template: str | ChatTemplate = "jaxllm") -> dict[str, list[int]]:
    """Token ids the engine watches for: "end" finishes the reply; "python"/"search" end a tool call
    (run it, then splice output[0] + result + output[1] and continue generating)."""
    t = get_template(template)
    enc = _Encoder(tokenizer, t)
    return {"end": enc.marker(t.end), "python": enc.marker(t.python[1]), "search": enc.marker(t.search[1]),
            "output_start": enc.marker(t.output[0]), "output_end": enc.marker(t.output[1])}


# --- fitting into a context -------------------------------------------------------------------

@dataclass
class FitStats:
    """What fitting conversations into a context did: nothing is cut silently."""
    conversations: int = 0
    fit: int = 0  # rendered whole
    split: int = 0  # too long: cut at turn boundaries into `pieces` pieces
    pieces: int = 0
    dropped: int = 0  # overlong="drop", or no exchange fits on its own
    skipped_exchanges: int = 0  # exchanges left out of split conversations: alone longer than the context
    tokens: int = 0
    trained_tokens: int = 0

    def summary(self) -> str:
        return (f"{self.conversations} conversations: {self.fit} fit, {self.split} split into {self.pieces} "
                f"pieces at turn boundaries ({self.skipped_exchanges} exchanges longer than the context left "
                f"out), {self.dropped} dropped; {self.tokens} tokens, {self.trained_tokens} trained")


def fit_conversation(conversation: dict, tokenizer, template: str | ChatTemplate, max_tokens: int,
                     overlong: str = "split", where: str = "conversation",
                     stats: FitStats | None = None) -> list[tuple[list[int], list[int]]]:
    """Render a conversation into pieces of at most `max_tokens` ids, never cutting inside a turn.

    A conversation that does not fit is split before user turns into as few pieces as fit (each keeps
    the system prompt and the BOS) when overlong="split", or dropped when overlong="drop"; an exchange
    that cannot fit on its own is left out and counted. Counts go to `stats`.
    """
    if overlong not in ("split", "drop"):
        raise DataError(f"overlong={overlong!r}: use 'split' or 'drop'")
    t = get_template(template)
    stats = stats if stats is not None else FitStats()
    stats.conversations += 1
    enc = _Encoder(tokenizer, t)
    turns = _with_default_system(to_turns(conversation, where, "assistant"), t)
    ids, mask, _ = render_turns(turns, tokenizer, t, encoder=enc)
    head = turns[:1] if turns[0].role == "system" else []
    size = lambda ts: len(render_turns(head + ts, tokenizer, t, encoder=enc)[0])  # noqa: E731
    out, pieces, current = [], [], []
    if len(ids) <= max_tokens:
        stats.fit += 1
        out = [(ids, mask)]
    elif overlong == "split":
        body = turns[len(head):]
        for ex in (body[i:i + 2] for i in range(0, len(body), 2)):  # (user, assistant) exchanges, greedily
            if size(current + ex) <= max_tokens:
                current = current + ex
                continue
            pieces += [current] if current else []
            current = ex if size(ex) <= max_tokens else []
            stats.skipped_exchanges += not current
        pieces += [current] if current else []
        out = [render_turns(head + p, tokenizer, t, encoder=enc)[:2] for p in pieces]
        stats.split += bool(out)
        stats.pieces += len(out)
        stats.dropped += not out
    else:
        stats.dropped += 1
    for i, m in out:
        stats.tokens += len(i)
        stats.trained_tokens += sum(m)
    return out


# --- files ------------------------------------------------------------------------------------

def read_jsonl(path: str | Path, require_last: Optional[str] = "assistant", on_error: str = "fail",
               errors: list[str] | None = None) -> Iterator[tuple[str, dict]]:
    """(`file:line`, conversation) for each valid line of a conversation JSONL file. Bad lines raise
    ConversationError naming file:line, or with on_error="skip" are appended to `errors` and skipped."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"conversation file {path} does not exist; generate it with `jaxllm sft generate`")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8").lstrip("\ufeff")
                if not line.strip():
                    continue
                try:
                    conv = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConversationError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); fix the line")
                validate(conv, where, require_last)
            except (ConversationError, UnicodeDecodeError) as e:
                if isinstance(e, UnicodeDecodeError):
                    e = ConversationError(f"{where}: not valid UTF-8; re-encode the file as UTF-8")
                if on_error != "skip":
                    raise e
                if errors is not None:
                    errors.append(str(e))
                continue
            yield where, conv


def write_jsonl(conversations, path: str | Path) -> Path:
    """Write conversations one JSON object per line (validated first, so a bad one names its index)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", encoding="utf-8") as f:
        for i, conv in enumerate(conversations):
            validate(conv, f"conversation {i}", require_last=None)
            f.write(json.dumps(conv, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path
