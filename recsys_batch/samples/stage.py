"""The samples stage: recall and ranking samples of run date D from the events of a sample window.

Window ``[F, D]`` (:func:`sample_window`): ``samples.window_days`` days ending at D, or (``null``, the
default) the days since the newest earlier ``samples_recall`` partition that have a feature snapshot
before them -- one day on a daily feed, up to ``samples.max_window_days`` on a first day or after a
one-batch import (no snapshot before D: every row uses the fallback snapshot).

Reads:

* ``events`` batches dt in [F - 1 - future tolerance, D], rows with ts in [F 00:00, D + 1 00:00) UTC;
  ``rank_logs`` batches of the same range (optional: no hard negatives);
* ``user_features`` / ``item_features``: for each event day E the newest snapshot dt <= E - 1, else the
  documented fallback (:func:`recsys_batch.samples.common.snapshot_plan`; required: at least one
  snapshot dt <= D, otherwise :class:`~recsys_batch.errors.MissingUpstream` names the table and the
  ``recsys-batch features`` command);
* ``user_lastn`` of the newest dt <= D - 1 (optional: then last-N holds only the window's earlier
  positives; logged); its entries are used only where their ts is before the row's ts.

Writes, for each kind (``recall``, ``ranking``):

* Delta ``samples_recall`` / ``samples_ranking``, partition dt = D (replaceWhere, one commit);
* shuffled Parquet shards ``<root>/samples/<kind>/dt=D/part-NNNNN.parquet`` + ``_manifest.json``
  (:mod:`recsys_batch.samples.shards`), exported from the written Delta partition so both hold the same
  rows. The manifest names the feature spec that decodes them (that of the newest snapshot used:
  ``<root>/features/dt=D-1/feature_spec.json`` on a daily feed), the window and the rows per snapshot.

Re-running D replaces both the partitions and the shard folders.
"""

from __future__ import annotations

import logging
from datetime import date, timedelta

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_batch.config import Config, MatrixConfig, SamplesConfig
from recsys_batch.errors import MissingUpstream
from recsys_batch.features.stage import ITEM_FEATURES, USER_FEATURES, spec_path
from recsys_batch.features.statistics import conform
from recsys_batch.io.delta_read import latest_dt, partition_dates
from recsys_batch.io.tables import TableStats, read_range, read_table, replace_partition
from recsys_batch.matrix import events_partitions
from recsys_batch.samples.common import (
    EVENT_DAY, FALLBACK, NONE, Snapshot, attach_lastn, day_positive_events, event_day, join_features, plan_frame,
    snapshot_plan, window_label_events,
)
from recsys_batch.samples.negatives import sampling_distribution
from recsys_batch.samples.ranking import build_ranking_samples
from recsys_batch.samples.recall import build_recall_samples
from recsys_batch.samples.shards import write_shards
from recsys_batch.schemas import Col, FCol, count_col, samples_ranking_schema, samples_recall_schema

log = logging.getLogger(__name__)

SAMPLES_RECALL = "samples_recall"


def sample_window(sc: SamplesConfig, run_date: date, earlier: list[str], snapshots: list[date]) -> date:
    """First day F of D's sample window (pure). ``earlier``: dt values of existing ``samples_recall``;
    ``snapshots``: dates of the feature snapshots (<= D).

    Fixed ``window_days = w``: F = D - w + 1. Auto (``None``): the latest of D - max_window_days + 1, the
    day after the newest samples partition dt < D (each day is sampled once across the daily runs), and
    the day after the earliest snapshot dt <= D - 1 (only days with a point-in-time snapshot). So auto
    uses the fallback snapshot only when there is no snapshot before D at all: a first day / an import.
    """
    if sc.window_days is not None:
        return run_date - timedelta(days=sc.window_days - 1)
    first = run_date - timedelta(days=sc.max_window_days - 1)
    before = [d for d in earlier if d < run_date.isoformat()]
    if before:
        first = max(first, date.fromisoformat(max(before)) + timedelta(days=1))
    pit = [s for s in snapshots if s < run_date]
    if pit:
        first = max(first, min(pit) + timedelta(days=1))
    return first


def first_batch_of(cfg: Config, run_date: date, first: date) -> date:
    """Oldest ``events`` / ``rank_logs`` batch that can hold an event of the window [first, D] (see
    :func:`recsys_batch.matrix.events_partitions`: late events land in later batches, never earlier ones)."""
    return events_partitions(run_date, MatrixConfig(lookback_days=(run_date - first).days + 1), cfg.ingest)[0]


