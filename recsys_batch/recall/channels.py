"""Recall lists per channel: item-based (ItemCF, Swing), user-based (UserCF) and popular.

Every function is a pure transform returning schema ``RECALL`` (user_id, item_id, score, rank): per user
the top ``top_n`` items by score desc, item_id asc (rank 1-based), never an item the user has in the
matrix. "Has" means a (user, item) row of the (capped) ``user_item_matrix``: a heavy user's items beyond
``matrix.max_items_per_user`` are not excluded.

Decay is per channel (:class:`recsys_batch.config.RecallConfig`): item-based seeds use the matrix score
(only its within-user ratios matter), UserCF weighs a neighbour's item by presence (or its own half-life),
popular counts events over its own window (or decays them with its own half-life). The matrix half-life
is never reused where it would make another user's history, or a quiet week, weigh nothing.
"""

from __future__ import annotations

import logging
from datetime import date

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_batch.config import MatrixConfig, RecallConfig
from recsys_batch.errors import RecsysBatchError
from recsys_batch.io.tables import require_columns
from recsys_batch.matrix import SECONDS_PER_DAY, positive_window_events, window_bounds
from recsys_batch.recall.common import exclude_seen, recent_items, restrict_users, top_n_per_user
from recsys_batch.schemas import Col

log = logging.getLogger(__name__)

_MATRIX_COLS = [Col.USER, Col.ITEM, Col.SCORE, Col.LAST_TS]
_R = "_r"
_SIM = "_sim"
_G = "_g"


def item_based_recall(matrix: DataFrame, item_sim: DataFrame, cfg: RecallConfig,
                      users: DataFrame | None = None, lastn_items: int | None = None,
                      seed_half_life_items: float | None = None) -> DataFrame:
    """Item-to-item recall (ItemCF / Swing neighbour tables): schema ``RECALL``.

    score(u, j) = sum_{i in lastN(u)} r(u, i) * sim(i, j),  j not in I(u)
    lastN(u) = u's ``lastn_items`` most recent matrix items (last_ts desc, item_id asc); r(u, i) = the matrix
    score (event weights decayed with the matrix half-life); sim = ``item_sim`` (item_id, neighbor, score),
    typically the top-K of ``itemcf_topk`` / ``swing_topk``. ``users`` restricts the users lists are built
    for (None = every matrix user). ``lastn_items`` overrides ``cfg.lastn_items``; with ``seed_half_life_items``
    h the seed weight is r(u, i) = 0.5 ** (p / h) instead, p = 0, 1, ... the seed's recency rank (the
    sequential channel: what the user did last predicts what comes next).
    The matrix decay is harmless here: only the ratios of one user's seed weights matter (the list is ranked
    per user), so a seed t days older than another weighs 0.5 ** (t / half-life) as much however long ago
    the user was active. MovieLens-100K, user_chrono split, Recall@50: ItemCF 0.361 with the 7-day matrix
    decay, 0.361 with undecayed weights, 0.361 with presence (Swing 0.299 / 0.299 / 0.298).
    The seeds come from the matrix rather than ``user_lastn`` because r(u, i) lives there (same items
    when ``matrix.cap_order = recent``; with ``score`` the matrix keeps what the other channels see).

    Source: Linden, Smith & York 2003 (item-to-item CF), Sarwar et al. 2001.
    Cost: |users| * lastN * K candidate rows (join seeds -> neighbours on item), then one aggregation on
    (user, item), an anti join with the matrix and a window on user. A heavy user adds at most lastN * K
    rows, so user skew is bounded by lastN; a hot seed item is a hot join key (AQE splits skewed joins).
    """
    require_columns(matrix, _MATRIX_COLS, table="user_item_matrix", where="item-based recall")
    require_columns(item_sim, [Col.ITEM, Col.NEIGHBOR, Col.SCORE], table="item similarity",
                    where="item-based recall")
    seeds = restrict_users(recent_items(matrix, lastn_items or cfg.lastn_items, rank=_G), users)
    weight = F.col(Col.SCORE) if seed_half_life_items is None else F.pow(F.lit(0.5), F.col(_G) / seed_half_life_items)
    seeds = seeds.select(Col.USER, Col.ITEM, weight.alias(_R))
    sim = (item_sim.where(F.col(Col.NEIGHBOR) != F.col(Col.ITEM))
           .select(Col.ITEM, Col.NEIGHBOR, F.col(Col.SCORE).alias(_SIM)))
    cand = (seeds.join(sim, on=Col.ITEM)
            .groupBy(Col.USER, F.col(Col.NEIGHBOR).alias(Col.ITEM))
            .agg(F.sum(F.col(_R) * F.col(_SIM)).alias(Col.SCORE)))
    return top_n_per_user(exclude_seen(cand, matrix), cfg.top_n)


