"""Samples: negatives ∝ clicks^0.75 (statistical bound), positives / impressions never negatives, hard
negatives only from cut stages, hot-item down-sampling, alpha recorded + calibration, point in time
(features of D - 1, last-N strictly before the event), shard files and idempotent re-runs."""

from __future__ import annotations

import json
import math
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T
from scipy import stats

from recsys_batch.config import EventsConfig, FeaturesConfig, SamplesConfig
from recsys_batch.errors import MissingInput, MissingUpstream, RecsysBatchError
from recsys_batch.io.tables import read_table, replace_partition
from recsys_batch.samples.common import EXACT, FALLBACK, NONE, STALE, Snapshot, label_day_events, snapshot_plan
from recsys_batch.samples.negatives import (
    alias_table, build_alias_frame, downsample_hot_positives, draw_items, hot_item_keep_prob, sampling_distribution,
)
from recsys_batch.samples.ranking import build_ranking_samples, calibrate, downsampled_prob
from recsys_batch.samples.recall import build_recall_samples
from recsys_batch.samples.shards import shard_dir, write_shards
from recsys_batch.samples.stage import run_samples, sample_window
from recsys_batch.training.data import holdout_cutoff
from recsys_batch.training.evaluate import holdout_set
from recsys_batch.schemas import (
    EVENTS, RANK_LOGS, USER_LASTN, Col, FCol, item_features_schema, user_features_schema,
)

D = date(2026, 11, 20)
W = EventsConfig().weights


def at(hh: int, mm: int = 0, day: date = D) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=timezone.utc)


def ev(user, item, etype, ts, req=None, watch=None, pos=None) -> tuple:
    return (user, item, etype, ts, watch, req, pos)


def rl(req, user, item, stage, passed) -> tuple:
    return (req, user, item, at(9), stage, passed)


def test_alias_table_is_exact():
    p = np.array([0.5, 0.3, 0.15, 0.05])
    accept, alias = alias_table(p)
    n = len(p)
    recon = np.array([accept[i] + sum(1 - accept[j] for j in range(n) if alias[j] == i and j != i) for i in range(n)]) / n
    np.testing.assert_allclose(recon, p, atol=1e-12)


def test_easy_negatives_follow_clicks_power(spark):
    clicks = {"i0": 0, "i1": 1, "i2": 10, "i3": 100, "i4": 1000}
    itf = spark.createDataFrame(list(clicks.items()), "item_id string, clicks_7d long")
    dist = sampling_distribution(itf, "clicks_7d", 0.75)
    q = {r[Col.ITEM]: r[FCol.SAMPLING_PROB] for r in dist.collect()}
    w = {k: c ** 0.75 for k, c in clicks.items() if c > 0}
    assert q == pytest.approx({k: v / sum(w.values()) for k, v in w.items()})  # i0 (no clicks) is never drawn
    alias, n_items = build_alias_frame(spark, dist)
    keys = spark.range(2000).select(F.col("id").cast("string").alias(FCol.GROUP))
    n = 2000 * 10
    obs = {r[Col.ITEM]: r["count"] for r in draw_items(keys, [FCol.GROUP], 10, alias, n_items, seed=7)
           .groupBy(Col.ITEM).count().collect()}
    assert sum(obs.values()) == n and set(obs) <= set(q)
    # bound: each item's frequency within 4 binomial standard errors of q (two-sided p < 6.3e-5 per item),
    # and Pearson's chi-square below its 99.9% quantile with len(q) - 1 degrees of freedom
    for item, qi in q.items():
        assert abs(obs.get(item, 0) / n - qi) <= 4 * math.sqrt(qi * (1 - qi) / n), (item, obs.get(item), qi)
    chi2 = sum((obs.get(i, 0) - n * qi) ** 2 / (n * qi) for i, qi in q.items())
    assert chi2 < stats.chi2.ppf(0.999, len(q) - 1)


