"""Windowed counts and Bayesian-smoothed rates of users, items and authors as of the end of run date D.

Point in time: only events with ``ts < D + 1 00:00 UTC`` enter (the caller reads batches ``dt <= D``;
this module filters on ``ts``, so an event of D + 1 -- or one within ingest's future tolerance that
sits in batch D -- never counts). Window ``w`` holds the events with ``ts >= end of D - w days``
(``w = 1`` is the day D itself).

Smoothing (Beta-Binomial posterior mean): ``rate = (successes + alpha) / (trials + alpha + beta)``;
ctr = clicks / impressions, and like / collect / share / comment rates per click. Priors are
``features.priors`` or, with ``prior_mode: moments``, fitted per table by the method of moments on the
entities with at least ``prior_min_trials`` trials in the longest window:
``m = mean(r), v = var(r), s = m(1-m)/v - 1, alpha = m s, beta = (1-m) s`` (fixed prior if v = 0 or
v >= m(1-m), which moments cannot fit).
"""

from __future__ import annotations

import logging
from datetime import date

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_batch.config import BetaPrior, FeaturesConfig
from recsys_batch.features.profiles import end_of_day_micros
from recsys_batch.io.tables import require_columns
from recsys_batch.schemas import (
    ENGAGEMENTS, STAT_EVENTS, Col, FCol, bucket_labels, count_col, ctr_col, item_features_schema, rate_col,
    user_features_schema,
)

log = logging.getLogger(__name__)

DAY_US = 86_400 * 1_000_000
AGE_DAY = "_age_day"  # 0 = day D, 1 = D - 1, ...
_RN = "_rn"

#: rate name -> (successes, trials) event types
RATES: dict[str, tuple[str, str]] = {"ctr": ("click", "impression"), **{e: (e, "click") for e in ENGAGEMENTS}}


# ---- events of the window ---------------------------------------------------------------------------------


def window_events(events: DataFrame, run_date: date, max_days: int) -> DataFrame:
    """Events with ts in [end of D - max_days days, end of D), plus ``_age_day`` = whole days before the end.

    Columns: user_id, item_id, event_type (lower-case), ts, _age_day. Cost: one narrow pass.
    """
    require_columns(events, [Col.USER, Col.ITEM, Col.EVENT, Col.TS], table="events", where="feature window")
    end_us = end_of_day_micros(run_date)
    ts_us = F.unix_micros(F.col(Col.TS))
    return (
        events.where((ts_us >= F.lit(end_us - max_days * DAY_US)) & (ts_us < F.lit(end_us)))
        .select(Col.USER, Col.ITEM, F.lower(F.trim(Col.EVENT)).alias(Col.EVENT), Col.TS,
                F.floor((F.lit(end_us) - ts_us) / F.lit(DAY_US)).cast("int").alias(AGE_DAY))
    )


def _count(cond: Column) -> Column:
    return F.sum(F.when(cond, 1).otherwise(0)).cast("long")


def count_aggs(windows: list[int]) -> list[Column]:
    """``<plural>_<w>d`` = number of events of each counted type within each window."""
    return [_count((F.col(Col.EVENT) == F.lit(t)) & (F.col(AGE_DAY) < F.lit(w))).alias(count_col(t, w))
            for w in windows for t in STAT_EVENTS]


def smoothed(successes: Column, trials: Column, prior: BetaPrior) -> Column:
    """(successes + alpha) / (trials + alpha + beta); null counts count as 0."""
    s, n = F.coalesce(successes, F.lit(0)), F.coalesce(trials, F.lit(0))
    return ((s + F.lit(prior.alpha)) / (n + F.lit(prior.alpha + prior.beta))).cast("double")


def add_rates(counts: DataFrame, windows: list[int], priors: dict[str, BetaPrior]) -> DataFrame:
    """ctr_<w>d and <engagement>_rate_<w>d from the ``count_aggs`` columns."""
    cols = []
    for w in windows:
        for name, (succ, trials) in RATES.items():
            out = ctr_col(w) if name == "ctr" else rate_col(name, w)
            cols.append(smoothed(F.col(count_col(succ, w)), F.col(count_col(trials, w)), priors[name]).alias(out))
    return counts.select("*", *cols)