def _age_days(ts: F.Column, run_date: date) -> F.Column:
    """(end of D - ts) in fractional days, as the matrix measures it."""
    _, end = window_bounds(run_date, 1)
    end_us = int(end.timestamp()) * 1_000_000
    return (F.lit(end_us) - F.unix_micros(ts)) / F.lit(1_000_000.0 * SECONDS_PER_DAY)


def user_based_recall(matrix: DataFrame, user_sim: DataFrame, cfg: RecallConfig,
                      users: DataFrame | None = None, run_date: date | None = None) -> DataFrame:
    """User-to-user recall (UserCF neighbour table): schema ``RECALL``.

    score(u, i) = sum_{v in topK(u)} sim(u, v) * r(v, i),  i in recent(v), i not in I(u)
    topK(u) = the rows of ``user_sim`` (user_id, neighbor, score) for u, e.g. ``usercf_topk``; recent(v) =
    v's ``neighbor_recent_items`` most recent matrix items (last_ts desc, item_id asc);
    r(v, i) = 1 (presence, ``usercf_half_life_days = null``) or 0.5 ** (age_days(last_ts(v, i)) / half-life)
    with age from the end of ``run_date`` (required then).
    Not the matrix score: with its 7-day half-life a neighbour active two months ago would weigh ~0 and the
    sum would follow recency, not similarity (MovieLens-100K, user_chrono split, Recall@50: 0.250 with the
    matrix score, 0.347 with undecayed weights, 0.353 with presence, 0.312 / 0.342 with a 30 / 90-day
    half-life).

    Source: Herlocker et al. 1999 (neighbourhood CF), Resnick et al. 1994.
    Cost: |users| * K * neighbor_recent_items candidate rows; a popular neighbour v is a hot join key
    (it appears in many users' top-K) but carries at most neighbor_recent_items rows.
    """
    require_columns(matrix, _MATRIX_COLS, table="user_item_matrix", where="user-based recall")
    require_columns(user_sim, [Col.USER, Col.NEIGHBOR, Col.SCORE], table="user similarity",
                    where="user-based recall")
    hl = cfg.usercf_half_life_days
    if hl is None:
        r = F.lit(1.0)
    elif run_date is None:
        raise RecsysBatchError("user-based recall: recall.usercf_half_life_days is set, so the run date is needed "
                               "to age the neighbours' items")
    else:
        r = F.pow(F.lit(0.5), _age_days(F.col(Col.LAST_TS), run_date) / F.lit(float(hl)))
    nbr_items = recent_items(matrix, cfg.neighbor_recent_items, key=Col.NEIGHBOR).select(
        Col.NEIGHBOR, Col.ITEM, r.alias(_R))
    sim = restrict_users(
        user_sim.where(F.col(Col.NEIGHBOR) != F.col(Col.USER))
        .select(Col.USER, Col.NEIGHBOR, F.col(Col.SCORE).alias(_SIM)), users)
    cand = (sim.join(nbr_items, on=Col.NEIGHBOR)
            .groupBy(Col.USER, Col.ITEM)
            .agg(F.sum(F.col(_SIM) * F.col(_R)).alias(Col.SCORE)))
    return top_n_per_user(exclude_seen(cand, matrix), cfg.top_n)


def popular_window(recall: RecallConfig, matrix: MatrixConfig) -> tuple[int, float | None]:
    """(lookback_days, half_life_days) of the popular channel: its own, the window defaulting to the matrix's."""
    return recall.popular_lookback_days or matrix.lookback_days, recall.popular_half_life_days


