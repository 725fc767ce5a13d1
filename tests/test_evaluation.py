"""Evaluator: metrics on hand-computed lists, both splits on a tiny log (exact membership), coverage and
novelty, the published mode (truth after D, list coverage per channel) on a tiny literal case and end to end,
and run_evaluate's rebuild mode on a small synthetic log (ItemCF must beat popular)."""

from __future__ import annotations

import json
import math
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from recsys_batch.config import GenerateConfig
from chispa import assert_df_equality

from recsys_batch.evaluation import coverage_novelty, per_user_metrics, ranking_metrics, split_time, split_user_chrono
from recsys_batch.evaluation.evaluate import channel_order, evaluate_published, run_evaluate, truth_from_events
from recsys_batch.evaluation.metrics import (
    hit_overlap, item_popularity, list_hits, merged_sole_hits, truth_pop_percentile, union_hits,
)
from recsys_batch.io.tables import replace_partition
from recsys_batch.schemas import EVENTS, RECALL, USER_ITEM_MATRIX, Col

D = date(2026, 11, 20)
W = {"impression": 0.0, "click": 1.0, "like": 2.0, "collect": 3.0, "share": 4.0, "comment": 3.0}
L2 = math.log2


def at(day: date, hh: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hh, tzinfo=timezone.utc)


def recs_df(spark, rows):
    return spark.createDataFrame(rows, "channel string, user_id string, item_id string, rank int")


def pairs(df) -> set[tuple[str, str]]:
    return {(r[Col.USER], r[Col.ITEM]) for r in df.collect()}


def test_ranking_metrics_hand_computed(spark):
    test = spark.createDataFrame([("A", "a"), ("A", "b"), ("B", "e"), ("C", "h")], "user_id string, item_id string")
    recs = recs_df(spark, [
        ("x", "A", "c", 1), ("x", "A", "a", 2), ("x", "A", "d", 3), ("x", "A", "b", 4),
        ("x", "B", "f", 1), ("x", "B", "g", 2), ("x", "B", "e", 5),   # a hit beyond max K: ignored
        ("x", "Z", "a", 1),                                           # not a test user: ignored
    ])                                                                # C has no list: zeros
    ks = [2, 4]
    pu = {(r.channel, r.user_id): r for r in per_user_metrics(recs, test, ks, ["x", "none"]).collect()}
    a = pu[("x", "A")]
    assert a.n_test == 2 and a.recall_2 == 0.5 and a.recall_4 == 1.0 and a.hit_2 == 1.0
    assert math.isclose(a.ndcg_2, (1 / L2(3)) / (1 + 1 / L2(3)))
    assert math.isclose(a.ndcg_4, (1 / L2(3) + 1 / L2(5)) / (1 + 1 / L2(3)))
    assert a.mrr == 0.5 and a.has_list == 1.0 and pu[("x", "C")].has_list == 0.0
    for key in (("x", "B"), ("x", "C"), ("none", "A")):
        r = pu[key]
        assert (r.recall_2, r.recall_4, r.hit_4, r.ndcg_4, r.mrr) == (0, 0, 0, 0, 0)
    assert len(pu) == 6  # every channel x every test user

    agg = {r.channel: r for r in ranking_metrics(recs, test, ks, ["x", "none"]).collect()}
    x = agg["x"]
    assert x.users == 3 and x.users_with_list == 2 and math.isclose(x.user_coverage, 2 / 3)
    assert math.isclose(x.recall_2, 0.5 / 3) and math.isclose(x.recall_4, 1 / 3)
    assert math.isclose(x.hit_2, 1 / 3) and math.isclose(x.mrr, 0.5 / 3)
    assert math.isclose(x.ndcg_2, (1 / L2(3)) / (1 + 1 / L2(3)) / 3)
    assert agg["none"].users == 3 and agg["none"].recall_4 == 0.0 and agg["none"].users_with_list == 0


