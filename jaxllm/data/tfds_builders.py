"""Every named corpus as a tensorflow-datasets builder (ArrayRecord files, no TensorFlow needed).

Importing this module registers `jaxllm_<name>` builders (dashes become underscores), so

    tfds.data_source("jaxllm_wikipedia_summaries", data_dir=DIR)   # prepares on first use

gives a versioned random-access source that grain reads. Each record is
`{"id": bytes, "text": bytes, "source": bytes, "meta": bytes (JSON)}` (prepared under $JAXLLM_CACHE/tfds
unless data_dir is given); the train/validation splits are
the same hash split as `Source.documents(split)` with the default val_fraction (0.02).
Sources registered later (web-pipeline output, SFT data) get a builder with `builder_class(name)`.
"""
from __future__ import annotations

import json
import re

import tensorflow_datasets as tfds
from etils import epath

from jaxllm.data.sources import DataError, get_source, registered_sources
from jaxllm.fetch import cache_dir

VERSION = "1.0.0"
RELEASE_NOTES = {"1.0.0": "Documents as yielded by jaxllm.data.sources (id, text, source, meta JSON)."}
_BUILDERS: dict[str, type] = {}


def default_data_dir() -> str:
    """Prepared TFDS datasets live in `$JAXLLM_CACHE/tfds` unless a data_dir is given."""
    return str(cache_dir() / "tfds")


def _class_name(source_name: str) -> str:
    return "Jaxllm" + "".join(part.capitalize() for part in re.split(r"[^0-9a-zA-Z]+", source_name) if part)


def tfds_name(source_name: str) -> str:
    """The TFDS dataset name of a source: `wikipedia-summaries` → `jaxllm_wikipedia_summaries`."""
    # TFDS registers a builder under its class name in snake_case
    return tfds.core.naming.camelcase_to_snakecase(_class_name(source_name))


def builder_class(source_name: str) -> type:
    """The `tfds.core.GeneratorBasedBuilder` subclass for a registered source (created once, then reused)."""
    if source_name in _BUILDERS:
        return _BUILDERS[source_name]
    if source_name not in registered_sources():
        raise DataError(f"no registered source {source_name!r} to build a TFDS dataset from; see `jaxllm data list`")
    description = getattr(get_source(source_name), "description", "") or source_name

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{description} (jaxllm source {source_name!r})",
            features=tfds.features.FeaturesDict({"id": text, "text": tfds.features.Text(),
                                                 "source": tfds.features.Text(), "meta": tfds.features.Text()}),
            homepage="https://github.com/jaxllm/jaxllm",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # jaxllm.fetch downloads and verifies the package into its own cache
        source = get_source(source_name)
        source.fetch()
        return {split: self._generate_examples(source, split) for split in ("train", "validation")}

    def _generate_examples(self, source, split):
        for doc in source.documents(split):
            yield doc["id"], {"id": doc["id"], "text": doc["text"], "source": doc["source"],
                              "meta": json.dumps(doc["meta"], sort_keys=True, ensure_ascii=False)}

    def __init__(self, *, file_format=None, data_dir=None, **kwargs):
        # ArrayRecord by default: the TFRecord default needs TensorFlow to write and gives no random access
        tfds.core.GeneratorBasedBuilder.__init__(self, file_format=file_format or "array_record",
                                                 data_dir=data_dir or default_data_dir(), **kwargs)

    cls = type(_class_name(source_name), (tfds.core.GeneratorBasedBuilder,), {
        "__module__": __name__,
        # TFDS looks for checksums next to the builder's code; pointing it at this file avoids a lookup
        # through importlib_resources (not installed with tensorflow-datasets) for dynamic classes
        "code_path": epath.Path(__file__),
        "VERSION": tfds.core.Version(VERSION),
        "RELEASE_NOTES": RELEASE_NOTES,
        "__init__": __init__,
        "_info": _info,
        "_split_generators": _split_generators,
        "_generate_examples": _generate_examples,
    })
    _BUILDERS[source_name] = cls
    return cls


def builder(source_name: str, data_dir: str | None = None) -> tfds.core.GeneratorBasedBuilder:
    """A builder instance writing ArrayRecord files (the TF-free format) under `data_dir`."""
    return builder_class(source_name)(data_dir=data_dir)


def data_source(source_name: str, split: str = "train", data_dir: str | None = None):
    """Prepare (once) and open one split as a random-access source for grain."""
    b = builder(source_name, data_dir)
    b.download_and_prepare()
    return b.as_data_source(split=split)


for _name in registered_sources():
    builder_class(_name)