# ---- priors ------------------------------------------------------------------------------------------------


def beta_prior_from_moments(mean: float | None, var: float | None) -> BetaPrior | None:
    """Method of moments: s = m(1-m)/v - 1, alpha = m s, beta = (1-m) s; None when it cannot fit."""
    if mean is None or var is None or not 0.0 < mean < 1.0 or var <= 0.0 or var >= mean * (1 - mean):
        return None
    s = mean * (1 - mean) / var - 1
    return BetaPrior(alpha=mean * s, beta=(1 - mean) * s)


def resolve_priors(counts: DataFrame, fc: FeaturesConfig, table: str) -> dict[str, BetaPrior]:
    """The priors of one table: ``features.priors`` or their method-of-moments fit (one small action).

    ``counts`` holds the ``count_aggs`` columns of one row per entity; the fit uses the longest window and
    the entities with at least ``prior_min_trials`` trials (population mean and variance of their rates).
    """
    if fc.prior_mode == "fixed":
        return dict(fc.priors)
    w = max(fc.windows_days)
    aggs = []
    for name, (succ, trials) in RATES.items():
        n = F.col(count_col(trials, w))
        r = F.when(n >= F.lit(fc.prior_min_trials), F.col(count_col(succ, w)) / n)
        aggs += [F.avg(r).alias(f"{name}_m"), F.var_pop(r).alias(f"{name}_v")]
    row = counts.agg(*aggs).first()
    out = {}
    for name in RATES:
        fitted = beta_prior_from_moments(row[f"{name}_m"], row[f"{name}_v"])
        if fitted is None:
            log.warning("%s prior %s: method of moments cannot fit (mean %s, var %s); using %s",
                        table, name, row[f"{name}_m"], row[f"{name}_v"], fc.priors[name])
        out[name] = fitted or fc.priors[name]
    log.info("%s priors: %s", table, {k: (round(p.alpha, 4), round(p.beta, 4)) for k, p in out.items()})
    return out


# ---- users ---------------------------------------------------------------------------------------------------


def user_counts(wev: DataFrame, fc: FeaturesConfig) -> DataFrame:
    """Per user: windowed counts and ``active_days_<B>d`` (distinct days with any event). Shuffle on user."""
    b = fc.breakdown_window_days
    return wev.groupBy(Col.USER).agg(
        *count_aggs(fc.windows_days),
        F.countDistinct(F.when(F.col(AGE_DAY) < F.lit(b), F.col(AGE_DAY))).cast("int").alias(f"active_days_{b}d"),
    )


def _imp_clicks(wev: DataFrame, days: int) -> DataFrame:
    return wev.where((F.col(AGE_DAY) < F.lit(days)) & F.col(Col.EVENT).isin("impression", "click"))


def _is(event: str) -> Column:
    return F.col(Col.EVENT) == F.lit(event)


