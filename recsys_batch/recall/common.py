"""Helpers shared by the recall channels: recent items, seen-item exclusion, top-N per user."""

from __future__ import annotations

from datetime import date

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recsys_batch.io.tables import require_columns
from recsys_batch.matrix import window_bounds
from recsys_batch.schemas import RECALL, Col

_RN = "_rn"


def recent_items(matrix: DataFrame, n: int, key: str = Col.USER, rank: str | None = None) -> DataFrame:
    """Per user the ``n`` most recent items of the matrix: (key, item_id, score, last_ts[, rank]); ``rank``
    names an extra column with the item's recency rank 0, 1, ... (0 = newest).

    Order: last_ts desc, item_id asc. With ``matrix.cap_order = recent`` and ``n <= matrix.lastn`` this is
    the same set as the first ``n`` entries of ``user_lastn``; unlike ``user_lastn`` every item here has
    its matrix score r(u, i), which the recall formulas need.
    Cost: one shuffle of the matrix on user, O(P log P_u), P_u <= max_items_per_user.
    """
    require_columns(matrix, [Col.USER, Col.ITEM, Col.SCORE, Col.LAST_TS], table="user_item_matrix",
                    where="recent items")
    w = Window.partitionBy(Col.USER).orderBy(F.col(Col.LAST_TS).desc(), F.col(Col.ITEM).asc())
    return (matrix.select(Col.USER, Col.ITEM, Col.SCORE, Col.LAST_TS)
            .withColumn(_RN, F.row_number().over(w)).where(F.col(_RN) <= n)
            .select(F.col(Col.USER).alias(key), Col.ITEM, Col.SCORE, Col.LAST_TS,
                    *([(F.col(_RN) - 1).alias(rank)] if rank else [])))


def active_users(matrix: DataFrame, run_date: date, active_days: int | None) -> DataFrame:
    """Users of the matrix to build lists for: (user_id).

    ``active_days`` null: every user of the matrix (anyone with a positive event in its lookback window);
    N: those with a positive event in the last N days up to the end of D.
    """
    require_columns(matrix, [Col.USER, Col.LAST_TS], table="user_item_matrix", where="active users")
    if active_days is None:
        return matrix.select(Col.USER).distinct()
    start, _ = window_bounds(run_date, active_days)
    start_us = int(start.timestamp()) * 1_000_000
    return (matrix.groupBy(Col.USER).agg(F.max(F.unix_micros(F.col(Col.LAST_TS))).alias("_last"))
            .where(F.col("_last") >= F.lit(start_us)).select(Col.USER))


def restrict_users(df: DataFrame, users: DataFrame | None) -> DataFrame:
    """Rows of ``df`` whose user_id is in ``users`` (left semi join); ``users=None`` keeps all."""
    if users is None:
        return df
    require_columns(users, [Col.USER], table="users", where="recall targets")
    return df.join(users.select(Col.USER).distinct(), on=Col.USER, how="left_semi")


def exclude_seen(candidates: DataFrame, matrix: DataFrame) -> DataFrame:
    """Candidates (user_id, item_id, ...) minus the (user, item) pairs of the matrix (left anti join)."""
    return candidates.join(matrix.select(Col.USER, Col.ITEM), on=[Col.USER, Col.ITEM], how="left_anti")


def top_n_per_user(scores: DataFrame, n: int, order: list | None = None) -> DataFrame:
    """(user_id, item_id, score) -> the top ``n`` per user with rank 1..n (schema ``RECALL``).

    Order: score desc, item_id asc (deterministic tie-break) unless ``order`` is given.
    Cost: one shuffle on user; the window sorts each user's candidates (bounded by the channel's fan-out).
    """
    order = order or [F.col(Col.SCORE).desc(), F.col(Col.ITEM).asc()]
    w = Window.partitionBy(Col.USER).orderBy(*order)
    out = scores.withColumn(Col.RANK, F.row_number().over(w)).where(F.col(Col.RANK) <= n)
    return conform_recall(out)


def conform_recall(df: DataFrame) -> DataFrame:
    return df.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in RECALL.fields])


def empty_recall(spark) -> DataFrame:
    return spark.createDataFrame([], RECALL)


__all__ = ["active_users", "conform_recall", "empty_recall", "exclude_seen", "recent_items", "restrict_users",
           "top_n_per_user"]
