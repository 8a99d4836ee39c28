"""Each web-pipeline stage's decision on hand-made documents (no network, no real pages)."""
import gzip

import numpy as np
import pytest

from jaxllm.data.web import dedup, pii, quality, stages
from jaxllm.data.web.config import (DedupConfig, ExtractConfig, LanguageConfig, PiiConfig, QualityConfig,
                                    ReadConfig, UrlFilterConfig)
from jaxllm.data.web.planted import ARTICLE, PII_ARTICLE, PII_ORDINARY, PII_SECRETS, near_dup
from jaxllm.data.web.warc import http_response_record, read_warc, write_warc

PROSE = ("The library opened a new reading room last spring. It has tall windows that face the river, and "
         "the light is good for most of the day. Students come early to find a seat near the glass. "
         "The staff added more chairs in the summer, but the room is still full by ten o'clock. "
         "Many visitors say that it is the quietest place in the whole town to work with a book. "
         "Next year the city plans to open a second room with the same design on the other side of the park.")


def doc(text=PROSE, url="https://example.org/page.html"):
    return {"id": "x", "url": url, "text": text, "meta": {}}


def raw(body: bytes, ctype="text/html", charset="utf-8", url="https://example.org/a.html"):
    return {"id": "x", "url": url, "raw": body, "meta": {"content_type": ctype, "charset": charset}}


def reason(result):
    return result[1]


# ---------------------------------------------------------------- URL filter
@pytest.mark.parametrize("url,expected", [
    ("https://docs.python.org/3.11/library/os.html", None),
    ("https://www.pornhub.com/view", "blocklisted_domain"),
    ("https://cdn.malware.wicar.org/x.html", "blocklisted_domain"),
    ("https://example.com/porn/clip.html", "banned_word"),
    ("https://example.com/free-sex-cam.html", "soft_banned_words"),
    ("https://example.com/free-books.html", None),
    ("https://example.com/getviagranow", "banned_subword"),
])
def test_url_filter(url, expected):
    assert reason(stages.url_filter(doc(url=url), UrlFilterConfig())) == expected


def test_url_filter_user_blocklist(tmp_path):
    f = tmp_path / "block.txt"
    f.write_text("# mine\nbad.example.net\n")
    cfg = UrlFilterConfig(blocklist_file=str(f), use_default_blocklist=False)
    assert reason(stages.url_filter(doc(url="https://www.bad.example.net/"), cfg)) == "blocklisted_domain"
    assert reason(stages.url_filter(doc(url="https://xhamster.com/"), cfg)) is None  # default list off


# ---------------------------------------------------------------- decode
def test_decode_rejects_bad_payloads():
    cfg = ReadConfig(max_bytes=1000)
    assert reason(stages.decode(raw(b"%PDF-1.4", ctype="application/pdf"), cfg)) == "not_html"
    assert reason(stages.decode(raw(b"", ), cfg)) == "empty"
    assert reason(stages.decode(raw(b"  \n "), cfg)) == "empty"
    assert reason(stages.decode(raw(b"<p>" + b"x" * 2000), cfg)) == "too_large"
    garbage = bytes(range(128, 256)) * 20
    assert reason(stages.decode(raw(b"<html>" + garbage, charset="utf-8"), ReadConfig())) == "undecodable"


def test_decode_repairs_charsets():
    text = "<p>Crème brûlée at the café</p>"
    d, r = stages.decode(raw(text.encode("cp1252"), charset="utf-8"), ReadConfig())  # wrong charset
    assert r is None and "brûlée" in d["html"] and d["meta"]["charset_note"] == "wrong_charset"
    d, r = stages.decode(raw(text.encode("utf-8"), charset="iso-8859-1"), ReadConfig())  # utf-8 as latin-1
    assert "brûlée" in d["html"] and d["meta"]["charset_note"] == "wrong_charset"
    d, r = stages.decode(raw(text.encode("utf-8"), charset=None), ReadConfig())  # missing charset
    assert "brûlée" in d["html"] and d["meta"]["charset_note"] == "missing_charset"
    d, r = stages.decode(raw(b"<!DOCTYPE html><p>hi</p>", ctype=None, charset=None), ReadConfig())
    assert r is None and d["meta"]["content_type"] == "text/html"


# ---------------------------------------------------------------- extraction
def test_extract_drops_boilerplate():
    html = ("<html><body><nav><ul><li><a href='/'>Home</a></li><li><a href='/a'>About</a></li></ul></nav>"
            f"<main><article><p>{PROSE}</p></article></main>"
            "<footer><a href='/terms'>Terms of use</a> Copyright 2024</footer></body></html>")
    d, r = stages.extract({"id": "x", "url": "u", "html": html, "meta": {}}, ExtractConfig())
    assert r is None and "quietest place" in d["text"]
    assert "Terms of use" not in d["text"] and "About" not in d["text"]
    d, r = stages.extract({"id": "x", "url": "u", "html": "<html><body><script>x=1</script></body></html>",
                           "meta": {}}, ExtractConfig())
    assert r == "no_text"


