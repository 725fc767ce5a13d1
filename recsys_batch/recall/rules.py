"""Rule and content-based recall channels: hot, fresh, author, similar_author, geo, new_users.

Every ``*_recall`` function is a pure transform returning schema ``RECALL`` (user_id, item_id, score, rank):
per user the top ``recall.top_n`` items by score desc, item_id asc, never an item of the user's matrix rows.
Inputs are the tables the stage reads (``user_item_matrix``, the latest ``items`` / ``users`` snapshots,
``follows``, ``events``), already cut to what is known at the end of D (:func:`item_catalog`,
:func:`user_attributes`, :func:`follows_until`).

Scale rule shared by all of them: a per-key list (a category, a tag, an author, a geohash cell, a
demographic bucket) is truncated to its top-N *before* it is joined to the users of that key, so a hot key
(a huge category, a big city) multiplies at most N rows per user. The key joins are plain equi-joins:
the list side is small (keys x N rows) and Spark broadcasts it under ``autoBroadcastJoinThreshold``; when
it does not, AQE's skew-join splits the oversized user-side partition (``spark.sql.adaptive.skewJoin``).
Nothing is collected to the driver.
"""

from __future__ import annotations

from datetime import date

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recsys_batch.config import MatrixConfig, RecallConfig, RulesConfig
from recsys_batch.features.profiles import bucket_expr, days_before_end, end_of_day_micros, geohash_prefix
from recsys_batch.io.tables import require_columns
from recsys_batch.matrix import positive_window_events, window_bounds
from recsys_batch.recall.common import exclude_seen, recent_items, restrict_users, top_n_per_user
from recsys_batch.schemas import Col, FCol

#: profile / item key kinds
CATEGORY, TAG, AUTHOR = "category", "tag", "author"
KIND, KEY, NORM, SHARE = "_kind", "_key", "_norm", "_share"
_W, _TS_US = "_w", "_ts_us"
_AGE, _LIFT, _TREND, _POP, _LOCAL, _CELL, _N = "_age", "_lift", "_trend", "_pop", "_local", "_cell", "_n"
_LEVEL, _BKEY, _SIM = "_level", "_bkey", "_sim"
CLICK, IMPRESSION = "click", "impression"
#: columns :func:`item_catalog` keeps
CATALOG_COLS = [Col.ITEM, Col.AUTHOR, Col.CATEGORY, Col.TAGS, Col.PUBLISH_TS, Col.GEOHASH]


# ---- inputs as of the end of D -------------------------------------------------------------------------------


def item_catalog(items: DataFrame, run_date: date) -> DataFrame:
    """Items known at the end of D: one row per item with publish_ts < D + 1 00:00 UTC or unknown.

    Same point-in-time rule as the item profile of the features stage. Cost: one narrow pass + a dedup.
    """
    require_columns(items, CATALOG_COLS, table="items", where="rule recall")
    eod = end_of_day_micros(run_date)
    return (items.where(F.col(Col.PUBLISH_TS).isNull() | (F.unix_micros(Col.PUBLISH_TS) < F.lit(eod)))
            .select(*CATALOG_COLS).dropDuplicates([Col.ITEM]))


def user_attributes(users: DataFrame, run_date: date, age_bounds_years: list[int], geo_precision: int) -> DataFrame:
    """(user_id, age_bucket, gender, city, _cell) of the users registered before the end of D (or unknown).

    age_bucket from ``features.age_bounds_years`` (the features' labels), gender lower-cased, _cell = the
    first ``geo_precision`` characters of the geohash. Cost: one narrow pass + a dedup.
    """
    require_columns(users, [Col.USER, Col.GENDER, Col.AGE, Col.CITY, Col.GEOHASH, Col.REGISTER_TS], table="users",
                    where="rule recall")
    eod = end_of_day_micros(run_date)
    return (users.where(F.col(Col.REGISTER_TS).isNull() | (F.unix_micros(Col.REGISTER_TS) < F.lit(eod)))
            .select(Col.USER, bucket_expr(F.col(Col.AGE), age_bounds_years).alias(FCol.AGE_BUCKET),
                    F.lower(F.trim(Col.GENDER)).alias(Col.GENDER), Col.CITY,
                    geohash_prefix(F.col(Col.GEOHASH), geo_precision).alias(_CELL))
            .dropDuplicates([Col.USER]))


def follows_until(follows: DataFrame, run_date: date) -> DataFrame:
    """Distinct (user_id, author_id) follows with ts before the end of D."""
    require_columns(follows, [Col.USER, Col.AUTHOR, Col.TS], table="follows", where="author recall")
    return (follows.where(F.unix_micros(Col.TS) < F.lit(end_of_day_micros(run_date)))
            .select(Col.USER, Col.AUTHOR).distinct())


