"""The ``recall_rules`` stage: rule / content-based recall lists of D (:mod:`recsys_batch.recall.rules`).

Writes ``recall_hot``, ``recall_fresh``, ``recall_author``, ``recall_similar_author``, ``recall_geo`` and
``recall_new_users`` (schema ``RECALL``), each as its dt=D partition in one Delta commit.
"""

from __future__ import annotations

import logging
from datetime import date

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_batch.config import Config, MatrixConfig
from recsys_batch.features.stage import latest_snapshot
from recsys_batch.io.tables import TableStats, read_range, read_table, replace_partition
from recsys_batch.matrix import events_partitions
from recsys_batch.recall.channels import popular_window
from recsys_batch.recall.common import active_users
from recsys_batch.recall.rules import (
    author_recall, author_recent_items, author_similarity, follows_until, fresh_lift, fresh_recall, geo_recall,
    hot_recall, item_catalog, new_user_targets, new_users_recall, similar_author_recall, trending_scores,
    user_attributes, user_authors, user_profile_shares, weighted_events,
)
from recsys_batch.schemas import FOLLOWS, ITEMS, USERS, Col

log = logging.getLogger(__name__)

RULE_CHANNELS = ("hot", "fresh", "author", "similar_author", "geo", "new_users")


def _or_empty(spark: SparkSession, df: DataFrame | None, schema, name: str, run_date: date) -> DataFrame:
    if df is None:
        log.warning("recall_rules %s: no %s for dt<=%s; the channels that need it are empty", run_date, name, run_date)
        return spark.createDataFrame([], schema)
    return df.select(*schema.fieldNames())


def run_recall_rules(spark: SparkSession, cfg: Config, run_date: date) -> list[TableStats]:
    """Write the six rule-based ``recall_<channel>`` tables for ``run_date``.

    Reads ``user_item_matrix`` of D (required), the latest ``items`` / ``users`` snapshots dt <= D and
    ``follows`` dt <= D (each optional: without one, the channels that need it write an empty partition,
    so a re-run never leaves an older list behind) and the ``events`` partitions of the longest window
    (hot long window, fresh window, the popular window of geo / new_users). Lists of hot, fresh,
    author, similar_author and geo are built for the recall stage's users (``recall.active_days``),
    new_users for the users with fewer than ``recall_rules.new_user_max_items`` matrix items. Logs how
    many users each channel reaches.
    """
    wh, rc, rr = cfg.warehouse, cfg.recall, cfg.recall_rules
    matrix = read_table(spark, wh, "user_item_matrix", run_date).drop(Col.DT).persist(StorageLevel.MEMORY_AND_DISK)
    items = _or_empty(spark, latest_snapshot(spark, wh, "items", run_date), ITEMS, "items", run_date)
    users = _or_empty(spark, latest_snapshot(spark, wh, "users", run_date), USERS, "users", run_date)
    fol = read_table(spark, wh, "follows", None, required=False)
    fol = None if fol is None else fol.where(F.col(Col.DT) <= run_date.isoformat())
    follows = follows_until(_or_empty(spark, fol, FOLLOWS, "follows", run_date), run_date)

    pop_days, _ = popular_window(rc, cfg.matrix)
    longest = max(rr.hot_long_days, rr.fresh_days, pop_days)
    first, last = events_partitions(run_date, MatrixConfig(lookback_days=longest), cfg.ingest)
    events = read_range(spark, wh, "events", first, last).drop(Col.DT)
    log.info("recall_rules %s: events dt %s..%s", run_date, first, last)

    cached: list[DataFrame] = [matrix]

    def keep(df: DataFrame) -> DataFrame:
        cached.append(df.persist(StorageLevel.MEMORY_AND_DISK))
        return cached[-1]

    stats: list[TableStats] = []
    try:
        targets = keep(active_users(matrix, run_date, rc.active_days))
        catalog = keep(item_catalog(items, run_date))
        attrs = keep(user_attributes(users, run_date, cfg.features.age_bounds_years, rr.geo_precision))
        profile = keep(user_profile_shares(matrix, catalog, rr.profile_recent_items))
        pop_events = keep(weighted_events(events, cfg.events.weights, run_date, pop_days))
        recent = keep(author_recent_items(catalog, run_date, rr.author_recent_items))
        authors = keep(user_authors(matrix, catalog, follows, rr))

        def write(channel: str, df: DataFrame) -> None:
            stats.append(replace_partition(df, wh, f"recall_{channel}", run_date))

        trend = trending_scores(events, cfg.events.weights, run_date, rr)
        write("hot", hot_recall(trend, catalog, profile, matrix, targets, rc, rr))
        write("fresh", fresh_recall(fresh_lift(events, catalog, run_date, rr), catalog, profile, matrix, targets, rc, rr))
        write("author", author_recall(authors, recent, matrix, targets, rc))
        asim = author_similarity(matrix, catalog, rr)
        write("similar_author", similar_author_recall(matrix, catalog, follows, authors, asim, recent, targets, rc, rr))
        write("geo", geo_recall(pop_events, attrs, catalog, matrix, targets, rc, rr))
        new_targets = keep(new_user_targets(matrix, attrs, rr))
        write("new_users", new_users_recall(pop_events, attrs, new_targets, matrix, rc, rr))
        _log_reach(spark, cfg, run_date, targets, new_targets, stats)
    finally:
        for df in cached:
            df.unpersist()
    return stats


def _log_reach(spark: SparkSession, cfg: Config, run_date: date, targets: DataFrame, new_targets: DataFrame,
               stats: list[TableStats]) -> None:
    """Log, per channel, the users with a list out of the users it is meant for."""
    n_targets, n_new = targets.count(), new_targets.count()
    parts = []
    for s in stats:
        users = read_table(spark, cfg.warehouse, s.table, run_date).select(Col.USER).distinct().count()
        parts.append(f"{s.table} {users:,}/{n_new if s.table == 'recall_new_users' else n_targets:,}")
    log.info("recall_rules %s: users with a list / users meant for: %s", run_date, ", ".join(parts))
