"""User and item profiles as of the end of run date D (from the latest ``users`` / ``items`` snapshot).

Point in time: a snapshot row counts only if it was created before the end of D (``register_ts`` /
``publish_ts`` < D + 1 00:00 UTC, or unknown); ages are measured to the end of D.
"""

from __future__ import annotations

from datetime import date

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from recsys_batch.config import FeaturesConfig
from recsys_batch.io.tables import require_columns
from recsys_batch.matrix import window_bounds
from recsys_batch.schemas import Col, FCol, bucket_labels

SECONDS_PER_DAY = 86_400


def end_of_day_micros(run_date: date) -> int:
    """D + 1 00:00 UTC in epoch microseconds (the exclusive point-in-time bound of D's features)."""
    return int(window_bounds(run_date, 1)[1].timestamp()) * 1_000_000


def days_before_end(ts: Column, run_date: date) -> Column:
    """(end of D - ts) in fractional days."""
    return (F.lit(end_of_day_micros(run_date)) - F.unix_micros(ts)) / F.lit(1e6 * SECONDS_PER_DAY)


def bucket_expr(c: Column, bounds: list, labels: list[str] | None = None) -> Column:
    """Label of the bucket of ``c`` (null stays null): x < b0 -> labels[0], b0 <= x < b1 -> labels[1], ..."""
    labels = labels or bucket_labels(bounds)
    out = F.lit(labels[-1])
    for b, lab in reversed(list(zip(bounds, labels[:-1], strict=True))):
        out = F.when(c < F.lit(b), F.lit(lab)).otherwise(out)
    return F.when(c.isNull(), F.lit(None).cast("string")).otherwise(out)


def geohash_prefix(c: Column, n: int) -> Column:
    return F.when(c.isNull(), F.lit(None).cast("string")).otherwise(F.substring(c, 1, n))


def user_profile(users: DataFrame, run_date: date, fc: FeaturesConfig) -> DataFrame:
    """One row per user of the snapshot registered before the end of D (or with unknown register_ts).

    age_bucket from ``features.age_bounds_years``; geohash_prefix = first ``geohash_prefix_len`` chars;
    account_age_days = (end of D - register_ts) / 1 day; is_new = account_age_days < new_user_days.
    Cost: one narrow pass over the snapshot.
    """
    require_columns(users, [Col.USER], table="users", where="user profile")
    age_days = days_before_end(F.col(Col.REGISTER_TS), run_date)
    return (
        users.where(F.col(Col.REGISTER_TS).isNull() | (F.unix_micros(F.col(Col.REGISTER_TS))
                                                        < F.lit(end_of_day_micros(run_date))))
        .select(
            Col.USER, F.lower(Col.GENDER).alias(Col.GENDER), F.col(Col.AGE).cast("int").alias(Col.AGE),
            bucket_expr(F.col(Col.AGE), fc.age_bounds_years).alias(FCol.AGE_BUCKET), Col.CITY,
            geohash_prefix(F.col(Col.GEOHASH), fc.geohash_prefix_len).alias(FCol.GEOHASH_PREFIX),
            Col.DEVICE_OS, Col.OCCUPATION, age_days.alias(FCol.ACCOUNT_AGE_DAYS),
            (age_days < F.lit(float(fc.new_user_days))).alias(FCol.IS_NEW),
        )
        .dropDuplicates([Col.USER])
    )


def item_profile(items: DataFrame, run_date: date, fc: FeaturesConfig) -> DataFrame:
    """One row per item of the snapshot published before the end of D (or with unknown publish_ts).

    duration_bucket from ``features.duration_bounds_s`` (null without a duration); item_age_days =
    (end of D - publish_ts) / 1 day. Cost: one narrow pass over the snapshot.
    """
    require_columns(items, [Col.ITEM], table="items", where="item profile")
    return (
        items.where(F.col(Col.PUBLISH_TS).isNull() | (F.unix_micros(F.col(Col.PUBLISH_TS))
                                                       < F.lit(end_of_day_micros(run_date))))
        .select(
            Col.ITEM, Col.AUTHOR, Col.CATEGORY, Col.TAGS, F.lower(Col.MEDIA_TYPE).alias(Col.MEDIA_TYPE),
            F.col(Col.DURATION).cast("double").alias(Col.DURATION),
            bucket_expr(F.col(Col.DURATION), fc.duration_bounds_s).alias(FCol.DURATION_BUCKET),
            geohash_prefix(F.col(Col.GEOHASH), fc.geohash_prefix_len).alias(FCol.GEOHASH_PREFIX), Col.CITY,
            days_before_end(F.col(Col.PUBLISH_TS), run_date).alias(FCol.ITEM_AGE_DAYS),
        )
        .dropDuplicates([Col.ITEM])
    )
