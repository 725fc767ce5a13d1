"""The merged recall list ``recall_merged``: per user, each channel's best items within its quota, deduplicated,
fused by reciprocal rank fusion (default) or a snake (round-robin) merge, exposed items dropped.

Steps, per user u (config :class:`recsys_batch.config.MergeConfig`):

1. candidates = the rows of every available ``recall_<c>`` (c a key of ``merge.quotas``);
2. the exposure filter (:func:`recsys_batch.recall.exposure.drop_exposed`) drops the items u's Bloom filter
   reports as shown -- before the quotas, so a shown item does not use up a channel's quota;
3. rank_c(u, i) = i's position in c's remaining list (channel rank asc, item_id asc), kept if
   rank_c <= quota_c;
4. fusion, one row per distinct item, ``channels`` = the channels (sorted) whose quota list holds it:
   * ``rrf``: score(u, i) = sum_{c : i in quota list of c} w_c / (k + rank_c(u, i)) (Cormack, Clarke &
     Buettcher 2009, k = 60); ranked by score desc, item_id asc. w_c: learned each day when
     ``merge.learn_weights`` (:func:`channel_validation` of D-1's lists on D's positives, then
     :func:`learned_weights`: w_c = recall_c / max recall, weighted Borda-fuse of Aslam & Montague 2001;
     with ``merge.learn_method: search`` (default) those are the start of a coordinate ascent of the fused
     list's recall on a sample of the validation users, :func:`validation_sample` and
     :mod:`recsys_batch.recall.fusion_search`), else -- and for a channel without validation --
     ``merge.weights`` (default: 1, plain RRF);
   * ``snake``: the channels take turns in ``quotas`` order; on its turn a channel gives its best item not
     taken yet (so a duplicate costs no turn); score = 1 / rank;
5. the top ``merge.top_n`` per user, rank 1..top_n.

Output schema ``RECALL_MERGED`` (RECALL + ``channels``). Cost: one union of the channel rows (sum of the
channel tables' dt=D rows), the filter's cogroup on user, one window on (user, channel), then RRF one
aggregation on (user, item) + one window on user, or snake one groupBy(user).applyInPandas over at most
sum(quotas) rows per user. Nothing reaches the driver but the weight search's sample (at most
``merge.search_max_users`` x sum(quotas) rows of D-1's lists).
"""

from __future__ import annotations

import itertools

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recsys_batch.config import MergeConfig
from recsys_batch.errors import RecsysBatchError
from recsys_batch.evaluation.metrics import CHANNEL as EVAL_CHANNEL, per_user_metrics, recall_col
from recsys_batch.io.tables import require_columns
from recsys_batch.recall.exposure import drop_exposed
from recsys_batch.recall.fusion_search import FusionSample, sample_from_rows
from recsys_batch.schemas import RECALL_MERGED, Col

CHANNEL = "_channel"
CHANNEL_RANK = "_channel_rank"
_ORDER = "_order"


def _literal_map(values: dict) -> Column:
    return F.create_map(*itertools.chain.from_iterable((F.lit(k), F.lit(v)) for k, v in values.items()))


def channel_candidates(lists: dict[str, DataFrame]) -> DataFrame:
    """The union of the channel lists: (user_id, item_id, _channel, _channel_rank = the table's rank)."""
    if not lists:
        raise RecsysBatchError("merge: no channel list to merge")
    out = None
    for channel, df in lists.items():
        require_columns(df, [Col.USER, Col.ITEM, Col.RANK], table=f"recall_{channel}", where="merge")
        part = df.select(Col.USER, Col.ITEM, F.lit(channel).alias(CHANNEL),
                         F.col(Col.RANK).cast("int").alias(CHANNEL_RANK))
        out = part if out is None else out.unionByName(part)
    return out


def apply_quotas(candidates: DataFrame, quotas: dict[str, int]) -> DataFrame:
    """Re-rank each (user, channel) list 1.. (channel rank asc, item_id asc) into ``_channel_rank`` and keep
    rank <= quota of the channel; a channel without a quota keeps nothing."""
    w = Window.partitionBy(Col.USER, CHANNEL).orderBy(F.col(CHANNEL_RANK).asc(), F.col(Col.ITEM).asc())
    ranked = candidates.withColumn(CHANNEL_RANK, F.row_number().over(w))
    return ranked.where(F.col(CHANNEL_RANK) <= F.element_at(_literal_map(quotas), F.col(CHANNEL)))


def _conform(df: DataFrame) -> DataFrame:
    return df.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in RECALL_MERGED.fields])


