"""The offline evaluator: score the recall lists of run date D, two ways (``evaluate.mode``).

``published`` -- what shipped: the ``recall_<channel>`` tables of D (every ``recall_*`` Delta table of the
warehouse with rows for dt=D: the recall stage's, ``recall_two_tower``, the other channels and
``recall_merged``; columns beyond user_id, item_id, rank are ignored) against what users did *after* the
lists were built: the positive events with ts in the ``evaluate.truth_days`` days after D (events partitions D+1 .. D+N), or an explicit
truth table (``evaluate.truth_path``). Items a user already has in D's ``user_item_matrix`` are not truth.
A user the stage built no list for scores zero, so a coverage hole shows up in the metrics and in
``users_with_list``. Without truth (the daily run of D, before D+1 is ingested) the mode is skipped with a
message saying what is missing.

``rebuild`` -- the formulas: the events of the matrix lookback window ending at D are split
(``evaluate.split``: ``user_chrono`` or ``time``, :mod:`recsys_batch.evaluation.splits`); the train matrix
is built with :func:`recsys_batch.matrix.build_user_item_matrix` for the split's train date; each channel of
``evaluate.channels`` is rebuilt from it (similarity with ``cfg.itemcf`` / ``cfg.swing`` / ``cfg.usercf``,
then the recall transforms with top_n = max(ks)) for the test users the recall stage would target
(``recall.active_days``); the metrics of :mod:`recsys_batch.evaluation.metrics` are computed with Spark and
collected (one row per channel).

Both modes report per channel, for each K of ``evaluate.ks`` (default 50, 100, 200, 500): Recall, HitRate,
NDCG, catalog coverage, novelty, popularity percentile (against the truth's), hits and unique hits (the
overlap between channels; ``evaluate.overlap_exclude`` channels such as ``merged`` stay out of it), plus
MRR and the test-user coverage. Every K comes from the same passes (one join of the lists with the truth,
one aggregation of the lists per (channel, item)); see the cost in :mod:`recsys_batch.evaluation.metrics`.
Published mode reads the lists as stored (top ``recall.top_n``, 200 by default: a K above it scores the
whole list); rebuild mode builds max(ks) per user and channel.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import date, timedelta

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_batch.config import Config
from recsys_batch.errors import RecsysBatchError
from recsys_batch.evaluation.metrics import (
    CHANNEL, DEFAULT_OVERLAP_EXCLUDE, METRIC_DEFINITIONS, coverage_novelty, hit_overlap, item_popularity, list_hits,
    merged_sole_hits, ranking_metrics, truth_pop_percentile, union_hits,
)
from recsys_batch.evaluation.report import EvaluateResult, report_path, write_json
from recsys_batch.evaluation.splits import Split, split_time, split_user_chrono, window_events
from recsys_batch.io.tables import path_exists, read_range, read_table, require_columns
from recsys_batch.matrix import build_user_item_matrix, events_partitions, weight_column
from recsys_batch.recall import (
    active_users, item_based_recall, popular_recall, popular_scores, popular_window, user_based_recall,
)
from recsys_batch.schemas import Col

log = logging.getLogger(__name__)

#: the channels published as ``recall_<channel>`` (the recall stage; ``two_tower``: the index stage)
PUBLISHED_CHANNELS = ("itemcf", "swing", "usercf", "popular", "two_tower")
RECALL_PREFIX, MERGED = "recall_", "merged"
REBUILD, PUBLISHED = "rebuild", "published"


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
        lookback, half_life = popular_window(rc, cfg.matrix)
        pop = popular_scores(split.train, cfg.events.weights, split.train_date, lookback, half_life)
        return popular_recall(pop, matrix, users, rc), []
    if channel not in ("itemcf", "swing", "usercf"):
        raise RecsysBatchError(f"evaluate.channels: unknown channel {channel!r}; known: itemcf, swing, usercf, popular")
    sim = _similarity(channel, matrix, cfg)
    if channel == "usercf":
        return user_based_recall(matrix, sim, rc, users=users, run_date=split.train_date), [sim]
    return item_based_recall(matrix, sim, rc, users=users), [sim]


def score_lists(recs: DataFrame, test: DataFrame, train_matrix: DataFrame, ks: list[int], channels: list[str],
                overlap_exclude: tuple[str, ...] | list[str] = DEFAULT_OVERLAP_EXCLUDE) -> tuple[list[dict], dict]:
    """(metric rows, one per channel in ``channels`` order; summary) from lists (channel, user_id, item_id,
    rank[, anything else]) scored on ``test`` (user_id, item_id), history ``train_matrix`` (user_id, item_id).

    Row keys: :attr:`EvaluateResult.columns`. Summary: ``catalog_items`` (|C|), ``matrix_items`` (|M|),
    ``train_users`` (|U|), ``truth_pop_percentile`` and ``union_hits@K`` (formulas:
    :mod:`recsys_batch.evaluation.metrics`). Cost: see that module -- the hits come from one join of the
    lists (cut at max K) with the test pairs, persisted and shared by every per-K metric and the overlap.
    """
    ks = sorted(set(ks))
    hits = list_hits(recs, test, ks[-1]).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        rank = {r[CHANNEL]: r.asDict() for r in ranking_metrics(recs, test, ks, channels, hits=hits).collect()}
        over = [r.asDict() for r in hit_overlap(hits, ks, channels, overlap_exclude).collect()]
    finally:
        hits.unpersist()
    pop = item_popularity(train_matrix)
    cov = {r[CHANNEL]: r.asDict() for r in coverage_novelty(recs, train_matrix, ks, channels, pop).collect()}
    ov = {r[CHANNEL]: r for r in over}
    rows = []
    for c in channels:
        m, cv, o = rank.get(c, {}), cov.get(c, {}), ov.get(c, {})
        row = {"channel": c, "users": int(m.get("users") or 0), "users_with_list": int(m.get("users_with_list") or 0),
               "user_coverage": m.get("user_coverage")}
        row.update({f"recall@{k}": m.get(f"recall_{k}") for k in ks})
        row.update({f"hit_rate@{k}": m.get(f"hit_{k}") for k in ks})
        row.update({f"ndcg@{k}": m.get(f"ndcg_{k}") for k in ks})
        row["mrr"] = m.get("mrr")
        for name in ("coverage", "novelty", "pop_percentile"):
            row.update({f"{name}@{k}": cv.get(f"{name}_{k}") for k in ks})
        for name in ("hits", "unique_hits"):
            row.update({f"{name}@{k}": o.get(f"{name}_{k}") for k in ks})
        rows.append(row)
    catalog = next((int(r["catalog_items"]) for r in cov.values()), pop.matrix_items)
    summary = {"catalog_items": catalog, "matrix_items": pop.matrix_items, "train_users": pop.train_users,
               "truth_pop_percentile": truth_pop_percentile(test, pop), **union_hits(over, ks),
               "overlap_exclude": [c for c in channels if c in set(overlap_exclude)]}
    return rows, summary


def evaluate_lists(recs: DataFrame, test: DataFrame, train_matrix: DataFrame, ks: list[int],
                   channels: list[str]) -> list[dict]:
    """Metric rows (one per channel, in ``channels`` order) from lists (channel, user_id, item_id, rank):
    :func:`score_lists` without its summary."""
    return score_lists(recs, test, train_matrix, ks, channels)[0]


def evaluate_split(split: Split, cfg: Config, run_date: date, channels: list[str] | None = None,
                   ks: list[int] | None = None) -> tuple[EvaluateResult, DataFrame, DataFrame]:
    """Rebuild the channels on ``split.train`` and score them on ``split.test`` (mode ``rebuild``).

    Lists are built for the test users the recall stage would target on the train matrix: all of them
    with ``recall.active_days`` null, else those active within that many days of the train date (the
    others count as zeros, as they would in production). Returns the result plus the (persisted) train
    matrix and test items, so a caller (the benchmark) can score other recommenders on the very same
    split; unpersist them when done.
    """
    channels = list(channels or cfg.evaluate.channels)
    ks = sorted(set(ks or cfg.evaluate.ks))
    if not channels or not ks or ks[0] < 1:
        raise RecsysBatchError(f"evaluate needs at least one channel and positive ks, got {channels} and {ks}")
    mem = StorageLevel.MEMORY_AND_DISK
    train = split.train.persist(mem)
    matrix = build_user_item_matrix(train, cfg.events.weights, split.train_date, cfg.matrix).persist(mem)
    test = split.test.persist(mem)
    users = test.select(Col.USER).distinct()
    if cfg.recall.active_days is not None:
        users = users.join(active_users(matrix, split.train_date, cfg.recall.active_days), on=Col.USER,
                           how="left_semi")
    users = users.persist(mem)
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
        rows, summary = score_lists(recs, test, matrix, ks, channels, cfg.evaluate.overlap_exclude)
        result = EvaluateResult(
            run_date=run_date, split=split.kind, train_date=split.train_date, ks=ks, rows=rows,
            test_users=test.select(Col.USER).distinct().count(), train_users=summary.pop("train_users"),
            catalog_items=summary.pop("catalog_items"), mode=REBUILD,
            source=f"channels rebuilt on the {split.kind} split of the window ending {run_date}",
            extra={"recommendations": n_recs, "target_users": users.count(),
                   "recall_active_days": cfg.recall.active_days, **summary},
        )
        recs.unpersist()
    finally:
        users.unpersist()
        train.unpersist()
    log.info("evaluate %s (%s split): %s test users, %s", run_date, split.kind, result.test_users, rows)
    return result, matrix, test


# ---- published mode ---------------------------------------------------------------------------------------


def truth_from_events(events: DataFrame, weights: dict[str, float], run_date: date, truth_days: int) -> DataFrame:
    """Distinct (user_id, item_id) of the positive events with ts in [D + 1, D + 1 + truth_days) (UTC days).

    The events a user had after the lists of D were built (batches may hold late events of D or earlier:
    they are not truth). Cost: one filter, a distinct.
    """
    after = window_events(events, run_date + timedelta(days=truth_days), truth_days)
    return after.where(weight_column(weights) > 0).select(Col.USER, Col.ITEM).distinct()


def evaluate_published(recs: DataFrame, truth: DataFrame, matrix: DataFrame, ks: list[int], channels: list[str],
                       run_date: date, source: str,
                       overlap_exclude: tuple[str, ...] | list[str] = DEFAULT_OVERLAP_EXCLUDE,
                       merged: DataFrame | None = None) -> EvaluateResult:
    """Score published lists (channel, user_id, item_id, rank) on ``truth`` (user_id, item_id) (mode ``published``).

    Test items = distinct truth pairs minus the (user, item) pairs of ``matrix`` (D's ``user_item_matrix``:
    a re-consumed item the lists could never show is not truth); test users = users with >= 1 test item,
    those without a matrix row (cold users, no list possible) included and counted in
    ``extra["test_users_in_matrix"]``. Catalog and popularity of coverage / novelty / popularity bias:
    ``matrix``; ``extra`` also holds :func:`score_lists`'s summary (``truth_pop_percentile``,
    ``union_hits@K``, ``matrix_items``). ``merged``: ``recall_merged`` rows with their ``channels``
    provenance; when given, every other channel's row gets ``merged_sole_hits@K`` (the merged list's hits at
    K that came from that channel alone, :func:`recsys_batch.evaluation.metrics.merged_sole_hits`; 0 when
    none) and the ``merged`` row None. Cost: one anti join of the truth with the matrix, then
    :func:`score_lists` (and one join of the merged rows with the test pairs).
    """
    require_columns(truth, [Col.USER, Col.ITEM], table="truth", where="published evaluation")
    require_columns(matrix, [Col.USER, Col.ITEM], table="user_item_matrix", where="published evaluation")
    ks = sorted(set(ks))
    mem = StorageLevel.MEMORY_AND_DISK
    test = (truth.select(Col.USER, Col.ITEM).distinct()
            .join(matrix.select(Col.USER, Col.ITEM), on=[Col.USER, Col.ITEM], how="left_anti").persist(mem))
    try:
        test_users = test.select(Col.USER).distinct()
        n_test_users = test_users.count()
        in_matrix = test_users.join(matrix.select(Col.USER).distinct(), on=Col.USER, how="left_semi").count()
        rows, summary = score_lists(recs, test, matrix, ks, channels, overlap_exclude) if n_test_users else ([], {})
        if merged is not None and rows:
            sole = {r[CHANNEL]: r.asDict() for r in merged_sole_hits(merged, test, ks).collect()}
            for row in rows:
                own = sole.get(row["channel"], {})
                row.update({f"merged_sole_hits@{k}": None if row["channel"] == MERGED
                            else int(own.get(f"sole_hits_{k}") or 0) for k in ks})
        train_users = summary.pop("train_users", None)
        catalog = summary.pop("catalog_items", None)
        result = EvaluateResult(
            run_date=run_date, split="published", train_date=run_date, ks=ks, rows=rows, test_users=n_test_users,
            train_users=matrix.select(Col.USER).distinct().count() if train_users is None else train_users,
            catalog_items=matrix.select(Col.ITEM).distinct().count() if catalog is None else catalog,
            mode=PUBLISHED, source=source,
            extra={"test_items": test.count(), "test_users_in_matrix": in_matrix, **summary},
            skipped=None if n_test_users else f"{source}: no truth pair outside the users' matrix of {run_date}",
        )
    finally:
        test.unpersist()
    log.info("evaluate %s (published): %s test users, %s", run_date, result.test_users, result.rows)
    return result


def recall_tables(spark: SparkSession, cfg: Config) -> list[str]:
    """Channel names c of every Delta table ``recall_<c>`` under ``<warehouse.root>/delta`` (one list call
    on the warehouse's Hadoop filesystem, so any URI works), in report order: the channels of
    :data:`PUBLISHED_CHANNELS` first, then the others by name, ``merged`` last."""
    jvm = spark.sparkContext._jvm
    root = jvm.org.apache.hadoop.fs.Path(cfg.warehouse.table_path(""))
    fs = root.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    names = []
    if fs.exists(root):
        for st in fs.listStatus(root):
            name = st.getPath().getName()
            if (st.isDirectory() and name.startswith(RECALL_PREFIX) and len(name) > len(RECALL_PREFIX)
                    and fs.exists(jvm.org.apache.hadoop.fs.Path(st.getPath(), "_delta_log"))):
                names.append(name[len(RECALL_PREFIX):])
    return channel_order(names)


def channel_order(names: list[str] | set[str]) -> list[str]:
    """:data:`PUBLISHED_CHANNELS` in their order, then the other names sorted, ``merged`` last."""
    known = [c for c in PUBLISHED_CHANNELS if c in names]
    rest = sorted(c for c in set(names) - set(PUBLISHED_CHANNELS) if c != MERGED)
    return known + rest + ([MERGED] if MERGED in names else [])


def published_lists(spark: SparkSession, cfg: Config, run_date: date) -> tuple[DataFrame | None, list[str], list[str]]:
    """(lists (channel, user_id, item_id, rank), channels found, notes on the channels not evaluated).

    Every ``recall_<channel>`` table (:func:`recall_tables`) with rows for dt=D is scored; columns beyond
    user_id, item_id, rank (``recall_merged``'s ``channels``, a score) are ignored. A table of
    :data:`PUBLISHED_CHANNELS` that is missing or has no rows for D, and a ``recall_*`` table without those
    three columns, are listed in the notes.
    """
    lists, found, missing = [], [], []
    present = set(recall_tables(spark, cfg))
    for c in channel_order(present | set(PUBLISHED_CHANNELS)):
        table = f"{RECALL_PREFIX}{c}"
        df = read_table(spark, cfg.warehouse, table, run_date, required=False) if c in present else None
        if df is None or df.limit(1).count() == 0:
            missing.append(f"{table} ({'no table' if df is None else f'no rows for dt={run_date}'})")
            continue
        absent = [col for col in (Col.USER, Col.ITEM, Col.RANK) if col not in df.columns]
        if absent:
            missing.append(f"{table} (not a recall list: no {', '.join(absent)} column; it has "
                           f"{', '.join(df.columns)})")
            continue
        found.append(c)
        lists.append(df.select(F.lit(c).alias(CHANNEL), Col.USER, Col.ITEM, F.col(Col.RANK).cast("int")))
    recs = None
    for df in lists:
        recs = df if recs is None else recs.unionByName(df)
    return recs, found, missing


def published_truth(spark: SparkSession, cfg: Config, run_date: date) -> tuple[DataFrame | None, str]:
    """(truth (user_id, item_id), where it came from) or (None, why there is none)."""
    ev, wh = cfg.evaluate, cfg.warehouse
    if ev.truth_path:
        path = ev.truth_path.format(date=run_date.isoformat())
        if not path_exists(spark, path):
            return None, f"evaluate.truth_path {path} does not exist"
        truth = spark.read.parquet(path)
        require_columns(truth, [Col.USER, Col.ITEM], table=f"truth table {path}", where="published evaluation")
        return truth.select(Col.USER, Col.ITEM), f"truth table {path}"
    first, last = run_date + timedelta(days=1), run_date + timedelta(days=ev.truth_days)
    span = f"{first}" if first == last else f"{first}..{last}"
    events = read_range(spark, wh, "events", first, last, required=False)
    truth = None if events is None else truth_from_events(events, cfg.events.weights, run_date, ev.truth_days)
    if truth is None or truth.limit(1).count() == 0:
        return None, (f"no truth after {run_date}: events has no positive event with ts in {span} "
                      f"(partitions dt={span}); ingest them and re-run `recsys-batch evaluate --date {run_date} "
                      f"--set evaluate.mode=published`, or set evaluate.truth_path")
    days = sorted(r[0] for r in events.select(Col.DT).distinct().collect())
    return truth, f"positive events of {span} (events dt {', '.join(days)}; {len(days)} of {ev.truth_days} days)"


def run_published(spark: SparkSession, cfg: Config, run_date: date) -> EvaluateResult:
    """The ``published`` mode for D: a result, or one whose ``skipped`` says what is missing."""
    ks = sorted(set(cfg.evaluate.ks))
    skipped = lambda why: EvaluateResult(run_date=run_date, split="published", train_date=run_date,  # noqa: E731
                                         ks=ks, rows=[], mode=PUBLISHED, skipped=why)
    recs, found, missing = published_lists(spark, cfg, run_date)
    if recs is None:
        return skipped(f"no recall table has lists for dt={run_date}: {', '.join(missing)}; run the recall stage")
    truth, source = published_truth(spark, cfg, run_date)
    if truth is None:
        return skipped(source)
    matrix = read_table(spark, cfg.warehouse, "user_item_matrix", run_date).drop(Col.DT)
    matrix = matrix.select(Col.USER, Col.ITEM).persist(StorageLevel.MEMORY_AND_DISK)
    recs = recs.persist(StorageLevel.MEMORY_AND_DISK)
    merged = None
    if MERGED in found:  # its channels provenance -> merged_sole_hits@K per channel
        df = read_table(spark, cfg.warehouse, f"{RECALL_PREFIX}{MERGED}", run_date)
        merged = df.drop(Col.DT) if Col.CHANNELS in df.columns else None
    try:
        result = evaluate_published(recs, truth, matrix, ks, found, run_date, source, cfg.evaluate.overlap_exclude,
                                    merged=merged)
    finally:
        recs.unpersist()
        matrix.unpersist()
    if missing:
        result = replace(result, extra={**result.extra, "channels_without_lists": missing})
    return result


def run_evaluate(spark: SparkSession, cfg: Config, run_date: date) -> list[EvaluateResult]:
    """Stage ``evaluate``: one result per mode of ``evaluate.mode`` (published first, then rebuild).

    Rebuild reads the ``events`` partitions of the matrix lookback window of D; published reads the
    ``recall_<channel>`` tables and ``user_item_matrix`` of D and the truth (module doc). Writes all results as
    JSON to ``<warehouse.root>/reports/evaluate/dt=<D>/metrics.json`` (replaced on re-run): ``{"run_date",
    "mode", "config_hash", "results": [...], "definitions": {metric: formula}}``, a skipped mode with its
    ``skipped`` reason. Prints nothing; ``recsys-batch report`` turns the file into HTML.
    """
    mode = cfg.evaluate.mode
    results: list[EvaluateResult] = []
    if mode in (PUBLISHED, "both"):
        results.append(run_published(spark, cfg, run_date))
    if mode in (REBUILD, "both"):
        first, last = events_partitions(run_date, cfg.matrix, cfg.ingest)
        events = read_range(spark, cfg.warehouse, "events", first, last)
        result, matrix, test = evaluate_split(make_split(events, cfg, run_date), cfg, run_date)
        matrix.unpersist()
        test.unpersist()
        results.append(result)
    for r in results:
        if r.skipped:
            log.warning("evaluate %s: %s mode skipped: %s", run_date, r.mode, r.skipped)
    path = report_path(cfg.warehouse.root, run_date)
    payload = {"run_date": run_date.isoformat(), "mode": mode, "config_hash": cfg.config_hash(),
               "results": [{k: v for k, v in r.to_dict().items() if k != "path"} for r in results],
               "definitions": METRIC_DEFINITIONS}
    written = write_json(spark, path, payload)
    return [replace(r, path=written) for r in results]