def test_hot_item_downsampling(spark):
    vals = spark.createDataFrame([(0.001,), (0.1,), (0.0001,)], "f double").select(
        hot_item_keep_prob(F.col("f"), 0.001).alias("k")).collect()
    assert [r["k"] for r in vals] == pytest.approx([1.0, (math.sqrt(100) + 1) * 0.001 / 0.1, 1.0])
    rows = [(f"u{k}", "hot") for k in range(1000)] + [(f"u{k}", f"rare{k}") for k in range(1000)]
    kept = downsample_hot_positives(spark.createDataFrame(rows, "user_id string, item_id string"), 0.01, seed=3)
    by_item = {r[Col.ITEM]: r["count"] for r in kept.groupBy(Col.ITEM).count().collect()}
    keep = (math.sqrt(0.5 / 0.01) + 1) * 0.01 / 0.5  # f(hot) = 0.5
    assert abs(by_item["hot"] - 1000 * keep) <= 4 * math.sqrt(1000 * keep * (1 - keep))
    assert sum(v for k, v in by_item.items() if k != "hot") == 1000  # rare items are all kept


def _recall_day(spark):
    events = spark.createDataFrame([
        ev("u1", "a", "impression", at(10), "r1"), ev("u1", "b", "impression", at(10), "r1"),
        ev("u1", "c", "impression", at(10), "r1"), ev("u1", "a", "click", at(10, 1), "r1"),
        ev("u1", "h", "impression", at(11), "r2"), ev("u1", "h", "click", at(11, 1), "r2"),
        ev("u1", "h", "like", at(11, 2), "r2"),
        ev("u2", "a", "impression", at(12), "r3"), ev("u2", "b", "impression", at(12), "r3"),
        ev("u2", "a", "click", at(12, 1), "r3"),
    ], EVENTS)
    rank_logs = spark.createDataFrame(
        [rl("r1", "u1", i, s, True) for i in "abc" for s in ("recall", "prerank", "rank")]
        + [rl("r1", "u1", "d", "recall", True), rl("r1", "u1", "d", "prerank", False),     # cut at prerank
           rl("r1", "u1", "e", "recall", True), rl("r1", "u1", "e", "prerank", True),
           rl("r1", "u1", "e", "rank", False),                                            # cut at rank
           rl("r1", "u1", "h", "recall", True), rl("r1", "u1", "h", "prerank", False),     # u1's own positive
           rl("r1", "u1", "g", "recall", False),                                          # not a cut stage
           rl("r3", "u2", "c", "recall", True), rl("r3", "u2", "c", "prerank", False),     # cut, unseen by u2
           rl("r3", "u2", "b", "recall", True), rl("r3", "u2", "b", "prerank", True),
           rl("r3", "u2", "b", "rank", False)],                                           # cut, but u2 saw b
        RANK_LOGS)
    return label_day_events(events, D, W), rank_logs


