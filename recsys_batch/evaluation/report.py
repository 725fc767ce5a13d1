"""The evaluation result (channels as rows) and its JSON file under ``<warehouse.root>/reports/evaluate``."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from pyspark.sql import SparkSession


@dataclass(frozen=True)
class EvaluateResult:
    """One mode of ``run_evaluate`` (``published`` or ``rebuild``): one row per channel, ready to render.

    Row keys: ``channel``, ``users`` (test users averaged over), ``users_with_list`` (test users with a list
    in the channel), ``user_coverage`` (their share), ``recall@K``, ``hit_rate@K``, ``ndcg@K``,
    ``coverage@K``, ``novelty@K``, ``pop_percentile@K``, ``hits@K``, ``unique_hits@K`` for each K of ``ks``
    (published mode with a ``recall_merged`` provenance: also ``merged_sole_hits@K``), and ``mrr`` (definitions: :data:`recsys_batch.evaluation.metrics.METRIC_DEFINITIONS`). ``extra`` holds
    per-evaluation numbers (``truth_pop_percentile``, ``union_hits@K``, ``matrix_items``, ...);
    ``catalog_items`` is the catalog of ``coverage@K``. ``split``: the rebuild split, or
    ``published``; ``train_date``: the date of the matrix the lists were built on; ``source``: where lists
    and truth came from; ``skipped``: why a mode produced nothing (no truth yet), else None.
    """

    run_date: date
    split: str
    train_date: date
    ks: list[int]
    rows: list[dict[str, Any]]
    test_users: int = 0
    train_users: int = 0
    catalog_items: int = 0
    path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    mode: str = "rebuild"
    source: str = ""
    skipped: str | None = None

    @property
    def columns(self) -> list[str]:
        ks = self.ks
        return (["channel", "users", "users_with_list", "user_coverage"] + [f"recall@{k}" for k in ks]
                + [f"hit_rate@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + ["mrr"]
                + [f"coverage@{k}" for k in ks] + [f"novelty@{k}" for k in ks]
                + [f"pop_percentile@{k}" for k in ks] + [f"hits@{k}" for k in ks] + [f"unique_hits@{k}" for k in ks])

    def row(self, channel: str) -> dict[str, Any]:
        return next(r for r in self.rows if r["channel"] == channel)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["run_date"], d["train_date"] = self.run_date.isoformat(), self.train_date.isoformat()
        d["rows"] = [{k: _clean(v) for k, v in r.items()} for r in self.rows]
        return d


def _clean(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def report_path(root: str, run_date: date) -> str:
    return f"{root.rstrip('/')}/reports/evaluate/dt={run_date.isoformat()}/metrics.json"


def write_json(spark: SparkSession, path: str, payload: dict[str, Any]) -> str:
    """Write ``payload`` as JSON to ``path``, replacing it.

    A local path (no scheme, or ``file:``) is written with plain Python; any other Hadoop URI
    (``hdfs://``, ``s3a://``, ...) through the JVM's Hadoop FileSystem of the session, so it uses the
    cluster's credentials and connectors without a second client. The file is a few KB.
    """
    text = json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n"
    if "://" not in path or path.startswith("file:"):
        local = path[len("file:"):] if path.startswith("file:") else path
        local = os.path.abspath(local.replace("///", "/", 1) if local.startswith("///") else local)
        os.makedirs(os.path.dirname(local), exist_ok=True)
        tmp = local + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, local)  # readers never see a half-written file
        return local
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    out = fs.create(hpath, True)
    try:
        out.write(bytearray(text.encode("utf-8")))
    finally:
        out.close()
    return path
