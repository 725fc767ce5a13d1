"""Offline ranking metrics with Spark aggregations (binary relevance, one list per user and channel).

Inputs: ``recs`` (channel, user_id, item_id, rank) with rank 1 = best (any extra column, e.g. the
``channels`` array of ``recall_merged``, is ignored), ``test`` (user_id, item_id) the held-out items, and
the train matrix (user_id, item_id): the users' history the lists were built from. For a test user u with
test set T_u (|T_u| >= 1) and list L_u (ranks 1..); N(i) = users of item i in the train matrix, U = its
users, M = its items, n_i = |N(i)| (0 for an item outside M):

==================  ========================================================================================
recall@K            |L_u[1..K] & T_u| / |T_u|
hit_rate@K          1 if L_u[1..K] & T_u is not empty else 0
ndcg@K              DCG@K / IDCG@K, DCG@K = sum_{r <= K, L_u[r] in T_u} 1 / log2(r + 1),
                    IDCG@K = sum_{r=1}^{min(|T_u|, K)} 1 / log2(r + 1)
mrr                 1 / (rank of the first hit within max(ks)), 0 if none
users_with_list     test users with at least one entry in the channel's lists (any rank); user_coverage =
                    users_with_list / test users -- a channel that builds no list for a user scores 0 there,
                    so a low user_coverage explains a low recall
coverage@K          catalog coverage: |distinct items of the channel's top K over all its lists| / |C|,
                    C = M | (items of every evaluated channel's lists within max(ks)); the catalog is every
                    item the evaluation knows, so a cold item a channel shows (fresh) counts, and
                    coverage <= 1
novelty@K           mean over the channel's list entries (u, r <= K) of the self-information
                    -log2 pop(i), pop(i) = (n_i + 1) / (|U| + 1) (add-one smoothed, so an item outside the
                    train matrix scores log2(|U| + 1) instead of infinity)
pop_percentile@K    popularity bias: mean over the channel's list entries (u, r <= K) of
                    pct(i) = |{j in M : n_j < n_i}| / |M| (share of the matrix items strictly less popular
                    than i; 0 for an item outside M). Compare with truth_pop_percentile, the same mean
                    over the test pairs (u, i in T_u): above it, the channel leans to popular items
hits@K              number of test pairs (u, i) the channel has within its top K (sum over users of
                    |L_u[1..K] & T_u|)
unique_hits@K       overlap: hits (u, i) at K that no other channel finds at K (within its own top K);
                    channels of ``overlap_exclude`` (``merged``, a mix of the others) neither count as
                    "another channel" nor get the number (None)
union_hits@K        (per evaluation) distinct test pairs found at K by any channel not excluded
merged_sole_hits@K  (published mode, per channel c, when ``recall_merged`` has its ``channels``
                    provenance column) hits (u, i) of the merged list at K whose ``channels`` = [c]: the
                    merged list holds i only because c's quota list had it. Unlike unique_hits@K (other
                    channels' top K), this is what c alone contributes to the list that ships
==================  ========================================================================================

The per-user metrics are averaged over every test user (users with >= 1 test item); a user without a
list or without a hit counts as zero. Coverage, novelty and popularity use the lists given (the
evaluator builds them for the test users only).

Cost (one evaluation, every K at once: each pass computes all K with conditional aggregations, never
one pass per K). The lists are scanned three times, each scan ending in a small aggregate: (1) the
lists cut at max(ks) joined with the test pairs on (user, item) -> the hits (at most channels x test
pairs rows, persisted and shared by the ranking metrics and the overlap); (2) a distinct on (channel,
user) -> who has a list; (3) an aggregation on (channel, item) -> per-item entry counts per K (at most
channels x catalog rows), joined with the item popularity. Plus: one aggregation of the train matrix on
item (n_i), whose histogram of distinct n values (<= sqrt(2 * matrix rows) values) is collected to rank
the popularity; one shuffle of the hits on (user, item) for the overlap; a cross join of the few
channels with the test users. Nothing larger than the per-channel rows reaches the driver.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recsys_batch.io.tables import require_columns
from recsys_batch.schemas import Col

CHANNEL = "channel"
_N = "n_test"
_NU, _PCT = "_n_users", "_pop_pct"
#: channels that mix the others: not part of the unique-hit overlap (evaluate.overlap_exclude's default)
DEFAULT_OVERLAP_EXCLUDE = ("merged",)

#: metric key (K-suffixed keys without "@K") -> its definition, copied into the metrics JSON and the report
METRIC_DEFINITIONS = {
    "users_with_list": "test users with at least one entry in the channel's lists (user_coverage = its share of "
                       "the test users)",
    "recall@K": "|top-K list & test items of u| / |test items of u|, averaged over every test user (no list = 0)",
    "hit_rate@K": "1 if the top-K list holds a test item of u, else 0; averaged over test users",
    "ndcg@K": "DCG@K / IDCG@K with DCG@K = sum over hits at rank r <= K of 1/log2(r+1), "
              "IDCG@K = sum_{r=1}^{min(|T_u|,K)} 1/log2(r+1); averaged over test users",
    "mrr": "1 / rank of the first hit within max K (0 if none), averaged over test users",
    "coverage@K": "catalog coverage: distinct items in the channel's top-K lists / |catalog|, catalog = items of "
                  "the train matrix plus items of any evaluated list",
    "novelty@K": "mean over the top-K list entries of -log2 pop(i), pop(i) = (n_i + 1) / (|U| + 1), n_i = users of "
                 "item i in the train matrix, |U| = its users",
    "pop_percentile@K": "popularity bias: mean over the top-K list entries of pct(i) = share of the train matrix's "
                        "items strictly less popular than i (0 for an item outside it); compare with "
                        "truth_pop_percentile, the same mean over the test pairs",
    "hits@K": "test pairs (u, i) the channel has within its top K",
    "unique_hits@K": "hits at K no other channel finds within its top K (channels of evaluate.overlap_exclude, "
                     "e.g. merged, do not take part)",
    "union_hits@K": "distinct test pairs found at K by any channel taking part in the overlap",
    "merged_sole_hits@K": "hits of recall_merged within its top K whose channels provenance is this channel alone "
                          "(the merged list holds the item only because this channel's quota list had it)",
}


def recall_col(k: int) -> str:
    return f"recall_{k}"


def _channels_df(spark: SparkSession, channels: list[str]) -> DataFrame:
    return spark.createDataFrame([(c,) for c in channels], f"{CHANNEL} string")


def _idcg(n: F.Column, k: int) -> F.Column:
    return F.aggregate(F.sequence(F.lit(1), F.least(n, F.lit(k)).cast("int")), F.lit(0.0),
                       lambda acc, r: acc + F.lit(1.0) / F.log2(r + F.lit(1)))


def _require_lists(recs: DataFrame, where: str) -> None:
    require_columns(recs, [CHANNEL, Col.USER, Col.ITEM, Col.RANK], table="recommendations", where=where)


def list_hits(recs: DataFrame, test: DataFrame, max_k: int) -> DataFrame:
    """(channel, user_id, item_id, rank): the list entries within ``max_k`` that are test pairs, one row per
    (channel, user, item) at its best rank (a list holding an item twice counts it once).

    Cost: the one join of the lists (cut at max_k) with the distinct test pairs on (user, item), then an
    aggregation of the (few) hits. Every per-K metric is computed from these rows.
    """
    _require_lists(recs, "metrics")
    require_columns(test, [Col.USER, Col.ITEM], table="test items", where="metrics")
    test = test.select(Col.USER, Col.ITEM).distinct()
    return (recs.where(F.col(Col.RANK) <= max_k).select(CHANNEL, Col.USER, Col.ITEM, Col.RANK)
            .join(test, on=[Col.USER, Col.ITEM])
            .groupBy(CHANNEL, Col.USER, Col.ITEM).agg(F.min(Col.RANK).alias(Col.RANK)))


def per_user_metrics(recs: DataFrame, test: DataFrame, ks: list[int], channels: list[str],
                     hits: DataFrame | None = None) -> DataFrame:
    """One row per (channel, test user): n_test, recall_K, hit_K, ndcg_K for each K, mrr and has_list (1.0 if
    the user has any entry in the channel's lists, else 0.0; see module doc).

    Every channel of ``channels`` gets a row for every test user, with zeros where it has no list.
    ``hits``: :func:`list_hits` of the same inputs when the caller already has it (computed here otherwise).
    Cost: one aggregation of the hits on (channel, user), a distinct of the lists on (channel, user), a
    broadcast cross join of the few channels with the test users.
    """
    _require_lists(recs, "metrics")
    require_columns(test, [Col.USER, Col.ITEM], table="test items", where="metrics")
    ks = sorted(set(ks))
    test = test.select(Col.USER, Col.ITEM).distinct()
    hits = list_hits(recs, test, ks[-1]) if hits is None else hits
    n_test = test.groupBy(Col.USER).agg(F.count(F.lit(1)).alias(_N))
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


def ranking_metrics(recs: DataFrame, test: DataFrame, ks: list[int], channels: list[str],
                    hits: DataFrame | None = None) -> DataFrame:
    """Per channel: users (test users averaged over), users_with_list, user_coverage (users_with_list / users),
    recall_K, hit_K, ndcg_K (means) and mrr (mean)."""
    ks = sorted(set(ks))
    pu = per_user_metrics(recs, test, ks, channels, hits=hits)
    names = [m for k in ks for m in (recall_col(k), f"hit_{k}", f"ndcg_{k}")] + ["mrr"]
    return pu.groupBy(CHANNEL).agg(F.count(F.lit(1)).alias("users"),
                                   F.sum("has_list").cast("long").alias("users_with_list"),
                                   F.avg("has_list").alias("user_coverage"), *[F.avg(c).alias(c) for c in names])


@dataclass(frozen=True)
class ItemPopularity:
    """Popularity of the train matrix's items: ``items`` (item_id, _n_users = n_i, _pop_pct = pct(i)),
    ``train_users`` = |U|, ``matrix_items`` = |M| (module doc)."""

    items: DataFrame
    train_users: int
    matrix_items: int


def item_popularity(train_matrix: DataFrame) -> ItemPopularity:
    """n_i and pct(i) = |{j in M : n_j < n_i}| / |M| for every item of the train matrix.

    Cost: one aggregation of the matrix on item and a distinct count of its users; the histogram
    (n -> items with n users) has at most sqrt(2 * matrix rows) rows (the distinct n values sum to at most
    the number of (user, item) pairs), is collected, turned into "items strictly less popular" by a running
    sum on the driver and broadcast back.
    """
    require_columns(train_matrix, [Col.USER, Col.ITEM], table="train matrix", where="popularity")
    spark = train_matrix.sparkSession
    n_users = train_matrix.select(Col.USER).distinct().count()
    pop = train_matrix.groupBy(Col.ITEM).agg(F.countDistinct(Col.USER).alias(_NU))
    hist = sorted((r[0], r[1]) for r in pop.groupBy(_NU).count().collect())
    n_items = sum(c for _, c in hist)
    below, rows = 0, []
    for n, c in hist:
        rows.append((n, below / n_items))
        below += c
    pct = spark.createDataFrame(rows or [(0, 0.0)], f"{_NU} long, {_PCT} double")
    return ItemPopularity(pop.join(F.broadcast(pct), on=_NU), n_users, n_items)


def coverage_novelty(recs: DataFrame, train_matrix: DataFrame, ks: list[int], channels: list[str],
                     popularity: ItemPopularity | None = None) -> DataFrame:
    """Per channel: coverage_K, novelty_K, pop_percentile_K (module doc) and catalog_items (|C|, the same on
    every row). Channels without a list: coverage 0, novelty and popularity None.

    Cost: one aggregation of the lists (cut at max(ks)) on (channel, item) with an entry count per K, a
    left join of that small table with the item popularity, one aggregation on channel.
    """
    _require_lists(recs, "coverage")
    ks = sorted(set(ks))
    pop = popularity or item_popularity(train_matrix)
    rank = F.col(Col.RANK)
    per_item = (recs.where(rank <= ks[-1]).groupBy(CHANNEL, Col.ITEM)
                .agg(F.min(rank).alias("_best"), *[F.count(F.when(rank <= k, 1)).alias(f"_c_{k}") for k in ks])
                .join(pop.items, on=Col.ITEM, how="left")
                .fillna({_NU: 0, _PCT: 0.0})
                .persist())
    try:
        cold = per_item.where(F.col(_NU) == 0).select(Col.ITEM).distinct().count()
        catalog = pop.matrix_items + cold
        nov = -F.log2((F.col(_NU) + F.lit(1.0)) / F.lit(pop.train_users + 1.0))
        aggs = []
        for k in ks:
            c = F.col(f"_c_{k}")
            entries = F.sum(c)
            shown = F.count(F.when(F.col("_best") <= k, 1))
            aggs.append((shown / F.lit(float(max(catalog, 1)))).alias(f"coverage_{k}"))
            aggs.append(F.when(entries > 0, F.sum(c * nov) / entries).alias(f"novelty_{k}"))
            aggs.append(F.when(entries > 0, F.sum(c * F.col(_PCT)) / entries).alias(f"pop_percentile_{k}"))
        per = per_item.groupBy(CHANNEL).agg(*aggs).collect()
    finally:
        per_item.unpersist()
    spark = recs.sparkSession
    per_df = spark.createDataFrame(per, schema=_agg_schema(ks))
    out = (_channels_df(spark, channels).join(per_df, on=CHANNEL, how="left")
           .fillna(0.0, subset=[f"coverage_{k}" for k in ks]))
    return out.withColumn("catalog_items", F.lit(catalog).cast("long"))


def _agg_schema(ks: list[int]) -> str:
    return ", ".join([f"{CHANNEL} string"] + [f"{m}_{k} double" for k in ks
                                              for m in ("coverage", "novelty", "pop_percentile")])


def truth_pop_percentile(test: DataFrame, popularity: ItemPopularity) -> float | None:
    """Mean pct(i) over the distinct test pairs (u, i) (module doc); None without test pairs."""
    require_columns(test, [Col.USER, Col.ITEM], table="test items", where="popularity")
    row = (test.select(Col.USER, Col.ITEM).distinct().join(popularity.items, on=Col.ITEM, how="left")
           .agg(F.avg(F.coalesce(F.col(_PCT), F.lit(0.0)))).first())
    return None if row is None or row[0] is None else float(row[0])


def hit_overlap(hits: DataFrame, ks: list[int], channels: list[str],
                exclude: tuple[str, ...] | list[str] = DEFAULT_OVERLAP_EXCLUDE) -> DataFrame:
    """Per channel of ``channels``: hits_K and unique_hits_K (module doc) and credit_K = sum over its hits at
    K of 1 / (channels finding that pair at K), so that the credits of all channels sum to the union.

    ``hits``: :func:`list_hits` (one row per channel, user, item). With m_K(u, i) = number of channels
    outside ``exclude`` that have (u, i) within their top K, a hit of channel c at K is unique iff
    m_K(u, i) = 1 and c is not excluded. Excluded channels get unique_hits_K and credit_K = None.
    Cost: one shuffle of the hits on (user, item) (a window counting all K at once), one aggregation on
    channel.
    """
    require_columns(hits, [CHANNEL, Col.USER, Col.ITEM, Col.RANK], table="hits", where="overlap")
    ks = sorted(set(ks))
    rank, inc = F.col(Col.RANK), ~F.col(CHANNEL).isin(list(exclude))
    pair = Window.partitionBy(Col.USER, Col.ITEM)
    counted = hits.select(CHANNEL, Col.USER, Col.ITEM, Col.RANK, *[
        F.sum(F.when((rank <= k) & inc, 1).otherwise(0)).over(pair).alias(f"_m_{k}") for k in ks])
    aggs = []
    for k in ks:
        at_k, m = rank <= k, F.col(f"_m_{k}")
        aggs += [F.count(F.when(at_k, 1)).alias(f"hits_{k}"),
                 F.count(F.when(at_k & inc & (m == 1), 1)).alias(f"unique_hits_{k}"),
                 F.sum(F.when(at_k & inc, F.lit(1.0) / m)).alias(f"credit_{k}")]
    per = counted.groupBy(CHANNEL).agg(*aggs)
    out = _channels_df(hits.sparkSession, channels).join(per, on=CHANNEL, how="left")
    excluded = F.col(CHANNEL).isin(list(exclude))
    cols = [CHANNEL]
    for k in ks:
        cols += [F.coalesce(F.col(f"hits_{k}"), F.lit(0)).cast("long").alias(f"hits_{k}"),
                 F.when(excluded, F.lit(None)).otherwise(F.coalesce(F.col(f"unique_hits_{k}"), F.lit(0)))
                  .cast("long").alias(f"unique_hits_{k}"),
                 F.when(excluded, F.lit(None)).otherwise(F.coalesce(F.col(f"credit_{k}"), F.lit(0.0)))
                  .alias(f"credit_{k}")]
    return out.select(*cols)


def merged_sole_hits(merged: DataFrame, test: DataFrame, ks: list[int]) -> DataFrame:
    """(channel, sole_hits_K for each K): per channel c, the test pairs (u, i) that ``merged``
    (``recall_merged`` rows: user_id, item_id, rank, channels) has within its top K with channels = [c].

    Pairs with two or more channels in their provenance count for none of them; a channel with no sole hit
    has no row (the caller reports 0). Cost: the merged rows cut at max K and filtered to one-channel
    provenance, joined with the distinct test pairs on (user, item), one aggregation on channel.
    """
    require_columns(merged, [Col.USER, Col.ITEM, Col.RANK, Col.CHANNELS], table="recall_merged",
                    where="merged_sole_hits")
    require_columns(test, [Col.USER, Col.ITEM], table="test items", where="merged_sole_hits")
    ks = sorted(set(ks))
    rank = F.col(Col.RANK)
    sole = (merged.where((rank <= ks[-1]) & (F.size(Col.CHANNELS) == 1))
            .select(Col.USER, Col.ITEM, rank, F.col(Col.CHANNELS)[0].alias(CHANNEL)))
    hits = sole.join(test.select(Col.USER, Col.ITEM).distinct(), on=[Col.USER, Col.ITEM])
    return hits.groupBy(CHANNEL).agg(*[F.count(F.when(rank <= k, 1)).alias(f"sole_hits_{k}") for k in ks])


def union_hits(overlap_rows: list[dict], ks: list[int]) -> dict[str, int]:
    """``union_hits@K`` from :func:`hit_overlap`'s rows: the credits of the channels sum to the number of
    distinct pairs found at K (each pair's 1/m_K shares add up to 1; rounded to undo the float error)."""
    return {f"union_hits@{k}": int(round(math.fsum(r.get(f"credit_{k}") or 0.0 for r in overlap_rows)))
            for k in sorted(set(ks))}