def weighted_events(events: DataFrame, weights: dict[str, float], run_date: date, lookback_days: int) -> DataFrame:
    """(user_id, item_id, _w): positive events with ts in the ``lookback_days`` days up to the end of D and
    their event weight (the matrix's window rule, no decay). Cost: one narrow pass."""
    pos = positive_window_events(events, weights, run_date, MatrixConfig(lookback_days=lookback_days))
    return pos.select(Col.USER, Col.ITEM, _W)


def item_keys(catalog: DataFrame) -> DataFrame:
    """(item_id, _kind, _key, _norm): an item's category (norm 1), author (norm 1) and each of its distinct
    tags (norm 1 / number of distinct tags, so an item's tags weigh 1 together). Null keys are dropped."""
    tags = F.array_distinct(F.filter(F.coalesce(Col.TAGS, F.array().cast("array<string>")), lambda t: t.isNotNull()))
    cat = catalog.select(Col.ITEM, F.lit(CATEGORY).alias(KIND), F.col(Col.CATEGORY).alias(KEY), F.lit(1.0).alias(NORM))
    auth = catalog.select(Col.ITEM, F.lit(AUTHOR).alias(KIND), F.col(Col.AUTHOR).alias(KEY), F.lit(1.0).alias(NORM))
    tag = (catalog.select(Col.ITEM, tags.alias("_tags"))
           .select(Col.ITEM, F.lit(TAG).alias(KIND), F.explode("_tags").alias(KEY),
                   (F.lit(1.0) / F.size("_tags")).alias(NORM)))
    return cat.unionByName(auth).unionByName(tag).where(F.col(KEY).isNotNull())


def user_profile_shares(matrix: DataFrame, catalog: DataFrame, recent: int) -> DataFrame:
    """(user_id, _kind, _key, _share): what the user's recent items are about.

    share_u(kind, k) = sum_{i in R(u), k in keys_kind(i)} r(u, i) / sum_{i in R(u)} r(u, i)
    R(u) = the user's ``recent`` most recent matrix items, r = matrix score. A category or author share is
    the fraction of the recent weight on it; a tag share the fraction on items carrying the tag. Items
    missing from the catalog count in the denominator only.
    Cost: one window on user (recent items), a join with the item keys on item (a hot item is a key of at
    most 2 + |tags| rows), one aggregation on (user, kind, key); rows <= |users| * recent * (2 + tags).
    """
    rec = recent_items(matrix, recent).select(Col.USER, Col.ITEM, Col.SCORE)
    total = rec.groupBy(Col.USER).agg(F.sum(Col.SCORE).alias("_tot"))
    keys = item_keys(catalog).select(Col.ITEM, KIND, KEY)
    return (rec.join(keys, on=Col.ITEM).groupBy(Col.USER, KIND, KEY).agg(F.sum(Col.SCORE).alias("_s"))
            .join(total, on=Col.USER).select(Col.USER, KIND, KEY, (F.col("_s") / F.col("_tot")).alias(SHARE)))


def top_profile_keys(profile: DataFrame, kind: str, n: int) -> DataFrame:
    """(user_id, _key, _share): the user's top ``n`` keys of one kind by share desc, key asc."""
    w = Window.partitionBy(Col.USER).orderBy(F.col(SHARE).desc(), F.col(KEY).asc())
    return (profile.where(F.col(KIND) == kind).withColumn("_rn", F.row_number().over(w))
            .where(F.col("_rn") <= n).select(Col.USER, KEY, SHARE))


def _top_per(df: DataFrame, keys: list[str], n: int, score: str) -> DataFrame:
    """Rows of ``df`` with the top ``n`` ``score`` per ``keys`` (ties: item_id asc)."""
    w = Window.partitionBy(*keys).orderBy(F.col(score).desc(), F.col(Col.ITEM).asc())
    return df.withColumn("_rn", F.row_number().over(w)).where(F.col("_rn") <= n).drop("_rn")


def _top_global(df: DataFrame, n: int, score: str) -> DataFrame:
    """The top ``n`` rows by ``score`` desc, item_id asc (a top-k, no full sort; stays a DataFrame)."""
    return df.orderBy(F.col(score).desc(), F.col(Col.ITEM).asc()).limit(n)


def _recency(age_days: Column) -> Column:
    """1 / (1 + age_days) (unknown publish time: 0): newest first, in (0, 1]."""
    return F.coalesce(F.lit(1.0) / (F.lit(1.0) + F.greatest(age_days, F.lit(0.0))), F.lit(0.0))


