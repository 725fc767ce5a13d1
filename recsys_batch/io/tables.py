"""Reading sources and reading/replacing date partitions of the warehouse's Delta tables.

Every derived table is a Delta table at ``<warehouse.root>/delta/<name>`` partitioned by ``dt``
(a ``YYYY-MM-DD`` string). A stage writes its date with :func:`replace_partition`: one Delta commit
that replaces exactly ``dt = D`` (``replaceWhere``), so re-running a date never appends duplicates and
readers see either the old partition or the new one.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import date, timedelta

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_batch.config import SourceConfig, WarehouseConfig
from recsys_batch.errors import MissingInput, SchemaError, SourceUnreadable
from recsys_batch.io.sources import has_glob, hidden_below, is_hidden
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


@dataclass(frozen=True, order=True)
class SourceFile:
    path: str  # as Hadoop prints it (``file:/...``, ``s3a://...``)
    size: int


@dataclass(frozen=True)
class SourceListing:
    """What a source path names: the paths its glob matched (the path itself when it is no glob) and
    the data files below them."""

    roots: list[str]
    files: list[SourceFile]


def display_path(path: str) -> str:
    """A path as a user wrote it: ``file:/x`` and ``file:///x`` -> ``/x``; URIs unchanged."""
    return re.sub(r"^file:(//)?(?=/)", "", path)


def list_source_files(spark: SparkSession, path: str) -> SourceListing | None:
    """The data files of a source path -- a folder (read recursively), a file or a Hadoop glob
    (``events/{web,app}/dt=...``) -- as Spark will read them; ``None`` if nothing matches the path.

    Names Spark skips (``_SUCCESS``, ``.crc``, ``_temporary/``) are left out
    (:func:`recsys_batch.io.sources.is_hidden`). Cost: one glob and one recursive listing per match,
    on the driver, through the session's Hadoop filesystem (so s3a / hdfs credentials are Spark's).
    """
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(conf)
    matches = fs.globStatus(hpath)
    if matches is None or len(matches) == 0:
        return None
    globbed = has_glob(path)
    roots: list[str] = []
    files: list[SourceFile] = []
    for st in matches:
        if globbed and is_hidden(st.getPath().getName()):
            continue
        roots.append(str(st.getPath()))
        if not st.isDirectory():
            files.append(SourceFile(str(st.getPath()), int(st.getLen())))
            continue
        root = st.getPath().toUri().getPath().rstrip("/") + "/"
        it = fs.listFiles(st.getPath(), True)
        while it.hasNext():
            f = it.next()
            p = f.getPath().toUri().getPath()
            if not hidden_below(p[len(root):] if p.startswith(root) else f.getPath().getName()):
                files.append(SourceFile(str(f.getPath()), int(f.getLen())))
    return SourceListing(roots if globbed else [path], sorted(files))


def _java_chain(e: BaseException) -> list:
    """The Java exception behind a py4j / captured pyspark error, then its causes (outermost first)."""
    j = getattr(e, "java_exception", None) or getattr(e, "_origin", None)
    chain = []
    while j is not None and len(chain) < 20:
        chain.append(j)
        j = j.getCause()
    return chain


def _first_line(text: str | None) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[0] if lines else ""


def _problem(e: BaseException, file: str | None = None) -> str:
    """One line saying what went wrong: the Java cause under Spark's wrappers, else the error's first line."""
    chain = _java_chain(e)
    msgs = [(j.getClass().getSimpleName(), _first_line(j.getMessage())) for j in chain]
    wrappers = [i for i, (_, m) in enumerate(msgs) if "FAILED_READ_FILE" in m or m.startswith("Job aborted")]
    if msgs:
        name, msg = msgs[wrappers[-1] + 1] if wrappers and wrappers[-1] + 1 < len(msgs) else msgs[-1]
        text = msg or name
    else:
        text = _first_line(str(e)) or type(e).__name__
    if file:
        for spelling in {file, file.replace("file:///", "file:/"), file.replace("file:/", "file:///")}:
            text = text.replace(spelling, "the file")
    return text.rstrip(".")


_READ_FILE = re.compile(r"while reading file (\S+?)\.?\s")


def source_read_error(e: BaseException, table: str, path: str, always: bool = False) -> SourceUnreadable | None:
    """The :class:`SourceUnreadable` behind a Spark error raised while reading source ``path``, naming
    the file when Spark's message does (``FAILED_READ_FILE``), else the source path; ``None`` if the
    error is not about reading a file (unless ``always``: every error of a bare read is)."""
    texts = [str(e)] + [str(j.getMessage()) for j in _java_chain(e)]
    m = next((m for t in texts if (m := _READ_FILE.search(t + " "))), None)
    if m is None and not always and not any("FAILED_READ_FILE" in t for t in texts):
        return None
    file = m.group(1) if m else None
    return SourceUnreadable(table, display_path(file or path), _problem(e, file))


