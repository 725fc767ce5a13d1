"""Transforms fitted on D's feature tables and saved with the run (as ``feature_spec.json``).

* **categorical** (strings) and **categorical_list** (arrays of strings): a vocabulary of the most
  frequent values (count >= ``vocab_min_count``, at most ``vocab_max_size``; ties by value) with index 0
  for missing and ``num_oov_buckets`` hashed out-of-vocabulary indices after it. A column with more
  distinct values than ``vocab_max_size`` is a huge id space: its tail hashes into ``hash_buckets``.
* **numeric**: quantile bucket boundaries (``DataFrame.approxQuantile`` at k / quantile_buckets,
  relative error ``quantile_relative_error``, de-duplicated), the transform (``log1p`` for heavy-tailed
  counts and ages, else ``none``), the mean / std of the transformed value, and the default for missing.
* **boolean**, **numeric_list**: no fitting; defaults only.

See :mod:`recsys_batch.features.spec` for how the loader applies them. Cost: one
shuffle of (column, value) counts for all categoricals at once (top ``vocab_max_size + 1`` each), one
``approxQuantile`` pass (Greenwald-Khanna sketches, all numeric columns at once) and one aggregate
for the moments, per table.
"""

from __future__ import annotations

import math
from functools import reduce
from typing import Any

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_batch.config import FeaturesConfig
from recsys_batch.features.spec import HASH_NAME, FeatureEntry

#: numeric columns that are heavy-tailed besides the counts (LongType columns): fed as log(1 + x)
LOG1P_COLUMNS = {"account_age_days", "item_age_days", "duration_s"}


def feature_kind(field: T.StructField) -> str:
    t = field.dataType
    if isinstance(t, T.StringType):
        return "categorical"
    if isinstance(t, T.BooleanType):
        return "boolean"
    if isinstance(t, T.ArrayType):
        return "categorical_list" if isinstance(t.elementType, T.StringType) else "numeric_list"
    if isinstance(t, T.NumericType):
        return "numeric"
    raise TypeError(f"no feature kind for column {field.name} of type {t.simpleString()}")


def transform_of(field: T.StructField) -> str:
    is_count = isinstance(field.dataType, T.LongType | T.IntegerType) and field.name != "age"
    return "log1p" if is_count or field.name in LOG1P_COLUMNS else "none"


def fit_vocabularies(df: DataFrame, columns: dict[str, bool], fc: FeaturesConfig) -> dict[str, dict[str, Any]]:
    """Vocabularies of several string (``False``) / array-of-string (``True``) columns in one job.

    Per column: ``{"vocab", "num_oov_buckets", "huge_id_space"}``. vocab = values with count >=
    vocab_min_count, most frequent first (ties by value), at most vocab_max_size; num_oov_buckets =
    hash_buckets if the column has more than vocab_max_size distinct values (a huge id space), else
    oov_buckets. Nulls and empty strings are missing, not values. Cost: one shuffle on (column, value),
    a window per column keeping vocab_max_size + 1 values, a collect of at most that many rows per column.
    """
    if not columns:
        return {}
    parts = [df.select(F.lit(c).alias("_c"), (F.explode_outer(F.col(c).cast("array<string>")) if is_list else F.col(c).cast("string")).alias("_v"))
             for c, is_list in columns.items()]
    values = reduce(DataFrame.unionByName, parts)
    counts = values.where(F.col("_v").isNotNull() & (F.col("_v") != "")).groupBy("_c", "_v").count()
    w = Window.partitionBy("_c").orderBy(F.col("count").desc(), F.col("_v"))
    top = (counts.withColumn("_rn", F.row_number().over(w)).where(F.col("_rn") <= fc.vocab_max_size + 1)
           .select("_c", "_v", "count", "_rn").collect())
    by_col: dict[str, list] = {c: [] for c in columns}
    for r in top:
        by_col[r["_c"]].append(r)
    out = {}
    for c, rows in by_col.items():
        rows.sort(key=lambda r: r["_rn"])
        huge = len(rows) > fc.vocab_max_size
        vocab = [r["_v"] for r in rows[: fc.vocab_max_size] if r["count"] >= fc.vocab_min_count]
        out[c] = {"vocab": vocab, "num_oov_buckets": fc.hash_buckets if huge else fc.oov_buckets,
                  "huge_id_space": huge}
    return out