# ---- hot -------------------------------------------------------------------------------------------------------


def trending_scores(events: DataFrame, weights: dict[str, float], run_date: date, cfg: RulesConfig) -> DataFrame:
    """Trending items of D: (item_id, score = trend(i)).

    trend(i) = (n_S(i) / S + a) / (n_L(i) / L + a),  only items with n_S(i) >= ``hot_min_short_events``
    n_W(i) = weighted positive events on i with ts in the last W days up to the end of D (S =
    ``hot_short_days``, L = ``hot_long_days``, the long window contains the short one), a =
    ``hot_smoothing_per_day`` pseudo-events per day added to both rates. The ratio of the two daily rates
    is the rise; adding the same a to both shrinks it towards 1 for low-volume items (1 event today and
    none before: (1 + 5) / (1/7 + 5) = 1.17, not 7), so a trending item needs both a rise and volume,
    while a steady best seller stays at 1 whatever its size. An item new in the long window has a
    deflated long rate and rises naturally. Source: "trending" ratio of short- over long-term popularity
    (e.g. Twitter/Reddit trend scores) with additive (Laplace-style) smoothing of both rates.
    Cost: one scan of L days of events, one map-side-combined aggregation on item (no skew).
    """
    pos = positive_window_events(events, weights, run_date, MatrixConfig(lookback_days=cfg.hot_long_days))
    short_start, _ = window_bounds(run_date, cfg.hot_short_days)
    is_short = F.unix_micros(Col.TS) >= F.lit(int(short_start.timestamp()) * 1_000_000)
    a = F.lit(float(cfg.hot_smoothing_per_day))
    agg = pos.groupBy(Col.ITEM).agg(F.sum(F.when(is_short, F.col(_W)).otherwise(0.0)).alias("_ns"),
                                    F.sum(_W).alias("_nl"))
    trend = ((F.col("_ns") / F.lit(float(cfg.hot_short_days)) + a)
             / (F.col("_nl") / F.lit(float(cfg.hot_long_days)) + a))
    return (agg.where(F.col("_ns") >= F.lit(float(cfg.hot_min_short_events)))
            .select(Col.ITEM, trend.alias(Col.SCORE)))


def hot_recall(trend: DataFrame, catalog: DataFrame, profile: DataFrame, matrix: DataFrame, users: DataFrame,
               rc: RecallConfig, cfg: RulesConfig) -> DataFrame:
    """Trending items for each user: global hot items plus the hot items of the user's top categories.

    Candidates C(u) = G  U  U_{c in topcat(u)} H_c
      G   = the ``hot_global_items`` items with the highest trend(i),
      H_c = the ``hot_category_items`` items of category c with the highest trend(i),
      topcat(u) = the user's ``profile_top_keys`` categories by share_u (:func:`user_profile_shares`).
    score(u, i) = trend(i) * (1 + ``hot_category_boost`` * share_u(category(i)))   (share 0 outside the profile)
    so a user's own categories lift their hot items, and the global head still fills the list.
    Cost: a top-k for G (broadcast), one window on category for H_c (a category sorts at most its
    trending items; bounded to hot_category_items before the join); rows per user <= |G| + topcat * |H_c|.
    The user x G product is a broadcast cross join; a huge category is a hot join key whose list side is
    bounded (see the module note).
    """
    require_columns(trend, [Col.ITEM, Col.SCORE], table="trending scores", where="hot recall")
    targets = users.select(Col.USER).distinct()
    info = (trend.join(catalog.select(Col.ITEM, Col.CATEGORY), on=Col.ITEM, how="left")
            .select(Col.ITEM, Col.CATEGORY, F.col(Col.SCORE).alias(_TREND)))
    glob = _top_global(info, cfg.hot_global_items, _TREND).select(Col.ITEM)
    per_cat = _top_per(info.where(F.col(Col.CATEGORY).isNotNull()), [Col.CATEGORY], cfg.hot_category_items, _TREND)
    topcat = restrict_users(top_profile_keys(profile, CATEGORY, cfg.profile_top_keys), targets)
    cand = (targets.crossJoin(F.broadcast(glob))
            .unionByName(topcat.join(per_cat, on=F.col(KEY) == F.col(Col.CATEGORY)).select(Col.USER, Col.ITEM))
            .distinct())
    shares = profile.where(F.col(KIND) == CATEGORY).select(Col.USER, F.col(KEY).alias(Col.CATEGORY), SHARE)
    scored = (cand.join(info, on=Col.ITEM).join(shares, on=[Col.USER, Col.CATEGORY], how="left")
              .select(Col.USER, Col.ITEM, (F.col(_TREND) * (F.lit(1.0) + F.lit(float(cfg.hot_category_boost))
                                                            * F.coalesce(SHARE, F.lit(0.0)))).alias(Col.SCORE)))
    return top_n_per_user(exclude_seen(scored, matrix), rc.top_n)


