"""Recall (two-tower) samples of the sample window [F, D] (one day, D, on a daily feed).

One row per (user, item) pair of a *group*: the group's positive (label 1) and its negatives (label 0).

* Positives: the user's click-or-stronger events (``events.weights`` > 0), one per (user, item, event
  day): ts = the day's first positive event, label_weight = the day's strongest weight, request_id =
  that of the first. Hot items are down-sampled with f = the item's share of the *window's* positives
  (:func:`~recsys_batch.samples.negatives.downsample_hot_positives`).
* Negatives per positive: ``n_hard = round(K * hard_negative_ratio)`` hard ones from the request's
  candidates cut at prerank / rank (``rank_logs``), and easy ones (K minus the hard ones found) drawn
  from the catalog ∝ clicks^0.75. Neither ever is an item the user saw or acted on in the window: so
  shown-but-not-clicked impressions and the user's own positives (of any window day) are never recall
  negatives.
* ``item_sampling_prob`` = q(item) of the easy-negative distribution (0 outside it) and
  ``item_pos_freq`` = the item's share of the window's kept positives, for the logQ correction of sampled
  and in-batch softmax respectively (a training batch mixes rows of every window day).
"""

from __future__ import annotations

import logging
from datetime import date

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_batch.config import SamplesConfig
from recsys_batch.samples.common import EVENT_DAY
from recsys_batch.samples.negatives import (
    build_alias_frame, cut_candidates, downsample_hot_positives, easy_negatives, hard_negatives,
)
from recsys_batch.schemas import Col, FCol

log = logging.getLogger(__name__)


def recall_positives(day: DataFrame, sc: SamplesConfig) -> DataFrame:
    """One positive per (user, item, event day) of the window, hot items down-sampled: group_id, user_id,
    item_id, request_id, ts, label_weight, keep_prob. group_id = xxhash64(event day, user, item)."""
    pos = day.where(F.col(Col.WEIGHT) > 0)
    per_pair = pos.groupBy(Col.USER, Col.ITEM, EVENT_DAY).agg(
        F.min(Col.TS).alias(Col.TS), F.max(Col.WEIGHT).alias(FCol.LABEL_WEIGHT),
        F.min_by(Col.REQUEST, Col.TS).alias(Col.REQUEST))
    kept = downsample_hot_positives(per_pair, sc.hot_item_share_threshold, sc.seed)
    gid = F.xxhash64(F.col(EVENT_DAY).cast("string"), Col.USER, Col.ITEM).cast("string")
    return kept.select(gid.alias(FCol.GROUP), Col.USER, Col.ITEM, Col.REQUEST, Col.TS, FCol.LABEL_WEIGHT,
                       FCol.KEEP_PROB)


def build_recall_samples(day: DataFrame, rank_logs: DataFrame | None, distribution: DataFrame, run_date: date,
                         sc: SamplesConfig) -> DataFrame:
    """Positive and negative rows (without last-N and features; see the module docstring).

    day: :func:`~recsys_batch.samples.common.window_label_events` of the window; rank_logs: the window's
    rank logs or None; run_date: D (for the log line);
    distribution: (item_id, item_sampling_prob) of the easy negatives. Columns: group_id, user_id, item_id,
    label, source, request_id, ts, label_weight, item_sampling_prob, item_pos_freq, keep_prob.
    """
    spark = day.sparkSession
    positives = recall_positives(day, sc)
    exclude = day.select(Col.USER, Col.ITEM)  # everything the user saw or acted on in the window
    k = sc.negatives_per_positive
    n_hard = int(round(k * sc.hard_negative_ratio))
    if rank_logs is not None and n_hard > 0:
        hard = hard_negatives(positives, n_hard, cut_candidates(rank_logs), exclude, sc.seed)
    else:
        hard = positives.select(FCol.GROUP, Col.USER, F.lit(None).cast("string").alias(Col.ITEM),
                                F.lit("hard").alias(FCol.SOURCE)).limit(0)
    n_found = hard.groupBy(FCol.GROUP).agg(F.count(F.lit(1)).alias("_h"))
    need = (positives.join(n_found, FCol.GROUP, "left")
            .select(FCol.GROUP, Col.USER, (F.lit(k) - F.coalesce(F.col("_h"), F.lit(0))).alias("_need")))
    alias, n_items = build_alias_frame(spark, distribution)
    if n_items == 0:
        log.warning("recall samples %s: empty easy-negative distribution (no clicks in item_features); "
                    "only hard negatives", run_date)
    easy = easy_negatives(need, "_need", alias, n_items, k, sc.easy_oversample, exclude, sc.seed)
    head = positives.select(FCol.GROUP, Col.REQUEST, Col.TS, FCol.KEEP_PROB)
    negs = (hard.unionByName(easy).join(head, FCol.GROUP)
            .select(FCol.GROUP, Col.USER, Col.ITEM, F.lit(0).alias(FCol.LABEL), FCol.SOURCE, Col.REQUEST, Col.TS,
                    F.lit(0.0).alias(FCol.LABEL_WEIGHT), FCol.KEEP_PROB))
    pos_rows = positives.select(FCol.GROUP, Col.USER, Col.ITEM, F.lit(1).alias(FCol.LABEL),
                                F.lit("positive").alias(FCol.SOURCE), Col.REQUEST, Col.TS, FCol.LABEL_WEIGHT,
                                FCol.KEEP_PROB)
    rows = pos_rows.unionByName(negs)
    freq = positives.groupBy(Col.ITEM).agg(F.count(F.lit(1)).alias("_n"))
    freq = freq.crossJoin(F.broadcast(freq.agg(F.sum("_n").alias("_t")))).select(
        Col.ITEM, (F.col("_n") / F.col("_t")).alias(FCol.POS_FREQ))
    return (rows.join(distribution, Col.ITEM, "left").join(freq, Col.ITEM, "left")
            .fillna(0.0, subset=[FCol.SAMPLING_PROB, FCol.POS_FREQ]))