def test_recall_samples_negatives_rules(spark):
    day, rank_logs = _recall_day(spark)
    itf = spark.createDataFrame([("a", 5), ("b", 100), ("c", 100), ("h", 100), ("d", 1), ("e", 1), ("g", 50),
                                 ("k", 50), ("m", 50)], "item_id string, clicks_7d long")
    dist = sampling_distribution(itf, "clicks_7d", 0.75)
    q = {r[Col.ITEM]: r[FCol.SAMPLING_PROB] for r in dist.collect()}
    sc = SamplesConfig(negatives_per_positive=4, hard_negative_ratio=0.5, easy_oversample=5.0,
                       hot_item_share_threshold=None)
    out = build_recall_samples(day, rank_logs, dist, D, sc).collect()
    pos = {(r[Col.USER], r[Col.ITEM]): r for r in out if r[FCol.LABEL] == 1}
    assert set(pos) == {("u1", "a"), ("u1", "h"), ("u2", "a")}
    assert pos[("u1", "h")][FCol.LABEL_WEIGHT] == 2.0 and pos[("u1", "a")][Col.REQUEST] == "r1"
    assert pos[("u1", "a")][FCol.POS_FREQ] == pytest.approx(2 / 3)
    seen = {"u1": {"a", "b", "c", "h"}, "u2": {"a", "b"}}  # impressions and positives of the day
    negs = [r for r in out if r[FCol.LABEL] == 0]
    assert negs and all(r[Col.ITEM] not in seen[r[Col.USER]] for r in negs)
    hard = {}
    for r in negs:
        if r[FCol.SOURCE] == "hard":
            hard.setdefault((r[Col.USER], r[Col.REQUEST]), set()).add(r[Col.ITEM])
    assert hard == {("u1", "r1"): {"d", "e"}, ("u2", "r3"): {"c"}}  # only prerank / rank cuts, never seen
    groups = {}
    for r in negs:
        groups[r[FCol.GROUP]] = groups.get(r[FCol.GROUP], 0) + 1
        assert r[FCol.SAMPLING_PROB] == pytest.approx(q[r[Col.ITEM]])
        assert r[Col.TS] == next(p[Col.TS] for p in pos.values() if p[FCol.GROUP] == r[FCol.GROUP])
    assert all(n <= 4 for n in groups.values()) and sum(r[FCol.SOURCE] == "easy" for r in negs) > 0


def test_ranking_alpha_recorded_and_calibration_inverts_it(spark):
    rows = []
    for k in range(1000):
        req = f"r{k}" if k % 100 else None  # impressions without a request still get their labels
        rows.append(ev(f"u{k % 97}", f"i{k}", "impression", at(10), req, pos=k % 10))
        if k % 10 == 0:
            rows.append(ev(f"u{k % 97}", f"i{k}", "click", at(10, 1), req, watch=30.0))
        if k % 20 == 0:
            rows.append(ev(f"u{k % 97}", f"i{k}", "like", at(10, 2), req))
    alpha = 0.25
    out = build_ranking_samples(label_day_events(spark.createDataFrame(rows, EVENTS), D, W),
                                SamplesConfig(negative_keep_rate=alpha)).collect()
    clicked = [r for r in out if r[FCol.CLICK] == 1]
    kept_neg = [r for r in out if r[FCol.CLICK] == 0]
    assert len(clicked) == 100 and all(r[Col.WATCH] == 30.0 for r in clicked)
    assert sum(r[FCol.LIKE] for r in out) == 50 and all(r[FCol.LIKE] <= r[FCol.CLICK] for r in out)
    assert abs(len(kept_neg) - 900 * alpha) <= 4 * math.sqrt(900 * alpha * (1 - alpha))
    assert {r[FCol.NEG_KEEP_RATE] for r in out} == {alpha}
    assert {r[FCol.SAMPLE_WEIGHT] for r in kept_neg} == {1 / alpha} and {r[FCol.SAMPLE_WEIGHT] for r in clicked} == {1.0}
    # a model fitted on the sampled rows estimates q = clicks / kept rows; calibration gives back p = 0.1
    q_hat = len(clicked) / len(out)
    assert calibrate(q_hat, alpha) == pytest.approx(100 / (100 + len(kept_neg) / alpha))
    assert abs(calibrate(q_hat, alpha) - 0.1) < 0.015
    p = np.linspace(0.001, 0.999, 50)
    np.testing.assert_allclose(calibrate(downsampled_prob(p, alpha), alpha), p, rtol=1e-12)


def _feature_df(spark, schema: T.StructType, rows: list[dict]):
    def default(f: T.StructField):
        t = f.dataType
        if isinstance(t, T.ArrayType):
            return []
        if isinstance(t, T.StringType):
            return None if f.nullable else "x"
        if isinstance(t, T.BooleanType):
            return False
        return 0.0 if isinstance(t, T.DoubleType) else 0
    return spark.createDataFrame([tuple(r.get(f.name, default(f)) for f in schema.fields) for r in rows], schema)


