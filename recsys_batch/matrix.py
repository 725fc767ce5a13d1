"""User-item matrix, last-N histories, activity counts and stable dense ids (stage 2: ingest -> matrix).

Input: the validated ``events`` Delta table (partitioned by batch date ``dt``; schema
:data:`recsys_batch.schemas.EVENTS`). Outputs, each written as the ``dt = D`` partition of its table:

==================  =================================================================================
user_item_matrix    (user, item) -> time-decayed weighted score over the lookback window, capped per user
user_lastn          user -> last N distinct positive items, newest first
item_activity       item -> |N(i)|, events, score, last_ts of the capped matrix
user_activity       user -> |I(u)|, events, score, last_ts of the capped matrix
id_map_user         user_id -> user_idx (dense, stable across dates: old pairs never change)
id_map_item         item_id -> item_idx (same)
==================  =================================================================================

The window of run date D is ``[start of (D - lookback_days + 1), end of D)`` in UTC, end of D being
``D+1 00:00``. All time arithmetic goes through epoch microseconds, so results do not depend on the
session time zone.
"""

from __future__ import annotations

import logging
import math
from datetime import date, datetime, time, timedelta, timezone

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_batch.config import Config, IngestConfig, MatrixConfig
from recsys_batch.io.tables import TableStats, read_range, read_table, replace_partition, require_columns
from recsys_batch.schemas import (
    ID_MAP_ITEM, ID_MAP_USER, ITEM_ACTIVITY, USER_ACTIVITY, USER_ITEM_MATRIX, USER_LASTN, Col,
)

log = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400
#: helper column names (never written)
_W = "_w"
_DECAY = "_decay"
_RN = "_rn"

_EVENT_COLS = [Col.USER, Col.ITEM, Col.EVENT, Col.TS]


# ---- window and weights ------------------------------------------------------------------------------


def window_bounds(run_date: date, lookback_days: int) -> tuple[datetime, datetime]:
    """``(start, end)`` of the lookback window ending at ``run_date`` inclusive, as aware UTC datetimes.

    start = (D - lookback_days + 1) 00:00 UTC (included), end = (D + 1) 00:00 UTC (excluded).
    """
    end = datetime.combine(run_date + timedelta(days=1), time(0), tzinfo=timezone.utc)
    start = end - timedelta(days=lookback_days)
    return start, end


def _epoch_micros(dt: datetime) -> int:
    return int(dt.timestamp()) * 1_000_000


def weight_column(weights: dict[str, float], event_col: str = Col.EVENT) -> Column:
    """weight(event_type) from a literal map (no UDF, no join); unknown types -> 0.0.

    Types are matched lower-cased and trimmed, as :class:`EventsConfig` normalises its keys.
    """
    if not weights:
        return F.lit(0.0)
    pairs = [x for k, w in sorted(weights.items()) for x in (F.lit(k.strip().lower()), F.lit(float(w)))]
    wmap = F.create_map(*pairs)
    return F.coalesce(F.try_element_at(wmap, F.lower(F.trim(F.col(event_col)))), F.lit(0.0))


def positive_window_events(events: DataFrame, weights: dict[str, float], run_date: date,
                           cfg: MatrixConfig) -> DataFrame:
    """Events of the lookback window with a positive weight, plus ``_w`` (weight) and ``_decay``.

    _decay = 0.5 ** (age_days / half_life_days), age_days = (end of D - ts) / 86400 s (fractional).
    Source: ``events`` (any partitions; rows are selected on ``ts``, not on ``dt``).
    Cost: one narrow pass (filter + projection), no shuffle.
    Idempotent: applying it to its own output gives the same rows, so callers may pre-filter and persist.
    """
    require_columns(events, _EVENT_COLS, table="events", where="matrix window")
    start, end = window_bounds(run_date, cfg.lookback_days)
    ts_us = F.unix_micros(F.col(Col.TS))
    end_us = _epoch_micros(end)
    age_days = (F.lit(end_us) - ts_us) / F.lit(1_000_000.0 * SECONDS_PER_DAY)
    return (
        events
        .where((ts_us >= F.lit(_epoch_micros(start))) & (ts_us < F.lit(end_us)))
        .select(Col.USER, Col.ITEM, Col.EVENT, Col.TS, weight_column(weights).alias(_W))
        .where(F.col(_W) > 0)
        .withColumn(_DECAY, F.pow(F.lit(0.5), age_days / F.lit(float(cfg.half_life_days))))
    )