def feature_snapshots(cfg: Config, run_date: date) -> list[date]:
    """Dates dt <= D present in both feature tables; raises :class:`MissingUpstream` when there is none."""
    wh = cfg.warehouse
    have: dict[str, list[str]] = {t: partition_dates(wh, t) for t in (USER_FEATURES, ITEM_FEATURES)}
    usable = sorted(set.intersection(*[{d for d in ds if d <= run_date.isoformat()} for ds in have.values()]))
    if not usable:
        table = next((t for t, ds in have.items() if not [d for d in ds if d <= run_date.isoformat()]), USER_FEATURES)
        prev = run_date - timedelta(days=1)
        raise MissingUpstream("samples", run_date.isoformat(), table,
                              f"with a partition dt <= {run_date} (point in time: dt = each event's day - 1)",
                              have[table][-1] if have[table] else None, f"recsys-batch features --date {prev}")
    for t, ds in have.items():
        extra = sorted({d for d in ds if d <= run_date.isoformat()} - set(usable))
        if extra:
            log.warning("samples %s: %s has dt %s without a matching partition of the other feature table; unused",
                        run_date, t, ", ".join(extra))
    return [date.fromisoformat(d) for d in usable]


def check_events(cfg: Config, run_date: date, first_batch: date) -> None:
    """Raise :class:`MissingUpstream` when ``events`` has no batch dt in [first_batch, D]."""
    ds = partition_dates(cfg.warehouse, "events")
    if not [d for d in ds if first_batch.isoformat() <= d <= run_date.isoformat()]:
        raise MissingUpstream("samples", run_date.isoformat(), "events",
                              f"with a batch dt in [{first_batch}, {run_date}]", ds[-1] if ds else None,
                              f"recsys-batch ingest --date {run_date}")


def newest_snapshot(plan: dict[date, Snapshot]) -> date | None:
    """The snapshot of the newest event day that has one (its clicks are the negatives' popularity and its
    feature spec decodes the samples)."""
    for e in sorted(plan, reverse=True):
        if plan[e].dt is not None:
            return plan[e].dt
    return None


def build_samples(day: DataFrame, rank_logs: DataFrame | None, user_features: DataFrame,
                  item_features: DataFrame, plan: DataFrame, popularity: DataFrame, history: DataFrame | None,
                  run_date: date, cfg: Config) -> tuple[DataFrame, DataFrame]:
    """``(samples_recall, samples_ranking)`` rows of the window (pure: inputs already point in time).

    day: :func:`~recsys_batch.samples.common.window_label_events`; user_features / item_features: the
    tables with ``dt`` (the planned partitions are read); plan: :func:`~recsys_batch.samples.common.plan_frame`;
    popularity: the item_features snapshot (without dt) whose clicks make the easy-negative distribution;
    history: ``user_lastn`` (of the newest dt <= D - 1) or None.
    """
    sc, fc = cfg.samples, cfg.features
    clicks = count_col("click", sc.popularity_window_days)
    dist = sampling_distribution(popularity, clicks, sc.popularity_exponent, sc.popularity_smoothing)
    positives = day_positive_events(day)  # every window day's positives are last-N history
    day = day.join(F.broadcast(plan.select(EVENT_DAY)), EVENT_DAY, "left_semi")  # days with a snapshot
    recall = build_recall_samples(day, rank_logs, dist, run_date, sc)
    recall = join_features(attach_lastn(recall, history, positives, sc.lastn), user_features, item_features, plan)
    ranking = build_ranking_samples(day, sc)
    ranking = join_features(attach_lastn(ranking, history, positives, sc.lastn), user_features, item_features, plan)
    return conform(recall, samples_recall_schema(fc)), conform(ranking, samples_ranking_schema(fc))


def snapshot_counts(written: DataFrame) -> dict:
    """Rows per feature snapshot of a written partition, and how many used the fallback: a snapshot of
    the row's own event day or later (one aggregate)."""
    fb = (F.col(FCol.FEATURES_DT) >= event_day().cast("string")).cast("int")
    rows = written.groupBy(FCol.FEATURES_DT).agg(F.count(F.lit(1)).alias("n"), F.sum(fb).alias("fb")).collect()
    return {"rows_by_features_dt": {r[FCol.FEATURES_DT]: int(r["n"]) for r in sorted(rows, key=lambda r: r[0])},
            "fallback_rows": sum(int(r["fb"] or 0) for r in rows)}


def run_samples(spark: SparkSession, cfg: Config, run_date: date) -> list[TableStats]:
    """Build and write D's recall and ranking samples (Delta + shards); see the module docstring."""
    wh, sc = cfg.warehouse, cfg.samples
    snapshots = feature_snapshots(cfg, run_date)
    first = sample_window(sc, run_date, partition_dates(wh, SAMPLES_RECALL), snapshots)
    first_batch = first_batch_of(cfg, run_date, first)
    check_events(cfg, run_date, first_batch)

    events = read_range(spark, wh, "events", first_batch, run_date).drop(Col.DT)
    day = window_label_events(events, first, run_date, cfg.events.weights).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        present = sorted(r[0] for r in day.select(EVENT_DAY).distinct().collect())
        if not present:
            log.warning("samples %s: no events with ts in the window %s..%s: the samples are empty", run_date,
                        first, run_date)
        plan = snapshot_plan(present or [run_date], snapshots, sc.features_fallback)
        return _write_samples(spark, cfg, run_date, first, day, plan, snapshots)
    finally:
        day.unpersist()


