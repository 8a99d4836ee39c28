"""Read WARC files (and folders of HTML) into raw documents; write WARC response records.

Reading never raises on bad data: every record comes out either as a raw document or as a
`(None, reason)` pair (`corrupt_record`, `truncated_record`, ...), so the runner can count it. Each
gzip member is decompressed on its own, so one corrupt member costs one record, not the file.
"""
from __future__ import annotations

import hashlib
import io
import mmap
import uuid
import zlib
from pathlib import Path
from typing import Iterator, Optional

from fastwarc.warc import ArchiveIterator, WarcRecord, WarcRecordType

Doc = dict
_GZIP_MAGIC = b"\x1f\x8b\x08"
_CHUNK = 1 << 20


def _gzip_members(buf) -> Iterator[tuple[int, Optional[bytes], Optional[str]]]:
    """Yield (offset, decompressed bytes, error) for each gzip member of `buf` (bytes or mmap)."""
    view = memoryview(buf)
    pos, n = 0, len(buf)
    while pos < n:
        d = zlib.decompressobj(31)
        parts, cur, error = [], pos, None
        try:
            while not d.eof and cur < n:
                chunk = view[cur:cur + _CHUNK]
                parts.append(d.decompress(chunk))
                cur += len(chunk) - len(d.unused_data)
        except zlib.error:
            error = "corrupt_record"
        if error is None and not d.eof:
            yield pos, None, "truncated_record"
            return
        if error is not None:
            yield pos, None, error
            nxt = buf.find(_GZIP_MAGIC, pos + 1)
            if nxt < 0:
                return
            pos = nxt
            continue
        yield pos, b"".join(parts), None
        pos = cur


def _records_in(raw: bytes, base: int) -> Iterator[tuple[Optional[WarcRecord], Optional[str], int]]:
    """Parse uncompressed WARC bytes; on a bad header resync at the next `WARC/1.` line."""
    pos = 0
    while pos < len(raw):
        last = pos
        try:
            for rec in ArchiveIterator(io.BytesIO(raw[pos:]), parse_http=True, stream_detect=False,
                                       record_types=WarcRecordType.response | WarcRecordType.resource):
                last = pos + rec.stream_pos
                yield rec, None, base + last
            return
        except OSError:
            yield None, "corrupt_record", base + last
            nxt = raw.find(b"\nWARC/1.", last + 1)
            if nxt < 0:
                return
            pos = nxt + 1


def _http_header(rec: WarcRecord, name: str) -> Optional[str]:
    if rec.http_headers is None:
        return None
    return rec.http_headers.get(name)


def record_to_doc(rec: WarcRecord, source: str, index: int) -> tuple[Optional[Doc], Optional[str]]:
    """One WARC record to a raw document {id, url, raw, meta}; raw is the HTTP body bytes."""
    url = rec.headers.get("WARC-Target-URI") or ""
    if not url:  # required for response/resource records: the header block is damaged
        return None, "corrupt_record"
    expected = rec.content_length
    body = rec.reader.read()
    if len(body) < expected:
        return None, "truncated_record"
    rid = (rec.headers.get("WARC-Record-ID") or "").strip("<>") or f"{source}#{index}"
    content_type = rec.http_content_type
    if content_type is None and rec.record_type == WarcRecordType.resource:
        content_type = (rec.headers.get("Content-Type") or "").split(";")[0].strip() or None
    meta = {"source_file": source, "record": index, "content_type": content_type,
            "charset": rec.http_charset, "date": rec.headers.get("WARC-Date")}
    return {"id": rid, "url": url, "raw": body, "meta": meta}, None


def read_warc(path: str | Path, max_bytes: int = 1 << 62) -> Iterator[tuple[Optional[Doc], Optional[str]]]:
    """Yield (raw doc, None) or (None, reason) for every response record of a .warc/.warc.gz file.

    Records whose payload exceeds `max_bytes` are reported as `too_large` without being read.
    """
    path = Path(path)
    source = path.name
    index = 0
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size == 0:
            return
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            gz = buf[:2] == _GZIP_MAGIC[:2]
            chunks = _gzip_members(buf) if gz else iter([(0, buf[:], None)])
            for offset, raw, error in chunks:
                if error is not None:
                    yield None, error
                    index += 1
                    continue
                for rec, err, _pos in _records_in(raw, offset):
                    if err is not None:
                        yield None, err
                    elif rec.content_length > max_bytes:
                        yield None, "too_large"
                    else:
                        yield record_to_doc(rec, source, index)
                    index += 1
        finally:
            buf.close()


def read_html_dir(root: str | Path, base_url: str) -> Iterator[tuple[Optional[Doc], Optional[str]]]:
    """Yield raw documents for every *.html/*.htm file under `root`, URL = base_url + relative path."""
    root = Path(root)
    for i, p in enumerate(sorted(q for q in root.rglob("*") if q.suffix.lower() in (".html", ".htm"))):
        rel = p.relative_to(root).as_posix()
        meta = {"source_file": root.name, "record": i, "content_type": "text/html", "charset": None,
                "date": None}
        yield {"id": hashlib.sha1(f"{root.name}/{rel}".encode()).hexdigest(),
               "url": base_url.rstrip("/") + "/" + rel, "raw": p.read_bytes(), "meta": meta}, None


def http_response_record(url: str, body: bytes, content_type: str = "text/html; charset=utf-8",
                         date: str = "2024-01-15T12:00:00Z", extra_headers: tuple = ()) -> bytes:
    """One uncompressed WARC/1.1 response record (HTTP/1.1 200 with headers) as bytes.

    The record id is a UUID derived from url+body so re-packing gives identical files.
    """
    rid = uuid.UUID(hashlib.md5(url.encode() + b"\0" + body).hexdigest())
    http_date = "Mon, 15 Jan 2024 12:00:00 GMT"
    head = [b"HTTP/1.1 200 OK", b"Date: " + http_date.encode(), b"Server: Apache",
            b"Content-Length: " + str(len(body)).encode()]
    if content_type:
        head.append(b"Content-Type: " + content_type.encode())
    head += [k.encode() + b": " + v.encode() for k, v in extra_headers]
    rec = WarcRecord()
    rec.init_headers(WarcRecordType.response, record_urn=f"uuid:{rid}".encode())
    rec.headers["WARC-Date"] = date
    rec.headers["WARC-Target-URI"] = url
    rec.headers["Content-Type"] = "application/http; msgtype=response"
    if content_type:  # what Common Crawl records as the sniffed type of the body
        rec.headers["WARC-Identified-Payload-Type"] = content_type.split(";")[0].strip()
    rec.set_bytes_content(b"\r\n".join(head) + b"\r\n\r\n" + body)
    out = io.BytesIO()
    rec.write(out, checksum_data=True)
    return out.getvalue()


def write_warc(path: str | Path, records: list[bytes], compress: bool = True) -> Path:
    """Write records (from `http_response_record`) to a .warc.gz, one gzip member per record."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        for r in records:
            f.write(_gzip(r) if compress else r)
    tmp.replace(path)
    return path


def _gzip(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()
