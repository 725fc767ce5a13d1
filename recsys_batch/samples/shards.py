"""Shuffled Parquet shard files for the PyTorch IterableDataset.

Layout (``kind`` = recall | ranking)::

    <warehouse.root>/samples/<kind>/dt=D/part-00000.parquet ... part-000NN.parquet
    <warehouse.root>/samples/<kind>/dt=D/_manifest.json     {"rows", "files": [{"name", "rows"}], "seed", ...}
    <warehouse.root>/samples/<kind>/dt=D/_SUCCESS

Written by Spark only (nothing goes through the driver): a shuffle key ``xxhash64(seed, D, row keys)``,
``repartition(n_files, key)`` then ``sortWithinPartitions(key)``, so rows are spread uniformly over
``ceil(rows / rows_per_file)`` files and each file is in random order, the same order on every re-run.
Row groups are bounded by ``parquet.block.size`` (``samples.row_group_bytes``): a loader reads one row
group at a time, shard by shard (DDP rank r / worker w take every k-th file). The folder is written to
a staging folder and swapped in (:func:`recsys_batch.features.files.replace_dir`): a re-run replaces it.
"""

from __future__ import annotations

import json
import math
from datetime import date

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_batch.config import SamplesConfig, WarehouseConfig
from recsys_batch.features import files
from recsys_batch.schemas import Col

_KEY = "_shuffle"


def shard_dir(wh: WarehouseConfig, kind: str, run_date: date) -> str:
    return f"{wh.root.rstrip('/')}/samples/{kind}/{Col.DT}={run_date.isoformat()}"


def write_shards(df: DataFrame, wh: WarehouseConfig, kind: str, run_date: date, sc: SamplesConfig,
                 key_cols: list[str], rows: int | None = None, extra: dict | None = None) -> dict:
    """Write ``df`` as shuffled shard files of ``kind`` for D; returns the manifest (also written)."""
    spark = df.sparkSession
    final = shard_dir(wh, kind, run_date)
    staging = f"{wh.root.rstrip('/')}/samples/{kind}/_staging_{Col.DT}={run_date.isoformat()}"
    files.delete(spark, staging)
    rows = df.count() if rows is None else rows
    n_files = max(1, math.ceil(rows / sc.rows_per_file))
    key = F.xxhash64(F.lit(sc.seed), F.lit(run_date.isoformat()), *[F.col(c) for c in key_cols])
    (df.withColumn(_KEY, key).repartition(n_files, _KEY).sortWithinPartitions(_KEY).drop(_KEY)
       .write.mode("overwrite").option("parquet.block.size", str(sc.row_group_bytes))
       .option("compression", "snappy").parquet(staging))
    parts = [n for n in files.list_names(spark, staging) if n.startswith("part-") and n.endswith(".parquet")]
    names = []
    for i, name in enumerate(sorted(parts)):
        new = f"part-{i:05d}.parquet"
        files.rename(spark, f"{staging}/{name}", f"{staging}/{new}")
        names.append(new)
    counts = {}
    if names:
        counts = {r["f"]: r["count"] for r in spark.read.parquet(staging)
                  .groupBy(F.col("_metadata.file_name").alias("f")).count().collect()}
    manifest = {"kind": kind, "run_date": run_date.isoformat(), "rows": rows, "seed": sc.seed,
                "row_group_bytes": sc.row_group_bytes, "shuffle_key": key_cols,
                "files": [{"name": n, "rows": int(counts.get(n, 0))} for n in names], **(extra or {})}
    files.write_text(spark, f"{staging}/_manifest.json", json.dumps(manifest, indent=1))
    files.replace_dir(spark, staging, final)
    return manifest