def test_samples_point_in_time_lastn_and_shards(spark, make_cfg):
    cfg = make_cfg("samples.rows_per_file=3", "samples.hard_negative_ratio=0.0", "samples.negatives_per_positive=2",
                   "samples.hot_item_share_threshold=null")
    wh, fc = cfg.warehouse, FeaturesConfig()
    prev = D - timedelta(days=1)
    ufs, ifs = user_features_schema(fc), item_features_schema(fc)
    # features of D - 1 say u1 clicked 5 times on the last day; those of D (which include the label day) 99
    for d, n in ((prev, 5), (D, 99)):
        replace_partition(_feature_df(spark, ufs, [{Col.USER: "u1", "clicks_1d": n}]), wh, "user_features", d,
                          count=False)
        replace_partition(_feature_df(spark, ifs, [{Col.ITEM: i, "clicks_7d": n, Col.CATEGORY: "food"}
                                                   for i in ("a", "b", "x", "y", "z")]), wh, "item_features", d,
                          count=False)
    hist = spark.createDataFrame([("u1", [("old1", at(8, day=prev), 1.0)])], USER_LASTN)
    replace_partition(hist, wh, "user_lastn", prev, count=False)
    events = spark.createDataFrame([
        ev("u1", "a", "impression", at(10), "r1"), ev("u1", "a", "click", at(10, 1), "r1"),
        ev("u1", "b", "impression", at(11, 59), "r2"), ev("u1", "b", "click", at(12), "r2"),
        ev("u1", "x", "impression", at(11, 59), "r2"),
    ], EVENTS)
    replace_partition(events, wh, "events", D, count=False)

    run_samples(spark, cfg, D)

    rec = read_table(spark, wh, "samples_recall", D).collect()
    rank = read_table(spark, wh, "samples_ranking", D).collect()
    assert {r["u_clicks_1d"] for r in rec + rank} == {5}  # features of D - 1, never of the label day
    assert {r[FCol.FEATURES_DT] for r in rec + rank} == {prev.isoformat()}
    assert {r["i_clicks_7d"] for r in rec + rank} == {5}
    lastn = {(r[Col.ITEM], r[FCol.LABEL]): r[FCol.LASTN_ITEMS] for r in rec if r[FCol.LABEL] == 1}
    assert lastn == {("a", 1): ["old1"], ("b", 1): ["a", "old1"]}  # strictly before the event, label excluded
    rank_lastn = {r[Col.ITEM]: r[FCol.LASTN_ITEMS] for r in rank}
    assert rank_lastn["a"] == ["old1"] and rank_lastn["b"] == ["a", "old1"]
    negs = [r for r in rec if r[FCol.LABEL] == 0]
    assert negs and all(r[Col.ITEM] in {"y", "z"} for r in negs)  # never a, b (positives) nor x (shown)

    folder = Path(shard_dir(wh, "recall", D))
    manifest = json.loads((folder / "_manifest.json").read_text())
    names = sorted(p.name for p in folder.glob("part-*.parquet"))
    assert names == [f"part-{i:05d}.parquet" for i in range(len(names))] == [f["name"] for f in manifest["files"]]
    assert len(names) == math.ceil(len(rec) / 3) and manifest["rows"] == len(rec)
    assert sum(pq.read_metadata(folder / n).num_rows for n in names) == len(rec)
    assert manifest["feature_spec"].endswith("features/dt=2026-11-19/feature_spec.json")
    assert manifest["fallback_rows"] == 0 and manifest["rows_by_features_dt"] == {prev.isoformat(): len(rec)}
    before = [pq.read_table(folder / n).column(Col.ITEM).to_pylist() for n in names]
    # re-run: the folder is replaced, same files, same shuffled order
    write_shards(read_table(spark, wh, "samples_recall", D).drop(Col.DT), wh, "recall", D, cfg.samples,
                 [FCol.GROUP, Col.ITEM, FCol.SOURCE])
    assert sorted(p.name for p in folder.glob("part-*.parquet")) == names
    assert [pq.read_table(folder / n).column(Col.ITEM).to_pylist() for n in names] == before
    assert not list(folder.parent.glob("_staging*"))


