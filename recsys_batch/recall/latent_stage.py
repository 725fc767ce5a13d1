"""The latent stage: item2vec, EASE, ALS and sequential-rules recall lists of D (``recall_item2vec``,
``recall_ease``, ``recall_als``, ``recall_sequential``) plus the neighbour tables ``item2vec_topk`` and
``sequential_topk``."""

from __future__ import annotations

import logging
import time
from datetime import date

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession

from recsys_batch.config import Config
from recsys_batch.io.tables import TableStats, read_range, read_table, replace_partition
from recsys_batch.matrix import events_partitions
from recsys_batch.recall.common import active_users
from recsys_batch.recall.latent import (
    als_recall, ease_recall, item2vec_recall, item2vec_similarity, item_sessions, sequential_recall,
    sequential_similarity,
)
from recsys_batch.schemas import Col
from recsys_batch.similarity.common import staging_path

log = logging.getLogger(__name__)


def run_latent(spark: SparkSession, cfg: Config, run_date: date) -> list[TableStats]:
    """Write the channels of ``latent.channels`` for ``run_date``, each its dt=D partition in one Delta commit.

    Reads ``user_item_matrix`` of D (required) and, for item2vec and sequential, the ``events`` partitions of
    the matrix window. Lists are built for the recall stage's target users (``recall.active_days``),
    ``recall.top_n`` per user, never an item the user has in the matrix. item2vec (sequential) writes
    ``item2vec_topk`` (``sequential_topk``) first and scores from the written table; EASE and ALS score in
    Spark tasks against a matrix staged under
    ``<warehouse>/_tmp/latent/<date>/`` and removed afterwards. A channel not listed writes nothing.
    """
    wh, lc, rc = cfg.warehouse, cfg.latent, cfg.recall
    matrix = read_table(spark, wh, "user_item_matrix", run_date).drop(Col.DT).persist(StorageLevel.MEMORY_AND_DISK)
    stats: list[TableStats] = []
    built: dict[float, DataFrame] = {}  # the window's sessions per gap: item2vec and sequential share one build

    def sessions(gap_minutes: float) -> DataFrame:
        if gap_minutes not in built:
            first, last = events_partitions(run_date, cfg.matrix, cfg.ingest)
            events = read_range(spark, wh, "events", first, last)
            built[gap_minutes] = item_sessions(events, matrix, cfg.events.weights, run_date, cfg.matrix,
                                               gap_minutes).persist(StorageLevel.MEMORY_AND_DISK)
        return built[gap_minutes]

    try:
        targets = active_users(matrix, run_date, rc.active_days).persist(StorageLevel.MEMORY_AND_DISK)
        for channel in lc.channels:
            t0 = time.perf_counter()
            if channel == "item2vec":
                stats.append(replace_partition(
                    item2vec_similarity(sessions(lc.item2vec.session_gap_minutes), lc.item2vec, lc.seed), wh,
                    "item2vec_topk", run_date))
                sim = read_table(spark, wh, "item2vec_topk", run_date).drop(Col.DT)
                stats.append(replace_partition(item2vec_recall(matrix, sim, rc, users=targets), wh,
                                               "recall_item2vec", run_date))
            elif channel == "sequential":
                sc = lc.sequential
                stats.append(replace_partition(sequential_similarity(sessions(sc.session_gap_minutes), sc), wh,
                                               "sequential_topk", run_date))
                rules = read_table(spark, wh, "sequential_topk", run_date).drop(Col.DT)
                stats.append(replace_partition(sequential_recall(matrix, rules, sc, rc, users=targets), wh,
                                               "recall_sequential", run_date))
            else:
                staging = staging_path(wh, "latent", run_date)
                if channel == "ease":
                    recs = ease_recall(matrix, lc.ease, rc, users=targets, staging=staging)
                else:
                    recs = als_recall(matrix, lc.als, rc, lc.seed, users=targets, staging=staging)
                try:
                    stats.append(replace_partition(recs, wh, f"recall_{channel}", run_date))
                finally:
                    recs.unpersist()
            log.info("latent %s: %s in %.1fs", run_date, channel, time.perf_counter() - t0)
        targets.unpersist()
    finally:
        for df in built.values():
            df.unpersist()
        matrix.unpersist()
    return stats