# ---- fresh -----------------------------------------------------------------------------------------------------


def fresh_lift(events: DataFrame, catalog: DataFrame, run_date: date, cfg: RulesConfig) -> DataFrame:
    """Items published in the last ``fresh_days`` days up to the end of D, with their early engagement:
    (item_id, _lift).

    rate(i) = (clicks(i) + m * p0) / (impressions(i) + m),   lift(i) = rate(i) / p0
    clicks / impressions = events of type click / impression on i with ts in the fresh window; p0 = the
    click-through rate of every item in that window (sum of clicks / sum of impressions); m =
    ``fresh_prior_impressions``. Beta-binomial shrinkage (a Beta(m p0, m (1 - p0)) prior): an item with
    no impressions has lift exactly 1 (the average), one with 3 clicks on 3 impressions is not a
    winner yet. Without a positive p0 (no impression or no click in the window) every lift is 1.
    Cost: one scan of the window's events, one aggregation on item, a 1-row global aggregate.
    """
    start, end = window_bounds(run_date, cfg.fresh_days)
    s_us, e_us = int(start.timestamp()) * 1_000_000, int(end.timestamp()) * 1_000_000
    ts = F.unix_micros(Col.TS)
    fresh = catalog.where((F.unix_micros(Col.PUBLISH_TS) >= F.lit(s_us)) & (F.unix_micros(Col.PUBLISH_TS) < F.lit(e_us)))
    et = F.lower(F.trim(Col.EVENT))
    counts = (events.where((ts >= F.lit(s_us)) & (ts < F.lit(e_us)) & et.isin(CLICK, IMPRESSION))
              .groupBy(Col.ITEM).agg(F.sum(F.when(et == CLICK, 1).otherwise(0)).alias("_c"),
                                     F.sum(F.when(et == IMPRESSION, 1).otherwise(0)).alias("_i")))
    prior = counts.agg(F.try_divide(F.sum("_c"), F.sum("_i")).alias("_p0"))
    m = F.lit(float(cfg.fresh_prior_impressions))
    c, n, p0 = F.coalesce("_c", F.lit(0)), F.coalesce("_i", F.lit(0)), F.col("_p0")
    lift = F.when(p0.isNull() | (p0 <= 0), F.lit(1.0)).otherwise((c + m * p0) / ((n + m) * p0))
    return (fresh.select(Col.ITEM).join(counts, on=Col.ITEM, how="left").crossJoin(F.broadcast(prior))
            .select(Col.ITEM, lift.cast("double").alias(_LIFT)))


def fresh_recall(lift: DataFrame, catalog: DataFrame, profile: DataFrame, matrix: DataFrame, users: DataFrame,
                 rc: RecallConfig, cfg: RulesConfig) -> DataFrame:
    """New items for each user: early engagement plus content similarity to the user's recent items.

    score(u, i) = lift(i) + ``fresh_content_weight`` * sim(u, i)
    sim(u, i)   = (w_c * share_u(category(i)) + w_t * mean_{t in tags(i)} share_u(t)
                   + w_a * share_u(author(i))) / (w_c + w_t + w_a)          in [0, 1]
    lift from :func:`fresh_lift`, shares from :func:`user_profile_shares`; w_c, w_t, w_a =
    ``fresh_{category,tag,author}_weight``. A cold item (lift 1) that matches the user's categories,
    tags or author outranks a cold item that does not, so new items without interactions still reach
    the users whose recent items they resemble.
    Candidates: the ``fresh_global_items`` fresh items with the highest lift for everyone, plus for each
    of the user's top ``profile_top_keys`` categories, tags and authors the ``fresh_key_items`` fresh items
    of that key with the highest lift (the only way a user meets a fresh item is through one of these).
    Cost: rows per user <= |G| + 3 * profile_top_keys * fresh_key_items before scoring; the per-key lists
    are cut to fresh_key_items before the join (a huge category or tag is bounded); sim is one join of
    the candidates' keys (<= 2 + |tags| per item) with the profile and one aggregation on (user, item).
    """
    require_columns(lift, [Col.ITEM, _LIFT], table="fresh lift", where="fresh recall")
    targets = users.select(Col.USER).distinct()
    keys = item_keys(catalog.join(lift.select(Col.ITEM), on=Col.ITEM, how="left_semi"))
    glob = _top_global(lift, cfg.fresh_global_items, _LIFT).select(Col.ITEM)
    per_key = _top_per(keys.join(lift, on=Col.ITEM), [KIND, KEY], cfg.fresh_key_items, _LIFT).select(KIND, KEY, Col.ITEM)
    top_keys = None
    for kind in (CATEGORY, TAG, AUTHOR):
        tk = top_profile_keys(profile, kind, cfg.profile_top_keys).select(Col.USER, F.lit(kind).alias(KIND), KEY)
        top_keys = tk if top_keys is None else top_keys.unionByName(tk)
    by_key = restrict_users(top_keys, targets).join(per_key, on=[KIND, KEY]).select(Col.USER, Col.ITEM)
    cand = targets.crossJoin(F.broadcast(glob)).unionByName(by_key).distinct()

    wsum = cfg.fresh_category_weight + cfg.fresh_tag_weight + cfg.fresh_author_weight
    kind_w = (F.when(F.col(KIND) == CATEGORY, F.lit(cfg.fresh_category_weight))
              .when(F.col(KIND) == TAG, F.lit(cfg.fresh_tag_weight)).otherwise(F.lit(cfg.fresh_author_weight)))
    sim = (cand.join(keys, on=Col.ITEM).join(profile, on=[Col.USER, KIND, KEY])
           .groupBy(Col.USER, Col.ITEM).agg((F.sum(kind_w * F.col(NORM) * F.col(SHARE)) / F.lit(wsum)).alias(_SIM)))
    scored = (cand.join(lift, on=Col.ITEM).join(sim, on=[Col.USER, Col.ITEM], how="left")
              .select(Col.USER, Col.ITEM, (F.col(_LIFT) + F.lit(float(cfg.fresh_content_weight))
                                           * F.coalesce(_SIM, F.lit(0.0))).alias(Col.SCORE)))
    return top_n_per_user(exclude_seen(scored, matrix), rc.top_n)


