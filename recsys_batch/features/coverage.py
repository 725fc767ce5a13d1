"""Coverage report: the share of non-missing values per feature, with thresholds.

Missing = null, an empty string, or an empty array. A feature below its threshold
(``features.coverage_min_by_feature[name]`` else ``features.coverage_min``) is a warning; a feature of
``features.required_features`` below it fails the stage with :class:`CoverageTooLow`, after the report
is written and before any feature table is published.
"""

from __future__ import annotations

import logging
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_batch.config import FeaturesConfig
from recsys_batch.errors import RecsysBatchError

log = logging.getLogger(__name__)


class CoverageTooLow(RecsysBatchError):
    """Required features whose share of non-missing values is below their threshold."""

    def __init__(self, run_date: str, failures: dict[str, dict[str, Any]], report_path: str = ""):
        self.run_date, self.failures, self.report_path = run_date, failures, report_path
        parts = ", ".join(f"{name} {f['coverage']:.2%} < {f['threshold']:.2%} ({f['non_missing']:,} of "
                          f"{f['rows']:,} rows of {f['table']})" for name, f in failures.items())
        where = f"; report: {report_path}" if report_path else ""
        super().__init__(f"features for {run_date}: required feature(s) below coverage: {parts}. "
                         f"Nothing was published{where}")


def _present(field: T.StructField) -> Column:
    c = F.col(field.name)
    if isinstance(field.dataType, T.StringType):
        return c.isNotNull() & (c != "")
    if isinstance(field.dataType, T.ArrayType):
        return c.isNotNull() & (F.size(c) > 0)
    if isinstance(field.dataType, T.FloatType | T.DoubleType):
        return c.isNotNull() & ~F.isnan(c)
    return c.isNotNull()


def feature_coverage(df: DataFrame, names: dict[str, str] | None = None) -> tuple[int, dict[str, int]]:
    """``(rows, {feature name: non-missing rows})`` in one aggregate; ``names`` maps column -> feature name."""
    names = names or {c: c for c in df.columns}
    fields = [f for f in df.schema.fields if f.name in names]
    row = df.agg(F.count(F.lit(1)).alias("__rows"),
                 *[F.sum(F.when(_present(f), 1).otherwise(0)).alias(f.name) for f in fields]).first()
    return int(row["__rows"]), {names[f.name]: int(row[f.name] or 0) for f in fields}


def coverage_entries(table: str, rows: int, non_missing: dict[str, int], fc: FeaturesConfig) -> dict[str, dict]:
    """Per feature: table, rows, non_missing, coverage, threshold, required, status (ok / warn / fail)."""
    out = {}
    for name, n in non_missing.items():
        cov = n / rows if rows else 0.0
        thr = fc.coverage_min_by_feature.get(name, fc.coverage_min)
        required = name in fc.required_features
        status = "ok" if cov >= thr else ("fail" if required else "warn")
        out[name] = {"table": table, "rows": rows, "non_missing": n, "coverage": round(cov, 6), "threshold": thr,
                     "required": required, "status": status}
    return out


def check_coverage(report: dict[str, Any], run_date: str, fc: FeaturesConfig, report_path: str = "") -> None:
    """Log every feature's coverage; warn below threshold; raise :class:`CoverageTooLow` for required ones.

    A required feature that no table produced counts as coverage 0.
    """
    feats = dict(report["features"])
    for name in fc.required_features:
        if name not in feats:
            feats[name] = {"table": "(none)", "rows": 0, "non_missing": 0, "coverage": 0.0,
                           "threshold": fc.coverage_min_by_feature.get(name, fc.coverage_min),
                           "required": True, "status": "fail"}
    for name, f in feats.items():
        log.info("coverage %s %s: %.2f%% (%d/%d)", f["table"], name, 100 * f["coverage"], f["non_missing"], f["rows"])
        if f["status"] == "warn":
            log.warning("feature %s coverage %.2f%% below %.2f%% (%d of %d rows of %s)", name, 100 * f["coverage"],
                        100 * f["threshold"], f["non_missing"], f["rows"], f["table"])
    failures = {n: f for n, f in feats.items() if f["status"] == "fail"}
    if failures:
        raise CoverageTooLow(run_date, failures, report_path)