def _write_samples(spark: SparkSession, cfg: Config, run_date: date, first: date, day: DataFrame,
                   plan: dict[date, Snapshot], snapshots: list[date]) -> list[TableStats]:
    wh, sc = cfg.warehouse, cfg.samples
    kinds = {k: [e for e, s in plan.items() if s.kind == k] for k in {s.kind for s in plan.values()}}
    log.info("samples %s: window %s..%s, %d event days; their feature snapshots: %s", run_date, first, run_date,
             len(plan), ", ".join(f"{k} {len(v)} days" for k, v in sorted(kinds.items())))
    if kinds.get(FALLBACK):
        log.warning("samples %s: no feature snapshot before event days %s..%s (%d days): they use the earliest "
                    "snapshot dt=%s (samples.features_fallback=earliest), which may count those days' own events "
                    "and later ones", run_date, kinds[FALLBACK][0], kinds[FALLBACK][-1], len(kinds[FALLBACK]),
                    plan[kinds[FALLBACK][0]].dt)
    newest = newest_snapshot(plan)
    if newest is None:  # features_fallback=drop and no snapshot before any event day
        need = min(plan) - timedelta(days=1)
        raise MissingUpstream("samples", run_date.isoformat(), USER_FEATURES,
                              f"with a partition dt <= {max(plan) - timedelta(days=1)} (samples.features_fallback="
                              f"drop: never a snapshot of an event's own day or later)", max(snapshots).isoformat(),
                              f"recsys-batch features --date {need}")
    if kinds.get(NONE):
        log.warning("samples %s: event days %s..%s (%d days) have no feature snapshot before them and are dropped "
                    "(samples.features_fallback=drop)", run_date, kinds[NONE][0], kinds[NONE][-1], len(kinds[NONE]))

    uf = read_table(spark, wh, USER_FEATURES)
    itf = read_table(spark, wh, ITEM_FEATURES)
    popularity = itf.where(F.col(Col.DT) == newest.isoformat()).drop(Col.DT)
    first_batch = first_batch_of(cfg, run_date, first)
    rl = read_range(spark, wh, "rank_logs", first_batch, run_date, required=False)
    rank_logs = rl.drop(Col.DT) if rl is not None else None
    if rank_logs is None:
        log.warning("samples %s: no rank_logs table: recall samples get easy negatives only", run_date)
    hist_dt = latest_dt(wh, "user_lastn", run_date - timedelta(days=1))
    if hist_dt is None:
        log.warning("samples %s: no user_lastn with dt <= %s: last-N holds only the window's earlier positives",
                    run_date, run_date - timedelta(days=1))
        hist = None
    else:
        hist = read_table(spark, wh, "user_lastn", date.fromisoformat(hist_dt)).drop(Col.DT)

    stats: list[TableStats] = []
    spec = spec_path(wh, newest)
    recall, ranking = build_samples(day, rank_logs, uf, itf, plan_frame(spark, plan), popularity, hist,
                                    run_date, cfg)
    for kind, df, keys in (("recall", recall, [FCol.GROUP, Col.ITEM, FCol.SOURCE]),
                           ("ranking", ranking, [Col.USER, Col.ITEM, Col.REQUEST])):
        table = f"samples_{kind}"
        st = replace_partition(df, wh, table, run_date)
        written = read_table(spark, wh, table, run_date).drop(Col.DT)
        counts = snapshot_counts(written)
        extra = {"feature_spec": spec, "window": {"first": first.isoformat(), "last": run_date.isoformat()},
                 **counts}
        if kind == "recall":
            r = written.agg(F.countDistinct(Col.USER).alias("u"), F.sum(F.col(FCol.LABEL)).alias("p"),
                            F.count(F.lit(1)).alias("n")).first()
            extra.update(users=int(r["u"]), positives=int(r["p"] or 0), negatives=int(r["n"] - (r["p"] or 0)))
        manifest = write_shards(written, wh, kind, run_date, sc, keys, rows=st.rows, extra=extra)
        split = ", ".join(f"{k} {extra[k]:,}" for k in ("users", "positives", "negatives") if k in extra)
        log.info("samples %s %s: %s rows in Delta%s, %d shard files; rows per features dt %s, %s with the "
                 "fallback snapshot", kind, run_date, f"{st.rows:,}", f" ({split})" if split else "",
                 len(manifest["files"]), counts["rows_by_features_dt"], f"{counts['fallback_rows']:,}")
        stats.append(st)
        stats.append(TableStats(f"{table}_shards", run_date, manifest["rows"],
                                f"{wh.root.rstrip('/')}/samples/{kind}/{Col.DT}={run_date.isoformat()}"))
        stats.append(TableStats(f"{table}_features_fallback", run_date, counts["fallback_rows"],
                                f"{wh.table_path(table)} (features_dt of rows without a snapshot before their day)"))
    return stats