def check_parquet_footers(spark: SparkSession, files: list[SourceFile], table: str) -> list[str]:
    """Open the footer of every Parquet file on the driver; return the top-level columns stored as
    ``TIMESTAMP(NANOS)`` (pandas' default), which Spark reads only as ``nanosAsLong``.

    A 0-byte, truncated or non-Parquet file raises :class:`SourceUnreadable` naming it -- here, before
    any Spark task meets it (an executor failure would log a Java stack trace and name no source).
    Corrupt *pages* under an intact footer are found only when the data is read (see
    :func:`source_read_error`). Cost: one footer read (one or two small reads) per file, serially.
    """
    from py4j.protocol import Py4JJavaError

    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    reader_cls = jvm.org.apache.parquet.hadoop.ParquetFileReader
    input_file = jvm.org.apache.parquet.hadoop.util.HadoopInputFile
    nanos: set[str] = set()
    for f in files:
        if f.size == 0:
            raise SourceUnreadable(table, display_path(f.path),
                                   "the file is empty (0 bytes; an interrupted upload?)")
        try:
            reader = reader_cls.open(input_file.fromPath(jvm.org.apache.hadoop.fs.Path(f.path), conf))
            try:
                fields = reader.getFooter().getFileMetaData().getSchema().getFields()
                for fld in fields:
                    if str(fld.getLogicalTypeAnnotation()).startswith("TIMESTAMP(NANOS"):
                        nanos.add(fld.getName())
            finally:
                reader.close()
        except Py4JJavaError as e:
            raise SourceUnreadable(table, display_path(f.path), "not a readable Parquet file: " + _problem(e, f.path)) \
                from None
    return sorted(nanos)


#: Spark 4 refuses INT64 TIMESTAMP(NANOS) columns unless this (session) flag reads them as longs
NANOS_AS_LONG = "spark.sql.legacy.parquet.nanosAsLong"


def read_source(spark: SparkSession, src: SourceConfig, path: str, table: str = "input",
                listing: SourceListing | None = None) -> DataFrame:
    """Read one input as it is (columns untyped for CSV/JSON); adds ``source_file``.

    With a ``listing`` (from :func:`list_source_files`) Parquet files are checked first
    (:func:`check_parquet_footers`), and a glob is read as the paths it matched (the same files; Spark
    would otherwise log a stack trace looking for a streaming-sink folder named like the glob).

    Parquet nanosecond timestamps (pandas' default) come back as timestamps, truncated to microseconds
    (Spark's precision): the session flag ``spark.sql.legacy.parquet.nanosAsLong`` is switched on (and
    stays on: it changes nothing but such columns, which Spark refuses otherwise) and the longs are
    converted. Any Spark error of the read itself is a :class:`SourceUnreadable`.
    """
    from pyspark.errors import PySparkException
    from py4j.protocol import Py4JJavaError

    files = listing.files if listing else []
    nanos = check_parquet_footers(spark, files, table) if src.format == "parquet" and files else []
    paths = listing.roots if listing and listing.roots else [path]
    if nanos and spark.conf.get(NANOS_AS_LONG, "false") != "true":
        log.info("source %s: nanosecond timestamp column(s) %s; setting %s=true", table, ", ".join(nanos),
                 NANOS_AS_LONG)
        spark.conf.set(NANOS_AS_LONG, "true")
    reader = spark.read.options(**src.options)
    try:
        if src.format == "csv":
            df = reader.option("header", src.options.get("header", "true")).csv(paths)
        elif src.format == "json":
            df = reader.json(paths)
        elif src.format == "parquet":
            df = reader.parquet(*paths)
        else:
            df = reader.format("delta").load(path)
    except (PySparkException, Py4JJavaError) as e:
        raise source_read_error(e, table, path, always=True) from None
    types = dict((f.name, f.dataType) for f in df.schema.fields)
    for name in nanos:
        if isinstance(types.get(name), T.LongType):
            # floor division in integers (a double would lose the microseconds of ~1.8e18 ns)
            micros = F.expr(f"div(`{name}` - pmod(`{name}`, 1000), 1000)")
            df = df.withColumn(name, F.timestamp_micros(micros))
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