def rrf_fuse(quota_rows: DataFrame, cfg: MergeConfig, weights: dict[str, float] | None = None) -> DataFrame:
    """RRF over quota rows (user_id, item_id, _channel, _channel_rank): schema ``RECALL_MERGED``, top_n per user.
    ``weights``: {channel: w_c} (default: ``merge.weights``, 1 for a channel not listed)."""
    weights = {c: float(weights[c]) if weights and c in weights else cfg.weight(c) for c in cfg.quotas}
    contrib = F.element_at(_literal_map(weights), F.col(CHANNEL)) / (F.lit(float(cfg.rrf_k)) + F.col(CHANNEL_RANK))
    fused = (quota_rows.groupBy(Col.USER, Col.ITEM)
             .agg(F.sum(contrib).alias(Col.SCORE), F.sort_array(F.collect_set(CHANNEL)).alias(Col.CHANNELS)))
    w = Window.partitionBy(Col.USER).orderBy(F.col(Col.SCORE).desc(), F.col(Col.ITEM).asc())
    return _conform(fused.withColumn(Col.RANK, F.row_number().over(w)).where(F.col(Col.RANK) <= cfg.top_n))


def snake_order(lists: dict[str, list[str]], order: list[str], top_n: int) -> list[str]:
    """Round-robin over ``order`` (channels missing from ``lists`` are skipped): on its turn a channel gives
    its first item not taken yet; stops at ``top_n`` items or when every list is used up."""
    taken: list[str] = []
    seen: set[str] = set()
    pos = {c: 0 for c in order if c in lists}
    while len(taken) < top_n and pos:
        for c in list(pos):
            items, i = lists[c], pos[c]
            while i < len(items) and items[i] in seen:
                i += 1
            if i >= len(items):
                del pos[c]
                continue
            taken.append(items[i])
            seen.add(items[i])
            pos[c] = i + 1
            if len(taken) == top_n:
                break
    return taken


def _snake_user(pdf, order: list[str], top_n: int):  # noqa: ANN001, ANN202 - pandas in, pandas out
    import pandas as pd

    pdf = pdf.sort_values([CHANNEL, CHANNEL_RANK])
    lists = {c: g[Col.ITEM].tolist() for c, g in pdf.groupby(CHANNEL, sort=False)}
    provenance = pdf.groupby(Col.ITEM)[CHANNEL].agg(lambda s: sorted(set(s))).to_dict()
    items = snake_order(lists, order, top_n)
    ranks = list(range(1, len(items) + 1))
    return pd.DataFrame({Col.USER: [pdf[Col.USER].iloc[0]] * len(items), Col.ITEM: items,
                         Col.SCORE: [1.0 / r for r in ranks], Col.RANK: ranks,
                         Col.CHANNELS: [provenance[i] for i in items]})


def snake_fuse(quota_rows: DataFrame, cfg: MergeConfig) -> DataFrame:
    """Snake merge over quota rows: schema ``RECALL_MERGED``, top_n per user, score = 1 / rank."""
    order, top_n = cfg.channels, cfg.top_n

    def snake(pdf):  # noqa: ANN001, ANN202
        return _snake_user(pdf, order, top_n)

    cols = quota_rows.select(Col.USER, Col.ITEM, CHANNEL, CHANNEL_RANK)
    return _conform(cols.groupBy(Col.USER).applyInPandas(snake, RECALL_MERGED))


def channel_validation(lists: dict[str, DataFrame], test: DataFrame, k: int) -> DataFrame:
    """Per channel: how good its list of a past day was, on what users did next -- (channel, users, recall).

    ``lists``: {channel: its ``recall_<channel>`` rows of day P}; ``test``: (user_id, item_id) the positive
    pairs of day P + 1 not in P's matrix. For channel c, V_c = the test users with a list in c (any
    rank); users = |V_c| and recall = mean over u in V_c of |L_c(u)[1..k] & T_u| / |T_u| (the published
    evaluation's recall@k, :func:`recsys_batch.evaluation.metrics.per_user_metrics`, restricted to the users c
    speaks for: its weight in the fusion only matters for them). A channel with no test user listed has no row.
    Cost: that of ``per_user_metrics`` on the union of the lists, then one aggregation on channel; a few rows
    reach the driver.
    """
    require_columns(test, [Col.USER, Col.ITEM], table="test pairs", where="merge validation")
    recs = channel_candidates(lists).select(F.col(CHANNEL).alias(EVAL_CHANNEL), Col.USER, Col.ITEM,
                                            F.col(CHANNEL_RANK).alias(Col.RANK))
    per_user = per_user_metrics(recs, test, [k], list(lists))
    return per_user.where(F.col("has_list") > 0).groupBy(EVAL_CHANNEL).agg(
        F.count(F.lit(1)).alias("users"), F.avg(recall_col(k)).alias("recall"))


