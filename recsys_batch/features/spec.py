"""The feature spec: what the PyTorch side reads to turn raw feature values into model inputs.

Deliberately free of pyspark (``training/`` never imports it): the Spark side fits the transforms
(:mod:`recsys_batch.features.transforms`) and writes ``<warehouse.root>/features/dt=D/feature_spec.json``;
the loader reads it with :func:`load_spec` (through :mod:`recsys_batch.io.fs`: local paths, ``s3a://`` /
``s3://``, ``hdfs://``, any fsspec scheme) and applies
:func:`categorical_index`, :func:`bucket_index` and :func:`dense_value` per value (or vectorised with numpy).

Index conventions (every categorical and bucketised feature):

* ``0`` -- missing (null or empty string);
* ``1 .. V`` -- the vocabulary, in spec order (most frequent first);
* ``V + 1 .. V + H`` -- out of vocabulary: ``V + 1 + stable_hash64(value) % H`` with ``H =
  num_oov_buckets`` (1 = a single OOV index; a huge id space gets ``features.hash_buckets``);
* size = ``V + H + 1``.

Numeric: bucket = 0 if missing else ``1 + bisect_right(boundaries, x)`` (size ``len(boundaries) + 2``);
the dense value is ``transform(x)`` (``log1p`` or ``none``) of ``x`` (``default`` when missing),
standardised by the spec's ``mean`` / ``std`` of the transformed values if the model wants.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
from typing import Any

SPEC_VERSION = 1
SPEC_FILE = "feature_spec.json"
COVERAGE_FILE = "coverage.json"
HASH_NAME = "blake2b-64 of the UTF-8 value, little-endian unsigned"

FeatureEntry = dict[str, Any]


def stable_hash64(value: str) -> int:
    """Stable across processes and languages (unlike Python's ``hash``): blake2b, 8-byte digest, LE."""
    return int.from_bytes(hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest(), "little")


def categorical_index(entry: FeatureEntry, value: str | None, _lookup: dict[str, int] | None = None) -> int:
    """Index of one value under a ``categorical`` / ``categorical_list`` entry (see module docstring)."""
    if value is None or value == "":
        return 0
    lookup = _lookup if _lookup is not None else vocabulary_lookup(entry)
    idx = lookup.get(value)
    if idx is not None:
        return idx
    return len(entry["vocab"]) + 1 + stable_hash64(value) % int(entry["num_oov_buckets"])


def vocabulary_lookup(entry: FeatureEntry) -> dict[str, int]:
    """value -> index for the vocabulary of an entry (build once per feature, reuse per value)."""
    return {v: i + 1 for i, v in enumerate(entry["vocab"])}


def bucket_index(entry: FeatureEntry, value: float | None) -> int:
    """Quantile bucket of a numeric value: 0 missing, else 1 + number of boundaries <= value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return 0
    return 1 + bisect.bisect_right(entry["boundaries"], float(value))


def dense_value(entry: FeatureEntry, value: float | None) -> float:
    """The numeric input: ``transform(value)`` with ``default`` for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        value = entry["default"]
    x = float(value)
    return math.log1p(max(x, 0.0)) if entry.get("transform") == "log1p" else x


def to_json(spec: dict[str, Any]) -> str:
    return json.dumps(spec, indent=1, sort_keys=False, allow_nan=False)


def load_spec(path: str) -> dict[str, Any]:
    """Read a feature_spec.json from a local path or any URI :func:`recsys_batch.io.fs.resolve` understands;
    FileNotFoundError if it is absent."""
    from recsys_batch.io.fs import read_text

    spec = json.loads(read_text(path))
    if spec.get("version") != SPEC_VERSION:
        raise ValueError(f"{path}: feature spec version {spec.get('version')}, expected {SPEC_VERSION}")
    return spec


def features_by_name(spec: dict[str, Any]) -> dict[str, FeatureEntry]:
    return {e["name"]: e for e in spec["features"]}