def test_coverage_novelty_popularity_hand_computed(spark):
    m = spark.createDataFrame([("u1", "a"), ("u1", "b"), ("u2", "a"), ("u3", "a"), ("u3", "c"), ("u4", "d")],
                              "user_id string, item_id string")
    # n_i: a 3, b c d 1; |U| = 4, M = {a, b, c, d}; pct(a) = 3/4 (b, c, d are less popular), pct(b|c|d) = 0
    pop = item_popularity(m)
    assert (pop.train_users, pop.matrix_items) == (4, 4)
    assert {r.item_id: r._pop_pct for r in pop.items.collect()} == {"a": 0.75, "b": 0.0, "c": 0.0, "d": 0.0}
    recs = recs_df(spark, [("x", "u1", "c", 1), ("x", "u1", "d", 2), ("x", "u2", "a", 1), ("x", "u2", "b", 2),
                           ("x", "u3", "e", 1),              # e: a cold item (not in the matrix): n_e = 0
                           ("x", "u3", "f", 3)])             # beyond max K: not counted anywhere
    got = {r.channel: r for r in coverage_novelty(recs, m, [1, 2], ["x", "y"], pop).collect()}
    x = got["x"]
    # catalog C = M | {e} = 5 items; top 1: {c, a, e}; top 2: {c, d, a, b, e}
    assert x.catalog_items == got["y"].catalog_items == 5
    assert x.coverage_1 == 3 / 5 and x.coverage_2 == 1.0
    nov = lambda n: -L2((n + 1) / 5)  # noqa: E731  -log2((n_i + 1) / (|U| + 1))
    assert math.isclose(x.novelty_1, (nov(1) + nov(3) + nov(0)) / 3)
    assert math.isclose(x.novelty_2, (3 * nov(1) + nov(3) + nov(0)) / 5)
    assert math.isclose(x.pop_percentile_1, 0.75 / 3) and math.isclose(x.pop_percentile_2, 0.75 / 5)
    y = got["y"]
    assert (y.coverage_2, y.novelty_2, y.pop_percentile_2) == (0.0, None, None)

    test = spark.createDataFrame([("u1", "a"), ("u2", "b"), ("u2", "b"), ("u9", "z")], "user_id string, item_id string")
    assert math.isclose(truth_pop_percentile(test, pop), (0.75 + 0 + 0) / 3)  # distinct pairs; z is cold: 0


def test_hits_and_unique_hits_hand_computed(spark):
    test = spark.createDataFrame([("A", "a"), ("A", "b"), ("B", "c")], "user_id string, item_id string")
    recs = spark.createDataFrame([
        ("x", "A", "a", 1, None), ("x", "A", "a", 2, None), ("x", "A", "b", 2, None), ("x", "B", "c", 2, None),
        ("y", "A", "b", 1, None), ("y", "A", "a", 3, None), ("y", "B", "z", 1, None),   # a@3: beyond max K
        ("merged", "A", "a", 1, ["x"]), ("merged", "A", "b", 2, ["x", "y"]), ("merged", "B", "c", 1, ["x"]),
    ], "channel string, user_id string, item_id string, rank int, channels array<string>")  # extra column: ignored
    hits = list_hits(recs, test, 2)
    expected = spark.createDataFrame([
        ("x", "A", "a", 1), ("x", "A", "b", 2), ("x", "B", "c", 2), ("y", "A", "b", 1),
        ("merged", "A", "a", 1), ("merged", "A", "b", 2), ("merged", "B", "c", 1)],
        "channel string, user_id string, item_id string, rank int")
    assert_df_equality(hits, expected, ignore_row_order=True, ignore_column_order=True, ignore_nullable=True)

    got = {r.channel: r.asDict() for r in hit_overlap(hits, [1, 2], ["x", "y", "merged", "none"]).collect()}
    # K=1: x finds (A,a), y (A,b) -- each alone; (B,c) only merged has at 1 (merged takes no part)
    # K=2: (A,a) x alone, (A,b) x and y, (B,c) x alone (merged still out)
    assert {c: (r["hits_1"], r["unique_hits_1"], r["hits_2"], r["unique_hits_2"]) for c, r in got.items()} == {
        "x": (1, 1, 3, 2), "y": (1, 1, 1, 0), "merged": (2, None, 3, None), "none": (0, 0, 0, 0)}
    assert (got["x"]["credit_2"], got["y"]["credit_2"]) == (2.5, 0.5)
    assert union_hits(list(got.values()), [1, 2]) == {"union_hits@1": 2, "union_hits@2": 3}
    # nothing excluded: merged shares (A,a)@1 with x; alone at 1: y's (A,b), merged's (B,c); at 2 nobody
    got_all = {r.channel: r for r in hit_overlap(hits, [1, 2], ["x", "y", "merged"], exclude=()).collect()}
    assert [(got_all[c].unique_hits_1, got_all[c].unique_hits_2) for c in ("x", "y", "merged")] == [
        (0, 0), (1, 0), (1, 0)]


