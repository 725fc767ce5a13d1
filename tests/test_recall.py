"""Recall channels: hand-computed item-based / user-based scores, seen exclusion, top-N and tie order,
popular decay and margin, and the stage end to end (skipping a channel whose neighbour table is missing)."""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta, timezone

import pytest
from chispa import assert_approx_df_equality

from recsys_batch.config import RecallConfig
from recsys_batch.errors import SchemaError
from recsys_batch.io.tables import read_table, replace_partition
from recsys_batch.recall import (
    active_users, item_based_recall, popular_recall, popular_scores, user_based_recall,
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


def test_user_based_scores_recent_items_and_exclusion(spark, matrix):
    sim = spark.createDataFrame([
        ("u1", "u2", 0.5, 1), ("u1", "u3", 0.25, 2),
        ("u2", "u1", 0.8, 1),
        ("u3", "u1", 0.4, 1), ("u3", "u2", 0.1, 2),
    ], USER_SIM)
    cfg = RecallConfig(top_n=2, neighbor_recent_items=2)  # u1 contributes a and b, not its oldest item c
    expected = recall_df(spark, [
        ("u1", "d", 0.25 * 3.0, 1),               # from u3; a (from u2) is seen
        ("u2", "b", 0.8 * 1.0, 1),                # from u1; a seen, c not among u1's 2 most recent
        ("u3", "a", 0.4 * 2.0 + 0.1 * 1.0, 1), ("u3", "b", 0.4 * 1.0, 2),
    ])
    check(user_based_recall(matrix, sim, cfg), expected)


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
    pop = popular_scores(events, W, D, cfg)
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
    with pytest.raises(SchemaError, match="item similarity.*neighbor"):
        item_based_recall(matrix, spark.createDataFrame([("a", 1.0)], "item_id string, score double"), RecallConfig())


@pytest.mark.slow
def test_run_recall_writes_tables_and_skips_missing_channels(spark, make_cfg, matrix, caplog):
    cfg = make_cfg("recall.top_n=2", "recall.lastn_items=2", "recall.active_days=1")
    replace_partition(matrix, cfg.warehouse, "user_item_matrix", D)
    replace_partition(spark.createDataFrame([("a", "e", 0.5, 1), ("d", "b", 0.2, 1)], ITEM_SIM),
                      cfg.warehouse, "itemcf_topk", D)
    replace_partition(spark.createDataFrame([(ev_u, "e", "click", T1, None, None, None) for ev_u in ("u1", "u2")],
                                            EVENTS), cfg.warehouse, "events", D)
    with caplog.at_level(logging.INFO, logger="recsys_batch.recall.stage"):
        stats = run_recall(spark, cfg, D)
    assert [s.table for s in stats] == ["recall_itemcf", "recall_popular"]
    assert "recall_swing for 2026-11-20 skipped" in caplog.text and "recall_usercf" in caplog.text
    got = read_table(spark, cfg.warehouse, "recall_itemcf", D).drop("dt")
    check(got, recall_df(spark, [("u1", "e", 1.0, 1), ("u2", "e", 0.5, 1), ("u3", "b", 0.6, 1)]))
    pop = read_table(spark, cfg.warehouse, "recall_popular", D).drop("dt")
    decay = 2 * 0.5 ** ((24 - 1) / 24 / 2.0)  # two clicks at 01:00 of D, half-life 2 days
    check(pop, recall_df(spark, [(u, "e", decay, 1) for u in ("u1", "u2", "u3")]))
    assert stats[0].rows == 3
