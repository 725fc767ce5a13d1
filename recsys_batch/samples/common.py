"""What both sample kinds share: the window's events, the last-N history and the point-in-time feature join.

Samples of run date D come from the events of the *sample window* ``[F, D]`` (``F`` = first day, see
:func:`recsys_batch.samples.stage.sample_window`; ``F = D`` on a daily feed). Point in time, per row
with event time ``ts`` on event day ``E`` (UTC):

* ``user_features`` / ``item_features`` of the snapshot chosen for E by :func:`snapshot_plan` -- the
  newest ``dt <= E - 1`` (computed from ts < E 00:00 UTC), normally ``E - 1`` itself; only the
  documented fallback (no snapshot before E at all: a first day / one-batch import) uses a later one.
  The chosen dt is stored in the row's ``features_dt``.
* ``lastn_items``: the user's last N distinct positive items with ts strictly before the row's ts,
  newest first, from the window's own positives merged with the ``user_lastn`` history of the newest
  dt <= D - 1 (each entry filtered on its ts). The label event itself (ts = row ts), events at the same
  instant and everything after are excluded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_batch.features.profiles import end_of_day_micros
from recsys_batch.io.tables import require_columns
from recsys_batch.matrix import weight_column
from recsys_batch.schemas import ITEM_PREFIX, USER_PREFIX, Col, FCol

DAY_US = 86_400 * 1_000_000
#: event day (UTC) of a window event, a DateType column; internal (not written)
EVENT_DAY = "_event_day"

#: how a row's feature snapshot relates to its event day E (see :func:`snapshot_plan`)
EXACT, STALE, FALLBACK, NONE = "exact", "stale", "fallback", "none"


def event_day(ts: str = Col.TS):
    """UTC calendar day of a timestamp column (independent of the session time zone)."""
    return F.date_from_unix_date(F.floor(F.unix_micros(F.col(ts)) / F.lit(DAY_US)).cast("int"))


def window_label_events(events: DataFrame, first: date, last: date, weights: dict[str, float]) -> DataFrame:
    """Events with ts in [first 00:00, last + 1 00:00) UTC, event_type lower-case, plus ``weight`` and
    the event day (``_event_day``)."""
    require_columns(events, [Col.USER, Col.ITEM, Col.EVENT, Col.TS], table="events", where="sample window")
    end = end_of_day_micros(last)
    start = end_of_day_micros(first) - DAY_US
    ts_us = F.unix_micros(F.col(Col.TS))
    cols = [c for c in events.columns if c not in (Col.EVENT, Col.DT, EVENT_DAY)]
    return (events.where((ts_us >= F.lit(start)) & (ts_us < F.lit(end)))
            .select(*cols, F.lower(F.trim(Col.EVENT)).alias(Col.EVENT), weight_column(weights).alias(Col.WEIGHT),
                    event_day().alias(EVENT_DAY)))


def label_day_events(events: DataFrame, run_date: date, weights: dict[str, float]) -> DataFrame:
    """The one-day window [D, D] of :func:`window_label_events`."""
    return window_label_events(events, run_date, run_date, weights)


def day_positive_events(day: DataFrame) -> DataFrame:
    """``(user_id, item_id, ts)`` of the window's events with weight > 0 (click or stronger)."""
    return day.where(F.col(Col.WEIGHT) > 0).select(Col.USER, Col.ITEM, Col.TS)


def attach_lastn(samples: DataFrame, history: DataFrame | None, positives: DataFrame, n: int) -> DataFrame:
    """Add ``lastn_items`` (array<string>, newest first, distinct, at most n) to rows with (user_id, ts).

    The user's positive items with ts strictly before the row's ts, newest first: the window's
    ``positives`` (user_id, item_id, ts) merged with ``history`` (``user_lastn`` rows: user_id, items:
    array<struct<item_id, ts, weight>>, or None), whose entries are filtered on ts like the window's, so
    a history snapshot that overlaps the window never shows a row its own or a later event. Cost: the
    window's positives are collected and sorted once per user (one shuffle); the sequence is computed
    once per distinct (user, ts) of the samples (a recall group's negatives share its positive's ts) in
    O(positives of the user + history length) and joined back.
    """
    require_columns(samples, [Col.USER, Col.TS], table="samples", where="last-N")
    pos = positives.groupBy(Col.USER).agg(
        F.collect_list(F.struct(F.col(Col.TS).alias("t"), F.col(Col.ITEM).alias("i"))).alias("_pos"))
    if history is not None:
        hist = history.select(Col.USER, F.transform(F.col(Col.ITEMS), lambda e: F.struct(
            e[Col.TS].alias("t"), e[Col.ITEM].alias("i"))).alias("_hist"))
        pos = pos.join(hist, Col.USER, "full").select(
            Col.USER, F.concat(F.coalesce("_pos", F.array()), F.coalesce("_hist", F.array())).alias("_pos"))
    mine = pos.select(Col.USER, F.sort_array("_pos", asc=False).alias("_pos"))  # newest first
    keys = samples.select(Col.USER, Col.TS).distinct().join(mine, Col.USER, "left")
    before = F.filter(F.coalesce(F.col("_pos"), F.array()), lambda e: e["t"] < F.col(Col.TS))  # keeps the order
    seq = F.slice(F.array_distinct(F.transform(before, lambda e: e["i"])), 1, n)
    lastn = keys.select(Col.USER, Col.TS, seq.cast("array<string>").alias(FCol.LASTN_ITEMS))
    return samples.join(lastn, [Col.USER, Col.TS], "left")