# ---- author / similar author ----------------------------------------------------------------------------------


def user_authors(matrix: DataFrame, catalog: DataFrame, follows: DataFrame, cfg: RulesConfig) -> DataFrame:
    """The authors each user cares about: (user_id, author_id, followed, n_events).

    A(u) = followed authors  U  authors on whose items u has >= ``author_min_events`` positive events in
    the matrix (n_events summed over the author's items); per user at most ``author_max_authors``,
    followed first, then by n_events desc, author_id asc.
    Cost: a join of the matrix with the catalog on item, one aggregation on (user, author), one window on
    user (bounded by the user's distinct authors).
    """
    engaged = (matrix.join(catalog.select(Col.ITEM, Col.AUTHOR), on=Col.ITEM).where(F.col(Col.AUTHOR).isNotNull())
               .groupBy(Col.USER, Col.AUTHOR).agg(F.sum(Col.N_EVENTS).alias(Col.N_EVENTS)))
    fol = follows.select(Col.USER, Col.AUTHOR, F.lit(True).alias("_followed"))
    both = (engaged.join(fol, on=[Col.USER, Col.AUTHOR], how="full")
            .select(Col.USER, Col.AUTHOR, F.coalesce("_followed", F.lit(False)).alias("_followed"),
                    F.coalesce(Col.N_EVENTS, F.lit(0)).cast("long").alias(Col.N_EVENTS))
            .where(F.col("_followed") | (F.col(Col.N_EVENTS) >= F.lit(cfg.author_min_events))))
    w = Window.partitionBy(Col.USER).orderBy(F.col("_followed").desc(), F.col(Col.N_EVENTS).desc(),
                                             F.col(Col.AUTHOR).asc())
    return both.withColumn("_rn", F.row_number().over(w)).where(F.col("_rn") <= cfg.author_max_authors).drop("_rn")


def author_recent_items(catalog: DataFrame, run_date: date, n: int) -> DataFrame:
    """(author_id, item_id, _age): each author's ``n`` newest items (publish_ts desc, unknown last, item_id
    asc), _age = days from publish to the end of D. Cost: one window on author (a prolific author sorts
    its own items only)."""
    w = Window.partitionBy(Col.AUTHOR).orderBy(F.col(Col.PUBLISH_TS).desc_nulls_last(), F.col(Col.ITEM).asc())
    return (catalog.where(F.col(Col.AUTHOR).isNotNull()).withColumn("_rn", F.row_number().over(w))
            .where(F.col("_rn") <= n)
            .select(Col.AUTHOR, Col.ITEM, days_before_end(F.col(Col.PUBLISH_TS), run_date).alias(_AGE)))