def test_merged_sole_hits_hand_computed(spark):
    test = spark.createDataFrame([("A", "a"), ("A", "b"), ("A", "d"), ("B", "c"), ("B", "e")],
                                 "user_id string, item_id string")
    merged = spark.createDataFrame([
        ("A", "a", 0.9, 1, ["x"]), ("A", "b", 0.8, 2, ["x", "y"]),   # b: two channels -> nobody's sole hit
        ("A", "z", 0.7, 3, ["y"]),                                   # not a test pair
        ("A", "d", 0.6, 4, ["y"]), ("B", "c", 0.9, 1, ["y"]),
        ("B", "e", 0.1, 5, ["x"]),                                   # beyond max K = 4
    ], "user_id string, item_id string, score double, rank int, channels array<string>")
    # K=1: x (A,a), y (B,c); K=4: x (A,a), y (B,c), (A,d)
    expected = spark.createDataFrame([("x", 1, 1), ("y", 1, 2)], "channel string, sole_hits_1 long, sole_hits_4 long")
    assert_df_equality(merged_sole_hits(merged, test, [4, 1]), expected, ignore_row_order=True,
                       ignore_nullable=True)


@pytest.fixture()
def tiny_events(spark):
    ev = lambda u, i, t, ts: (u, i, t, ts, None, None, None)  # noqa: E731
    d1, d2, d3 = D - timedelta(days=1), D - timedelta(days=2), D - timedelta(days=3)
    return spark.createDataFrame([
        ev("u1", "o", "click", at(d3, 23)),       # before the 3-day window
        ev("u1", "a", "click", at(d2, 1)),
        ev("u1", "x", "like", at(d1, 1)),
        ev("u1", "b", "click", at(D, 5)),
        ev("u1", "c", "click", at(D, 6)),
        ev("u1", "a", "click", at(D, 7)),         # re-consumption of a train item
        ev("u1", "z", "impression", at(D, 8)),
        ev("u2", "y", "impression", at(d1, 3)),
        ev("u2", "d", "click", at(D, 1)),
        ev("u3", "e", "click", at(d1, 2)),
        ev("u3", "f", "click", at(D, 2)),
        ev("u4", "g", "click", at(D, 10)),
        ev("u4", "h", "click", at(D, 10)),        # same ts: item_id desc makes h the newer
    ], EVENTS)


def test_user_chrono_split(spark, tiny_events):
    s = split_user_chrono(tiny_events, W, D, lookback_days=3, holdout_ratio=0.4)
    # u1: 5 positives -> round(2.0) = 2 held out (a@07, c@06), a is in train; u2: 1 positive -> train only;
    # u3: 2 -> round(0.8) = 1; u4: 2 -> 1 (h, by the tie-break)
    assert pairs(s.test) == {("u1", "c"), ("u3", "f"), ("u4", "h")}
    assert sorted((r.user_id, r.item_id) for r in s.train.collect()) == [
        ("u1", "a"), ("u1", "b"), ("u1", "x"), ("u2", "d"), ("u3", "e"), ("u4", "g")]
    assert s.train_date == D and s.kind == "user_chrono"


def test_time_split(spark, tiny_events):
    s = split_time(tiny_events, W, D, lookback_days=3, holdout_days=1)
    assert pairs(s.test) == {("u1", "b"), ("u1", "c"), ("u2", "d"), ("u3", "f"), ("u4", "g"), ("u4", "h")}
    assert sorted((r.user_id, r.item_id, r.event_type) for r in s.train.collect()) == [
        ("u1", "a", "click"), ("u1", "x", "like"), ("u2", "y", "impression"), ("u3", "e", "click")]
    assert s.train_date == D - timedelta(days=1)


