"""Recall channels: hand-computed item-based / user-based scores (presence and channel half-lives), seen
exclusion, top-N and tie order, popular counts / decay / margin, and the stage end to end (every matrix user
gets lists by default, skipping a channel whose neighbour table is missing)."""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta, timezone

import pytest
from chispa import assert_approx_df_equality

from recsys_batch.config import MatrixConfig, RecallConfig
from recsys_batch.errors import RecsysBatchError, SchemaError
from recsys_batch.io.tables import read_table, replace_partition
from recsys_batch.recall import (
    active_users, item_based_recall, popular_recall, popular_scores, popular_window, user_based_recall,
)
from recsys_batch.recall.stage import run_recall
from recsys_batch.schemas import EVENTS, ITEM_SIM, RECALL, USER_ITEM_MATRIX, USER_SIM

D = date(2026, 11, 20)
W = {"impression": 0.0, "click": 1.0, "like": 2.0, "collect": 3.0, "share": 4.0, "comment": 3.0}


def at(day: date, hh: int = 0, mm: int = 0, ss: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, ss, tzinfo=timezone.utc)


T1, T2, T3 = at(D, 1), at(D, 2), at(D, 3)


@pytest.fixture()
def matrix(spark):
    # u1: a (newest, r=2), b (r=1), c (oldest, r=1); u2: a; u3: d
    return spark.createDataFrame([
        ("u1", "a", 2.0, 1, T3), ("u1", "b", 1.0, 1, T2), ("u1", "c", 1.0, 1, T1),
        ("u2", "a", 1.0, 1, T1),
        ("u3", "d", 3.0, 2, T1),
    ], USER_ITEM_MATRIX)


def recall_df(spark, rows):
    return spark.createDataFrame(rows, RECALL)


def check(actual, expected):
    assert_approx_df_equality(actual, expected, 1e-9, ignore_row_order=True, ignore_nullable=True)


def test_item_based_scores_seen_topn_and_ties(spark, matrix):
    sim = spark.createDataFrame([
        ("a", "b", 0.5, 1), ("a", "c", 0.4, 2), ("a", "d", 0.2, 3),
        ("b", "d", 0.3, 1), ("b", "e", 0.6, 2),
        ("c", "e", 1.0, 1),                       # c is u1's 3rd newest item: not a seed with lastn_items=2
        ("d", "a", 0.1, 1), ("d", "e", 0.1, 2),
    ], ITEM_SIM)
    cfg = RecallConfig(top_n=2, lastn_items=2)
    expected = recall_df(spark, [
        # u1 seeds a (2), b (1): b, c seen; d = 2*0.2 + 1*0.3, e = 1*0.6
        ("u1", "d", 0.7, 1), ("u1", "e", 0.6, 2),
        # u2 seed a (1): b 0.5, c 0.4, d 0.2 cut by top_n
        ("u2", "b", 0.5, 1), ("u2", "c", 0.4, 2),
        # u3 seed d (3): a 0.3 and e 0.3 tie -> item_id asc
        ("u3", "a", 0.3, 1), ("u3", "e", 0.3, 2),
    ])
    check(item_based_recall(matrix, sim, cfg), expected)
    only_u3 = item_based_recall(matrix, sim, cfg, users=spark.createDataFrame([("u3",)], "user_id string"))
    check(only_u3, recall_df(spark, [("u3", "a", 0.3, 1), ("u3", "e", 0.3, 2)]))


USER_SIMS = [
    ("u1", "u2", 0.5, 1), ("u1", "u3", 0.25, 2),
    ("u2", "u1", 0.8, 1),
    ("u3", "u1", 0.4, 1), ("u3", "u2", 0.1, 2),
]


def test_user_based_presence_scores_recent_items_and_exclusion(spark, matrix):
    sim = spark.createDataFrame(USER_SIMS, USER_SIM)
    cfg = RecallConfig(top_n=2, neighbor_recent_items=2)  # u1 contributes a and b, not its oldest item c
    # presence: r(v, i) = 1 whatever the neighbour's matrix score (u3's d has score 3, u1's a has 2)
    expected = recall_df(spark, [
        ("u1", "d", 0.25, 1),                     # from u3; a (from u2) is seen
        ("u2", "b", 0.8, 1),                      # from u1; a seen, c not among u1's 2 most recent
        ("u3", "a", 0.4 + 0.1, 1), ("u3", "b", 0.4, 2),
    ])
    check(user_based_recall(matrix, sim, cfg), expected)


