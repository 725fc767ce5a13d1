"""The recall stage: read the matrix, neighbour tables and events of D, write ``recall_<channel>`` for D."""

from __future__ import annotations

import logging
from datetime import date

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession

from recsys_batch.config import Config, MatrixConfig
from recsys_batch.io.tables import TableStats, read_range, read_table, replace_partition
from recsys_batch.matrix import events_partitions
from recsys_batch.recall.channels import item_based_recall, popular_recall, popular_scores, user_based_recall
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
    the ``events`` partitions of the popular window. Lists are built for the users active within
    ``recall.active_days`` of D. Each table's dt=D partition is replaced in one Delta commit.
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
            fn = user_based_recall if channel == "usercf" else item_based_recall
            stats.append(replace_partition(fn(matrix, sim, rc, users=targets), wh, f"recall_{channel}", run_date))

        pop_cfg = MatrixConfig(lookback_days=rc.popular_lookback_days, half_life_days=rc.popular_half_life_days)
        first, last = events_partitions(run_date, pop_cfg, cfg.ingest)
        events = read_range(spark, wh, "events", first, last)
        popularity = popular_scores(events, cfg.events.weights, run_date, rc)
        stats.append(replace_partition(popular_recall(popularity, matrix, targets, rc), wh, "recall_popular",
                                       run_date))
        targets.unpersist()
    finally:
        matrix.unpersist()
    return stats
