"""The features stage: ``user_features`` and ``item_features`` for run date D, the feature spec and the
coverage report.

Reads (point in time: nothing after the end of D):

* ``events`` batches ``dt`` in [D - longest window - spare, D] (see :func:`recsys_batch.matrix.events_partitions`),
  rows with ts in the window and ts < D + 1 00:00 UTC;
* the latest ``users`` / ``items`` snapshot with ``dt <= D`` (optional: missing -> null profile fields);
* ``follows`` batches ``dt <= D`` with ts < end of D (optional: followers 0).

Writes:

* Delta ``user_features`` / ``item_features``, partition ``dt = D`` (one commit each, replaceWhere);
* ``<warehouse.root>/features/dt=D/coverage.json`` -- share of non-missing values per feature;
* ``<warehouse.root>/features/dt=D/feature_spec.json`` -- the fitted transforms the PyTorch side reads.

Both JSON files go through Hadoop's FileSystem (:mod:`recsys_batch.features.files`), so the root may be a
local folder or any Hadoop URI. Required features below coverage fail the stage after coverage.json is
written and before any table is published. Re-running D replaces all four.
"""

from __future__ import annotations

import json
import logging
from datetime import date
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_batch.config import BetaPrior, Config, FeaturesConfig, MatrixConfig, WarehouseConfig
from recsys_batch.features import files
from recsys_batch.features.coverage import check_coverage, coverage_entries, feature_coverage
from recsys_batch.features.profiles import item_profile, user_profile
from recsys_batch.features.spec import COVERAGE_FILE, HASH_NAME, SPEC_FILE, SPEC_VERSION, to_json
from recsys_batch.features.statistics import (
    author_statistics, build_item_features, build_user_features, item_audience, item_counts, resolve_priors,
    user_breakdowns, user_counts, window_events,
)
from recsys_batch.features.transforms import fit_table_spec
from recsys_batch.io.tables import TableStats, read_range, read_table, replace_partition
from recsys_batch.matrix import events_partitions
from recsys_batch.schemas import FOLLOWS, ITEM_PREFIX, ITEMS, USER_PREFIX, USERS, Col, FCol

log = logging.getLogger(__name__)

USER_FEATURES, ITEM_FEATURES = "user_features", "item_features"


def features_dir(wh: WarehouseConfig, run_date: date) -> str:
    """``<root>/features/dt=D``: the folder of D's feature spec and coverage report."""
    return f"{wh.root.rstrip('/')}/features/{Col.DT}={run_date.isoformat()}"


def spec_path(wh: WarehouseConfig, run_date: date) -> str:
    return f"{features_dir(wh, run_date)}/{SPEC_FILE}"


def coverage_path(wh: WarehouseConfig, run_date: date) -> str:
    return f"{features_dir(wh, run_date)}/{COVERAGE_FILE}"


def feature_names(df: DataFrame, key: str, prefix: str) -> dict[str, str]:
    """column -> feature name as in the samples: the key keeps its name, the rest get ``u_`` / ``i_``."""
    return {c: c if c == key else prefix + c for c in df.columns}


def longest_window(fc: FeaturesConfig) -> int:
    return max(max(fc.windows_days), fc.breakdown_window_days)


def compute_features(events: DataFrame, users: DataFrame | None, items: DataFrame | None,
                     follows: DataFrame | None, run_date: date, fc: FeaturesConfig
                     ) -> tuple[DataFrame, DataFrame, dict[str, dict[str, BetaPrior]]]:
    """``(user_features, item_features, priors per table)`` of D from its inputs (pure but for the prior fit).

    Cost: the window's events are scanned by five aggregations (user counts, item counts, user breakdowns,
    item audience, author statistics); the caller should persist ``events`` if it is expensive to read.
    """
    spark = events.sparkSession
    users = users if users is not None else spark.createDataFrame([], USERS)
    items = items if items is not None else spark.createDataFrame([], ITEMS)
    wev = window_events(events, run_date, longest_window(fc))
    uprof = user_profile(users, run_date, fc)
    iprof = item_profile(items, run_date, fc)
    uc, ic = user_counts(wev, fc), item_counts(wev, fc)
    priors = {USER_FEATURES: resolve_priors(uc, fc, USER_FEATURES), ITEM_FEATURES: resolve_priors(ic, fc, ITEM_FEATURES)}
    up, ip = priors[USER_FEATURES], priors[ITEM_FEATURES]
    uf = build_user_features(uprof, uc, user_breakdowns(wev, iprof, fc, up["ctr"]), fc, up)
    itf = build_item_features(iprof, ic, item_audience(wev, uprof, fc, ip["ctr"]),
                              author_statistics(wev, iprof, follows, run_date, fc, ip["ctr"]), fc, ip)
    return uf, itf, priors