# ---- published mode: D's matrix, the lists published for D, what users did after D

def published_inputs(spark):
    ts = at(D, 1)
    matrix = spark.createDataFrame([("u1", "a", 1.0, 1, ts), ("u1", "b", 1.0, 1, ts), ("u2", "a", 1.0, 1, ts),
                                    ("u3", "c", 1.0, 1, ts)], USER_ITEM_MATRIX)   # u4 is not in the matrix
    itemcf = spark.createDataFrame([("u1", "d", 0.9, 1), ("u1", "x", 0.5, 2),
                                    ("u2", "y", 0.9, 1), ("u2", "d", 0.5, 2)], RECALL)  # no list for u3
    popular = spark.createDataFrame([("u1", "x", 9.0, 1), ("u1", "d", 8.0, 2), ("u2", "d", 8.0, 1), ("u2", "x", 7.0, 2),
                                     ("u3", "a", 9.5, 1), ("u3", "x", 9.0, 2)], RECALL)
    return matrix, itemcf, popular


#: truth after D; ("u1", "a") is in u1's matrix: not truth. Test items: u1 {d, e}, u2 {d}, u3 {a}, u4 {d}
TRUTH = [("u1", "a"), ("u1", "d"), ("u1", "e"), ("u2", "d"), ("u3", "a"), ("u4", "d")]


def check_published(res):
    assert res.mode == "published" and res.skipped is None
    assert res.test_users == 4 and res.extra["test_users_in_matrix"] == 3 and res.extra["test_items"] == 5
    itemcf, popular = res.row("itemcf"), res.row("popular")
    # ItemCF: lists for u1, u2 of 4 test users; u1 hits d@1 (1 of 2), u2 hits d@2 (1 of 1); u3, u4 score 0
    assert (itemcf["users"], itemcf["users_with_list"], itemcf["user_coverage"]) == (4, 2, 0.5)
    assert (itemcf["recall@1"], itemcf["recall@2"], itemcf["mrr"]) == (0.5 / 4, 1.5 / 4, 1.5 / 4)
    # catalog: matrix items {a, b, c} + listed items {d, x, y} = 6; itemcf shows d, x, y; popular at 1: x, d, a
    assert res.catalog_items == 6 and res.extra["matrix_items"] == 3
    assert itemcf["coverage@2"] == 0.5
    # popular: u1 d@2, u2 d@1, u3 a@1
    assert (popular["users"], popular["users_with_list"], popular["user_coverage"]) == (4, 3, 0.75)
    assert (popular["recall@1"], popular["recall@2"], popular["mrr"]) == (2 / 4, 2.5 / 4, 2.5 / 4)
    assert popular["coverage@1"] == 0.5
    # popularity: n_a = 2, n_b = n_c = 1 -> pct(a) = 2/3, else 0; popular's top 1 = x, d, a
    assert math.isclose(popular["pop_percentile@1"], (2 / 3) / 3) and itemcf["pop_percentile@2"] == 0.0
    assert math.isclose(res.extra["truth_pop_percentile"], (2 / 3) / 5)   # test pairs u1 d, u1 e, u2 d, u3 a, u4 d
    # overlap: at 1 itemcf alone has (u1,d), popular alone (u2,d), (u3,a); at 2 both have u1's and u2's d
    assert (itemcf["hits@1"], itemcf["unique_hits@1"], itemcf["hits@2"], itemcf["unique_hits@2"]) == (1, 1, 2, 0)
    assert (popular["hits@1"], popular["unique_hits@1"], popular["hits@2"], popular["unique_hits@2"]) == (2, 2, 3, 1)
    assert (res.extra["union_hits@1"], res.extra["union_hits@2"]) == (3, 3)


def test_evaluate_published_coverage_hand_computed(spark):
    matrix, itemcf, popular = published_inputs(spark)
    recs = (itemcf.withColumn("channel", F.lit("itemcf"))
            .unionByName(popular.withColumn("channel", F.lit("popular"))))
    truth = spark.createDataFrame(TRUTH, "user_id string, item_id string")
    res = evaluate_published(recs, truth, matrix, [1, 2], ["itemcf", "popular", "swing"], D, "literal truth")
    check_published(res)
    assert [r["channel"] for r in res.rows] == ["itemcf", "popular", "swing"]
    assert (res.row("swing")["users_with_list"], res.row("swing")["recall@2"]) == (0, 0.0)
    assert res.source == "literal truth" and res.train_date == D