# ---------------------------------------------------------------- language
def test_language():
    cfg = LanguageConfig()
    d, r = stages.language(doc(), cfg)
    assert r is None and d["meta"]["language"] == "en" and d["meta"]["language_score"] >= 0.65
    german = "Die Bibliothek der Stadt wurde im Jahr 1892 gegründet und gehört heute zu den größten Sammlungen."
    assert reason(stages.language(doc(german), cfg)) == "language_de"
    assert reason(stages.language(doc(german), LanguageConfig(languages=("en", "de")))) is None
    assert reason(stages.language(doc(PROSE), LanguageConfig(threshold=1.01))) == "low_language_score"


# ---------------------------------------------------------------- quality
Q = QualityConfig()


def test_gopher_repetition():
    assert reason(quality.gopher_repetition(doc(), Q)) is None
    assert reason(quality.gopher_repetition(doc("\n".join(["same line here"] * 10 + [PROSE])), Q)) == "dup_line_frac"
    spam = "Buy cheap watches now. Best prices on watches. " * 50
    assert reason(quality.gopher_repetition(doc(spam), Q)).startswith(("top_", "duplicated_"))


def test_gopher_quality():
    assert reason(quality.gopher_quality(doc(), Q)) is None
    assert reason(quality.gopher_quality(doc("Too short to keep."), Q)) == "gopher_short_doc"
    numbers = " ".join(f"{i}.{i} = {i * 3}" for i in range(80)) + " the and of to"
    assert reason(quality.gopher_quality(doc(numbers), Q)) == "gopher_below_alpha_threshold"
    no_stop = " ".join(["apple banana cherry"] * 30)
    assert reason(quality.gopher_quality(doc(no_stop), Q)) == "gopher_enough_stop_words"
    hashes = PROSE + " #tag" * 30
    assert reason(quality.gopher_quality(doc(hashes), Q)) == "gopher_too_many_hashes"
    bullets = "\n".join(f"- item number {i} of the list" for i in range(60))
    assert reason(quality.gopher_quality(doc(bullets), Q)) == "gopher_too_many_bullets"
    longwords = " ".join(["extraordinarilylongword"] * 60 + ["the", "and"])
    assert reason(quality.gopher_quality(doc(longwords), Q)) == "gopher_above_avg_word_length"


def test_c4():
    d, r = quality.c4(doc(PROSE + "\nHome About\nPlease enable JavaScript to view this page.\n"
                          "This site uses cookies to improve your experience."), Q)
    assert r is None and "Home About" not in d["text"] and "JavaScript" not in d["text"]
    assert "cookies" not in d["text"] and "quietest place" in d["text"]
    assert reason(quality.c4(doc(PROSE + "\nLorem ipsum dolor sit amet, consectetur."), Q)) == "c4_lorem_ipsum"
    assert reason(quality.c4(doc(PROSE + "\nint main() { return 0; }"), Q)) == "c4_curly_bracket"
    assert reason(quality.c4(doc("One sentence only here."), Q)) == "c4_too_few_sentences"
    cfg = QualityConfig(c4_filter_curly_bracket=False)
    assert reason(quality.c4(doc(PROSE + "\nint main() { return 0; }"), cfg)) is None


def test_fineweb():
    assert reason(quality.fineweb(doc(), Q)) is None
    no_punct = "\n".join(f"Menu entry number {i} of the site" for i in range(20))
    assert reason(quality.fineweb(doc(no_punct), Q)) == "fineweb_line_punct_ratio"
    short = "\n".join(["Short line."] * 3 + [f"Tiny {i}." for i in range(10)])
    assert reason(quality.fineweb(doc(short), Q)) == "fineweb_short_line_ratio"
    dup = PROSE + "\n" + "Copyright 2024 Example Corp. All rights reserved.\n" * 2
    assert reason(quality.fineweb(doc(dup), Q)) == "fineweb_char_dup_ratio"
    listy = "\n".join(f"Entry{i}." for i in range(40))
    assert reason(quality.fineweb(doc(listy), QualityConfig(short_line_thr=1.1))) == "fineweb_list_ratio"


