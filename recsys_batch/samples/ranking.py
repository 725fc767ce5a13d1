"""Ranking samples of the sample window [F, D]: its impressions with their labels, negatives down-sampled.

One row per impression key (user_id, item_id, request_id) of the window: ts / position of the first
impression (whose day picks the feature snapshot); labels click / like / collect / share / comment = 1
if such an event of the user on the item (same request) exists in the window (``click`` = any
click-or-stronger event; a click on a later window day than its impression counts, as one on a day
after the window does not), watch_time_s = the longest watch
(0 without). Rows with click = 0 are kept with probability alpha = ``samples.negative_keep_rate``
(seeded hash, deterministic); every row stores ``neg_keep_rate`` = alpha and ``sample_weight`` = 1
(clicked) or 1 / alpha (negative) for an unbiased weighted loss.

A model trained on the down-sampled rows predicts q = p / (p + alpha (1 - p)); :func:`calibrate`
maps it back: p = alpha q / (1 - q + alpha q).
"""

from __future__ import annotations

import numpy as np
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from recsys_batch.config import SamplesConfig
from recsys_batch.samples.negatives import hash_uniform
from recsys_batch.schemas import Col, FCol

_RK = "_rk"  # request_id with null as "" so impressions without a request still join their labels


def calibrate(p, alpha: float):  # noqa: ANN001, ANN201 - float or numpy array
    """Undo negative down-sampling at keep rate alpha: p_true = alpha p / (1 - p + alpha p)."""
    p = np.asarray(p, dtype=np.float64) if not isinstance(p, float | int) else float(p)
    return alpha * p / (1.0 - p + alpha * p)


def downsampled_prob(p, alpha: float):  # noqa: ANN001, ANN201
    """What a model trained on the down-sampled rows converges to: q = p / (p + alpha (1 - p))."""
    return p / (p + alpha * (1.0 - p))


def _flag(cond: Column) -> Column:
    return F.max(F.when(cond, 1).otherwise(0)).cast("int")


def build_ranking_samples(day: DataFrame, sc: SamplesConfig) -> DataFrame:
    """Labelled, down-sampled impressions of the window (without last-N and features)."""
    keyed = day.withColumn(_RK, F.coalesce(F.col(Col.REQUEST), F.lit("")))
    keys = [Col.USER, Col.ITEM, _RK]
    imps = keyed.where(F.col(Col.EVENT) == "impression").groupBy(*keys).agg(
        F.min(Col.TS).alias(Col.TS), F.min(Col.POSITION).alias(Col.POSITION),
        F.first(Col.REQUEST, ignorenulls=True).alias(Col.REQUEST))
    ev = F.col(Col.EVENT)
    labels = keyed.where(ev != "impression").groupBy(*keys).agg(
        _flag(F.col(Col.WEIGHT) > 0).alias(FCol.CLICK),
        *[_flag(ev == F.lit(t)).alias(t) for t in (FCol.LIKE, FCol.COLLECT, FCol.SHARE, FCol.COMMENT)],
        F.max(F.col(Col.WATCH)).alias(Col.WATCH))
    lab_cols = [FCol.CLICK, FCol.LIKE, FCol.COLLECT, FCol.SHARE, FCol.COMMENT]
    rows = imps.join(labels, keys, "left").fillna(0, subset=lab_cols).fillna(0.0, subset=[Col.WATCH])
    alpha = float(sc.negative_keep_rate)
    keep = (F.col(FCol.CLICK) == 1) | (hash_uniform(sc.seed, F.lit("rank"), Col.USER, Col.ITEM, _RK) < F.lit(alpha))
    return (rows.where(keep)
            .withColumn(FCol.NEG_KEEP_RATE, F.lit(alpha))
            .withColumn(FCol.SAMPLE_WEIGHT, F.when(F.col(FCol.CLICK) == 1, 1.0).otherwise(1.0 / alpha))
            .drop(_RK))