def _conform(df: DataFrame, schema: T.StructType) -> DataFrame:
    """Columns in schema order, atomic ones cast to the schema's types.

    Nested columns are built with the right types and left alone: Spark refuses to cast an array of
    structs with nullable fields to one declaring them NOT NULL.
    """
    nested = (T.ArrayType, T.StructType, T.MapType)
    return df.select(*[
        F.col(f.name) if isinstance(f.dataType, nested) else F.col(f.name).cast(f.dataType).alias(f.name)
        for f in schema.fields
    ])


# ---- user-item matrix ----------------------------------------------------------------------------------


def build_user_item_matrix(events: DataFrame, weights: dict[str, float], run_date: date,
                           cfg: MatrixConfig) -> DataFrame:
    """The capped, time-decayed user-item matrix of run date D (schema ``USER_ITEM_MATRIX``).

    score(u, i)    = sum_{e in W(u,i)} weight(type_e) * 0.5 ** (age_days(e) / half_life_days)
    n_events(u, i) = |W(u, i)|,  last_ts(u, i) = max_{e in W(u,i)} ts_e
    where W(u, i) are u's events on i with ts in [D - lookback_days + 1, D + 1) and weight > 0
    (impressions, weight 0, and unknown types create no entry); age_days = (D+1 00:00 - ts) / 1 day.
    Heavy-user cap: per user keep the first ``max_items_per_user`` items ordered by
    ``cap_order`` = "recent" (last_ts desc) or "score" (score desc), ties by item_id asc.

    Source: ``events`` (recsys notes: weighted implicit feedback with exponential time decay).
    Cost: one shuffle on (user, item) to aggregate, O(E); one shuffle on user for the cap, O(P log P_u)
    where P = distinct pairs. Skew: a heavy user's pairs land in one window partition, but that is
    at most its distinct items in the window (not its raw events), and only ``max_items_per_user``
    survive to feed the quadratic similarity jobs.
    """
    pos = positive_window_events(events, weights, run_date, cfg)
    pairs = pos.groupBy(Col.USER, Col.ITEM).agg(
        F.sum(F.col(_W) * F.col(_DECAY)).alias(Col.SCORE),
        F.count(F.lit(1)).alias(Col.N_EVENTS),
        F.max(Col.TS).alias(Col.LAST_TS),
    )
    first = F.col(Col.LAST_TS).desc() if cfg.cap_order == "recent" else F.col(Col.SCORE).desc()
    w = Window.partitionBy(Col.USER).orderBy(first, F.col(Col.ITEM).asc())
    capped = (pairs.withColumn(_RN, F.row_number().over(w))
              .where(F.col(_RN) <= cfg.max_items_per_user).drop(_RN))
    return _conform(capped, USER_ITEM_MATRIX)


# ---- last-N --------------------------------------------------------------------------------------------


def build_user_lastn(events: DataFrame, weights: dict[str, float], run_date: date,
                     cfg: MatrixConfig) -> DataFrame:
    """Per user the last ``lastn`` distinct positive items of the window, newest first (``USER_LASTN``).

    items(u) = [(i, ts_i, weight_i)] for the top-``lastn`` items by ts_i desc, item_id asc, where
    ts_i = latest positive event of u on i in the window and weight_i = max weight(type) over them
    (undecayed). Uses the uncapped pairs, so it holds the truly latest items even with cap_order=score.

    Source: ``events`` (last-N behaviour sequences for user-to-item recall and the user tower).
    Cost: one shuffle on (user, item), one on user with row_number <= lastn before collecting, so the
    collected array per user is bounded by ``lastn`` however heavy the user; O(P log P_u).
    """
    pos = positive_window_events(events, weights, run_date, cfg)
    per_item = pos.groupBy(Col.USER, Col.ITEM).agg(
        F.max(Col.TS).alias(Col.TS), F.max(_W).alias(Col.WEIGHT),
    )
    w = Window.partitionBy(Col.USER).orderBy(F.col(Col.TS).desc(), F.col(Col.ITEM).asc())
    top = per_item.withColumn(_RN, F.row_number().over(w)).where(F.col(_RN) <= cfg.lastn)
    # collect_list order is not guaranteed: carry the rank, sort on it, then drop it
    arr = F.sort_array(F.collect_list(F.struct(_RN, Col.ITEM, Col.TS, Col.WEIGHT)))
    out = top.groupBy(Col.USER).agg(arr.alias(Col.ITEMS)).select(
        Col.USER,
        F.transform(Col.ITEMS, lambda e: F.struct(
            e[Col.ITEM].alias(Col.ITEM), e[Col.TS].alias(Col.TS), e[Col.WEIGHT].cast("double").alias(Col.WEIGHT),
        )).alias(Col.ITEMS),
    )
    return _conform(out, USER_LASTN)


