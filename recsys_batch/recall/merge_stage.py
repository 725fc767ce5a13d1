"""The merge stage: ``exposure_bloom`` from D's exposure window, then ``recall_merged`` from the channel lists of D."""

from __future__ import annotations

import functools
import logging
from datetime import date, timedelta
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_batch.config import Config, MatrixConfig, MergeConfig
from recsys_batch.errors import ConfigError, MissingInput
from recsys_batch.io import fs
from recsys_batch.io.tables import TableStats, read_range, read_table, replace_partition
from recsys_batch.matrix import events_partitions
from recsys_batch.recall.exposure import bloom_metrics, build_exposure_bloom, exposed_items
from recsys_batch.recall.fusion_search import search_weights
from recsys_batch.recall.merge import channel_validation, learned_weights, merge_recall, validation_sample
from recsys_batch.schemas import Col

log = logging.getLogger(__name__)


def metrics_path(root: str, run_date: date) -> str:
    return f"{root.rstrip('/')}/reports/merge/dt={run_date.isoformat()}/exposure_bloom.json"


def channel_lists(spark: SparkSession, cfg: Config, run_date: date) -> tuple[dict[str, DataFrame], list[str]]:
    """({channel: its recall_<channel> rows of D} for the configured channels that have them, notes on the
    others: ``recall_hot (no table)`` / ``recall_geo (no rows for dt=D)``). One Spark job checks every
    table's partition (at most one row per channel reaches the driver)."""
    tables, missing = {}, []
    for channel in cfg.merge.channels:
        df = read_table(spark, cfg.warehouse, f"recall_{channel}", run_date, required=False)
        if df is None:
            missing.append(f"recall_{channel} (no table)")
        else:
            tables[channel] = df.drop(Col.DT)
    probes = [df.select(F.lit(c).alias("_c")).limit(1) for c, df in tables.items()]
    present = {r[0] for r in functools.reduce(DataFrame.unionByName, probes).collect()} if probes else set()
    missing += [f"recall_{c} (no rows for dt={run_date})" for c in tables if c not in present]
    return {c: df for c, df in tables.items() if c in present}, missing


def fusion_weights(spark: SparkSession, cfg: Config, run_date: date) -> tuple[dict[str, float], dict[str, Any]]:
    """(RRF weights, what they came from) for the merge of D (``merge.learn_weights``).

    Validation = the ``recall_<c>`` lists of P = D - 1 scored on the positive events with ts on D (the events
    partition D: never a later batch, so the merge of D is reproducible), minus the pairs of P's ``user_item_matrix``:
    the published evaluation of P, done here because the evaluate stage of P ran before D's events came.
    No D - 1 lists or no positive event on D (day 1, a one-batch import): ``merge.weights`` for every
    channel, said in the log and the metrics JSON. ``merge.learn_method: search``: the ratio weights of the
    validated channels are the start of :func:`recsys_batch.recall.fusion_search.search_weights` on
    :func:`recsys_batch.recall.merge.validation_sample` (at least ``merge.learn_min_users`` sampled users,
    else the ratio weights stay); the metrics JSON's ``search`` holds the sample size and the objective
    before / after.
    """
    mc = cfg.merge
    info: dict[str, Any] = {"weights_from": "config", "validation_date": None, "validation": {}}
    config_weights = {c: mc.weight(c) for c in mc.quotas}
    if not mc.learn_weights or mc.method != "rrf":
        return config_weights, info
    prev = run_date - timedelta(days=1)
    lists, _ = channel_lists(spark, cfg, prev)
    # D's own events partition only: batches after D are never read by D's stages, so re-running D's merge after
    # later days were ingested gives the same weights (late events of D in later batches are left out)
    events = read_range(spark, cfg.warehouse, "events", run_date, run_date, required=False)
    if not lists or events is None:
        info["why"] = f"no recall_<channel> lists for dt={prev}" if not lists else "no events table"
        return config_weights, info
    from recsys_batch.evaluation.evaluate import truth_from_events  # noqa: PLC0415 - evaluation imports recall

    test = truth_from_events(events, cfg.events.weights, prev, 1)
    matrix = read_table(spark, cfg.warehouse, "user_item_matrix", prev, required=False)
    if matrix is not None:
        test = test.join(matrix.select(Col.USER, Col.ITEM), on=[Col.USER, Col.ITEM], how="left_anti")
    test = test.persist(StorageLevel.MEMORY_AND_DISK)  # read by the validation and the search's sample
    info["validation_date"] = prev.isoformat()
    try:
        return _learn(lists, test, mc, info)
    finally:
        test.unpersist()