def validation_sample(lists: dict[str, DataFrame], test: DataFrame, quotas: dict[str, int],
                      max_users: int) -> FusionSample:
    """The search's validation sample (:mod:`recsys_batch.recall.fusion_search`): the test users with a list
    in any channel of ``lists`` (day P's), at most ``max_users`` of them -- the first by xxhash64(user_id),
    so a fixed, id-spread subset --, their quota rows (rank within the quota, as the merge ranks them; no
    exposure filter: P's) with hit = the pair is in ``test``, and their test-pair counts. Cost: one window
    on (user, channel) over the lists, joins with the broadcast sample (the test pairs, the quota rows and the
    sample's ids persisted for the two actions); at most ``max_users`` x sum(quotas)
    rows reach the driver (through Arrow)."""
    require_columns(test, [Col.USER, Col.ITEM], table="test pairs", where="merge validation")
    pairs = test.select(Col.USER, Col.ITEM).distinct().persist(StorageLevel.MEMORY_AND_DISK)
    rows = apply_quotas(channel_candidates(lists), quotas).persist(StorageLevel.MEMORY_AND_DISK)
    # pairs, rows and the sampled ids are persisted: both actions below read them
    users = (pairs.select(Col.USER).distinct().join(rows.select(Col.USER).distinct(), on=Col.USER)
             .orderBy(F.xxhash64(Col.USER), Col.USER).limit(max_users).persist(StorageLevel.MEMORY_AND_DISK))
    try:
        counts = (pairs.join(F.broadcast(users), on=Col.USER).groupBy(Col.USER)
                  .agg(F.count(F.lit(1)).alias("_n")).orderBy(Col.USER).toArrow())
        got = (rows.join(F.broadcast(users), on=Col.USER)
               .join(pairs.withColumn("_hit", F.lit(True)), on=[Col.USER, Col.ITEM], how="left")
               .select(Col.USER, Col.ITEM, CHANNEL, CHANNEL_RANK,
                       F.coalesce(F.col("_hit"), F.lit(False)).alias("_hit"))
               .toArrow())
    finally:
        for df in (users, pairs, rows):
            df.unpersist()
    return sample_from_rows(got.column(Col.USER).to_numpy(zero_copy_only=False),
                            got.column(Col.ITEM).to_numpy(zero_copy_only=False),
                            got.column(CHANNEL).to_numpy(zero_copy_only=False),
                            got.column(CHANNEL_RANK).to_numpy(zero_copy_only=False),
                            got.column("_hit").to_numpy(zero_copy_only=False),
                            counts.column(Col.USER).to_pylist(), counts.column("_n").to_numpy(zero_copy_only=False),
                            list(lists))


def learned_weights(recalls: dict[str, tuple[int, float]], cfg: MergeConfig) -> tuple[dict[str, float], dict[str, str]]:
    """({channel: RRF weight}, {channel: where it came from}) for the channels of ``cfg.quotas``.

    ``recalls``: :func:`channel_validation` as {channel: (users, recall)}. A channel validated on at least
    ``merge.learn_min_users`` users gets w_c = recall_c / max recall (the best validated channel weighs 1):
    weights proportional to each system's measured effectiveness, as in weighted Borda-fuse (Aslam &
    Montague 2001, "Models for metasearch", weights = average precision on training queries) and the
    weighted linear fusion of Vogt & Cottrell (1999). The others keep ``merge.weights`` (default 1).
    """
    ok = {c: r for c, (n, r) in recalls.items() if c in cfg.quotas and n >= cfg.learn_min_users}
    best = max(ok.values(), default=0.0)
    weights, source = {}, {}
    for c in cfg.quotas:
        if c in ok and best > 0:
            weights[c], source[c] = ok[c] / best, "validation"
        else:
            weights[c], source[c] = cfg.weight(c), "config"
    return weights, source


def merge_recall(lists: dict[str, DataFrame], cfg: MergeConfig, blooms: DataFrame | None = None,
                 weights: dict[str, float] | None = None) -> DataFrame:
    """``recall_merged`` from the channel lists ``{channel: recall_<channel> rows}`` (module doc); ``blooms``
    (``exposure_bloom`` rows) drops exposed items when given and ``merge.filter_exposed``; ``weights``: the
    RRF weights (:func:`learned_weights`; default ``merge.weights``)."""
    unknown = sorted(set(lists) - set(cfg.quotas))
    if unknown:
        raise RecsysBatchError(f"merge: channel(s) {', '.join(unknown)} have no quota in merge.quotas "
                               f"({', '.join(cfg.quotas)})")
    cands = channel_candidates(lists)
    if blooms is not None and cfg.filter_exposed:
        cands = drop_exposed(cands, blooms)
    rows = apply_quotas(cands, cfg.quotas)
    return rrf_fuse(rows, cfg, weights) if cfg.method == "rrf" else snake_fuse(rows, cfg)


__all__ = ["apply_quotas", "channel_candidates", "channel_validation", "learned_weights", "merge_recall", "rrf_fuse",
           "snake_fuse", "snake_order", "validation_sample"]
