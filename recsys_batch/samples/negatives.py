"""Deterministic randomness, hot-item positive down-sampling and recall negatives.

Randomness: every draw is ``hash_uniform(seed, keys...)`` -- xxhash64 of the seed and the row's keys
mapped to [0, 1) -- so a re-run, a retry or a different partitioning gives the same samples (``F.rand``
depends on the partition layout).

Easy negatives are drawn with replacement from the catalog with ``q(i) ∝ (clicks_i + smoothing) **
exponent`` (word2vec's unigram^0.75) by Walker's alias method: the alias table (one row per item with
``q > 0``: slot, item, accept, alias item) is built on the driver with numpy in O(n) and broadcast; a
draw is two uniforms, ``slot = floor(u1 * n)`` (an equi-join against the broadcast table, no range
join and no Python UDF) and ``item = u2 < accept ? item : alias``. The catalog is the items of
``item_features`` (D - 1): a few million items is ~100 bytes each on the driver and in each executor's
broadcast; beyond that, sample a category first and items within it (not needed yet).
"""

from __future__ import annotations

import math

import numpy as np
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_batch.io.tables import require_columns
from recsys_batch.schemas import Col, FCol

_TWO53 = float(2**53)
SLOT, ACCEPT, ALIAS = "_slot", "_accept", "_alias"
ALIAS_SCHEMA = T.StructType([
    T.StructField(SLOT, T.LongType(), False), T.StructField(Col.ITEM, T.StringType(), False),
    T.StructField(ACCEPT, T.DoubleType(), False), T.StructField(ALIAS, T.StringType(), False),
])


def hash_uniform(seed: int, *cols: Column | str) -> Column:
    """U[0, 1) from xxhash64(seed, cols): the top 53 bits of the hash / 2^53. Deterministic per row."""
    h = F.xxhash64(F.lit(int(seed)), *[F.col(c) if isinstance(c, str) else c for c in cols])
    return F.shiftrightunsigned(h, 11).cast("double") / F.lit(_TWO53)


# ---- hot-item down-sampling of positives -----------------------------------------------------------------


def hot_item_keep_prob(share: Column, threshold: float | None) -> Column:
    """word2vec subsampling: keep = min(1, (sqrt(f / t) + 1) * t / f), f = item's share of the window's positives.

    Drop probability 1 - keep grows with f: f <= t keeps everything; f = 100 t keeps 11%.
    """
    if threshold is None:
        return F.lit(1.0)
    t = F.lit(float(threshold))
    return F.least(F.lit(1.0), (F.sqrt(share / t) + F.lit(1.0)) * t / share)


def downsample_hot_positives(positives: DataFrame, threshold: float | None, seed: int) -> DataFrame:
    """Keep each positive (user, item) with :func:`hot_item_keep_prob`; adds ``keep_prob``.

    Cost: one aggregate per item (shuffle), broadcast of the total.
    """
    require_columns(positives, [Col.USER, Col.ITEM], table="positives", where="hot-item down-sampling")
    per_item = positives.groupBy(Col.ITEM).agg(F.count(F.lit(1)).alias("_n"))
    total = positives.agg(F.count(F.lit(1)).alias("_total"))
    keep = (per_item.crossJoin(F.broadcast(total))
            .select(Col.ITEM, hot_item_keep_prob(F.col("_n") / F.col("_total"), threshold).alias(FCol.KEEP_PROB)))
    return (positives.join(keep, Col.ITEM)
            .where(hash_uniform(seed, F.lit("hot"), Col.USER, Col.ITEM) < F.col(FCol.KEEP_PROB)))


# ---- the easy-negative distribution ------------------------------------------------------------------------


def sampling_distribution(item_features: DataFrame, clicks_col: str, exponent: float,
                          smoothing: float = 0.0) -> DataFrame:
    """``(item_id, item_sampling_prob)``: q(i) = (clicks_i + smoothing)^exponent / sum_j (...), items with q > 0."""
    require_columns(item_features, [Col.ITEM, clicks_col], table="item_features", where="negative sampling")
    w = F.pow(F.coalesce(F.col(clicks_col), F.lit(0)).cast("double") + F.lit(float(smoothing)), F.lit(float(exponent)))
    weighted = item_features.select(Col.ITEM, F.when(F.col(clicks_col) + F.lit(smoothing) > 0, w).otherwise(0.0).alias("_w"))
    weighted = weighted.where(F.col("_w") > 0)
    return (weighted.crossJoin(F.broadcast(weighted.agg(F.sum("_w").alias("_sum"))))
            .select(Col.ITEM, (F.col("_w") / F.col("_sum")).alias(FCol.SAMPLING_PROB)))