def _learn(lists: dict[str, DataFrame], test: DataFrame, mc: MergeConfig,
           info: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """:func:`fusion_weights` once the validation lists of D - 1 and the test pairs of D are there."""
    recalls = {r["channel"]: (int(r["users"]), float(r["recall"]))
               for r in channel_validation(lists, test, mc.learn_k).collect()}
    weights, source = learned_weights(recalls, mc)
    info.update(learn_k=mc.learn_k,
                validation={c: {"users": n, f"recall@{mc.learn_k}": r} for c, (n, r) in recalls.items()})
    validated = [c for c in mc.channels if source[c] == "validation" and c in lists]
    if not validated:
        info["why"] = f"no channel validated on >= merge.learn_min_users ({mc.learn_min_users}) users"
    elif mc.learn_method == "search":
        sample = validation_sample(lists, test, mc.quotas, mc.search_max_users)
        if len(sample.n_truth) >= mc.learn_min_users:
            start = {c: weights[c] for c in sample.channels}
            found, obj = search_weights(sample, start, validated, mc.rrf_k, mc.search_ks, mc.search_grid,
                                        mc.search_rounds)
            weights.update({c: found[c] for c in validated})
            source.update({c: "search" for c in validated})
            info["search"] = {"users": int(len(sample.n_truth)), "ks": list(mc.search_ks),
                              "ratio_weights": {c: start[c] for c in validated},
                              "objective_ratio_weights": obj["start"], "objective": obj["searched"]}
        else:
            info["search"] = {"users": int(len(sample.n_truth)),
                              "why": f"fewer than merge.learn_min_users ({mc.learn_min_users}) users: ratio weights"}
    info["weights_from"] = {c: source[c] for c in mc.channels}
    return weights, info


def run_merge(spark: SparkSession, cfg: Config, run_date: date) -> list[TableStats]:
    """Write ``exposure_bloom`` and ``recall_merged`` for ``run_date`` (each one dt=D Delta commit).

    ``exposure_bloom``: one Bloom filter per user of the items shown (``merge.exposure_event``) in the
    ``merge.exposure_days`` ending at D, read from the ``events`` partitions that can hold them. The merge
    reads the written partition back, so the filters it applies are the ones published. ``recall_merged``:
    the ``recall_<channel>`` tables of D for the channels of ``merge.quotas``; a channel without a dt=D
    partition is skipped with one log line naming them all (none at all is a :class:`MissingInput`). The
    filters' measured false-positive rate is logged against ``merge.bloom_fp_rate`` and written to
    ``<warehouse.root>/reports/merge/dt=D/exposure_bloom.json``.
    """
    wh, mc = cfg.warehouse, cfg.merge
    if mc.exposure_event not in cfg.events.weights:
        raise ConfigError(f"merge.exposure_event {mc.exposure_event!r} is not an event type of events.weights "
                          f"({', '.join(cfg.events.types)})")
    lists, missing = channel_lists(spark, cfg, run_date)
    if missing:
        log.info("merge %s: skipped %d configured channel(s) without a list for dt=%s: %s", run_date, len(missing),
                 run_date, ", ".join(missing))
    if not lists:
        raise MissingInput(f"merge {run_date}: none of the channels of merge.quotas has a recall_<channel> "
                           f"partition dt={run_date} ({', '.join(missing)}): run the recall stages for {run_date} "
                           f"first")
    log.info("merge %s: merging %s by %s into the top %d", run_date, ", ".join(lists), mc.method, mc.top_n)

    first, last = events_partitions(run_date, MatrixConfig(lookback_days=mc.exposure_days), cfg.ingest)
    events = read_range(spark, wh, "events", first, last)
    stats = [replace_partition(build_exposure_bloom(exposed_items(events, run_date, mc), mc), wh, "exposure_bloom",
                               run_date)]
    blooms = read_table(spark, wh, "exposure_bloom", run_date).drop(Col.DT)
    weights, learned = fusion_weights(spark, cfg, run_date)
    if mc.method == "rrf":
        log.info("merge %s: RRF weights %s (%s)", run_date,
                 ", ".join(f"{c} {weights[c]:.3f}" for c in lists),
                 (f"learned on the lists of {learned['validation_date']}"
                  + (f", searched on {learned['search']['users']:,} users: mean recall@{mc.search_ks} "
                     f"{learned['search']['objective_ratio_weights']:.4f} -> {learned['search']['objective']:.4f}"
                     if "objective" in learned.get("search", {}) else ""))
                 if learned["validation_date"]
                 else f"merge.weights: {learned.get('why', 'merge.learn_weights is off')}")
    stats.append(replace_partition(merge_recall(lists, mc, blooms, weights), wh, "recall_merged", run_date))

    metrics: dict[str, Any] = {"run_date": run_date.isoformat(), "exposure_days": mc.exposure_days,
                               "exposure_event": mc.exposure_event, **bloom_metrics(blooms),
                               "channels": list(lists), "skipped_channels": missing,
                               "rrf_weights": {c: weights[c] for c in lists} if mc.method == "rrf" else None,
                               **learned}
    log.info("exposure_bloom %s: %s users, %s items, %s bytes; measured false-positive rate %s (%s of %s probes), "
             "expected %s, target p %s", run_date, f"{metrics['users']:,}", f"{metrics['items']:,}",
             f"{metrics['bytes']:,}", _fmt(metrics["measured_fp_rate"]), metrics["false_positives"],
             metrics["probes"], _fmt(metrics["expected_fp_rate"]), mc.bloom_fp_rate)
    fs.write_json(metrics_path(wh.root, run_date), metrics, indent=2)
    return stats


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
