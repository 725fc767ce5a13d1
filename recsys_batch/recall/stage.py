"""The recall stage: read the matrix, neighbour tables and events of D, write ``recall_<channel>`` for D."""

from __future__ import annotations

import logging
from datetime import date

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession

from recsys_batch.config import Config, MatrixConfig
from recsys_batch.io.tables import TableStats, read_range, read_table, replace_partition
from recsys_batch.matrix import events_partitions
from recsys_batch.recall.channels import (
    item_based_recall, popular_recall, popular_scores, popular_window, user_based_recall,
)
from recsys_batch.recall.common import active_users
from recsys_batch.schemas import Col

log = logging.getLogger(__name__)

#: channel -> (neighbour table, kind)
SIMILARITY_TABLES = {"itemcf": "itemcf_topk", "swing": "swing_topk", "usercf": "usercf_topk"}


def _neighbours(spark: SparkSession, cfg: Config, table: str, run_date: date) -> DataFrame | None:
    df = read_table(spark, cfg.warehouse, table, run_date, required=False)
    if df is None:
        log.info("%s does not exist", table)
        return None
    if df.limit(1).count() == 0:
        log.info("%s has no partition dt=%s", table, run_date)
        return None
    return df.drop(Col.DT)


def run_recall(spark: SparkSession, cfg: Config, run_date: date) -> list[TableStats]:
    """Write ``recall_itemcf``, ``recall_swing``, ``recall_usercf``, ``recall_popular`` for ``run_date``.

    Reads ``user_item_matrix`` (required), the neighbour tables ``itemcf_topk`` / ``swing_topk`` /
    ``usercf_topk`` (a channel whose table or dt=D partition is missing is skipped with a log line) and
    the ``events`` partitions of the popular window. Lists are built for every user of the matrix
    (``recall.active_days`` null) or those active within that many days of D. ``recall_popular`` holds a
    list for every one of them: it is the floor for the users no personalised channel reaches (a user
    whose items have no neighbours), and the personalised tables are never padded with it. Each table's
    dt=D partition is replaced in one Delta commit; the users reached only by popular are logged.
    """
    wh, rc = cfg.warehouse, cfg.recall
    matrix = read_table(spark, wh, "user_item_matrix", run_date).drop(Col.DT).persist(StorageLevel.MEMORY_AND_DISK)
    stats: list[TableStats] = []
    try:
        targets = active_users(matrix, run_date, rc.active_days).persist(StorageLevel.MEMORY_AND_DISK)
        for channel, table in SIMILARITY_TABLES.items():
            sim = _neighbours(spark, cfg, table, run_date)
            if sim is None:
                log.info("recall_%s for %s skipped: no %s for dt=%s (run the similarity stage first)",
                         channel, run_date, table, run_date)
                continue
            if channel == "usercf":
                recs = user_based_recall(matrix, sim, rc, users=targets, run_date=run_date)
            else:
                recs = item_based_recall(matrix, sim, rc, users=targets)
            stats.append(replace_partition(recs, wh, f"recall_{channel}", run_date))

        lookback, half_life = popular_window(rc, cfg.matrix)
        first, last = events_partitions(run_date, MatrixConfig(lookback_days=lookback), cfg.ingest)
        events = read_range(spark, wh, "events", first, last)
        popularity = popular_scores(events, cfg.events.weights, run_date, lookback, half_life)
        stats.append(replace_partition(popular_recall(popularity, matrix, targets, rc), wh, "recall_popular",
                                       run_date))
        _log_reach(spark, cfg, run_date, targets, [s.table for s in stats if s.table != "recall_popular"])
        targets.unpersist()
    finally:
        matrix.unpersist()
    return stats


def _log_reach(spark: SparkSession, cfg: Config, run_date: date, targets: DataFrame, tables: list[str]) -> None:
    """Log how many target users each personalised table reaches and how many only popular does."""
    n_targets = targets.count()
    reached = None
    parts = []
    for t in tables:
        users = read_table(spark, cfg.warehouse, t, run_date).select(Col.USER).distinct()
        parts.append(f"{t} {users.count():,}")
        reached = users if reached is None else reached.unionByName(users)
    only_popular = n_targets if reached is None else targets.join(reached, on=Col.USER, how="left_anti").count()
    log.info("recall %s: %s target users (recall.active_days=%s); with a list: %s; popular only: %s",
             run_date, f"{n_targets:,}", cfg.recall.active_days, ", ".join(parts) or "no personalised channel",
             f"{only_popular:,}")