# ---- the sample window: a one-batch import / first day trains, point in time per event day -----------------


def test_sample_window_and_snapshot_plan():
    d = D
    auto = SamplesConfig(max_window_days=30)
    assert sample_window(auto, d, [], [d]) == d - timedelta(days=29)            # import: all it may read
    assert sample_window(auto, d, ["2026-11-19", "2026-11-20"], [d]) == d        # daily feed: one day
    assert sample_window(auto, d, ["2026-11-16", "2026-11-21"], []) == d - timedelta(days=3)  # catch up a gap
    assert sample_window(auto, d, ["2026-01-01"], []) == d - timedelta(days=29)  # capped
    # first day of samples on a feed with features since 11-17: only days with a snapshot before them
    assert sample_window(auto, d, [], [date(2026, 11, 17), d]) == date(2026, 11, 18)
    assert sample_window(SamplesConfig(window_days=7), d, ["2026-11-19"], [d]) == d - timedelta(days=6)
    days = [d - timedelta(days=k) for k in (3, 2, 1, 0)]                             # 11-17 .. 11-20
    one = [d]                                                                          # a one-batch import
    assert snapshot_plan(days, one, "earliest") == {e: Snapshot(d, FALLBACK) for e in days}
    assert snapshot_plan(days, one, "drop") == {e: Snapshot(None, NONE) for e in days}
    feed = [d - timedelta(days=3), d - timedelta(days=1), d]                          # 11-17, 11-19, 11-20
    assert snapshot_plan(days, feed, "earliest") == {
        days[0]: Snapshot(feed[0], FALLBACK),  # 11-17 itself: its own day, the earliest there is
        days[1]: Snapshot(feed[0], EXACT),     # 11-18 -> 11-17
        days[2]: Snapshot(feed[0], STALE),     # 11-19 -> 11-17 (11-18 is missing: older, never newer)
        days[3]: Snapshot(feed[1], EXACT),     # 11-20 -> 11-19, never 11-20
    }
    assert snapshot_plan(days, feed, "drop")[days[0]] == Snapshot(None, NONE)


def _write_features(spark, wh, d: date, clicks: int) -> None:
    fc = FeaturesConfig()
    replace_partition(_feature_df(spark, user_features_schema(fc), [{Col.USER: u, "clicks_1d": clicks}
                                                                     for u in ("u1", "u2")]),
                      wh, "user_features", d, count=False)
    replace_partition(_feature_df(spark, item_features_schema(fc), [{Col.ITEM: i, "clicks_7d": clicks}
                                                                     for i in "abcxyz"]),
                      wh, "item_features", d, count=False)