def test_truth_from_events_after_d_only(spark):
    ev = lambda u, i, t, ts: (u, i, t, ts, None, None, None)  # noqa: E731
    d1, d2 = D + timedelta(days=1), D + timedelta(days=2)
    events = spark.createDataFrame([
        ev("u1", "a", "click", at(d1, 0)), ev("u1", "a", "like", at(d1, 5)),   # one pair
        ev("u2", "b", "impression", at(d1, 3)),                                # not a positive
        ev("u3", "c", "click", at(D, 23)),                                     # late event of D: before the lists
        ev("u4", "d", "click", at(d2, 1)),                                     # after truth_days = 1
    ], EVENTS)
    assert pairs(truth_from_events(events, W, D, 1)) == {("u1", "a")}
    assert pairs(truth_from_events(events, W, D, 2)) == {("u1", "a"), ("u4", "d")}


@pytest.mark.slow
def test_run_evaluate_published_mode(spark, make_cfg, tmp_path):
    matrix, itemcf, popular = published_inputs(spark)
    cfg = make_cfg("evaluate.mode=published", "evaluate.ks=[1,2]")
    # recall_merged: the published RECALL columns plus the channels each row came from (an extra column)
    merged = spark.createDataFrame([("u1", "d", 0.9, 1, ["itemcf", "popular"]), ("u1", "x", 0.5, 2, ["popular"]),
                                    ("u2", "d", 0.8, 1, ["itemcf", "popular"]), ("u3", "a", 0.7, 1, ["popular"])],
                                   "user_id string, item_id string, score double, rank int, channels array<string>")
    for name, df in (("user_item_matrix", matrix), ("recall_itemcf", itemcf), ("recall_popular", popular),
                     ("recall_merged", merged)):
        replace_partition(df, cfg.warehouse, name, D)
    # D + 1 is not ingested yet: the published mode says so instead of failing
    (skipped,) = run_evaluate(spark, cfg, D)
    assert skipped.skipped.startswith("no truth after 2026-11-20: events has no positive event with ts in 2026-11-21")
    assert "evaluate.truth_path" in skipped.skipped
    saved = json.loads(Path(skipped.path).read_text())
    assert saved["mode"] == "published" and saved["results"][0]["skipped"] == skipped.skipped

    d1 = D + timedelta(days=1)
    ev = lambda u, i, t, ts: (u, i, t, ts, None, None, None)  # noqa: E731
    rows = [ev(u, i, "click", at(d1, 5)) for u, i in TRUTH] + [ev("u2", "z", "impression", at(d1, 6)),
                                                              ev("u3", "q", "click", at(D, 22))]  # late, of D
    replace_partition(spark.createDataFrame(rows, EVENTS), cfg.warehouse, "events", d1)
    (res,) = run_evaluate(spark, cfg, D)
    check_published(res)   # merged stays out of the overlap: itemcf's and popular's unique hits as without it
    assert [r["channel"] for r in res.rows] == ["itemcf", "popular", "merged"]
    m = res.row("merged")   # hits u1 d@1, u2 d@1, u3 a@1; u4 has no list
    assert (m["users_with_list"], m["recall@1"], m["hits@2"], m["unique_hits@2"]) == (3, 2.5 / 4, 3, None)
    assert res.extra["overlap_exclude"] == ["merged"]
    # merged's hits from one channel alone: u3 a@1 (popular); u1 d and u2 d came from both
    assert [(r["merged_sole_hits@1"], r["merged_sole_hits@2"]) for r in res.rows] == [(0, 0), (1, 1), (None, None)]
    assert res.source == "positive events of 2026-11-21 (events dt 2026-11-21; 1 of 1 days)"
    assert res.extra["channels_without_lists"] == ["recall_swing (no table)", "recall_usercf (no table)",
                                                   "recall_two_tower (no table)"]
    payload = json.loads(Path(res.path).read_text())
    saved = payload["results"][0]
    assert saved["rows"][0]["users_with_list"] == 2 and saved["rows"][0]["user_coverage"] == 0.5
    assert saved["rows"][2]["unique_hits@2"] is None and saved["extra"]["union_hits@2"] == 3
    assert "unique_hits@K" in payload["definitions"] and "pop_percentile@K" in payload["definitions"]

    # an explicit truth table (the MovieLens import's held-out ratings): every row is truth, whatever its ts
    truth_dir = tmp_path / "truth" / "dt=2026-11-20"
    spark.createDataFrame([(u, i, at(D - timedelta(days=9))) for u, i in TRUTH],
                          "user_id string, item_id string, ts timestamp").write.parquet(str(truth_dir))
    cfg2 = make_cfg("evaluate.mode=published", "evaluate.ks=[1,2]", f"evaluate.truth_path={tmp_path}/truth/dt={{date}}")
    (res2,) = run_evaluate(spark, cfg2, D)
    check_published(res2)
    assert res2.source == f"truth table {truth_dir}"