def user_breakdowns(wev: DataFrame, items: DataFrame, fc: FeaturesConfig, ctr_prior: BetaPrior) -> DataFrame:
    """Per user: ctr_media_<m>_<B>d for ``features.media_types`` and the top categories by clicks.

    top_categories = up to ``top_categories`` categories with clicks, by clicks desc, impressions desc, name;
    top_category_ctrs = their smoothed ctr (same order). Cost: a join of the window's impressions and
    clicks with the item profile (shuffle on item) and shuffles on user and (user, category).
    """
    b = fc.breakdown_window_days
    ev = _imp_clicks(wev, b).join(items.select(Col.ITEM, Col.MEDIA_TYPE, Col.CATEGORY), Col.ITEM, "left")
    media = ev.groupBy(Col.USER).agg(*[
        smoothed(_count(_is("click") & (F.col(Col.MEDIA_TYPE) == F.lit(m))),
                 _count(_is("impression") & (F.col(Col.MEDIA_TYPE) == F.lit(m))), ctr_prior)
        .alias(f"ctr_media_{m}_{b}d") for m in fc.media_types])
    per_cat = (ev.where(F.col(Col.CATEGORY).isNotNull())
               .groupBy(Col.USER, Col.CATEGORY)
               .agg(_count(_is("click")).alias("_c"), _count(_is("impression")).alias("_n"))
               .where(F.col("_c") > 0))
    w = Window.partitionBy(Col.USER).orderBy(F.col("_c").desc(), F.col("_n").desc(), F.col(Col.CATEGORY))
    top = (per_cat.withColumn(_RN, F.row_number().over(w)).where(F.col(_RN) <= fc.top_categories)
           .groupBy(Col.USER)
           .agg(F.sort_array(F.collect_list(F.struct(
               F.col(_RN), F.col(Col.CATEGORY), smoothed(F.col("_c"), F.col("_n"), ctr_prior).alias("_ctr")))).alias("_t"))
           .select(Col.USER,
                   F.transform("_t", lambda e: e[Col.CATEGORY]).alias(FCol.TOP_CATEGORIES),
                   F.transform("_t", lambda e: e["_ctr"]).alias(FCol.TOP_CATEGORY_CTRS)))
    return media.join(top, Col.USER, "left")


def activity_level(active_days: Column, thresholds: list[int]) -> Column:
    low, mid, high = thresholds
    return (F.when(active_days < low, "inactive").when(active_days < mid, "low")
            .when(active_days < high, "mid").otherwise("high"))


def build_user_features(profile: DataFrame, counts: DataFrame, breakdowns: DataFrame, fc: FeaturesConfig,
                        priors: dict[str, BetaPrior]) -> DataFrame:
    """``user_features`` rows: every user of the profile or with an event in the window.

    Missing counts are 0 (so rates are the prior mean); missing profile fields stay null.
    """
    b = fc.breakdown_window_days
    keys = profile.select(Col.USER).unionByName(counts.select(Col.USER)).distinct()
    cnt_cols = [c for c in counts.columns if c != Col.USER]
    df = (keys.join(profile, Col.USER, "left").join(counts, Col.USER, "left")
          .fillna(0, subset=cnt_cols).join(breakdowns, Col.USER, "left"))
    df = add_rates(df, fc.windows_days, priors)
    prior_ctr = priors["ctr"].alpha / (priors["ctr"].alpha + priors["ctr"].beta)
    df = df.fillna(prior_ctr, subset=[f"ctr_media_{m}_{b}d" for m in fc.media_types])
    df = (df.withColumn(FCol.ACTIVITY_LEVEL, activity_level(F.col(f"active_days_{b}d"), fc.activity_level_days))
          .withColumn(FCol.TOP_CATEGORIES, F.coalesce(FCol.TOP_CATEGORIES, F.array().cast("array<string>")))
          .withColumn(FCol.TOP_CATEGORY_CTRS, F.coalesce(FCol.TOP_CATEGORY_CTRS, F.array().cast("array<double>"))))
    return conform(df, user_features_schema(fc))


# ---- items -----------------------------------------------------------------------------------------------------


def item_counts(wev: DataFrame, fc: FeaturesConfig) -> DataFrame:
    """Per item: windowed counts. Shuffle on item (hot items aggregate map-side)."""
    return wev.groupBy(Col.ITEM).agg(*count_aggs(fc.windows_days))


def item_audience(wev: DataFrame, user_profile: DataFrame, fc: FeaturesConfig, ctr_prior: BetaPrior) -> DataFrame:
    """Per item: smoothed ctr by viewer gender (ctr_gender_<g>_<B>d) and age bucket (ctr_age_<a>_<B>d).

    Viewer attributes from the user profile as of D. Cost: a join of the window's impressions/clicks with
    the user profile (shuffle on user), one shuffle on item.
    """
    b = fc.breakdown_window_days
    ev = _imp_clicks(wev, b).join(user_profile.select(Col.USER, Col.GENDER, FCol.AGE_BUCKET), Col.USER, "left")
    aggs = []
    for col, values, name in ((Col.GENDER, fc.genders, "gender"),
                              (FCol.AGE_BUCKET, bucket_labels(fc.age_bounds_years), "age")):
        for v in values:
            match = F.col(col) == F.lit(v)
            aggs.append(smoothed(_count(_is("click") & match), _count(_is("impression") & match), ctr_prior)
                        .alias(f"ctr_{name}_{v}_{b}d"))
    return ev.groupBy(Col.ITEM).agg(*aggs)