def test_user_based_channel_half_life(spark):
    # v1's item a is 1 day old, b 3 days old, v2's a 10 days old (ages from the end of D); half-life 2 days
    m = spark.createDataFrame([
        ("v1", "a", 9.0, 1, at(D)), ("v1", "b", 9.0, 1, at(D - timedelta(days=2))),
        ("v2", "a", 0.1, 1, at(D - timedelta(days=9))), ("u", "z", 1.0, 1, at(D)),
    ], USER_ITEM_MATRIX)
    sim = spark.createDataFrame([("u", "v1", 0.5, 1), ("u", "v2", 1.0, 2)], USER_SIM)
    cfg = RecallConfig(top_n=5, usercf_half_life_days=2.0)
    got = user_based_recall(m, sim, cfg, users=spark.createDataFrame([("u",)], "user_id string"), run_date=D)
    a, b = 0.5 * 0.5 ** (1 / 2) + 1.0 * 0.5 ** (10 / 2), 0.5 * 0.5 ** (3 / 2)
    check(got, recall_df(spark, [("u", "a", a, 1), ("u", "b", b, 2)]))
    with pytest.raises(RecsysBatchError, match="usercf_half_life_days"):
        user_based_recall(m, sim, cfg)


def test_popular_defaults_count_over_the_matrix_window(spark):
    assert popular_window(RecallConfig(), MatrixConfig()) == (30, None)
    assert popular_window(RecallConfig(popular_lookback_days=7, popular_half_life_days=2.0),
                          MatrixConfig()) == (7, 2.0)
    ev = lambda u, i, t, ts: (u, i, t, ts, None, None, None)  # noqa: E731
    events = spark.createDataFrame([
        ev("u1", "old", "like", at(D - timedelta(days=29))),  # first day of the 30-day window: full weight 2
        ev("u2", "old", "click", at(D - timedelta(days=20))),
        ev("u3", "new", "click", at(D, 23)),
        ev("u3", "gone", "share", at(D - timedelta(days=30), 23)),  # before the window
    ], EVENTS)
    lookback, half_life = popular_window(RecallConfig(), MatrixConfig())
    got = popular_scores(events, W, D, lookback, half_life)
    expected = spark.createDataFrame([("old", 3.0), ("new", 1.0)], "item_id string, score double")
    assert_approx_df_equality(got, expected, 1e-9, ignore_row_order=True, ignore_nullable=True)


def test_popular_decay_window_margin_and_exclusion(spark):
    ev = lambda u, i, t, ts: (u, i, t, ts, None, None, None)  # noqa: E731
    events = spark.createDataFrame([
        ev("u9", "x", "click", at(D)),                                  # 1 day old: 0.5
        ev("u9", "x", "like", at(D, 12)),                               # 0.5 day old: 2 * 0.5 ** 0.5
        ev("u8", "y", "share", at(D - timedelta(days=1))),              # window start, 2 days old: 4 * 0.25
        ev("u8", "z", "click", at(D - timedelta(days=1)) - timedelta(seconds=1)),  # before the window
        ev("u8", "y", "click", at(D + timedelta(days=1))),              # after the end of D
        ev("u8", "w", "impression", at(D, 6)),                          # weight 0
        ev("u7", "v", "comment", at(D, 18)),                            # 0.25 day old: 3 * 0.5 ** 0.25
    ], EVENTS)
    cfg = RecallConfig(top_n=2, popular_lookback_days=2, popular_half_life_days=1.0, popular_margin_items=1)
    pv, px, py = 3 * 0.5 ** 0.25, 0.5 + 2 * 0.5 ** 0.5, 1.0
    pop = popular_scores(events, W, D, cfg.popular_lookback_days, cfg.popular_half_life_days)
    expected_pop = spark.createDataFrame([("v", pv), ("x", px), ("y", py)], "item_id string, score double")
    assert_approx_df_equality(pop, expected_pop, 1e-9, ignore_row_order=True, ignore_nullable=True)

    seen = spark.createDataFrame([
        ("u1", "v", 1.0, 1, T1), ("u2", "v", 1.0, 1, T1), ("u2", "x", 1.0, 1, T1), ("u3", "q", 1.0, 1, T1),
    ], USER_ITEM_MATRIX)
    users = spark.createDataFrame([("u1",), ("u2",), ("u3",), ("u4",)], "user_id string")
    expected = recall_df(spark, [
        ("u1", "x", px, 1), ("u1", "y", py, 2),   # v seen: the margin fills the list
        ("u2", "y", py, 1),                       # saw 2 of the head > margin 1: one item only (documented)
        ("u3", "v", pv, 1), ("u3", "x", px, 2),   # seen items outside the head change nothing
        ("u4", "v", pv, 1), ("u4", "x", px, 2),   # a target without history gets the head
    ])
    check(popular_recall(pop, seen, users, cfg), expected)


