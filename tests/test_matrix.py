"""Matrix stage: decayed scores, window bounds, caps, last-N, activity, id maps, run_matrix end to end."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from chispa import assert_approx_df_equality, assert_df_equality
from pyspark.sql import functions as F

from recsys_batch.config import EventsConfig, IngestConfig, MatrixConfig
from recsys_batch.errors import SchemaError
from recsys_batch.io.tables import read_table, replace_partition
from recsys_batch.matrix import (
    build_item_activity, build_user_activity, build_user_item_matrix, build_user_lastn, events_partitions,
    run_matrix, update_id_map, window_bounds,
)
from recsys_batch.schemas import (
    EVENTS, ID_MAP_ITEM, ITEM_ACTIVITY, USER_ACTIVITY, USER_ITEM_MATRIX, USER_LASTN, Col,
)

W = EventsConfig().weights  # impression 0, click 1, like 2, collect 3, share 4, comment 3
D = date(2026, 11, 20)


def at(day: date, hh: int = 0, mm: int = 0, ss: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, ss, tzinfo=timezone.utc)


def ev(user: str, item: str, etype: str, ts: datetime) -> tuple:
    return (user, item, etype, ts, None, None, None)


def events_df(spark, rows):
    return spark.createDataFrame(rows, EVENTS)


def test_window_bounds():
    assert window_bounds(D, 3) == (at(D - timedelta(days=2)), at(D + timedelta(days=1)))


def test_matrix_decayed_scores_window_and_impressions(spark):
    cfg = MatrixConfig(lookback_days=3, half_life_days=1.0)
    start = D - timedelta(days=2)  # D - lookback + 1
    events = events_df(spark, [
        ev("u1", "a", "click", at(D)),              # 1 day old: 1 * 0.5
        ev("u1", "a", "like", at(D, 12)),           # 0.5 day old: 2 * 0.5 ** 0.5
        ev("u1", "a", "impression", at(D, 18)),     # weight 0: neither n_events nor last_ts
        ev("u1", "b", "share", at(start)),          # window start, included: 4 * 0.5 ** 3
        ev("u1", "c", "click", at(start) - timedelta(seconds=1)),  # older: excluded
        ev("u1", "d", "click", at(D + timedelta(days=1))),          # end of D: excluded
        ev("u1", "f", "impression", at(D, 9)),      # impression only: no entry
        ev("u2", "a", "bogus", at(D, 9)),           # unknown type: weight 0
        ev("u2", "e", "COMMENT", at(D, 23)),        # types matched case-insensitively
    ])
    expected = spark.createDataFrame([
        ("u1", "a", 0.5 + 2 * 0.5 ** 0.5, 2, at(D, 12)),
        ("u1", "b", 0.5, 1, at(start)),
        ("u2", "e", 3 * 0.5 ** (1 / 24), 1, at(D, 23)),
    ], USER_ITEM_MATRIX)
    out = build_user_item_matrix(events, W, D, cfg)
    assert out.schema.simpleString() == USER_ITEM_MATRIX.simpleString()
    assert_approx_df_equality(out, expected, 1e-9, ignore_nullable=True, ignore_row_order=True)


def test_matrix_reports_missing_columns(spark):
    bad = spark.createDataFrame([("u1", "a")], f"{Col.USER} string, {Col.ITEM} string")
    with pytest.raises(SchemaError, match="event_type"):
        build_user_item_matrix(bad, W, D, MatrixConfig())


def _cap_events(spark):
    # half-life 1 day: d (share 08:00) 2.52 > a (click 12:00) 0.71 > b = c (click 11:00) 0.69
    return events_df(spark, [
        ev("u1", "a", "click", at(D, 12)),
        ev("u1", "c", "click", at(D, 11)),
        ev("u1", "b", "click", at(D, 11)),
        ev("u1", "d", "share", at(D, 8)),
        ev("u2", "z", "click", at(D, 1)),
    ])


@pytest.mark.parametrize("order, cap, kept", [
    ("recent", 2, {"u1": ["a", "b"], "u2": ["z"]}),       # a newest; b beats c on the ts tie
    ("score", 3, {"u1": ["a", "b", "d"], "u2": ["z"]}),   # d, a, then b beats c on the score tie
    ("score", 1, {"u1": ["d"], "u2": ["z"]}),
])
def test_matrix_heavy_user_cap(spark, order, cap, kept):
    cfg = MatrixConfig(lookback_days=3, half_life_days=1.0, max_items_per_user=cap, cap_order=order)
    out = build_user_item_matrix(_cap_events(spark), W, D, cfg)
    got: dict[str, list[str]] = {}
    for r in out.collect():
        got.setdefault(r[Col.USER], []).append(r[Col.ITEM])
    assert {u: sorted(v) for u, v in got.items()} == kept


def test_user_lastn_order_dedup_length(spark):
    cfg = MatrixConfig(lookback_days=3, half_life_days=1.0, lastn=3)
    events = events_df(spark, [
        ev("u1", "a", "click", at(D, 10)),
        ev("u1", "a", "like", at(D, 9)),            # a: latest ts 10:00, max weight 2
        ev("u1", "c", "click", at(D, 11)),
        ev("u1", "b", "click", at(D, 11)),          # tie with c: b first
        ev("u1", "d", "collect", at(D, 8)),         # 4th newest: cut by lastn = 3
        ev("u1", "e", "impression", at(D, 12)),     # not positive
        ev("u1", "g", "click", at(D + timedelta(days=1), 1)),  # after the window
        ev("u2", "x", "share", at(D - timedelta(days=1))),
    ])
    expected = spark.createDataFrame([
        ("u1", [("b", at(D, 11), 1.0), ("c", at(D, 11), 1.0), ("a", at(D, 10), 2.0)]),
        ("u2", [("x", at(D - timedelta(days=1)), 4.0)]),
    ], USER_LASTN)
    out = build_user_lastn(events, W, D, cfg)
    assert out.schema.simpleString() == USER_LASTN.simpleString()
    assert_df_equality(out, expected, ignore_row_order=True, ignore_nullable=True)


def test_activity_from_matrix(spark):
    matrix = spark.createDataFrame([
        ("u1", "a", 1.0, 2, at(D, 1)),
        ("u1", "b", 0.5, 1, at(D, 3)),
        ("u2", "a", 2.0, 3, at(D, 2)),
    ], USER_ITEM_MATRIX)
    items = spark.createDataFrame([("a", 2, 5, 3.0, at(D, 2)), ("b", 1, 1, 0.5, at(D, 3))], ITEM_ACTIVITY)
    users = spark.createDataFrame([("u1", 2, 3, 1.5, at(D, 3)), ("u2", 1, 3, 2.0, at(D, 2))], USER_ACTIVITY)
    assert_df_equality(build_item_activity(matrix), items, ignore_row_order=True, ignore_nullable=True)
    assert_df_equality(build_user_activity(matrix), users, ignore_row_order=True, ignore_nullable=True)


def test_update_id_map_stable_and_appends_sorted(spark):
    ids1 = spark.createDataFrame([("c",), ("a",), ("b",), ("a",)], f"{Col.ITEM} string").repartition(3)
    m1 = update_id_map(None, ids1, Col.ITEM, Col.ITEM_IDX)
    assert_df_equality(m1, spark.createDataFrame([("a", 0), ("b", 1), ("c", 2)], ID_MAP_ITEM),
                       ignore_row_order=True, ignore_nullable=True)

    # old ids keep their idx (even "b" < "aa" ordering does not renumber), new ones appended sorted
    ids2 = spark.createDataFrame([("d",), ("b",), ("aa",), ("zz",), ("d",)], f"{Col.ITEM} string").repartition(3)
    m2 = update_id_map(m1, ids2, Col.ITEM, Col.ITEM_IDX)
    expected = spark.createDataFrame([("a", 0), ("b", 1), ("c", 2), ("aa", 3), ("d", 4), ("zz", 5)], ID_MAP_ITEM)
    assert_df_equality(m2, expected, ignore_row_order=True, ignore_nullable=True)
    assert m2.select(Col.ITEM).distinct().count() == m2.select(Col.ITEM_IDX).distinct().count() == 6

    # nothing new: the map is unchanged
    m3 = update_id_map(m2, ids2, Col.ITEM, Col.ITEM_IDX)
    assert_df_equality(m3, expected, ignore_row_order=True, ignore_nullable=True)


def test_events_partitions_ignore_lateness():
    m = MatrixConfig(lookback_days=3)
    assert events_partitions(D, m, IngestConfig(future_tolerance_minutes=10)) == (D - timedelta(days=3), D)
    assert events_partitions(D, m, IngestConfig(max_lateness_days=None)) == (D - timedelta(days=3), D)
    assert events_partitions(D, m, IngestConfig(future_tolerance_minutes=1440)) == (D - timedelta(days=4), D)


def _rows(spark, cfg, name, day):
    return sorted(tuple(r) for r in read_table(spark, cfg.warehouse, name, day).drop(Col.DT).collect())


def test_run_matrix_end_to_end_and_idempotent(spark, make_cfg):
    cfg = make_cfg("matrix.lookback_days=2", "matrix.half_life_days=1", "matrix.lastn=2",
                   "matrix.max_items_per_user=2")
    d1, d2 = D - timedelta(days=1), D
    batches = {
        d1 - timedelta(days=3): [ev("u9", "old", "click", at(d1 - timedelta(days=3), 5))],  # outside both windows
        d1: [ev("u2", "b", "click", at(d1, 5)), ev("u1", "a", "like", at(d1, 6)),
             ev("u1", "a", "impression", at(d1, 7))],
        # batch d2 holds a late event of d1 and new users/items
        d2: [ev("u1", "c", "share", at(d2, 1)), ev("u3", "a", "click", at(d2, 2)),
             ev("u0", "z", "click", at(d1, 23)), ev("u1", "d", "click", at(d2, 3)),
             ev("u1", "e", "impression", at(d2, 4))],
    }
    for day, rows in batches.items():
        replace_partition(events_df(spark, rows), cfg.warehouse, "events", day)

    s1 = run_matrix(spark, cfg, d1)
    assert [s.table for s in s1] == ["user_item_matrix", "user_lastn", "item_activity", "user_activity",
                                     "id_map_user", "id_map_item"]
    assert {s.table: s.rows for s in s1} == {"user_item_matrix": 2, "user_lastn": 2, "item_activity": 2,
                                             "user_activity": 2, "id_map_user": 2, "id_map_item": 2}
    assert _rows(spark, cfg, "id_map_user", d1) == [("u1", 0), ("u2", 1)]
    assert _rows(spark, cfg, "id_map_item", d1) == [("a", 0), ("b", 1)]

    s2 = run_matrix(spark, cfg, d2)
    # u1 has a, c, d in the window; cap 2 by recency keeps d (03:00) and c (01:00)
    matrix = _rows(spark, cfg, "user_item_matrix", d2)
    assert [(u, i, n) for u, i, _, n, _ in matrix] == [
        ("u0", "z", 1), ("u1", "c", 1), ("u1", "d", 1), ("u2", "b", 1), ("u3", "a", 1)]
    assert dict(_rows(spark, cfg, "id_map_user", d2)) == {"u1": 0, "u2": 1, "u0": 2, "u3": 3}
    assert dict(_rows(spark, cfg, "id_map_item", d2)) == {"a": 0, "b": 1, "c": 2, "d": 3, "z": 4}
    lastn = {u: [e[Col.ITEM] for e in items] for u, items in _rows(spark, cfg, "user_lastn", d2)}
    assert lastn == {"u0": ["z"], "u1": ["d", "c"], "u2": ["b"], "u3": ["a"]}
    activity = {i: (nu, ne) for i, nu, ne, _, _ in _rows(spark, cfg, "item_activity", d2)}
    assert activity == {"a": (1, 1), "b": (1, 1), "c": (1, 1), "d": (1, 1), "z": (1, 1)}  # u1's a was capped

    # idempotent re-run of d2: same partitions, nothing appended, d1 untouched
    before = {s.table: _rows(spark, cfg, s.table, d2) for s in s2}
    s2b = run_matrix(spark, cfg, d2)
    assert {s.table: s.rows for s in s2b} == {s.table: s.rows for s in s2}
    for s in s2b:
        after = _rows(spark, cfg, s.table, d2)
        assert len(after) == len(set(map(repr, after))) == s.rows
        if s.table != "user_lastn":  # arrays of Rows: compared by repr below
            assert after == before[s.table]
    assert repr(_rows(spark, cfg, "user_lastn", d2)) == repr(before["user_lastn"])
    assert _rows(spark, cfg, "id_map_user", d1) == [("u1", 0), ("u2", 1)]
    total = read_table(spark, cfg.warehouse, "user_item_matrix").groupBy(Col.DT).count()
    assert sorted(tuple(r) for r in total.collect()) == [(d1.isoformat(), 2), (d2.isoformat(), 5)]
    assert read_table(spark, cfg.warehouse, "user_item_matrix", d2).where(F.col(Col.USER) == "u9").count() == 0
