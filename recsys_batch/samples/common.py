"""What both sample kinds share: the label day's events, the last-N history and the feature join.

Point in time: a sample of label day D gets

* ``user_features`` / ``item_features`` of ``dt = D - 1`` (computed from ts < D 00:00 UTC), never D's;
* ``lastn_items``: the user's last N distinct positive items with ts strictly before the sample's ts,
  newest first = the day's own earlier positives (ts in [D 00:00, sample ts)) followed by the
  ``user_lastn`` history of ``dt = D - 1`` (ts < D 00:00). The label event itself (ts = sample ts) and
  everything after it are excluded. A positive of D - 1 that arrived late (in batch D) is in neither.
"""

from __future__ import annotations

from datetime import date

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_batch.features.profiles import end_of_day_micros
from recsys_batch.io.tables import require_columns
from recsys_batch.matrix import weight_column
from recsys_batch.schemas import ITEM_PREFIX, USER_PREFIX, Col, FCol

DAY_US = 86_400 * 1_000_000


def label_day_events(events: DataFrame, run_date: date, weights: dict[str, float]) -> DataFrame:
    """Events with ts in [D 00:00, D + 1 00:00) UTC, event_type lower-case, plus ``weight``."""
    require_columns(events, [Col.USER, Col.ITEM, Col.EVENT, Col.TS], table="events", where="label day")
    end = end_of_day_micros(run_date)
    ts_us = F.unix_micros(F.col(Col.TS))
    cols = [c for c in events.columns if c not in (Col.EVENT, Col.DT)]
    return (events.where((ts_us >= F.lit(end - DAY_US)) & (ts_us < F.lit(end)))
            .select(*cols, F.lower(F.trim(Col.EVENT)).alias(Col.EVENT), weight_column(weights).alias(Col.WEIGHT)))


def day_positive_events(day: DataFrame) -> DataFrame:
    """``(user_id, item_id, ts)`` of the day's events with weight > 0 (click or stronger)."""
    return day.where(F.col(Col.WEIGHT) > 0).select(Col.USER, Col.ITEM, Col.TS)


def attach_lastn(samples: DataFrame, history: DataFrame | None, day_positives: DataFrame, n: int) -> DataFrame:
    """Add ``lastn_items`` (array<string>, newest first, distinct, at most n) to rows with (user_id, ts).

    history: ``user_lastn`` rows (user_id, items: array<struct<item_id, ts, weight>> newest first) as of
    D - 1, or None. day_positives: (user_id, item_id, ts) of day D. Cost: the day's positives are
    collected per user (one shuffle) and joined to every sample row of the user; the filter per row is
    O(day positives of the user).
    """
    require_columns(samples, [Col.USER, Col.TS], table="samples", where="last-N")
    day = (day_positives.groupBy(Col.USER)
           .agg(F.collect_list(F.struct(F.col(Col.TS).alias("t"), F.col(Col.ITEM).alias("i"))).alias("_day")))
    out = samples.join(day, Col.USER, "left")
    if history is not None:
        out = out.join(history.select(Col.USER, F.col(Col.ITEMS).alias("_hist")), Col.USER, "left")
        hist = F.transform(F.coalesce(F.col("_hist"), F.array()), lambda e: e[Col.ITEM])
    else:
        hist = F.array().cast("array<string>")
    before = F.filter(F.coalesce(F.col("_day"), F.array()), lambda e: e["t"] < F.col(Col.TS))
    today = F.transform(F.sort_array(before, asc=False), lambda e: e["i"])
    seq = F.slice(F.array_distinct(F.concat(today, hist)), 1, n)
    return out.withColumn(FCol.LASTN_ITEMS, seq).drop("_day", "_hist")


def join_features(samples: DataFrame, user_features: DataFrame, item_features: DataFrame) -> DataFrame:
    """Left-join the feature tables (of D - 1) on user_id / item_id, their columns prefixed u_ / i_.

    A user or item without a feature row keeps nulls (the loader applies the spec's defaults).
    """
    uf = user_features.drop(Col.DT)
    itf = item_features.drop(Col.DT)
    uf = uf.select(Col.USER, *[F.col(c).alias(USER_PREFIX + c) for c in uf.columns if c != Col.USER])
    itf = itf.select(Col.ITEM, *[F.col(c).alias(ITEM_PREFIX + c) for c in itf.columns if c != Col.ITEM])
    return samples.join(uf, Col.USER, "left").join(itf, Col.ITEM, "left")