def test_one_batch_import_trains_from_the_window(spark, make_cfg):
    """Three days of events in ONE batch (dt = D), features of D only: every day's positives become samples
    with the fallback snapshot (counted), last-N spans the days strictly before each ts, the negatives never
    hit an item the user touched on any window day, and the publish gate's holdout is the newest hours of D."""
    cfg_args = ("samples.hard_negative_ratio=0.0", "samples.negatives_per_positive=2", "samples.easy_oversample=8",
                "samples.hot_item_share_threshold=null", "samples.negative_keep_rate=1.0", "train.holdout_hours=4")
    cfg = make_cfg(*cfg_args)
    wh = cfg.warehouse
    d1, d2 = D - timedelta(days=1), D - timedelta(days=2)
    events = spark.createDataFrame([
        ev("u1", "a", "impression", at(9, 59, d2)), ev("u1", "a", "click", at(10, 0, d2)),
        ev("u1", "x", "impression", at(9, 0, d1)),                                      # shown, never clicked
        ev("u1", "b", "impression", at(9, 0, d1)), ev("u1", "b", "click", at(9, 1, d1)),
        ev("u1", "c", "impression", at(22, 0)), ev("u1", "c", "like", at(22, 1)),          # held out (>= 20:00)
        ev("u2", "a", "impression", at(8, 0)), ev("u2", "a", "click", at(8, 1)),
        ev("u2", "b", "impression", at(21, 0)), ev("u2", "b", "click", at(21, 1)),          # held out
        ev("u2", "z", "click", at(0, 0, D + timedelta(days=1))),                           # after D: never
    ], EVENTS)
    replace_partition(events, wh, "events", D, count=False)

    with pytest.raises(MissingUpstream) as err:  # no features at all
        run_samples(spark, cfg, D)
    assert isinstance(err.value, RecsysBatchError) and isinstance(err.value, MissingInput)
    assert str(err.value) == (
        "samples for 2026-11-20 needs user_features with a partition dt <= 2026-11-20 (point in time: dt = each "
        "event's day - 1), but user_features has no partition: build it with "
        "`recsys-batch features --date 2026-11-19`")
    _write_features(spark, wh, D + timedelta(days=1), 7)  # a snapshot after D is never read
    with pytest.raises(MissingUpstream, match="user_features has latest partition dt=2026-11-21: build it with "
                                              "`recsys-batch features --date 2026-11-19`"):
        run_samples(spark, cfg, D)

    _write_features(spark, wh, D, 99)  # the import's only snapshot
    stats = {s.table: s.rows for s in run_samples(spark, cfg, D)}
    rec = read_table(spark, wh, "samples_recall", D).collect()
    pos = {(r[Col.USER], r[Col.ITEM]): r for r in rec if r[FCol.LABEL] == 1}
    assert set(pos) == {("u1", "a"), ("u1", "b"), ("u1", "c"), ("u2", "a"), ("u2", "b")}
    assert pos[("u1", "c")][FCol.LABEL_WEIGHT] == W["like"]
    assert {k: p[FCol.LASTN_ITEMS] for k, p in pos.items()} == {
        ("u1", "a"): [], ("u1", "b"): ["a"], ("u1", "c"): ["b", "a"], ("u2", "a"): [], ("u2", "b"): ["a"]}
    assert {k: p[FCol.POS_FREQ] for k, p in pos.items()} == pytest.approx(
        {("u1", "a"): 0.4, ("u1", "b"): 0.4, ("u1", "c"): 0.2, ("u2", "a"): 0.4, ("u2", "b"): 0.4})
    negs = [r for r in rec if r[FCol.LABEL] == 0]
    touched = {"u1": {"a", "b", "c", "x"}, "u2": {"a", "b"}}  # any window day; u2's z is after D
    assert negs and all(r[Col.ITEM] not in touched[r[Col.USER]] for r in negs)
    assert all(r[FCol.SAMPLING_PROB] == pytest.approx(1 / 6) for r in negs)  # 6 items, clicks_7d = 99 each
    assert {r[FCol.FEATURES_DT] for r in rec} == {D.isoformat()} and {r["u_clicks_1d"] for r in rec} == {99}
    assert stats["samples_recall_features_fallback"] == len(rec)  # all of them: D is every row's own day or later
    rank = read_table(spark, wh, "samples_ranking", D).collect()
    assert {(r[Col.USER], r[Col.ITEM]): r[FCol.CLICK] for r in rank} == {
        ("u1", "a"): 1, ("u1", "x"): 0, ("u1", "b"): 1, ("u1", "c"): 1, ("u2", "a"): 1, ("u2", "b"): 1}
    assert stats["samples_ranking_features_fallback"] == len(rank) == 6
    manifest = json.loads((Path(shard_dir(wh, "recall", D)) / "_manifest.json").read_text())
    assert manifest["feature_spec"].endswith("features/dt=2026-11-20/feature_spec.json")
    assert (manifest["users"], manifest["positives"], manifest["negatives"]) == (2, 5, len(negs))
    assert manifest["window"]["last"] == D.isoformat() and manifest["fallback_rows"] == len(rec)

    # the gate's holdout is the newest hours of D; every other window day is before the training cut
    cut = holdout_cutoff(D, cfg.train.holdout_hours).astimezone(timezone.utc).replace(tzinfo=None)  # rows: naive UTC
    held = {(r[Col.USER], r[Col.ITEM]) for r in rec if r[Col.TS] >= cut}
    assert held == {("u1", "c"), ("u2", "b")} | {(r[Col.USER], r[Col.ITEM]) for r in negs if r[Col.TS] >= cut}
    states, truth = holdout_set(cfg, D)
    assert truth == {"u1": {"c"}, "u2": {"b"}}
    assert dict(zip(states.column(Col.USER).to_pylist(), states.column(FCol.LASTN_ITEMS).to_pylist(),
                    strict=True)) == {"u1": ["b", "a"], "u2": ["a"]}

    # strict point in time: no snapshot before any event day -> the error names the command
    strict = make_cfg("samples.hard_negative_ratio=0.0", "samples.hot_item_share_threshold=null",
                      "samples.features_fallback=drop")
    with pytest.raises(MissingUpstream, match="`recsys-batch features --date 2026-11-17`"):
        run_samples(spark, strict, D)

    # features of D - 1 arrive: the auto window keeps to the days with a snapshot before them (D only);
    # a fixed 3-day window also takes the earlier days, which fall back to the earliest snapshot, D - 1
    _write_features(spark, wh, d1, 5)
    run_samples(spark, cfg, D)
    rec = read_table(spark, wh, "samples_recall", D).collect()
    assert {r[Col.TS].date() for r in rec} == {D} and {r[FCol.FEATURES_DT] for r in rec} == {d1.isoformat()}
    assert {k: r[FCol.LASTN_ITEMS] for r in rec if r[FCol.LABEL] == 1 for k in [(r[Col.USER], r[Col.ITEM])]} == {
        ("u1", "c"): [], ("u2", "a"): [], ("u2", "b"): ["a"]}  # no user_lastn table: only the window's own
    run_samples(spark, make_cfg(*cfg_args, "samples.window_days=3"), D)
    rec = read_table(spark, wh, "samples_recall", D).collect()
    by_day = {r[Col.TS].date(): (r[FCol.FEATURES_DT], r["u_clicks_1d"]) for r in rec}
    assert by_day == {d2: (d1.isoformat(), 5), d1: (d1.isoformat(), 5), D: (d1.isoformat(), 5)}
    manifest = json.loads((Path(shard_dir(wh, "recall", D)) / "_manifest.json").read_text())
    assert manifest["fallback_rows"] == sum(1 for r in rec if r[Col.TS].date() < D)
    assert manifest["feature_spec"].endswith("features/dt=2026-11-19/feature_spec.json")

    # strict: rows without a snapshot before their day are dropped
    run_samples(spark, make_cfg(*cfg_args, "samples.window_days=3", "samples.features_fallback=drop"), D)
    rec = read_table(spark, wh, "samples_recall", D).collect()
    assert {r[Col.TS].date() for r in rec} == {D} and {r[FCol.FEATURES_DT] for r in rec} == {d1.isoformat()}
    assert {(r[Col.USER], r[Col.ITEM]) for r in rec if r[FCol.LABEL] == 1} == {("u1", "c"), ("u2", "a"), ("u2", "b")}


def test_missing_events_name_the_ingest_command(spark, make_cfg):
    cfg = make_cfg()
    _write_features(spark, cfg.warehouse, D - timedelta(days=1), 1)
    with pytest.raises(MissingUpstream) as err:
        run_samples(spark, cfg, D)
    assert err.value.table == "events" and err.value.latest is None
    assert str(err.value).endswith("but events has no partition: build it with `recsys-batch ingest --date 2026-11-20`")