def author_statistics(wev: DataFrame, item_profile: DataFrame, follows: DataFrame | None, run_date: date,
                      fc: FeaturesConfig, ctr_prior: BetaPrior) -> DataFrame:
    """Per author: author_items (items published before the end of D), author_followers (distinct users
    following with ts < end of D, all history), impressions / clicks / smoothed ctr over the breakdown window.
    """
    b = fc.breakdown_window_days
    authored = item_profile.select(Col.ITEM, Col.AUTHOR).where(F.col(Col.AUTHOR).isNotNull())
    n_items = authored.groupBy(Col.AUTHOR).agg(F.count(F.lit(1)).alias(FCol.AUTHOR_ITEMS))
    ev = (_imp_clicks(wev, b).join(authored, Col.ITEM).groupBy(Col.AUTHOR)
          .agg(_count(_is("impression")).alias(f"author_impressions_{b}d"),
               _count(_is("click")).alias(f"author_clicks_{b}d")))
    out = n_items.join(ev, Col.AUTHOR, "full")
    if follows is not None:
        fol = (follows.where(F.unix_micros(F.col(Col.TS)) < F.lit(end_of_day_micros(run_date)))
               .groupBy(Col.AUTHOR).agg(F.countDistinct(Col.USER).alias(FCol.AUTHOR_FOLLOWERS)))
        out = out.join(fol, Col.AUTHOR, "full")
    else:
        out = out.withColumn(FCol.AUTHOR_FOLLOWERS, F.lit(0).cast("long"))
    out = out.fillna(0, subset=[FCol.AUTHOR_ITEMS, FCol.AUTHOR_FOLLOWERS, f"author_impressions_{b}d",
                                f"author_clicks_{b}d"])
    return out.withColumn(f"author_ctr_{b}d", smoothed(F.col(f"author_clicks_{b}d"),
                                                         F.col(f"author_impressions_{b}d"), ctr_prior))


def build_item_features(profile: DataFrame, counts: DataFrame, audience: DataFrame, authors: DataFrame,
                        fc: FeaturesConfig, priors: dict[str, BetaPrior]) -> DataFrame:
    """``item_features`` rows: every item of the profile or with an event in the window.

    Missing counts are 0 and audience ctrs the prior mean; author statistics join on the profile's author
    (null for an item without one).
    """
    keys = profile.select(Col.ITEM).unionByName(counts.select(Col.ITEM)).distinct()
    cnt_cols = [c for c in counts.columns if c != Col.ITEM]
    df = (keys.join(profile, Col.ITEM, "left").join(counts, Col.ITEM, "left").fillna(0, subset=cnt_cols)
          .join(audience, Col.ITEM, "left").join(authors, Col.AUTHOR, "left"))
    df = add_rates(df, fc.windows_days, priors)
    prior_ctr = priors["ctr"].alpha / (priors["ctr"].alpha + priors["ctr"].beta)
    df = df.fillna(prior_ctr, subset=[c for c in audience.columns if c != Col.ITEM])
    return conform(df, item_features_schema(fc))


def conform(df: DataFrame, schema: T.StructType) -> DataFrame:
    """Columns in schema order, atomic ones cast to their schema type.

    Arrays are left as built: Spark refuses to cast ``array<string>`` to one declaring NOT NULL elements.
    """
    nested = (T.ArrayType, T.StructType, T.MapType)
    return df.select(*[F.col(f.name) if isinstance(f.dataType, nested) else F.col(f.name).cast(f.dataType).alias(f.name)
                       for f in schema.fields])