# ---- activity --------------------------------------------------------------------------------------------


def _activity(matrix: DataFrame, key: str, count_name: str, schema: T.StructType) -> DataFrame:
    require_columns(matrix, [Col.USER, Col.ITEM, Col.SCORE, Col.N_EVENTS, Col.LAST_TS],
                    table="user_item_matrix", where=f"{key} activity")
    out = matrix.groupBy(key).agg(
        F.count(F.lit(1)).alias(count_name),  # (user, item) is unique in the matrix
        F.sum(Col.N_EVENTS).alias(Col.N_EVENTS),
        F.sum(Col.SCORE).alias(Col.SCORE),
        F.max(Col.LAST_TS).alias(Col.LAST_TS),
    )
    return _conform(out, schema)


def build_item_activity(matrix: DataFrame) -> DataFrame:
    """Per item of the capped matrix (``ITEM_ACTIVITY``).

    n_users = |N(i)| (users with i in the capped matrix), n_events = sum n_events(u, i),
    score = sum score(u, i), last_ts = max last_ts(u, i). Computed on the capped matrix because the
    similarity penalties use |N(i)| of the matrix they run on.
    Source: ``user_item_matrix``. Cost: one shuffle on item, O(P); hot items aggregate map-side.
    """
    return _activity(matrix, Col.ITEM, Col.N_USERS, ITEM_ACTIVITY)


def build_user_activity(matrix: DataFrame) -> DataFrame:
    """Per user of the capped matrix (``USER_ACTIVITY``): n_items = |I(u)| <= max_items_per_user,
    n_events, score (sums) and last_ts (max). Source: ``user_item_matrix``. Cost: one shuffle on user, O(P).
    """
    return _activity(matrix, Col.USER, Col.N_ITEMS, USER_ACTIVITY)


# ---- dense ids ---------------------------------------------------------------------------------------------


def update_id_map(previous: DataFrame | None, ids: DataFrame, id_col: str, idx_col: str) -> DataFrame:
    """Extend an id map with the ids of ``ids`` not seen before; every previous (id, idx) pair is kept.

    new ids (distinct, not in previous) get idx = max(previous idx) + 1, + 2, ... in ascending id order
    (0, 1, ... without a previous map), so the result is deterministic and the indices stay dense when
    ``previous`` is dense. Numbering uses ``RDD.zipWithIndex`` on the range-sorted new ids: distributed
    (one small job counts rows per partition), nothing but max(idx) reaches the driver, and no global
    window funnels the table through one partition.

    Cost: distinct + anti-join of ``ids`` against ``previous`` (shuffles of O(|ids| + |previous|)),
    a sort of the new ids only, and a Python pass over the new ids (few per day after the first run).
    """
    require_columns(ids, [id_col], table="ids", where="update_id_map")
    spark = ids.sparkSession
    id_type = T.StringType()
    new = ids.select(F.col(id_col).cast(id_type).alias(id_col)).where(F.col(id_col).isNotNull()).distinct()
    offset = 0
    if previous is not None:
        require_columns(previous, [id_col, idx_col], table="previous id map", where="update_id_map")
        previous = previous.select(F.col(id_col).cast(id_type).alias(id_col),
                                   F.col(idx_col).cast(T.LongType()).alias(idx_col))
        new = new.join(previous.select(id_col), on=id_col, how="left_anti")
        top = previous.agg(F.max(idx_col)).first()[0]
        offset = 0 if top is None else int(top) + 1
    schema = T.StructType([T.StructField(id_col, id_type, False), T.StructField(idx_col, T.LongType(), False)])
    numbered = (new.orderBy(id_col).rdd
                .zipWithIndex()
                .map(lambda row_i, off=offset: (row_i[0][0], row_i[1] + off)))
    appended = spark.createDataFrame(numbered, schema)
    return appended if previous is None else previous.unionByName(appended)


