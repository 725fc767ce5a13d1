"""Contract validation and quarantine: raw sources -> validated Delta tables partitioned by ``dt``.

For each input (events required; users, items, follows, rank_logs optional) and run date D:

1. read the source (Parquet / CSV / JSON lines / Delta; ``{date}`` in the path selects D's batch, and
   the path may be a Hadoop glob); a missing, empty or unreadable source (0-byte, truncated or corrupt
   Parquet) fails with :class:`MissingInput` / :class:`EmptySource` / :class:`SourceUnreadable` naming
   the file, before any table is written;
2. fail with :class:`SchemaError` if a required column is missing (naming source, path and column);
3. normalise types: ids trimmed strings, event types lower-case, timestamps from timestamp / epoch /
   string columns (Parquet nanoseconds included), numbers with ``try_cast`` (a bad value is a rejected
   row, not a failed job); integer columns take whole numbers only (2.7 is rejected, never truncated);
4. give each row the *first* reason it breaks the contract (see :data:`REASONS`), or none;
5. count rows per reason (one small aggregate); once every source is counted, replace partition
   ``dt = D`` of each ``rejected_<table>`` (raw values as strings + ``reason`` + ``source_file``); if
   the rejected share of any table exceeds ``ingest.max_reject_ratio`` raise
   :class:`RejectRatioExceeded`, so nothing is published; otherwise replace ``dt = D`` of ``<table>``.

Re-running a date replaces both partitions: same input, same output, no duplicates.

Cost: one scan of the batch, one shuffle for exact-duplicate detection (hash-partitioned on all
columns, so a hot user or item does not skew it), the annotated batch persisted once and written twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_batch.config import Config, SourceConfig
from recsys_batch.errors import EmptySource, MissingInput, RecsysBatchError, RejectRatioExceeded
from recsys_batch.io.tables import (list_source_files, path_exists, read_source, replace_partition,
                                    require_columns, source_read_error)
from recsys_batch.schemas import CONTRACT, EVENT_TIME, RANK_STAGES, REQUIRED, Col, rejected_schema

log = logging.getLogger(__name__)

TABLES = ("events", "users", "items", "follows", "rank_logs")

#: every quarantine reason, in the order they are checked (the first that applies is recorded)
REASONS = (
    "null_<column>",          # a key column is null or blank (user_id, item_id, ...)
    "unparsable_<column>",    # a timestamp that does not parse
    "non_integral_<column>",  # position, age: a number with a fraction (2.7); 1.0 and "1.0" are 1
    "invalid_<column>",       # a number / boolean that does not parse (or overflows its type)
    "unknown_event_type",     # not one of events.weights
    "unknown_stage",          # rank_logs.stage not recall / prerank / rank
    "future_ts",              # later than end of the run date + future_tolerance_minutes
    "stale_ts",               # older than start of the run date - max_lateness_days (increments only)
    "negative_<column>",      # watch_time_s, position, age, duration_s below 0
    "duplicate",              # an exact copy of an earlier row of the batch
    "duplicate_key",          # users / items: a second row for the same id
)
_NON_NEGATIVE = {Col.WATCH, Col.POSITION, Col.AGE, Col.DURATION}
_SNAPSHOTS = {"users": Col.USER, "items": Col.ITEM}
_RAW = "__raw_"
_REASON = "__reason"


@dataclass
class IngestReport:
    table: str
    run_date: date
    source: str
    total: int = 0
    valid: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    skipped: str | None = None

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())


def _ts_lit(d: datetime) -> Column:
    return F.to_timestamp(F.lit(d.strftime("%Y-%m-%d %H:%M:%S")))


def _parse_ts(c: Column, dtype: T.DataType, ts_format: str | None, epoch_unit: str) -> Column:
    if isinstance(dtype, T.TimestampType):
        return c
    if isinstance(dtype, T.TimestampNTZType | T.DateType):
        return c.cast(T.TimestampType())  # read as UTC: the session time zone is UTC
    def from_epoch(x: Column) -> Column:
        secs = x.try_cast("double") / (1000.0 if epoch_unit == "ms" else 1.0)
        return F.timestamp_micros((secs * 1_000_000).cast("long"))

    if isinstance(dtype, T.NumericType):
        return from_epoch(c)
    s = F.trim(c.cast("string"))
    parsed = F.try_to_timestamp(s, F.lit(ts_format)) if ts_format else F.try_to_timestamp(s)
    # CSV and JSON carry epochs as text: all-digit strings are epochs in ``epoch_unit``
    return F.when(s.rlike(r"^[0-9]+(\.[0-9]+)?$"), from_epoch(s)).otherwise(parsed)


def _parse_bool(c: Column, dtype: T.DataType) -> Column:
    if isinstance(dtype, T.BooleanType):
        return c
    s = F.lower(F.trim(c.cast("string")))
    return (F.when(s.isin("true", "1", "yes", "y", "t"), F.lit(True))
             .when(s.isin("false", "0", "no", "n", "f"), F.lit(False)))


def _parse_tags(c: Column, dtype: T.DataType, sep: str) -> Column:
    if isinstance(dtype, T.ArrayType):
        return F.transform(c.cast("array<string>"), lambda x: F.trim(x))
    s = F.trim(c.cast("string"))
    parts = F.split(s, _regex_escape(sep))
    return F.when(s.isNull() | (s == ""), F.lit(None).cast("array<string>")).otherwise(
        F.filter(F.transform(parts, lambda x: F.trim(x)), lambda x: x != ""))


def _as_double(c: Column) -> Column:
    return F.trim(c.cast("string")).try_cast("double")


def _parse_integral(c: Column, src_type: T.DataType, dst_type: T.DataType) -> Column:
    """A whole number, never a truncated one: 3, "3", " 3 ", 3.0, "3.0", "3e0" -> 3; 2.7 or "2.7" -> null
    (the row's reason is ``non_integral_<column>``); out of range -> null (``invalid_<column>``)."""
    if isinstance(src_type, T.IntegralType):
        return c.try_cast(dst_type)
    d = _as_double(c) if not isinstance(src_type, T.NumericType) else c.try_cast("double")
    whole = F.when(~F.isnan(d) & (F.rint(d) == d), d.try_cast(dst_type))
    if isinstance(src_type, T.StringType):  # digits only: exact, even beyond a double's 53 bits
        s = F.trim(c)
        return F.when(s.rlike(r"^[+-]?[0-9]+$"), s.try_cast(dst_type)).otherwise(whole)
    return whole


def _non_integral(raw: Column) -> Column:
    """The raw value is a finite number with a fraction (from its string form, whatever the source type)."""
    d = _as_double(raw)
    return d.isNotNull() & ~F.isnan(d) & (F.rint(d) != d)


def _regex_escape(s: str) -> str:
    import re

    return re.escape(s)


def _normalise(name: str, c: Column, src_type: T.DataType, dst_type: T.DataType, cfg: Config) -> Column:
    if isinstance(dst_type, T.StringType):
        s = F.trim(c.cast("string"))
        s = F.when(s == "", F.lit(None)).otherwise(s)
        return F.lower(s) if name in (Col.EVENT, Col.STAGE, Col.MEDIA_TYPE, Col.GENDER) else s
    if isinstance(dst_type, T.TimestampType):
        return _parse_ts(c, src_type, cfg.ingest.ts_format, cfg.ingest.epoch_unit)
    if isinstance(dst_type, T.BooleanType):
        return _parse_bool(c, src_type)
    if isinstance(dst_type, T.ArrayType):
        return _parse_tags(c, src_type, cfg.ingest.tags_separator)
    if isinstance(dst_type, T.IntegralType):
        return _parse_integral(c, src_type, dst_type)
    return c.try_cast(dst_type)


def validate(raw: DataFrame, table: str, cfg: Config, run_date: date, where: str = "") -> DataFrame:
    """Annotate a raw batch: contract columns normalised, ``__raw_<col>`` kept, ``__reason`` set.

    A row whose ``__reason`` is null satisfies the contract. Pure transform (no I/O, no action).
    """
    schema = CONTRACT[table]
    require_columns(raw, REQUIRED[table], table=f"source {table}", where=where)
    extra = sorted(set(raw.columns) - set(schema.fieldNames()) - {Col.SOURCE_FILE})
    if extra:
        log.info("source %s: ignoring columns outside the contract: %s", table, ", ".join(extra))
    types = dict((f.name, f.dataType) for f in raw.schema.fields)
    cols, raws = [], []
    for f in schema.fields:
        src = F.col(f"`{f.name}`") if f.name in raw.columns else F.lit(None).cast(f.dataType)
        src_type = types.get(f.name, f.dataType)
        cols.append(_normalise(f.name, src, src_type, f.dataType, cfg).alias(f.name))
        raws.append(src.cast("string").alias(_RAW + f.name))
    source_file = F.col(Col.SOURCE_FILE) if Col.SOURCE_FILE in raw.columns else F.lit(where)
    df = raw.select(*cols, *raws, source_file.alias(Col.SOURCE_FILE))

    start = datetime.combine(run_date, time.min)
    end = start + timedelta(days=1)
    future_limit = _ts_lit(end + timedelta(minutes=cfg.ingest.future_tolerance_minutes))
    ts_col = EVENT_TIME[table]
    checks: list[tuple[Column, str]] = []
    for f in schema.fields:  # key columns first
        if not f.nullable and not isinstance(f.dataType, T.TimestampType | T.BooleanType):
            checks.append((F.col(f.name).isNull(), f"null_{f.name}"))
    for f in schema.fields:
        raw_c = F.col(_RAW + f.name)
        if isinstance(f.dataType, T.TimestampType):
            if not f.nullable:
                checks.append((raw_c.isNull(), f"null_{f.name}"))
            checks.append((raw_c.isNotNull() & F.col(f.name).isNull(), f"unparsable_{f.name}"))
        elif isinstance(f.dataType, T.NumericType | T.BooleanType):
            if not f.nullable:
                checks.append((raw_c.isNull(), f"null_{f.name}"))
            if isinstance(f.dataType, T.IntegralType):
                checks.append((_non_integral(raw_c), f"non_integral_{f.name}"))
            checks.append((raw_c.isNotNull() & (F.trim(raw_c) != "") & F.col(f.name).isNull(),
                           f"invalid_{f.name}"))
    if table == "events":
        checks.append((~F.col(Col.EVENT).isin(*cfg.events.types), "unknown_event_type"))
    if table == "rank_logs":
        checks.append((~F.col(Col.STAGE).isin(*RANK_STAGES), "unknown_stage"))
    if ts_col:
        checks.append((F.col(ts_col) > future_limit, "future_ts"))
        if table not in _SNAPSHOTS and cfg.ingest.max_lateness_days is not None:
            stale_limit = _ts_lit(start - timedelta(days=cfg.ingest.max_lateness_days))
            checks.append((F.col(ts_col) < stale_limit, "stale_ts"))
    for f in schema.fields:
        if f.name in _NON_NEGATIVE:
            checks.append((F.col(f.name) < 0, f"negative_{f.name}"))

    reason: Column = F.lit(None).cast("string")
    for cond, label in reversed(checks):
        reason = F.when(F.coalesce(cond, F.lit(False)), F.lit(label)).otherwise(reason)
    df = df.withColumn(_REASON, reason)

    # exact duplicates among otherwise valid rows: keep the first (by source file), reject the rest
    names = schema.fieldNames()
    valid = F.col(_REASON).isNull()
    dup_w = Window.partitionBy(valid, *[F.col(_RAW + n) for n in names]).orderBy(Col.SOURCE_FILE)
    df = df.withColumn(_REASON, F.when(valid & (F.row_number().over(dup_w) > 1), F.lit("duplicate"))
                       .otherwise(F.col(_REASON)))
    if table in _SNAPSHOTS:  # a dimension snapshot holds one row per id
        key = _SNAPSHOTS[table]
        valid = F.col(_REASON).isNull()
        key_w = Window.partitionBy(valid, F.col(key)).orderBy(*[F.col(_RAW + n).asc_nulls_last() for n in names])
        df = df.withColumn(_REASON, F.when(valid & (F.row_number().over(key_w) > 1), F.lit("duplicate_key"))
                           .otherwise(F.col(_REASON)))
    return df


def accepted(annotated: DataFrame, table: str) -> DataFrame:
    """Rows that satisfy the contract, in the contract schema."""
    schema = CONTRACT[table]
    return annotated.where(F.col(_REASON).isNull()).select(
        *[F.col(f.name).cast(f.dataType) for f in schema.fields])


def rejected(annotated: DataFrame, table: str) -> DataFrame:
    """Rows that break the contract: raw values as strings, the reason and the source file."""
    schema = rejected_schema(table)
    return annotated.where(F.col(_REASON).isNotNull()).select(
        *[F.col(_RAW + n).alias(n) for n in CONTRACT[table].fieldNames()],
        F.col(_REASON).alias(Col.REASON), F.col(Col.SOURCE_FILE),
    ).select(*[F.col(f.name).cast(f.dataType) for f in schema.fields])


@dataclass
class _Prepared:
    report: IngestReport
    annotated: DataFrame | None = None


def _prepare(spark: SparkSession, cfg: Config, table: str, src: SourceConfig, run_date: date) -> _Prepared:
    """Read and validate one source and count its rows per reason. Writes nothing.

    A source that is missing, empty or unreadable fails here (:class:`MissingInput`,
    :class:`EmptySource`, :class:`SourceUnreadable` naming the file), before any table is touched.
    """
    path = src.resolve(run_date, cfg.warehouse.raw_root)
    report = IngestReport(table, run_date, path)
    listing = None if src.format == "delta" else list_source_files(spark, path)
    if listing is None and (src.format != "delta" or not path_exists(spark, path)):
        if src.required:
            raise MissingInput(f"required source {table} has no data for {run_date}: {path} does not exist")
        report.skipped = f"no data at {path}"
        log.info("optional source %s: %s, skipped", table, report.skipped)
        return _Prepared(report)
    if listing is not None and not listing.files:
        if src.required:
            raise EmptySource(table, path, "only hidden files such as _SUCCESS, or nothing")
        report.skipped = f"no data files at {path}"
        log.info("optional source %s: %s, skipped", table, report.skipped)
        return _Prepared(report)
    annotated = validate(read_source(spark, src, path, table, listing), table, cfg, run_date, where=path).persist()
    try:
        counts = {r[0]: r[1] for r in annotated.groupBy(_REASON).count().collect()}
    except Exception as e:  # a corrupt page under an intact footer shows only when the data is read
        annotated.unpersist()
        err = source_read_error(e, table, path)
        if err is None:
            raise
        raise err from None
    report.valid = counts.pop(None, 0)
    report.rejected = counts
    report.total = report.valid + report.n_rejected
    if report.total == 0 and src.required:
        annotated.unpersist()
        raise MissingInput(f"required source {table} for {run_date} at {path} holds no rows")
    if counts:
        log.warning("%s %s: %s of %s rows rejected (%.2f%%): %s", table, run_date, f"{report.n_rejected:,}",
                    f"{report.total:,}", 100.0 * report.n_rejected / report.total,
                    ", ".join(f"{k}={v:,}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))))
    return _Prepared(report, annotated)


def _ratio_error(p: _Prepared, cfg: Config) -> RejectRatioExceeded | None:
    r = p.report
    if r.total and r.n_rejected / r.total > cfg.ingest.max_reject_ratio:
        return RejectRatioExceeded(r.table, r.run_date.isoformat(), r.total, r.n_rejected, r.rejected,
                                   cfg.ingest.max_reject_ratio, cfg.warehouse.table_path(f"rejected_{r.table}"))
    return None


def run_ingest(spark: SparkSession, cfg: Config, run_date: date,
               tables: tuple[str, ...] = TABLES) -> list[IngestReport]:
    """Ingest every configured source for ``run_date``.

    Three phases: (1) every source is read, validated and counted -- a missing, empty or unreadable
    source fails here and no table changes; (2) every quarantine partition is written (whatever
    happens next: nothing is lost, a re-run replaces it); (3) only if no table exceeds its reject
    ratio are the validated tables published (one Delta commit each).
    """
    prepared: list[_Prepared] = []
    try:
        for table in tables:
            src = getattr(cfg.sources, table)
            if src is None:
                prepared.append(_Prepared(IngestReport(table, run_date, "", skipped="not configured")))
                continue
            prepared.append(_prepare(spark, cfg, table, src, run_date))
        ready = [p for p in prepared if p.annotated is not None]
        for p in ready:
            replace_partition(rejected(p.annotated, p.report.table), cfg.warehouse, f"rejected_{p.report.table}",
                              run_date, count=False)
        errors = [e for p in ready if (e := _ratio_error(p, cfg)) is not None]
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise RecsysBatchError(" | ".join(str(e) for e in errors))
        for p in ready:
            replace_partition(accepted(p.annotated, p.report.table), cfg.warehouse, p.report.table,
                              run_date, count=False)
    finally:
        for p in prepared:
            if p.annotated is not None:
                p.annotated.unpersist()
    return [p.report for p in prepared]
