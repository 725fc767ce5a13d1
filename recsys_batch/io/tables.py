"""Reading sources and reading/replacing date partitions of the warehouse's Delta tables.

Every derived table is a Delta table at ``<warehouse.root>/delta/<name>`` partitioned by ``dt``
(a ``YYYY-MM-DD`` string). A stage writes its date with :func:`replace_partition`: one Delta commit
that replaces exactly ``dt = D`` (``replaceWhere``), so re-running a date never appends duplicates and
readers see either the old partition or the new one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, timedelta

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_batch.config import SourceConfig, WarehouseConfig
from recsys_batch.errors import MissingInput, SchemaError
from recsys_batch.runs import record_commit
from recsys_batch.schemas import Col

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TableStats:
    table: str
    run_date: date
    rows: int
    path: str
    version: int | None = None


def require_columns(df: DataFrame, columns: list[str], table: str, where: str = "") -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise SchemaError(table, missing, df.columns, where)


def path_exists(spark: SparkSession, path: str) -> bool:
    """True if ``path`` exists on its filesystem (local, hdfs://, s3a://, ...)."""
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return bool(fs.exists(hpath))


def read_source(spark: SparkSession, src: SourceConfig, path: str) -> DataFrame:
    """Read one input as it is (columns untyped for CSV/JSON); adds ``source_file``."""
    reader = spark.read.options(**src.options)
    if src.format == "csv":
        df = reader.option("header", src.options.get("header", "true")).csv(path)
    elif src.format == "json":
        df = reader.json(path)
    elif src.format == "parquet":
        df = reader.parquet(path)
    else:
        df = reader.format("delta").load(path)
    if src.format == "delta":
        return df.withColumn(Col.SOURCE_FILE, F.lit(path))
    return df.withColumn(Col.SOURCE_FILE, F.col("_metadata.file_path"))


def table_exists(spark: SparkSession, wh: WarehouseConfig, name: str) -> bool:
    return path_exists(spark, wh.table_path(name) + "/_delta_log")


def read_table(spark: SparkSession, wh: WarehouseConfig, name: str, run_date: date | None = None,
               required: bool = True) -> DataFrame | None:
    """The ``dt = run_date`` partition of a table (or the whole table when run_date is None)."""
    path = wh.table_path(name)
    if not table_exists(spark, wh, name):
        if required:
            raise MissingInput(f"table {name} does not exist at {path}: run the stage that builds it first")
        return None
    df = spark.read.format("delta").load(path)
    if run_date is not None:
        df = df.where(F.col(Col.DT) == run_date.isoformat())
    return df


def read_range(spark: SparkSession, wh: WarehouseConfig, name: str, first: date, last: date,
               required: bool = True) -> DataFrame | None:
    """Partitions ``first <= dt <= last`` (inclusive), pruned by partition."""
    df = read_table(spark, wh, name, None, required)
    if df is None:
        return None
    return df.where(F.col(Col.DT).between(first.isoformat(), last.isoformat()))


def replace_partition(df: DataFrame, wh: WarehouseConfig, name: str, run_date: date,
                      count: bool = True) -> TableStats:
    """Atomically replace partition ``dt = run_date`` of table ``name`` with ``df`` (one Delta commit).

    ``df`` must not hold ``dt`` already; the column is added here so a stage cannot write into another
    date's partition.
    """
    from delta.tables import DeltaTable

    if Col.DT in df.columns:
        df = df.drop(Col.DT)
    d = run_date.isoformat()
    path = wh.table_path(name)
    (df.withColumn(Col.DT, F.lit(d))
       .write.format("delta").mode("overwrite")
       .option("replaceWhere", f"{Col.DT} = '{d}'")
       .partitionBy(Col.DT)
       .save(path))
    spark = df.sparkSession
    version = DeltaTable.forPath(spark, path).history(1).select("version").first()[0]
    record_commit(name, run_date, version)  # a commit row in _runs: a run killed after this shows it
    rows = spark.read.format("delta").load(path).where(F.col(Col.DT) == d).count() if count else -1
    log.info("wrote %s dt=%s (delta version %s%s)", name, d, version, f", {rows:,} rows" if count else "")
    return TableStats(name, run_date, rows, path, version)


def date_range(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]