# ---------------------------------------------------------------- PII
def test_pii_replaced_and_ordinary_numbers_survive():
    text, counts = pii.anonymize_text(PII_ARTICLE, PiiConfig())
    for secret in PII_SECRETS:
        assert secret not in text, secret
    for ordinary in PII_ORDINARY:
        assert ordinary in text, ordinary
    assert counts == {"email": 2, "phone": 3, "ip": 2, "ssn": 1}
    keep = ("Section 9.4.2.1 of the manual, version 1.2.3.4, std::vector and a::b, ISBN 978-0-13-110362-7, "
            "2023-10-15 at 12:30:45, pi is 3.14159, 100-200 pages, order 12345678.")
    assert pii.anonymize_text(keep)[0] == keep
    assert pii.anonymize_text("ping fe80::1ff:fe23:4567:890a now")[0] == "ping <IP_ADDRESS> now"
    assert pii.anonymize_text("mail me at bob@example.com", PiiConfig(email=False))[0].endswith("bob@example.com")


# ---------------------------------------------------------------- dedup
def test_minhash_estimates_jaccard_and_is_deterministic():
    a = dedup.shingle_hashes(ARTICLE, 5)
    b = dedup.shingle_hashes(near_dup(ARTICLE), 5)
    true_j = len(np.intersect1d(a, b)) / len(np.union1d(a, b))
    sa, sb = dedup.minhash(a, 112, 1), dedup.minhash(b, 112, 1)
    assert abs((sa == sb).mean() - true_j) < 0.15
    assert np.array_equal(sa, dedup.minhash(a, 112, 1))
    unrelated = dedup.minhash(dedup.shingle_hashes(PII_ARTICLE, 5), 112, 1)
    assert (sa == unrelated).mean() < 0.1


def test_dedup_groups_across_partitions():
    cfg = DedupConfig()
    texts = [ARTICLE, PII_ARTICLE, near_dup(ARTICLE), ARTICLE.upper(), PROSE]
    entries = dedup.entries_array([e for i, t in enumerate(texts) for e in dedup.doc_entries(t, i, cfg)])
    removed = dedup.resolve(dedup.group_buckets(entries))
    assert removed == {2: ("near_duplicate", 0), 3: ("exact_duplicate", 0)}
    for parts in (2, 3, 7):
        buckets = [b for p in dedup.partition(entries, parts) for b in dedup.group_buckets(p)]
        assert dedup.resolve(buckets) == removed
    shuffled = entries[np.random.default_rng(0).permutation(len(entries))]
    assert dedup.resolve(dedup.group_buckets(shuffled)) == removed


# ---------------------------------------------------------------- WARC reading of bad records
def test_warc_bad_records_are_counted_not_fatal(tmp_path):
    recs = [http_response_record(f"https://example.org/{i}", f"<p>page {i}</p>".encode()) for i in range(4)]
    path = write_warc(tmp_path / "a.warc.gz", recs)
    one = [gzip.compress(r, mtime=0) for r in recs]
    bad = bytearray(one[1])
    bad[25:45] = bytes(20)
    (tmp_path / "b.warc.gz").write_bytes(one[0] + bytes(bad) + one[2] + one[3][: len(one[3]) // 2])
    good = [d["url"] for d, e in read_warc(path)]
    assert good == [f"https://example.org/{i}" for i in range(4)]
    out = [(d["url"] if d else e) for d, e in read_warc(tmp_path / "b.warc.gz")]
    assert out == ["https://example.org/0", "corrupt_record", "https://example.org/2", "truncated_record"]
    assert [e for d, e in read_warc(path, max_bytes=5)] == ["too_large"] * 4
    # uncompressed WARC: garbage between records and a cut header block
    (tmp_path / "c.warc").write_bytes(recs[0] + b"garbage\r\n\r\n" * 3 + recs[1] + recs[2][:50] + b"\r\n\r\n" + recs[3])
    out = [(d["url"] if d else e) for d, e in read_warc(tmp_path / "c.warc")]
    assert out == ["https://example.org/0", "corrupt_record", "https://example.org/1", "corrupt_record",
                   "https://example.org/3"]
    (tmp_path / "empty.warc.gz").write_bytes(b"")
    assert list(read_warc(tmp_path / "empty.warc.gz")) == []


def test_html_folder_input(tmp_path):
    from jaxllm.data.web.warc import read_html_dir
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "index.html").write_text(f"<p>{PROSE}</p>")
    (tmp_path / "docs" / "sub" / "b.htm").write_text("<p>b</p>")
    (tmp_path / "docs" / "notes.txt").write_text("not html")
    docs = [d for d, e in read_html_dir(tmp_path / "docs", "https://example.org/manual/")]
    assert [d["url"] for d in docs] == ["https://example.org/manual/index.html", "https://example.org/manual/sub/b.htm"]
    assert stages.decode(docs[0], ReadConfig())[0]["html"].startswith("<p>The library")
