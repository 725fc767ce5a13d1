"""The offline evaluator: split the window's events, rebuild the channels on the train part, score them.

For run date D: the events of the matrix lookback window ending at D are split (``evaluate.split``:
``user_chrono`` or ``time``, :mod:`recsys_batch.evaluation.splits`); the train matrix is built with
:func:`recsys_batch.matrix.build_user_item_matrix` for the split's train date; each channel of
``evaluate.channels`` is rebuilt from it (similarity with ``cfg.itemcf`` / ``cfg.swing`` / ``cfg.usercf``,
then the recall transforms with top_n = max(ks)) for the test users only; the metrics of
:mod:`recsys_batch.evaluation.metrics` are computed with Spark and collected (one row per channel).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import date

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_batch.config import Config
from recsys_batch.errors import RecsysBatchError
from recsys_batch.evaluation.metrics import CHANNEL, coverage_novelty, ranking_metrics
from recsys_batch.evaluation.report import EvaluateResult, report_path, write_json
from recsys_batch.evaluation.splits import Split, split_time, split_user_chrono
from recsys_batch.io.tables import read_range
from recsys_batch.matrix import build_user_item_matrix, events_partitions
from recsys_batch.recall import item_based_recall, popular_recall, popular_scores, user_based_recall
from recsys_batch.schemas import Col

log = logging.getLogger(__name__)

def make_split(events: DataFrame, cfg: Config, run_date: date) -> Split:
    ev = cfg.evaluate
    if ev.split == "user_chrono":
        return split_user_chrono(events, cfg.events.weights, run_date, cfg.matrix.lookback_days, ev.holdout_ratio)
    return split_time(events, cfg.events.weights, run_date, cfg.matrix.lookback_days, ev.holdout_days)


def _similarity(channel: str, matrix: DataFrame, cfg: Config) -> DataFrame:
    try:
        if channel == "itemcf":
            from recsys_batch.similarity.itemcf import itemcf_similarity
            return itemcf_similarity(matrix, cfg.itemcf)
        if channel == "swing":
            from recsys_batch.similarity.swing import swing_similarity
            return swing_similarity(matrix, cfg.swing)
        from recsys_batch.similarity.usercf import usercf_similarity
        return usercf_similarity(matrix, cfg.usercf)
    except ImportError as e:
        raise RecsysBatchError(f"evaluate channel {channel}: the similarity module is not available ({e})") from e


def channel_recall(channel: str, split: Split, matrix: DataFrame, cfg: Config, users: DataFrame,
                   top_n: int) -> tuple[DataFrame, list[DataFrame]]:
    """Recall lists of one channel rebuilt on the train part, for ``users``; plus DataFrames to unpersist."""
    rc = cfg.recall.model_copy(update={"top_n": top_n})
    if channel == "popular":
        pop = popular_scores(split.train, cfg.events.weights, split.train_date, rc)
        return popular_recall(pop, matrix, users, rc), []
    if channel not in ("itemcf", "swing", "usercf"):
        raise RecsysBatchError(f"evaluate.channels: unknown channel {channel!r}; known: itemcf, swing, usercf, popular")
    sim = _similarity(channel, matrix, cfg)
    fn = user_based_recall if channel == "usercf" else item_based_recall
    return fn(matrix, sim, rc, users=users), [sim]


def evaluate_lists(recs: DataFrame, test: DataFrame, train_matrix: DataFrame, ks: list[int],
                   channels: list[str]) -> list[dict]:
    """Metric rows (one per channel, in ``channels`` order) from lists (channel, user_id, item_id, rank)."""
    ks = sorted(set(ks))
    rank = {r[CHANNEL]: r.asDict() for r in ranking_metrics(recs, test, ks, channels).collect()}
    cov = {r[CHANNEL]: r.asDict() for r in coverage_novelty(recs, train_matrix, ks, channels).collect()}
    rows = []
    for c in channels:
        m, cv = rank.get(c, {}), cov.get(c, {})
        row = {"channel": c, "users": int(m.get("users") or 0)}
        row.update({f"recall@{k}": m.get(f"recall_{k}") for k in ks})
        row.update({f"hit_rate@{k}": m.get(f"hit_{k}") for k in ks})
        row.update({f"ndcg@{k}": m.get(f"ndcg_{k}") for k in ks})
        row["mrr"] = m.get("mrr")
        row.update({f"coverage@{k}": cv.get(f"coverage_{k}") for k in ks})
        row.update({f"novelty@{k}": cv.get(f"novelty_{k}") for k in ks})
        rows.append(row)
    return rows


def evaluate_split(split: Split, cfg: Config, run_date: date, channels: list[str] | None = None,
                   ks: list[int] | None = None) -> tuple[EvaluateResult, DataFrame, DataFrame]:
    """Rebuild the channels on ``split.train`` and score them on ``split.test``.

    Returns the result plus the (persisted) train matrix and test items, so a caller (the benchmark)
    can score other recommenders on the very same split; unpersist them when done.
    """
    channels = list(channels or cfg.evaluate.channels)
    ks = sorted(set(ks or cfg.evaluate.ks))
    if not channels or not ks or ks[0] < 1:
        raise RecsysBatchError(f"evaluate needs at least one channel and positive ks, got {channels} and {ks}")
    mem = StorageLevel.MEMORY_AND_DISK
    train = split.train.persist(mem)
    matrix = build_user_item_matrix(train, cfg.events.weights, split.train_date, cfg.matrix).persist(mem)
    test = split.test.persist(mem)
    users = test.select(Col.USER).distinct().persist(mem)
    lists, to_free = [], []
    try:
        for c in channels:
            recs, extra = channel_recall(c, split, matrix, cfg, users, ks[-1])
            to_free += extra
            lists.append(recs.withColumn(CHANNEL, F.lit(c)))
        recs = lists[0]
        for other in lists[1:]:
            recs = recs.unionByName(other)
        recs = recs.persist(mem)
        n_recs = recs.count()
        for df in to_free:
            df.unpersist()
        rows = evaluate_lists(recs, test, matrix, ks, channels)
        result = EvaluateResult(
            run_date=run_date, split=split.kind, train_date=split.train_date, ks=ks, rows=rows,
            test_users=users.count(), train_users=matrix.select(Col.USER).distinct().count(),
            catalog_items=matrix.select(Col.ITEM).distinct().count(), extra={"recommendations": n_recs},
        )
        recs.unpersist()
    finally:
        users.unpersist()
        train.unpersist()
    log.info("evaluate %s (%s split): %s test users, %s", run_date, split.kind, result.test_users, rows)
    return result, matrix, test


def run_evaluate(spark: SparkSession, cfg: Config, run_date: date) -> EvaluateResult:
    """Stage ``evaluate``: metrics of every channel in ``evaluate.channels`` for ``run_date``.

    Reads the ``events`` partitions of the matrix lookback window of D, writes the metric table as JSON to
    ``<warehouse.root>/reports/evaluate/dt=<D>/metrics.json`` (replaced on re-run) and returns it
    (``EvaluateResult.rows``: one row per channel). Prints nothing.
    """
    first, last = events_partitions(run_date, cfg.matrix, cfg.ingest)
    events = read_range(spark, cfg.warehouse, "events", first, last)
    result, matrix, test = evaluate_split(make_split(events, cfg, run_date), cfg, run_date)
    matrix.unpersist()
    test.unpersist()
    path = report_path(cfg.warehouse.root, run_date)
    payload = result.to_dict()
    payload["config_hash"] = cfg.config_hash()
    payload.pop("path", None)
    return replace(result, path=write_json(spark, path, payload))
