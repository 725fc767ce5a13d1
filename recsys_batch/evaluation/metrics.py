"""Offline ranking metrics with Spark aggregations (binary relevance, one list per user and channel).

Inputs: ``recs`` (channel, user_id, item_id, rank) with rank 1 = best, ``test`` (user_id, item_id) the held-out
items. For a test user u with test set T_u (|T_u| >= 1) and list L_u (ranks 1..):

==============  ===========================================================================================
Recall@K        |L_u[1..K] & T_u| / |T_u|
HitRate@K       1 if L_u[1..K] & T_u is not empty else 0
NDCG@K          DCG@K / IDCG@K, DCG@K = sum_{r <= K, L_u[r] in T_u} 1 / log2(r + 1),
                IDCG@K = sum_{r=1}^{min(|T_u|, K)} 1 / log2(r + 1)
MRR             1 / (rank of the first hit within max(ks)), 0 if none
coverage@K      |distinct items of all evaluated lists' top K that are in the catalog| / |catalog|,
                catalog = the distinct items of the train matrix
novelty@K       mean over all (u, r <= K) list entries of -log2 pop(i), pop(i) = |N_train(i)| / |train users|
users_with_list test users with at least one entry in the channel's lists (any rank); user_coverage =
                users_with_list / test users -- a channel that builds no list for a user scores 0 there,
                so a low user_coverage explains a low recall
==============  ===========================================================================================

The per-user metrics are averaged over every test user (users with >= 1 test item); a user without a
list or without a hit counts as zero. Coverage and novelty use the lists given (the evaluator builds
them for the test users only). Everything is one or two aggregations; the result is one row per channel.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_batch.io.tables import require_columns
from recsys_batch.schemas import Col

CHANNEL = "channel"
_N = "n_test"


def recall_col(k: int) -> str:
    return f"recall_{k}"


def _channels_df(spark: SparkSession, channels: list[str]) -> DataFrame:
    return spark.createDataFrame([(c,) for c in channels], f"{CHANNEL} string")


def _idcg(n: F.Column, k: int) -> F.Column:
    return F.aggregate(F.sequence(F.lit(1), F.least(n, F.lit(k)).cast("int")), F.lit(0.0),
                       lambda acc, r: acc + F.lit(1.0) / F.log2(r + F.lit(1)))


def per_user_metrics(recs: DataFrame, test: DataFrame, ks: list[int], channels: list[str]) -> DataFrame:
    """One row per (channel, test user): n_test, recall_K, hit_K, ndcg_K for each K, mrr and has_list (1.0 if
    the user has any entry in the channel's lists, else 0.0; see module doc).

    Every channel of ``channels`` gets a row for every test user, with zeros where it has no list.
    Cost: a join of the lists (cut at max K) with the test items on (user, item), one aggregation on
    (channel, user), a distinct of the lists on (channel, user), a broadcast cross join of the few
    channels with the test users.
    """
    require_columns(recs, [CHANNEL, Col.USER, Col.ITEM, Col.RANK], table="recommendations", where="metrics")
    require_columns(test, [Col.USER, Col.ITEM], table="test items", where="metrics")
    ks = sorted(set(ks))
    max_k = ks[-1]
    test = test.select(Col.USER, Col.ITEM).distinct()
    n_test = test.groupBy(Col.USER).agg(F.count(F.lit(1)).alias(_N))
    hits = (recs.where(F.col(Col.RANK) <= max_k).select(CHANNEL, Col.USER, Col.ITEM, Col.RANK)
            .join(test, on=[Col.USER, Col.ITEM]))
    rank = F.col(Col.RANK)
    aggs = [F.min(rank).alias("_first")]
    for k in ks:
        aggs.append(F.sum(F.when(rank <= k, 1).otherwise(0)).alias(f"_hits_{k}"))
        aggs.append(F.sum(F.when(rank <= k, F.lit(1.0) / F.log2(rank + F.lit(1))).otherwise(0.0)).alias(f"_dcg_{k}"))
    per_hit = hits.groupBy(CHANNEL, Col.USER).agg(*aggs)
    listed = recs.select(CHANNEL, Col.USER).distinct().withColumn("_listed", F.lit(1.0))
    base = F.broadcast(_channels_df(recs.sparkSession, channels)).crossJoin(n_test)
    joined = (base.join(per_hit, on=[CHANNEL, Col.USER], how="left")
              .join(listed, on=[CHANNEL, Col.USER], how="left"))
    n = F.col(_N)
    cols = [CHANNEL, Col.USER, _N]
    for k in ks:
        hk = F.coalesce(F.col(f"_hits_{k}"), F.lit(0))
        cols += [(hk / n).alias(recall_col(k)),
                 F.when(hk > 0, 1.0).otherwise(0.0).alias(f"hit_{k}"),
                 (F.coalesce(F.col(f"_dcg_{k}"), F.lit(0.0)) / _idcg(n, k)).alias(f"ndcg_{k}")]
    cols.append(F.coalesce(F.lit(1.0) / F.col("_first"), F.lit(0.0)).alias("mrr"))
    cols.append(F.coalesce(F.col("_listed"), F.lit(0.0)).alias("has_list"))
    return joined.select(*cols)


def ranking_metrics(recs: DataFrame, test: DataFrame, ks: list[int], channels: list[str]) -> DataFrame:
    """Per channel: users (test users averaged over), users_with_list, user_coverage (users_with_list / users),
    recall_K, hit_K, ndcg_K (means) and mrr (mean)."""
    ks = sorted(set(ks))
    pu = per_user_metrics(recs, test, ks, channels)
    names = [m for k in ks for m in (recall_col(k), f"hit_{k}", f"ndcg_{k}")] + ["mrr"]
    return pu.groupBy(CHANNEL).agg(F.count(F.lit(1)).alias("users"),
                                   F.sum("has_list").cast("long").alias("users_with_list"),
                                   F.avg("has_list").alias("user_coverage"), *[F.avg(c).alias(c) for c in names])


def coverage_novelty(recs: DataFrame, train_matrix: DataFrame, ks: list[int], channels: list[str]) -> DataFrame:
    """Per channel: coverage_K and novelty_K (see module doc), catalog from ``train_matrix``.

    Cost: one aggregation of the train matrix on item (|N(i)|), a join of the lists with it, one
    aggregation on channel with countDistinct per K.
    """
    require_columns(recs, [CHANNEL, Col.USER, Col.ITEM, Col.RANK], table="recommendations", where="coverage")
    require_columns(train_matrix, [Col.USER, Col.ITEM], table="train matrix", where="coverage")
    ks = sorted(set(ks))
    n_users = F.lit(train_matrix.select(Col.USER).distinct().count())
    pop = train_matrix.groupBy(Col.ITEM).agg(F.countDistinct(Col.USER).alias("_nu"))
    catalog = pop.count()
    nov = -F.log2(F.col("_nu") / n_users)
    rows = (recs.where(F.col(Col.RANK) <= ks[-1]).select(CHANNEL, Col.ITEM, Col.RANK)
            .join(pop, on=Col.ITEM).withColumn("_nov", nov))
    aggs = []
    for k in ks:
        in_k = F.col(Col.RANK) <= k
        aggs.append((F.countDistinct(F.when(in_k, F.col(Col.ITEM))) / F.lit(max(catalog, 1))).alias(f"coverage_{k}"))
        aggs.append(F.avg(F.when(in_k, F.col("_nov"))).alias(f"novelty_{k}"))
    per = rows.groupBy(CHANNEL).agg(*aggs)
    return (_channels_df(recs.sparkSession, channels).join(per, on=CHANNEL, how="left")
            .fillna(0.0, subset=[f"coverage_{k}" for k in ks]))