def coverage_report(uf: DataFrame, itf: DataFrame, run_date: date, fc: FeaturesConfig) -> dict[str, Any]:
    """The coverage report of both tables (two aggregates), keyed by feature name (u_*, i_*, ids)."""
    feats: dict[str, dict] = {}
    for df, table, key, prefix in ((uf, USER_FEATURES, Col.USER, USER_PREFIX), (itf, ITEM_FEATURES, Col.ITEM, ITEM_PREFIX)):
        rows, present = feature_coverage(df, feature_names(df, key, prefix))
        feats.update(coverage_entries(table, rows, present, fc))
    return {"run_date": run_date.isoformat(), "coverage_min": fc.coverage_min,
            "required_features": list(fc.required_features), "features": feats,
            "below_threshold": sorted(n for n, f in feats.items() if f["status"] != "ok")}


def build_feature_spec(uf: DataFrame, itf: DataFrame, run_date: date, cfg: Config,
                       priors: dict[str, dict[str, BetaPrior]]) -> dict[str, Any]:
    """The feature spec of D (fits vocabularies, quantile boundaries and moments on both tables)."""
    fc = cfg.features
    entries = fit_table_spec(uf, USER_FEATURES, Col.USER, USER_PREFIX, fc)
    entries += fit_table_spec(itf, ITEM_FEATURES, Col.ITEM, ITEM_PREFIX, fc)
    entries.append({"name": FCol.LASTN_ITEMS, "table": "samples", "column": FCol.LASTN_ITEMS,
                    "type": "categorical_list", "dtype": "array<string>", "vocab_from": Col.ITEM,
                    "max_len": cfg.samples.lastn, "default": []})
    return {
        "version": SPEC_VERSION,
        "run_date": run_date.isoformat(),
        "config_hash": cfg.config_hash(),
        "tables": {t: {"path": cfg.warehouse.table_path(t), "dt": run_date.isoformat()}
                   for t in (USER_FEATURES, ITEM_FEATURES)},
        "index": {"missing": 0, "vocab": "1..V in vocab order", "oov": "V + 1 + hash % num_oov_buckets",
                  "hash": HASH_NAME, "bucket": "0 missing, else 1 + bisect_right(boundaries, x)"},
        "priors": {t: {k: p.model_dump() for k, p in ps.items()} for t, ps in priors.items()},
        "features": entries,
    }


def latest_snapshot(spark: SparkSession, wh: WarehouseConfig, name: str, run_date: date) -> DataFrame | None:
    """The newest partition ``dt <= run_date`` of a snapshot table (None if there is none)."""
    table = read_table(spark, wh, name, None, required=False)
    if table is None:
        log.warning("features %s: table %s does not exist; its profile fields stay null", run_date, name)
        return None
    before = table.where(F.col(Col.DT) <= run_date.isoformat())
    latest = before.agg(F.max(Col.DT)).first()[0]
    if latest is None:
        log.warning("features %s: %s has no partition dt <= %s; its profile fields stay null", run_date, name, run_date)
        return None
    if latest != run_date.isoformat():
        log.info("features %s: %s snapshot of dt=%s", run_date, name, latest)
    return before.where(F.col(Col.DT) == latest).drop(Col.DT)


def run_features(spark: SparkSession, cfg: Config, run_date: date) -> list[TableStats]:
    """Build, check and write D's feature tables, coverage report and feature spec (see module docstring).

    Returns the TableStats of both tables, then of the two JSON files (``rows`` = number of features).
    """
    wh, fc = cfg.warehouse, cfg.features
    first, last = events_partitions(run_date, MatrixConfig(lookback_days=longest_window(fc)), cfg.ingest)
    events = read_range(spark, wh, "events", first, last).drop(Col.DT)
    users = latest_snapshot(spark, wh, "users", run_date)
    items = latest_snapshot(spark, wh, "items", run_date)
    fol = read_table(spark, wh, "follows", None, required=False)
    follows = fol.where(F.col(Col.DT) <= run_date.isoformat()).select(*FOLLOWS.fieldNames()) if fol is not None else None
    log.info("features %s: events dt %s..%s", run_date, first, last)

    uf, itf, priors = compute_features(events, users, items, follows, run_date, fc)
    uf, itf = uf.persist(StorageLevel.MEMORY_AND_DISK), itf.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        report = coverage_report(uf, itf, run_date, fc)
        cov_path = coverage_path(wh, run_date)
        files.write_text(spark, cov_path, json.dumps(report, indent=1))
        check_coverage(report, run_date.isoformat(), fc, cov_path)  # raises before anything is published
        stats = [replace_partition(uf, wh, USER_FEATURES, run_date),
                 replace_partition(itf, wh, ITEM_FEATURES, run_date)]
        spec = build_feature_spec(uf, itf, run_date, cfg, priors)
        path = spec_path(wh, run_date)
        files.write_text(spark, path, to_json(spec))
        log.info("features %s: wrote %s (%d features) and %s", run_date, path, len(spec["features"]), cov_path)
        stats += [TableStats("feature_spec", run_date, len(spec["features"]), path),
                  TableStats("coverage_report", run_date, len(report["features"]), cov_path)]
        return stats
    finally:
        uf.unpersist()
        itf.unpersist()