def test_channel_order_known_first_then_by_name_merged_last():
    assert channel_order({"merged", "hot", "geo", "popular", "itemcf", "two_tower"}) == [
        "itemcf", "popular", "two_tower", "geo", "hot", "merged"]


@pytest.mark.slow
def test_run_evaluate_synthetic_itemcf_beats_popular(spark, make_cfg, tmp_path):
    pytest.importorskip("recsys_batch.similarity.itemcf")
    from recsys_batch.generate import generate_synthetic

    gen = GenerateConfig(n_users=300, n_items=200, n_authors=20, n_categories=8, n_clusters=4, days=7,
                         impressions_per_user_day=30.0, bad_row_ratio=0.0)
    raw = tmp_path / "raw"
    generate_synthetic(gen, D, raw)
    events = (spark.read.parquet(str(raw / "events"))
              .where(F.col(Col.USER).isNotNull() & F.col(Col.ITEM).isNotNull())
              .select(*[F.col(f.name).cast(f.dataType) for f in EVENTS.fields]))
    cfg = make_cfg("evaluate.ks=[20,50]", "evaluate.channels=[itemcf,popular]", "matrix.lookback_days=7")
    replace_partition(events, cfg.warehouse, "events", D, count=False)  # one partition: rows are chosen by ts

    published, res = run_evaluate(spark, cfg, D)   # default mode: both
    # no recall stage ran: the published mode is skipped and says why
    assert published.mode == "published" and published.rows == []
    assert published.skipped.startswith("no recall table has lists for dt=2026-11-20: recall_itemcf (no table)")
    assert res.mode == "rebuild" and [r["channel"] for r in res.rows] == ["itemcf", "popular"]
    # recall.active_days null: every test user is a target, so every channel has a list for each of them
    assert res.test_users > 100 and all(r["users"] == r["users_with_list"] == res.test_users for r in res.rows)
    itemcf, popular = res.row("itemcf"), res.row("popular")
    assert itemcf["recall@50"] > popular["recall@50"], res.rows
    for r in res.rows:
        assert 0 <= r["recall@20"] <= r["recall@50"] <= 1 and 0 <= r["mrr"] <= 1
        assert 0 < r["coverage@20"] <= r["coverage@50"] <= 1
    saved = json.loads(Path(res.path).read_text())
    expected_path = Path(cfg.warehouse.root).resolve() / "reports/evaluate/dt=2026-11-20/metrics.json"
    assert res.path == published.path == str(expected_path)
    assert saved["mode"] == "both" and [r["mode"] for r in saved["results"]] == ["published", "rebuild"]
    rebuilt = saved["results"][1]
    assert rebuilt["split"] == "user_chrono" and rebuilt["rows"][0]["recall@50"] == itemcf["recall@50"]

    # recall.active_days = 1: only test users active on D get lists -- the hole shows in users_with_list
    (short,) = run_evaluate(spark, cfg.model_copy(update={
        "recall": cfg.recall.model_copy(update={"active_days": 1}),
        "evaluate": cfg.evaluate.model_copy(update={"mode": "rebuild", "channels": ["popular"]})}), D)
    row = short.row("popular")
    assert 0 < row["users_with_list"] == short.extra["target_users"] < short.test_users