def popular_scores(events: DataFrame, weights: dict[str, float], run_date: date, lookback_days: int,
                   half_life_days: float | None = None) -> DataFrame:
    """Popularity of run date D: (item_id, score).

    pop(i) = sum_{e on i} weight(type_e) * decay(e),  decay(e) = 1 (``half_life_days`` null: plain weighted
    counts) or 0.5 ** (age_days(e) / half_life_days), over positive events with ts in
    [D - lookback_days + 1, D + 1), age from the end of D (the matrix's window rule,
    :func:`recsys_batch.matrix.positive_window_events`). Computed from ``events``, not the matrix, because
    the matrix is capped per user and decayed with its own half-life. Window and half-life come from
    :func:`popular_window` (default: the matrix window, no decay -- a short window or half-life leaves a
    quiet week with a handful of events deciding the list for everyone). MovieLens-100K, user_chrono
    split, Recall@50: 7-day window / 2-day half-life 0.136, 30-day counts 0.171, matrix-window counts 0.194,
    with a 7 / 30 / 90-day half-life 0.185 / 0.181 / 0.188.
    Cost: one scan of the window's events, one aggregation on item (map-side combined, no skew).
    """
    mcfg = MatrixConfig(lookback_days=lookback_days, half_life_days=half_life_days or 1.0)
    pos = positive_window_events(events, weights, run_date, mcfg)
    w = F.col("_w") if half_life_days is None else F.col("_w") * F.col("_decay")
    return pos.groupBy(Col.ITEM).agg(F.sum(w).alias(Col.SCORE))


def popular_recall(popularity: DataFrame, matrix: DataFrame, users: DataFrame, cfg: RecallConfig) -> DataFrame:
    """Per user the most popular items they have not seen: schema ``RECALL``, score = pop(i).

    The global list G = top (top_n + popular_margin_items) items by pop desc, item_id asc is tiny and
    broadcast. Per user only the first top_n + h(u) entries of G are expanded, h(u) = |I(u) & G|, then the
    seen ones removed, so each user gets exactly top_n items unless h(u) > margin (a user who has seen
    more than ``margin`` of the global head gets top_n + margin - h(u)). No users x catalog product: rows
    per user are top_n + h(u) <= top_n + margin; the margin costs only the length of G.
    Cost: a top-k of the popularity (no full sort), a broadcast join matrix x G, one explode per user.
    """
    require_columns(popularity, [Col.ITEM, Col.SCORE], table="popularity", where="popular recall")
    require_columns(matrix, [Col.USER, Col.ITEM], table="user_item_matrix", where="popular recall")
    require_columns(users, [Col.USER], table="users", where="popular recall")
    spark = popularity.sparkSession
    size = cfg.top_n + cfg.popular_margin_items
    head = (popularity.orderBy(F.col(Col.SCORE).desc(), F.col(Col.ITEM).asc()).limit(size)
            .select(Col.ITEM, Col.SCORE).collect())  # at most top_n + margin rows
    entry = T.StructType([T.StructField(_G, T.IntegerType(), False), T.StructField(Col.ITEM, T.StringType(), False),
                          T.StructField(Col.SCORE, T.DoubleType(), False)])
    glist = [(g, r[Col.ITEM], float(r[Col.SCORE])) for g, r in enumerate(head, start=1)]
    head_df = spark.createDataFrame(glist, entry)
    arr_df = spark.createDataFrame([(glist,)], T.StructType([T.StructField("_head", T.ArrayType(entry), False)]))

    targets = users.select(Col.USER).distinct()
    seen_head = matrix.select(Col.USER, Col.ITEM).join(F.broadcast(head_df.select(Col.ITEM, _G)), on=Col.ITEM)
    seen_head = restrict_users(seen_head, targets)
    h = seen_head.groupBy(Col.USER).agg(F.count(F.lit(1)).alias("_h"))
    cand = (targets.join(h, on=Col.USER, how="left").crossJoin(F.broadcast(arr_df))
            .select(Col.USER, F.explode(F.slice("_head", 1, F.lit(cfg.top_n) + F.coalesce(F.col("_h"), F.lit(0))
                                                .cast("int"))).alias("_e"))
            .select(Col.USER, F.col("_e")[_G].alias(_G), F.col("_e")[Col.ITEM].alias(Col.ITEM),
                    F.col("_e")[Col.SCORE].alias(Col.SCORE)))
    unseen = cand.join(seen_head.select(Col.USER, Col.ITEM), on=[Col.USER, Col.ITEM], how="left_anti")
    # G is already in (score desc, item asc) order: rank by the position in G
    return top_n_per_user(unseen, cfg.top_n, order=[F.col(_G).asc()])