def alias_table(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker/Vose alias table: (accept, alias) with P(i) = (accept_i + sum_{j: alias_j = i} (1 - accept_j)) / n."""
    p = np.asarray(probs, dtype=np.float64)
    n = len(p)
    scaled = p * n / p.sum()
    accept, alias = np.ones(n), np.arange(n)
    small = [i for i in range(n) if scaled[i] < 1.0]
    large = [i for i in range(n) if scaled[i] >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        accept[s], alias[s] = scaled[s], g
        scaled[g] -= 1.0 - scaled[s]
        (small if scaled[g] < 1.0 else large).append(g)
    return accept, alias  # leftovers keep accept = 1 (rounding)


def build_alias_frame(spark: SparkSession, distribution: DataFrame) -> tuple[DataFrame, int]:
    """Collect ``(item, q)`` (sorted by item, so the table is deterministic) and return the alias DataFrame."""
    rows = distribution.orderBy(Col.ITEM).collect()
    if not rows:
        return spark.createDataFrame([], ALIAS_SCHEMA), 0
    items = [r[Col.ITEM] for r in rows]
    accept, alias = alias_table(np.array([r[FCol.SAMPLING_PROB] for r in rows]))
    data = [(i, items[i], float(accept[i]), items[int(alias[i])]) for i in range(len(items))]
    return spark.createDataFrame(data, ALIAS_SCHEMA), len(items)


def draw_items(keys: DataFrame, key_cols: list[str], n_draws: int, alias: DataFrame, n_items: int,
               seed: int) -> DataFrame:
    """``n_draws`` items per key row, with replacement, from the alias table; adds ``_j`` (draw number) and item_id.

    Cost: explode of n_draws per row, one broadcast equi-join on the slot.
    """
    if n_items == 0 or n_draws <= 0:
        return keys.select(*key_cols, F.lit(0).alias("_j"), F.lit(None).cast("string").alias(Col.ITEM)).limit(0)
    draws = keys.select(*key_cols, F.explode(F.sequence(F.lit(0), F.lit(n_draws - 1))).alias("_j"))
    u1 = hash_uniform(seed, F.lit("slot"), *key_cols, "_j")
    u2 = hash_uniform(seed, F.lit("accept"), *key_cols, "_j")
    draws = draws.select("*", F.least(F.floor(u1 * n_items), F.lit(n_items - 1)).cast("long").alias(SLOT),
                         u2.alias("_u2"))
    return (draws.join(F.broadcast(alias), SLOT)
            .select(*key_cols, "_j", F.when(F.col("_u2") < F.col(ACCEPT), F.col(Col.ITEM)).otherwise(F.col(ALIAS))
                    .alias(Col.ITEM)))


def easy_negatives(groups: DataFrame, need_col: str, alias: DataFrame, n_items: int, max_need: int,
                   oversample: float, exclude: DataFrame, seed: int) -> DataFrame:
    """Up to ``need_col`` easy negatives per group (``group_id, user_id``), never an item of ``exclude``.

    Draws ceil(max_need * oversample) candidates per group, drops those in the user's ``exclude`` set
    (user_id, item_id: every item the user saw or acted on in the sample window), keeps the first ``need`` by draw
    number. A group whose draws are mostly excluded gets fewer negatives (dropped, not resampled: the
    shortfall is rare with oversampling and resampling would bias q).
    """
    n_draws = int(math.ceil(max_need * oversample))
    drawn = draw_items(groups.select(FCol.GROUP, Col.USER), [FCol.GROUP, Col.USER], n_draws, alias, n_items, seed)
    drawn = drawn.join(exclude.select(Col.USER, Col.ITEM).distinct(), [Col.USER, Col.ITEM], "left_anti")
    w = Window.partitionBy(FCol.GROUP).orderBy("_j")
    return (drawn.join(groups.select(FCol.GROUP, need_col), FCol.GROUP)
            .withColumn("_rn", F.row_number().over(w)).where(F.col("_rn") <= F.col(need_col))
            .select(FCol.GROUP, Col.USER, Col.ITEM, F.lit("easy").alias(FCol.SOURCE)))


def cut_candidates(rank_logs: DataFrame) -> DataFrame:
    """``(request_id, user_id, item_id)`` recalled for a request but cut at pre-ranking or ranking
    (a ``prerank`` or ``rank`` row with passed = false). Shown items passed every stage; a recall-stage
    row never makes a hard negative."""
    require_columns(rank_logs, [Col.REQUEST, Col.USER, Col.ITEM, Col.STAGE, Col.PASSED], table="rank_logs",
                    where="hard negatives")
    return (rank_logs.where(F.col(Col.STAGE).isin("prerank", "rank") & ~F.col(Col.PASSED))
            .select(Col.REQUEST, Col.USER, Col.ITEM).distinct())


def hard_negatives(groups: DataFrame, n_hard: int, cut: DataFrame, exclude: DataFrame, seed: int) -> DataFrame:
    """Up to ``n_hard`` hard negatives per group from the cut candidates of the positive's request,
    never an item of the user's ``exclude`` set; chosen by a seeded hash order."""
    if n_hard <= 0:
        return groups.select(FCol.GROUP, Col.USER, F.lit(None).cast("string").alias(Col.ITEM),
                             F.lit("hard").alias(FCol.SOURCE)).limit(0)
    cand = (groups.select(FCol.GROUP, Col.USER, Col.REQUEST).where(F.col(Col.REQUEST).isNotNull())
            .join(cut, [Col.REQUEST, Col.USER])
            .join(exclude.select(Col.USER, Col.ITEM).distinct(), [Col.USER, Col.ITEM], "left_anti"))
    w = Window.partitionBy(FCol.GROUP).orderBy(hash_uniform(seed, F.lit("hard"), FCol.GROUP, Col.ITEM), Col.ITEM)
    return (cand.withColumn("_rn", F.row_number().over(w)).where(F.col("_rn") <= n_hard)
            .select(FCol.GROUP, Col.USER, Col.ITEM, F.lit("hard").alias(FCol.SOURCE)))