def test_active_users_and_schema_errors(spark, matrix):
    old = spark.createDataFrame([("u5", "a", 1.0, 1, at(D - timedelta(days=3), 23))], USER_ITEM_MATRIX)
    act = active_users(matrix.unionByName(old), D, active_days=3)
    assert sorted(r.user_id for r in act.collect()) == ["u1", "u2", "u3"]
    every = active_users(matrix.unionByName(old), D, active_days=None)
    assert sorted(r.user_id for r in every.collect()) == ["u1", "u2", "u3", "u5"]
    with pytest.raises(SchemaError, match="item similarity.*neighbor"):
        item_based_recall(matrix, spark.createDataFrame([("a", 1.0)], "item_id string, score double"), RecallConfig())


def _stage_inputs(spark, cfg, matrix):
    # u5 was last active 60 days before D: inside the matrix window of a long-lookback config
    old_user = spark.createDataFrame([("u5", "a", 0.01, 1, at(D - timedelta(days=60)))], USER_ITEM_MATRIX)
    replace_partition(matrix.unionByName(old_user), cfg.warehouse, "user_item_matrix", D)
    replace_partition(spark.createDataFrame([("a", "e", 0.5, 1), ("d", "b", 0.2, 1)], ITEM_SIM),
                      cfg.warehouse, "itemcf_topk", D)
    replace_partition(spark.createDataFrame([(ev_u, "e", "click", T1, None, None, None) for ev_u in ("u1", "u2")],
                                            EVENTS), cfg.warehouse, "events", D)


@pytest.mark.slow
def test_run_recall_every_matrix_user_gets_lists_and_skips_missing_channels(spark, make_cfg, matrix, caplog):
    cfg = make_cfg("recall.top_n=2", "recall.lastn_items=2", "matrix.lookback_days=90")
    _stage_inputs(spark, cfg, matrix)
    with caplog.at_level(logging.INFO, logger="recsys_batch.recall.stage"):
        stats = run_recall(spark, cfg, D)
    assert [s.table for s in stats] == ["recall_itemcf", "recall_popular"]
    assert "recall_swing for 2026-11-20 skipped" in caplog.text and "recall_usercf" in caplog.text
    # 4 target users, ItemCF reaches all (u5 through its 60-day-old a), nobody is left to popular alone
    assert "4 target users" in caplog.text and "recall_itemcf 4" in caplog.text and "popular only: 0" in caplog.text
    got = read_table(spark, cfg.warehouse, "recall_itemcf", D).drop("dt")
    check(got, recall_df(spark, [("u1", "e", 1.0, 1), ("u2", "e", 0.5, 1), ("u3", "b", 0.6, 1),
                                 ("u5", "e", 0.005, 1)]))
    pop = read_table(spark, cfg.warehouse, "recall_popular", D).drop("dt")
    # default popular: plain weighted counts over the matrix window -- two clicks on e
    check(pop, recall_df(spark, [(u, "e", 2.0, 1) for u in ("u1", "u2", "u3", "u5")]))
    assert stats[0].rows == 4


@pytest.mark.slow
def test_run_recall_active_days_restricts_targets(spark, make_cfg, matrix, caplog):
    cfg = make_cfg("recall.top_n=2", "recall.lastn_items=2", "matrix.lookback_days=90", "recall.active_days=30",
                   "recall.popular_lookback_days=2", "recall.popular_half_life_days=2.0")
    _stage_inputs(spark, cfg, matrix)
    run_recall(spark, cfg, D)
    got = read_table(spark, cfg.warehouse, "recall_itemcf", D).drop("dt")
    check(got, recall_df(spark, [("u1", "e", 1.0, 1), ("u2", "e", 0.5, 1), ("u3", "b", 0.6, 1)]))
    pop = read_table(spark, cfg.warehouse, "recall_popular", D).drop("dt")
    decay = 2 * 0.5 ** ((24 - 1) / 24 / 2.0)  # two clicks at 01:00 of D, half-life 2 days
    check(pop, recall_df(spark, [(u, "e", decay, 1) for u in ("u1", "u2", "u3")]))