def author_recall(authors: DataFrame, recent: DataFrame, matrix: DataFrame, users: DataFrame,
                  rc: RecallConfig) -> DataFrame:
    """Items of the authors each user follows or engaged with repeatedly, newest first.

    score(u, i) = 1 / (1 + age_days(i)) for i among the ``author_recent_items`` newest items of an author in
    A(u) (:func:`user_authors`); age from the end of D, unknown publish time -> 0. Ties: item_id asc.
    Cost: rows per user <= author_max_authors * author_recent_items; a followed-by-millions author is a
    hot join key with a bounded list side.
    """
    cand = (restrict_users(authors.select(Col.USER, Col.AUTHOR), users).join(recent, on=Col.AUTHOR)
            .select(Col.USER, Col.ITEM, _recency(F.col(_AGE)).alias(Col.SCORE))
            .groupBy(Col.USER, Col.ITEM).agg(F.max(Col.SCORE).alias(Col.SCORE)))
    return top_n_per_user(exclude_seen(cand, matrix), rc.top_n)


def author_similarity(matrix: DataFrame, catalog: DataFrame, cfg: RulesConfig) -> DataFrame:
    """Authors similar by shared audience: (author_id, neighbor, score), top ``similar_author_top_k`` per author.

    sim(a, b) = |U(a) & U(b)| / sqrt(|U(a)| * |U(b)|)   (cosine of the binary user x author matrix,
    i.e. ItemCF cosine with authors as items), U(a) = users with a matrix item by a; pairs with fewer
    than ``similar_author_min_support`` common users are dropped; ties: neighbor asc.
    Cost: sum_u min(|A(u)|, cap)^2 pairs from a self-join on user, cap =
    ``similar_author_max_authors_per_user`` (the user's most recently touched authors); |U(a)| is counted
    uncapped. A user x author matrix is far smaller than user x item (authors << items).
    """
    ua = (matrix.join(catalog.select(Col.ITEM, Col.AUTHOR), on=Col.ITEM).where(F.col(Col.AUTHOR).isNotNull())
          .groupBy(Col.USER, Col.AUTHOR).agg(F.max(Col.LAST_TS).alias(Col.LAST_TS)))
    n_a = ua.groupBy(Col.AUTHOR).agg(F.count(F.lit(1)).alias(_N))
    w = Window.partitionBy(Col.USER).orderBy(F.col(Col.LAST_TS).desc(), F.col(Col.AUTHOR).asc())
    capped = (ua.withColumn("_rn", F.row_number().over(w)).where(F.col("_rn") <= cfg.similar_author_max_authors_per_user)
              .select(Col.USER, Col.AUTHOR))
    pairs = (capped.alias("x").join(capped.alias("y"), on=Col.USER)
             .where(F.col(f"x.{Col.AUTHOR}") != F.col(f"y.{Col.AUTHOR}"))
             .groupBy(F.col(f"x.{Col.AUTHOR}").alias(Col.AUTHOR), F.col(f"y.{Col.AUTHOR}").alias(Col.NEIGHBOR))
             .agg(F.count(F.lit(1)).alias("_co"))
             .where(F.col("_co") >= F.lit(cfg.similar_author_min_support)))
    na, nb = n_a.alias("na"), n_a.select(F.col(Col.AUTHOR).alias(Col.NEIGHBOR), F.col(_N).alias("_nb"))
    scored = (pairs.join(na, on=Col.AUTHOR).join(nb, on=Col.NEIGHBOR)
              .select(Col.AUTHOR, Col.NEIGHBOR, (F.col("_co") / F.sqrt(F.col(_N) * F.col("_nb"))).alias(Col.SCORE)))
    wk = Window.partitionBy(Col.AUTHOR).orderBy(F.col(Col.SCORE).desc(), F.col(Col.NEIGHBOR).asc())
    return (scored.withColumn(Col.RANK, F.row_number().over(wk)).where(F.col(Col.RANK) <= cfg.similar_author_top_k))