def _previous_id_map(spark: SparkSession, cfg: Config, name: str, run_date: date) -> DataFrame | None:
    """The map of the latest dt < run_date, or None (so re-running D never sees its own output)."""
    table = read_table(spark, cfg.warehouse, name, None, required=False)
    if table is None:
        return None
    before = table.where(F.col(Col.DT) < run_date.isoformat())
    latest = before.agg(F.max(Col.DT)).first()[0]
    if latest is None:
        return None
    log.info("%s for %s extends dt=%s", name, run_date, latest)
    return before.where(F.col(Col.DT) == latest).drop(Col.DT)


# ---- the edge --------------------------------------------------------------------------------------------------


def events_partitions(run_date: date, matrix: MatrixConfig, ingest: IngestConfig) -> tuple[date, date]:
    """``(first, last)`` ``dt`` partitions of ``events`` that can hold events of D's lookback window.

    Batch dt=X holds events with ts <= end of X + future_tolerance (later ones are rejected as
    ``future_ts``) and of any age down to X - max_lateness_days. A window event (ts >= start of
    D - lookback_days + 1) can therefore only sit in a batch X >= D - lookback_days - floor(tolerance in
    days), whatever ``max_lateness_days`` is: late events land in *later* batches, never earlier ones,
    so lateness does not widen the scan (and ``null`` lateness does not mean reading all history).
    Batches after D are not read, so D's matrix is reproducible. ``ts`` is filtered exactly afterwards.
    """
    spare = ingest.future_tolerance_minutes // (24 * 60)
    return run_date - timedelta(days=matrix.lookback_days + spare), run_date


def run_matrix(spark: SparkSession, cfg: Config, run_date: date) -> list[TableStats]:
    """Build and write the matrix stage's six tables for ``run_date`` (each one ``dt = D`` partition).

    Reads ``events`` partitions from :func:`events_partitions`, persists the positive window events
    once (matrix and last-N both scan them), writes ``user_item_matrix`` and then derives activity and
    id maps from the written partition, so they match it exactly. Re-running a date replaces its
    partitions and gives the same result (the id maps extend the latest map *before* D).
    """
    first, last = events_partitions(run_date, cfg.matrix, cfg.ingest)
    events = read_range(spark, cfg.warehouse, "events", first, last)
    log.info("matrix %s: events dt %s..%s", run_date, first, last)
    wh, weights = cfg.warehouse, cfg.events.weights
    pos = positive_window_events(events, weights, run_date, cfg.matrix).persist(StorageLevel.MEMORY_AND_DISK)
    stats: list[TableStats] = []
    try:
        stats.append(replace_partition(build_user_item_matrix(pos, weights, run_date, cfg.matrix),
                                       wh, "user_item_matrix", run_date))
        stats.append(replace_partition(build_user_lastn(pos, weights, run_date, cfg.matrix),
                                       wh, "user_lastn", run_date))
    finally:
        pos.unpersist()

    matrix = read_table(spark, wh, "user_item_matrix", run_date).drop(Col.DT)
    stats.append(replace_partition(build_item_activity(matrix), wh, "item_activity", run_date))
    stats.append(replace_partition(build_user_activity(matrix), wh, "user_activity", run_date))
    for name, id_col, idx_col, schema in (("id_map_user", Col.USER, Col.USER_IDX, ID_MAP_USER),
                                          ("id_map_item", Col.ITEM, Col.ITEM_IDX, ID_MAP_ITEM)):
        previous = _previous_id_map(spark, cfg, name, run_date)
        id_map = update_id_map(previous, matrix.select(id_col), id_col, idx_col)
        stats.append(replace_partition(_conform(id_map, schema), wh, name, run_date))
    return stats