# ---- point-in-time feature snapshots ------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """The feature snapshot for one event day: ``dt`` (None: none usable) and its ``kind``."""

    dt: date | None
    kind: str


def snapshot_plan(days: list[date], available: list[date], fallback: str) -> dict[date, Snapshot]:
    """Feature snapshot per event day E (pure; ``available`` = snapshot dates present in both tables).

    * ``exact``: dt = E - 1 exists (the daily feed);
    * ``stale``: the newest dt < E - 1 (a missed features day; still point in time, only older);
    * ``fallback`` (``fallback="earliest"``): no snapshot before E at all -- the earliest available
      one (dt >= E: it may count E's own events and later ones; see docs/features_and_samples.md);
    * ``none`` (``fallback="drop"``, or nothing available): the day's rows are dropped.
    """
    avail = sorted(set(available))
    out: dict[date, Snapshot] = {}
    for e in days:
        before = [a for a in avail if a <= e - timedelta(days=1)]
        if before:
            out[e] = Snapshot(before[-1], EXACT if before[-1] == e - timedelta(days=1) else STALE)
        elif avail and fallback == "earliest":
            out[e] = Snapshot(avail[0], FALLBACK)
        else:
            out[e] = Snapshot(None, NONE)
    return out


def plan_frame(spark: SparkSession, plan: dict[date, Snapshot]) -> DataFrame:
    """``(_event_day, features_dt)`` of the days with a snapshot (a broadcastable handful of rows)."""
    schema = T.StructType([T.StructField(EVENT_DAY, T.DateType(), False),
                           T.StructField(FCol.FEATURES_DT, T.StringType(), False)])
    rows = [(e, s.dt.isoformat()) for e, s in sorted(plan.items()) if s.dt is not None]
    return spark.createDataFrame(rows, schema)


def join_features(samples: DataFrame, user_features: DataFrame, item_features: DataFrame, plan: DataFrame
                  ) -> DataFrame:
    """Left-join the feature tables on (user_id / item_id, dt = the row's snapshot), columns prefixed u_ / i_.

    samples need ``ts``; each row gets ``features_dt`` from its event day via ``plan``
    (:func:`plan_frame`) and rows of days without a snapshot are dropped (inner join with the plan). The
    feature tables hold ``dt``; only the planned partitions are read. A user or item without a feature
    row in its snapshot keeps nulls (the loader applies the spec's defaults). Cost: two shuffle joins
    (one per table), as for a single snapshot; the plan is broadcast.
    """
    require_columns(samples, [Col.USER, Col.ITEM, Col.TS], table="samples", where="feature join")
    rows = samples.withColumn(EVENT_DAY, event_day()).join(F.broadcast(plan), EVENT_DAY).drop(EVENT_DAY)
    dts = sorted({r[FCol.FEATURES_DT] for r in plan.select(FCol.FEATURES_DT).collect()})
    out = rows
    for table, key, prefix in ((user_features, Col.USER, USER_PREFIX), (item_features, Col.ITEM, ITEM_PREFIX)):
        require_columns(table, [key, Col.DT], table="user_features" if key == Col.USER else "item_features",
                        where="point-in-time join")
        snap = table.where(F.col(Col.DT).isin(dts)).withColumnRenamed(Col.DT, FCol.FEATURES_DT)
        keys = [key, FCol.FEATURES_DT]
        out = out.join(snap.select(*keys, *[F.col(c).alias(prefix + c) for c in snap.columns if c not in keys]),
                       keys, "left")
    return out
