"""The samples stage: recall and ranking samples of label day D.

Reads: ``events`` batch dt = D (rows with ts in day D), ``rank_logs`` dt = D (optional: no hard
negatives), ``user_features`` / ``item_features`` dt = D - 1 (required: point in time), ``user_lastn``
dt = D - 1 (optional: then last-N holds only the day's earlier positives; logged).

Writes, for each kind (``recall``, ``ranking``):

* Delta ``samples_recall`` / ``samples_ranking``, partition dt = D (replaceWhere, one commit);
* shuffled Parquet shards ``<root>/samples/<kind>/dt=D/part-NNNNN.parquet`` + ``_manifest.json``
  (:mod:`recsys_batch.samples.shards`), exported from the written Delta partition so both hold the same
  rows. The loader decodes feature columns with ``<root>/features/dt=D-1/feature_spec.json`` (named in
  the manifest).

Re-running D replaces both the partitions and the shard folders.
"""

from __future__ import annotations

import logging
from datetime import date, timedelta

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_batch.config import Config
from recsys_batch.errors import MissingInput
from recsys_batch.features.stage import ITEM_FEATURES, USER_FEATURES, spec_path
from recsys_batch.features.statistics import conform
from recsys_batch.io.tables import TableStats, read_table, replace_partition
from recsys_batch.samples.common import attach_lastn, day_positive_events, join_features, label_day_events
from recsys_batch.samples.negatives import sampling_distribution
from recsys_batch.samples.ranking import build_ranking_samples
from recsys_batch.samples.recall import build_recall_samples
from recsys_batch.samples.shards import write_shards
from recsys_batch.schemas import Col, FCol, count_col, samples_ranking_schema, samples_recall_schema

log = logging.getLogger(__name__)


def _features_of(spark: SparkSession, cfg: Config, name: str, d: date) -> DataFrame:
    df = read_table(spark, cfg.warehouse, name, d, required=False)
    if df is None or df.limit(1).count() == 0:
        raise MissingInput(f"samples for {d + timedelta(days=1)} join {name} of dt={d} (the day before), which "
                           f"does not exist: run `recsys-batch features --date {d}` first")
    return df.drop(Col.DT)


def build_samples(day: DataFrame, rank_logs: DataFrame | None, user_features: DataFrame,
                  item_features: DataFrame, history: DataFrame | None, run_date: date, cfg: Config
                  ) -> tuple[DataFrame, DataFrame]:
    """``(samples_recall, samples_ranking)`` rows of label day D (pure: inputs already point-in-time)."""
    sc, fc = cfg.samples, cfg.features
    clicks = count_col("click", sc.popularity_window_days)
    dist = sampling_distribution(item_features, clicks, sc.popularity_exponent, sc.popularity_smoothing)
    positives = day_positive_events(day)
    recall = build_recall_samples(day, rank_logs, dist, run_date, sc)
    recall = join_features(attach_lastn(recall, history, positives, sc.lastn), user_features, item_features)
    ranking = build_ranking_samples(day, sc)
    ranking = join_features(attach_lastn(ranking, history, positives, sc.lastn), user_features, item_features)
    return conform(recall, samples_recall_schema(fc)), conform(ranking, samples_ranking_schema(fc))


def run_samples(spark: SparkSession, cfg: Config, run_date: date) -> list[TableStats]:
    """Build and write D's recall and ranking samples (Delta + shards); see the module docstring."""
    wh = cfg.warehouse
    prev = run_date - timedelta(days=1)
    uf = _features_of(spark, cfg, USER_FEATURES, prev)
    itf = _features_of(spark, cfg, ITEM_FEATURES, prev)
    events = read_table(spark, wh, "events", run_date).drop(Col.DT)
    rl = read_table(spark, wh, "rank_logs", run_date, required=False)
    rank_logs = rl.drop(Col.DT) if rl is not None else None
    if rank_logs is None:
        log.warning("samples %s: no rank_logs table: recall samples get easy negatives only", run_date)
    hist = read_table(spark, wh, "user_lastn", prev, required=False)
    if hist is None or hist.limit(1).count() == 0:
        log.warning("samples %s: no user_lastn for dt=%s: last-N holds only the day's earlier positives", run_date, prev)
        hist = None
    else:
        hist = hist.drop(Col.DT)

    day = label_day_events(events, run_date, cfg.events.weights).persist(StorageLevel.MEMORY_AND_DISK)
    stats: list[TableStats] = []
    try:
        recall, ranking = build_samples(day, rank_logs, uf, itf, hist, run_date, cfg)
        for kind, df, keys in (("recall", recall, [FCol.GROUP, Col.ITEM, FCol.SOURCE]),
                               ("ranking", ranking, [Col.USER, Col.ITEM, Col.REQUEST])):
            table = f"samples_{kind}"
            st = replace_partition(df, wh, table, run_date)
            written = read_table(spark, wh, table, run_date).drop(Col.DT)
            manifest = write_shards(written, wh, kind, run_date, cfg.samples, keys, rows=st.rows,
                                     extra={"feature_spec": feature_spec_for(cfg, run_date)})
            log.info("samples %s %s: %d rows in Delta, %d shard files", kind, run_date, st.rows, len(manifest["files"]))
            stats.append(st)
            stats.append(TableStats(f"{table}_shards", run_date, manifest["rows"],
                                    f"{wh.root.rstrip('/')}/samples/{kind}/{Col.DT}={run_date.isoformat()}"))
    finally:
        day.unpersist()
    return stats


def feature_spec_for(cfg: Config, run_date: date) -> str:
    """The feature spec that decodes the samples of label day D (fitted on the features of D - 1)."""
    return spec_path(cfg.warehouse, run_date - timedelta(days=1))