def similar_author_recall(matrix: DataFrame, catalog: DataFrame, follows: DataFrame, authors: DataFrame,
                          asim: DataFrame, recent: DataFrame, users: DataFrame, rc: RecallConfig,
                          cfg: RulesConfig) -> DataFrame:
    """Recent items of authors similar to the ones the user already reads.

    s(u, b) = sum_{a in S(u)} sim(a, b),  b not in A(u)
    score(u, i) = s(u, author(i)) / (1 + age_days(i))  for i among b's ``author_recent_items`` newest items
    S(u) = authors of u's matrix items U followed authors (the audience the similarity was built on),
    A(u) = the author channel's authors (:func:`user_authors`), left out so the two channels do not
    overlap; only the user's top ``author_max_authors`` authors b by s(u, b) (ties: author asc) are
    expanded to items. ``asim`` = :func:`author_similarity`.
    Cost: |S(u)| * similar_author_top_k author rows per user, cut to author_max_authors before the join
    with the items (<= author_max_authors * author_recent_items rows per user).
    """
    seeds = (matrix.join(catalog.select(Col.ITEM, Col.AUTHOR), on=Col.ITEM).select(Col.USER, Col.AUTHOR)
             .unionByName(follows.select(Col.USER, Col.AUTHOR)).where(F.col(Col.AUTHOR).isNotNull()).distinct())
    seeds = restrict_users(seeds, users)
    s = (seeds.join(asim.select(Col.AUTHOR, Col.NEIGHBOR, F.col(Col.SCORE).alias(_SIM)), on=Col.AUTHOR)
         .groupBy(Col.USER, F.col(Col.NEIGHBOR).alias(Col.AUTHOR)).agg(F.sum(_SIM).alias("_s"))
         .join(authors.select(Col.USER, Col.AUTHOR), on=[Col.USER, Col.AUTHOR], how="left_anti"))
    w = Window.partitionBy(Col.USER).orderBy(F.col("_s").desc(), F.col(Col.AUTHOR).asc())
    s = s.withColumn("_rn", F.row_number().over(w)).where(F.col("_rn") <= cfg.author_max_authors)
    cand = (s.join(recent, on=Col.AUTHOR)
            .select(Col.USER, Col.ITEM, (F.col("_s") * _recency(F.col(_AGE))).alias(Col.SCORE)))
    return top_n_per_user(exclude_seen(cand, matrix), rc.top_n)


# ---- geo -------------------------------------------------------------------------------------------------------


def geo_recall(pos_events: DataFrame, attrs: DataFrame, catalog: DataFrame, matrix: DataFrame, users: DataFrame,
               rc: RecallConfig, cfg: RulesConfig) -> DataFrame:
    """Items near the user by local popularity.

    cell(x) = the first ``geo_precision`` characters of x's geohash (users and items);
    score(p, i) = local(p, i) + ``geo_global_weight`` * pop(i)   for items i with cell(i) = p
    local(p, i) = weighted positive events on i by users of cell p, pop(i) = weighted positive events on
    i by anyone (``pos_events``: the popular channel's window, :func:`recsys_batch.recall.popular_window`).
    Each user of cell p gets the top ``geo_cell_items`` of p (score desc, item asc), minus seen items.
    The global term ranks a nearby item nobody of the cell has touched yet by how it does elsewhere
    (a local event counts 1 / geo_global_weight = 10 global ones by default). Items and users without a
    geohash take no part. A geohash prefix cell is a box, so a user at a cell's edge misses the
    neighbouring cell (the usual 8-neighbour expansion is left out).
    Cost: one aggregation of the window's events on (cell, item) after a join with the users' cells on
    user, one on item, one window per cell (a big city sorts only its own items) cut to geo_cell_items
    before the join with the cell's users (rows per user <= geo_cell_items).
    """
    require_columns(pos_events, [Col.USER, Col.ITEM, _W], table="events", where="geo recall")
    ucell = attrs.where(F.col(_CELL).isNotNull()).select(Col.USER, _CELL)
    icell = catalog.where(F.col(Col.GEOHASH).isNotNull()).select(
        Col.ITEM, geohash_prefix(F.col(Col.GEOHASH), cfg.geo_precision).alias(_CELL))
    pop = pos_events.groupBy(Col.ITEM).agg(F.sum(_W).alias(_POP))
    local = pos_events.join(ucell, on=Col.USER).groupBy(_CELL, Col.ITEM).agg(F.sum(_W).alias(_LOCAL))
    score = (F.coalesce(_LOCAL, F.lit(0.0)) + F.lit(float(cfg.geo_global_weight)) * F.coalesce(_POP, F.lit(0.0)))
    cell_items = (icell.join(local, on=[_CELL, Col.ITEM], how="left").join(pop, on=Col.ITEM, how="left")
                  .select(_CELL, Col.ITEM, score.alias(Col.SCORE)))
    cell_items = _top_per(cell_items, [_CELL], cfg.geo_cell_items, Col.SCORE)
    cand = restrict_users(ucell, users).join(cell_items, on=_CELL).select(Col.USER, Col.ITEM, Col.SCORE)
    return top_n_per_user(exclude_seen(cand, matrix), rc.top_n)


# ---- new users --------------------------------------------------------------------------------------------------