def fit_vocabulary(df: DataFrame, column: str, fc: FeaturesConfig, is_list: bool = False) -> dict[str, Any]:
    """:func:`fit_vocabularies` of one column."""
    return fit_vocabularies(df, {column: is_list}, fc)[column]


def quantile_probs(n_buckets: int) -> list[float]:
    return [k / n_buckets for k in range(1, n_buckets)]


def fit_boundaries(df: DataFrame, columns: list[str], fc: FeaturesConfig) -> dict[str, list[float]]:
    """Quantile boundaries per numeric column (sorted, unique; nulls ignored; [] for an all-null column)."""
    if not columns:
        return {}
    cast = df.select(*[F.col(c).cast("double").alias(c) for c in columns])
    qs = cast.approxQuantile(columns, quantile_probs(fc.quantile_buckets), fc.quantile_relative_error)
    return {c: sorted({float(x) for x in q if x is not None and not math.isnan(x)}) for c, q in zip(columns, qs, strict=True)}


def fit_moments(df: DataFrame, fields: list[T.StructField]) -> dict[str, dict[str, float | None]]:
    """Per numeric column: mean of the raw value, mean and population std of the transformed value."""
    aggs = []
    for f in fields:
        x = F.col(f.name).cast("double")
        tx = F.log1p(F.greatest(x, F.lit(0.0))) if transform_of(f) == "log1p" else x
        aggs += [F.avg(x).alias(f"{f.name}__raw"), F.avg(tx).alias(f"{f.name}__m"), F.stddev_pop(tx).alias(f"{f.name}__s")]
    if not aggs:
        return {}
    row = df.agg(*aggs).first()
    return {f.name: {"raw_mean": row[f"{f.name}__raw"], "mean": row[f"{f.name}__m"], "std": row[f"{f.name}__s"]}
            for f in fields}


def _num(x: float | None, default: float = 0.0) -> float:
    return default if x is None or math.isnan(x) else float(x)


def fit_table_spec(df: DataFrame, table: str, key: str, prefix: str, fc: FeaturesConfig) -> list[FeatureEntry]:
    """Spec entries for every column of a feature table (the key keeps its name, the rest get ``prefix``).

    Default for missing: index 0 for categoricals, false for booleans, [] for lists, 0 for log1p
    (count-like) numerics, the mean for other numerics.
    """
    entries: list[FeatureEntry] = []
    numeric = [f for f in df.schema.fields if feature_kind(f) == "numeric"]
    bounds = fit_boundaries(df, [f.name for f in numeric], fc)
    moments = fit_moments(df, numeric)
    vocabs = fit_vocabularies(df, {f.name: feature_kind(f) == "categorical_list" for f in df.schema.fields
                                   if feature_kind(f) in ("categorical", "categorical_list")}, fc)
    for f in df.schema.fields:
        kind = feature_kind(f)
        e: FeatureEntry = {"name": f.name if f.name == key else prefix + f.name, "table": table, "column": f.name,
                           "type": kind, "dtype": f.dataType.simpleString()}
        if kind in ("categorical", "categorical_list"):
            voc = vocabs[f.name]
            e.update(vocab=voc["vocab"], num_oov_buckets=voc["num_oov_buckets"],
                     huge_id_space=voc["huge_id_space"], hash=HASH_NAME,
                     size=len(voc["vocab"]) + voc["num_oov_buckets"] + 1, default=0)
        elif kind == "numeric":
            m = moments[f.name]
            tr = transform_of(f)
            e.update(transform=tr, boundaries=bounds[f.name], num_buckets=len(bounds[f.name]) + 2,
                     mean=_num(m["mean"]), std=_num(m["std"], 1.0),
                     default=0.0 if tr == "log1p" else _num(m["raw_mean"]))
        elif kind == "boolean":
            e.update(default=False)
        else:
            e.update(default=[])
        entries.append(e)
    return entries
