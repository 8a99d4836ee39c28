"""FineWeb-style web data pipeline: WARC → URL filter → text → language → quality → dedup → PII → JSONL.

    from jaxllm.data.web import WebConfig, run_pipeline
    stats = run_pipeline(WebConfig(), ["crawl-0.warc.gz", "crawl-1.warc.gz"], "out/web", num_workers=2)

See docs/web_pipeline.md.
"""
from .config import RecipeConfig, WebConfig
from .runner import PipelineError, register_output, run_pipeline

__all__ = ["WebConfig", "RecipeConfig", "run_pipeline", "register_output", "PipelineError"]