def new_user_targets(matrix: DataFrame, attrs: DataFrame, cfg: RulesConfig) -> DataFrame:
    """(user_id): users of the ``users`` table or the matrix with fewer than ``new_user_max_items`` distinct
    matrix items (none at all included). Cost: one aggregation of the matrix on user, one full join."""
    n = matrix.groupBy(Col.USER).agg(F.count(F.lit(1)).alias(_N))
    return (attrs.select(Col.USER).join(n, on=Col.USER, how="full")
            .where(F.coalesce(_N, F.lit(0)) < F.lit(cfg.new_user_max_items)).select(Col.USER))


def _bucket_key(level: int, keys: list[str]) -> Column:
    """"<level>|v1|v2..." or null when a key is null."""
    parts = [F.lit(str(level))] + [F.col(k).cast("string") for k in keys]
    any_null = F.lit(False)
    for k in keys:
        any_null = any_null | F.col(k).isNull()
    return F.when(any_null, F.lit(None).cast("string")).otherwise(F.concat_ws("|", *parts))


def new_users_recall(pos_events: DataFrame, attrs: DataFrame, targets: DataFrame, matrix: DataFrame,
                     rc: RecallConfig, cfg: RulesConfig) -> DataFrame:
    """Profile-based popular items for users with (almost) no history, with backoff.

    Levels l = 0 .. L-1 are ``new_user_buckets`` (finest first, e.g. age_bucket x gender x city, then
    age_bucket x gender, then age_bucket); level L is global. For a bucket b of level l:
    pop_b(i) = weighted positive events on i by users whose attributes put them in b (``pos_events``:
    the popular channel's window); users(b) = distinct such users. A bucket is thin when users(b) <
    ``new_user_min_bucket_users``. A target user u gets the list of the first level l where all of l's
    attributes of u are known and u's bucket is not thin, else the global one (events by anyone);
    score(u, i) = pop_b(i), seen items excluded. Each bucket list is cut to top_n + new_user_max_items - 1
    items first: a target has fewer than new_user_max_items seen items, so its list still has top_n.
    Cost: per level one aggregation of the window's events on (bucket, item) and one window per bucket
    (cut before the join); the users x list join has rows per user <= top_n + new_user_max_items - 1, and
    a bucket with millions of new users is a hot key with a bounded list side.
    """
    require_columns(pos_events, [Col.USER, Col.ITEM, _W], table="events", where="new-user recall")
    levels = cfg.new_user_buckets
    ev = pos_events.select(Col.USER, Col.ITEM, _W).join(attrs, on=Col.USER, how="left")
    size = rc.top_n + cfg.new_user_max_items - 1
    lists, ok, ukeys = None, None, None
    for level, keys in enumerate([*levels, []]):
        bkey = _bucket_key(level, keys) if keys else F.lit(f"{level}|global")
        b = ev.withColumn(_BKEY, bkey).where(F.col(_BKEY).isNotNull())
        lst = (b.groupBy(_BKEY, Col.ITEM).agg(F.sum(_W).alias(Col.SCORE)))
        if keys:
            n_users = b.groupBy(_BKEY).agg(F.countDistinct(Col.USER).alias(_N))
            good = n_users.where(F.col(_N) >= F.lit(cfg.new_user_min_bucket_users)).select(_BKEY)
        else:
            good = lst.select(_BKEY).distinct()
        good = good.withColumn(_LEVEL, F.lit(level))
        # the global level's one key is a literal: a window on it is a window without a partition (one task
        # sorting everything, Spark warns); a global top-k is a per-partition top-k then a merge
        lst = (_top_per(lst.join(good.select(_BKEY), on=_BKEY, how="left_semi"), [_BKEY], size, Col.SCORE) if keys
               else _top_global(lst, size, Col.SCORE))
        uk = targets.join(attrs, on=Col.USER, how="left").select(Col.USER, bkey.alias(_BKEY))
        lists = lst if lists is None else lists.unionByName(lst)
        ok = good if ok is None else ok.unionByName(good)
        ukeys = uk if ukeys is None else ukeys.unionByName(uk)
    w = Window.partitionBy(Col.USER).orderBy(F.col(_LEVEL).asc())
    chosen = (ukeys.join(ok, on=_BKEY).withColumn("_rn", F.row_number().over(w)).where(F.col("_rn") == 1)
              .select(Col.USER, _BKEY))
    cand = chosen.join(lists, on=_BKEY).select(Col.USER, Col.ITEM, Col.SCORE)
    return top_n_per_user(exclude_seen(cand, matrix), rc.top_n)


__all__ = [
    "author_recall", "author_recent_items", "author_similarity", "follows_until", "fresh_lift", "fresh_recall",
    "geo_recall", "hot_recall", "item_catalog", "item_keys", "new_user_targets", "new_users_recall",
    "similar_author_recall", "top_profile_keys", "trending_scores", "user_attributes", "user_authors",
    "user_profile_shares", "weighted_events",
]
