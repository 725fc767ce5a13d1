"""Rule-based recall channels (recall.rules): hot, fresh, author, similar_author, geo, new_users against
hand-computed or brute-force values on tiny data; seen items excluded; new-user bucket backoff; the
recall_rules stage end to end and idempotent on re-run."""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta, timezone

import pytest
from chispa import assert_approx_df_equality

from recsys_batch.config import RecallConfig, RulesConfig
from recsys_batch.io.tables import read_table, replace_partition
from recsys_batch.recall.rules import (
    author_recall, author_recent_items, author_similarity, follows_until, fresh_lift, fresh_recall, geo_recall,
    hot_recall, item_catalog, new_user_targets, new_users_recall, similar_author_recall, trending_scores,
    user_attributes, user_authors, user_profile_shares, weighted_events,
)
from recsys_batch.recall.rules_stage import RULE_CHANNELS, run_recall_rules
from recsys_batch.schemas import EVENTS, FOLLOWS, ITEMS, RECALL, USER_ITEM_MATRIX, USERS

D = date(2026, 11, 20)
W = {"impression": 0.0, "click": 1.0, "like": 2.0, "collect": 3.0, "share": 4.0, "comment": 3.0}


def at(day: date, hh: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hh, tzinfo=timezone.utc)


def days_ago(k: int, hh: int = 0) -> datetime:
    return at(D - timedelta(days=k), hh)


def ev(u, i, t, ts):
    return (u, i, t, ts, None, None, None)


def item(i, author=None, cat=None, tags=None, pub=None, gh=None):
    return (i, author, cat, tags, pub, None, None, gh, None, None)


def user(u, gender=None, age=None, city=None, gh=None):
    return (u, gender, age, city, gh, None, None, None)


def mrow(u, i, score=1.0, n=1, ts=None):
    return (u, i, score, n, ts or at(D, 1))


def recall_df(spark, rows):
    return spark.createDataFrame(rows, RECALL)


def check(actual, expected):
    assert_approx_df_equality(actual, expected, 1e-9, ignore_row_order=True, ignore_nullable=True)


def users_df(spark, *ids):
    return spark.createDataFrame([(u,) for u in ids], "user_id string")


# ---- hot -------------------------------------------------------------------------------------------------------


def test_hot_trend_category_mix_and_seen_exclusion(spark):
    cfg = RulesConfig(hot_short_days=1, hot_long_days=4, hot_smoothing_per_day=1.0, hot_min_short_events=1.0,
                      hot_global_items=1, hot_category_items=2, profile_top_keys=1, hot_category_boost=1.0)
    events = spark.createDataFrame([
        ev("e1", "x", "click", at(D, 1)), ev("e2", "x", "click", at(D, 2)),            # x: short 2, long 4
        ev("e1", "x", "click", days_ago(2)), ev("e2", "x", "click", days_ago(2)),
        ev("e3", "y", "like", at(D, 3)),                                                # y: short 2 (a like), long 2
        ev("e3", "y", "impression", at(D, 3)),                                          # weight 0
        ev("e4", "z", "click", at(D, 4)),                                               # z: short 1, long 1
        ev("e4", "w", "share", days_ago(1)), ev("e4", "w", "click", days_ago(3)),       # w: no short event
        ev("e4", "v", "share", days_ago(4, 23)),                                        # before the 4-day window
    ], EVENTS)
    trend = trending_scores(events, W, D, cfg)
    expected_trend = spark.createDataFrame(
        [("x", (2 / 1 + 1) / (4 / 4 + 1)), ("y", (2 + 1) / (2 / 4 + 1)), ("z", (1 + 1) / (1 / 4 + 1))],
        "item_id string, score double")
    assert_approx_df_equality(trend, expected_trend, 1e-9, ignore_row_order=True, ignore_nullable=True)

    catalog = item_catalog(spark.createDataFrame([
        item("x", cat="A"), item("y", cat="B"), item("z", cat="A"), item("w", cat="A"),
        item("m1", cat="A"), item("m2", cat="B"),
    ], ITEMS), D)
    # u1: x (A, 1), m1 (A, 2), m2 (B, 1) -> share A 3/4, B 1/4, top category A; u2's only item is unknown
    matrix = spark.createDataFrame([mrow("u1", "x", 1.0, ts=at(D, 3)), mrow("u1", "m1", 2.0, ts=at(D, 2)),
                                    mrow("u1", "m2", 1.0, ts=at(D, 1)), mrow("u2", "unknown", 1.0)], USER_ITEM_MATRIX)
    profile = user_profile_shares(matrix, catalog, recent=50)
    got_profile = {(r.user_id, r._kind, r._key): r._share for r in profile.collect() if r._kind == "category"}
    assert got_profile == pytest.approx({("u1", "category", "A"): 0.75, ("u1", "category", "B"): 0.25})
    ty, tz = 3 / 1.5, 2 / 1.25
    expected = recall_df(spark, [
        # G = {y}; H_A = {z, x}: x seen; z = trend * (1 + 0.75), y = trend * (1 + 0.25)
        ("u1", "z", tz * 1.75, 1), ("u1", "y", ty * 1.25, 2),
        ("u2", "y", ty, 1),                                       # no profile: the global list only
    ])
    check(hot_recall(trend, catalog, profile, matrix, users_df(spark, "u1", "u2"), RecallConfig(top_n=5), cfg),
          expected)


# ---- fresh -----------------------------------------------------------------------------------------------------


def test_fresh_lift_content_similarity_and_candidates(spark):
    cfg = RulesConfig(fresh_days=3, fresh_prior_impressions=4.0, fresh_global_items=1, fresh_key_items=5,
                      profile_top_keys=2)
    catalog = item_catalog(spark.createDataFrame([
        item("f1", "a1", "A", ["t1", "t2", "t1"], days_ago(1)),   # duplicate tag counts once
        item("f2", "a2", "B", ["t1"], at(D, 9)),
        item("f3", None, "C", None, days_ago(2)),                 # first day of the 3-day window
        item("old", "a1", "A", ["t1"], days_ago(10)),
        item("i9", "a9", "B", ["t3"], days_ago(30)),
        item("f4", "a1", "A", ["t1"], at(D + timedelta(days=1), 1)),  # published after the end of D: unknown
    ], ITEMS), D)
    imp = [ev("v", "old", "impression", at(D, 1))] * 10 + [ev("v", "f1", "impression", at(D, 1))] * 5 \
        + [ev("v", "f3", "impression", at(D, 1))] * 5
    clicks = [ev("v", "old", "click", at(D, 2))] * 2 + [ev("v", "f1", "click", at(D, 2))] * 3
    outside = [ev("v", "old", "impression", days_ago(3, 23))]
    events = spark.createDataFrame(imp + clicks + outside, EVENTS)
    lift = fresh_lift(events, catalog, D, cfg)
    p0, m = 5 / 20, 4.0
    l1, l2, l3 = (3 + m * p0) / ((5 + m) * p0), 1.0, (0 + m * p0) / ((5 + m) * p0)
    assert {r.item_id: r._lift for r in lift.collect()} == pytest.approx({"f1": l1, "f2": l2, "f3": l3})

    matrix = spark.createDataFrame([mrow("u1", "old"), mrow("u1", "i9"), mrow("u2", "f1"), mrow("u3", "zz")],
                                   USER_ITEM_MATRIX)
    profile = user_profile_shares(matrix, catalog, recent=50)
    wsum = 1.0 + 0.5 + 1.0
    expected = recall_df(spark, [
        # u1: A .5 B .5, a1 .5 a9 .5, t1 .5 t3 .5; f3 (category C) is no candidate: not global, no key match
        ("u1", "f1", l1 + (1.0 * 0.5 + 0.5 * (0.5 * 0.5) + 1.0 * 0.5) / wsum, 1),
        ("u1", "f2", l2 + (1.0 * 0.5 + 0.5 * 0.5) / wsum, 2),
        # u2 has seen f1 (A, a1, t1, t2: each share 1); f2 arrives through tag t1
        ("u2", "f2", l2 + 0.5 * 1.0 / wsum, 1),
        # u3's item is unknown: the global head only
        ("u3", "f1", l1, 1),
    ])
    got = fresh_recall(lift, catalog, profile, matrix, users_df(spark, "u1", "u2", "u3"), RecallConfig(top_n=5), cfg)
    check(got, expected)


# ---- author / similar author ----------------------------------------------------------------------------------

AUTHOR_ITEMS = [
    item("p1", "a1", pub=days_ago(1)), item("p2", "a1", pub=days_ago(3)), item("p3", "a1"),
    item("q1", "a2", pub=at(D)), item("q2", "a2", pub=days_ago(2)),
    item("r1", "a3", pub=days_ago(5)), item("s1", "a4", pub=days_ago(1)),
]
AUTHOR_MATRIX = [mrow("u1", "p1", n=2), mrow("u1", "q1"), mrow("u2", "q2"), mrow("u2", "r1"),
                 mrow("u3", "p2"), mrow("u3", "q1"), mrow("u3", "s1")]


@pytest.fixture()
def author_inputs(spark):
    catalog = item_catalog(spark.createDataFrame(AUTHOR_ITEMS, ITEMS), D)
    matrix = spark.createDataFrame(AUTHOR_MATRIX, USER_ITEM_MATRIX)
    follows = follows_until(spark.createDataFrame([
        ("u2", "a4", at(D, 10)), ("u1", "a3", at(D + timedelta(days=1), 1)),  # u1's follow is after D
    ], FOLLOWS), D)
    return catalog, matrix, follows


def test_author_followed_and_engaged_newest_first(spark, author_inputs):
    catalog, matrix, follows = author_inputs
    cfg = RulesConfig(author_min_events=2, author_recent_items=2, author_max_authors=5)
    authors = user_authors(matrix, catalog, follows, cfg)
    # u1: a1 (2 events on p1); a2 has 1 event; u2 follows a4; u3 has 1 event per author: none
    assert sorted((r.user_id, r.author_id, r._followed, r.n_events) for r in authors.collect()) == [
        ("u1", "a1", False, 2), ("u2", "a4", True, 0)]
    recent = author_recent_items(catalog, D, cfg.author_recent_items)
    # a1's 2 newest: p1 (2 days before the end of D), p2 (4); p3 (unknown publish time) is cut
    got = author_recall(authors, recent, matrix, users_df(spark, "u1", "u2", "u3"), RecallConfig(top_n=5))
    check(got, recall_df(spark, [("u1", "p2", 1 / (1 + 4), 1), ("u2", "s1", 1 / (1 + 2), 1)]))


def _brute_author_sim(matrix_rows, item_author, min_support):
    aud: dict[str, set[str]] = {}
    for u, i, *_ in matrix_rows:
        if item_author.get(i):
            aud.setdefault(item_author[i], set()).add(u)
    return {(a, b): len(aud[a] & aud[b]) / math.sqrt(len(aud[a]) * len(aud[b]))
            for a in aud for b in aud if a != b and len(aud[a] & aud[b]) >= min_support}


def test_similar_author_cosine_and_recall_match_brute_force(spark, author_inputs):
    catalog, matrix, follows = author_inputs
    cfg = RulesConfig(author_min_events=2, author_recent_items=2, author_max_authors=5, similar_author_top_k=5,
                      similar_author_min_support=1)
    asim = author_similarity(matrix, catalog, cfg)
    item_author = {r[0]: r[1] for r in AUTHOR_ITEMS}
    ref_sim = _brute_author_sim(AUTHOR_MATRIX, item_author, 1)
    assert {(r.author_id, r.neighbor): r.score for r in asim.collect()} == pytest.approx(ref_sim)
    assert ref_sim[("a1", "a2")] == pytest.approx(2 / math.sqrt(6))  # u1, u3 read both; |U(a1)| 2, |U(a2)| 3

    authors = user_authors(matrix, catalog, follows, cfg)
    recent = author_recent_items(catalog, D, cfg.author_recent_items)
    got = similar_author_recall(matrix, catalog, follows, authors, asim, recent, users_df(spark, "u1", "u2", "u3"),
                                RecallConfig(top_n=10), cfg)
    # brute force: S(u) = matrix authors + follows (dt <= D), A(u) from user_authors, items = 2 newest per author
    ages = {"p1": 2, "p2": 4, "q1": 1, "q2": 3, "r1": 6, "s1": 2}
    newest = {"a1": ["p1", "p2"], "a2": ["q1", "q2"], "a3": ["r1"], "a4": ["s1"]}
    seen = {(u, i) for u, i, *_ in AUTHOR_MATRIX}
    seeds = {u: {item_author[i] for v, i, *_ in AUTHOR_MATRIX if v == u} for u in ("u1", "u2", "u3")}
    seeds["u2"].add("a4")
    own = {"u1": {"a1"}, "u2": {"a4"}, "u3": set()}
    rows = []
    for u, s_u in seeds.items():
        s = {}
        for a in s_u:
            for (x, b), v in ref_sim.items():
                if x == a and b not in own[u]:
                    s[b] = s.get(b, 0.0) + v
        cand = [(i, s[b] / (1 + ages[i])) for b in s for i in newest[b] if (u, i) not in seen]
        cand.sort(key=lambda t: (-t[1], t[0]))
        rows += [(u, i, sc, r) for r, (i, sc) in enumerate(cand, start=1)]
    assert any(r[0] == "u1" and r[1] == "s1" for r in rows)  # a4 reaches u1 through a1 (shared reader u3)
    check(got, recall_df(spark, rows))


# ---- geo -------------------------------------------------------------------------------------------------------


def test_geo_local_plus_global_popularity_per_cell(spark):
    cfg = RulesConfig(geo_precision=4, geo_global_weight=0.1, geo_cell_items=2)
    attrs = user_attributes(spark.createDataFrame([
        user("u1", gh="wx4g0abc"), user("u2", gh="wx4g9zzz"), user("u3", gh="u4pr1234"), user("u4"),
    ], USERS), D, [18, 25], cfg.geo_precision)
    catalog = item_catalog(spark.createDataFrame([
        item("g1", gh="wx4gaaaa"), item("g2", gh="wx4gbbbb"), item("g3", gh="wx4g0000"), item("h1", gh="u4prxxxx"),
        item("n1"),
    ], ITEMS), D)
    events = spark.createDataFrame([
        ev("u1", "g1", "click", at(D, 1)), ev("u2", "g2", "like", at(D, 1)),
        ev("u3", "g1", "share", at(D, 1)),          # another cell: counts for g1 globally only
        ev("u3", "h1", "click", at(D, 1)), ev("u4", "g3", "click", at(D, 1)),  # u4 has no cell
        ev("u4", "n1", "share", at(D, 1)),          # n1 has no location
        ev("u1", "g3", "share", days_ago(30)),      # outside the 30-day window
    ], EVENTS)
    pos = weighted_events(events, W, D, 30)
    matrix = spark.createDataFrame([mrow("u1", "g1"), mrow("u2", "g2")], USER_ITEM_MATRIX)
    # cell wx4g: g1 = 1 + 0.1 * 5, g2 = 2 + 0.1 * 2, g3 = 0 + 0.1 * 1 (cut: 2 items per cell); u4pr: h1 = 1 + 0.1
    expected = recall_df(spark, [("u1", "g2", 2.2, 1), ("u2", "g1", 1.5, 1), ("u3", "h1", 1.1, 1)])
    got = geo_recall(pos, attrs, catalog, matrix, users_df(spark, "u1", "u2", "u3", "u4"), RecallConfig(top_n=5), cfg)
    check(got, expected)


# ---- new users -------------------------------------------------------------------------------------------------


def test_new_users_bucket_backoff_to_global(spark):
    cfg = RulesConfig(new_user_max_items=2, new_user_min_bucket_users=2)
    attrs = user_attributes(spark.createDataFrame([
        user("a1", "F", 20, "c1"), user("a2", "f", 21, "c1"),     # (18_24, f, c1): 2 users
        user("b1", "m", 22, "c1"), user("b2", "m", 23, "c2"),     # (18_24, m, *) thin; (18_24, m): 2 users
        user("c1", "f", 30, "c9"), user("c2", "m", 40, "c8"),     # only 25p has 2 users
        user("n1", "f", 19, "c1"), user("n2", "m", 24, "c3"), user("n3", "f", 50, "c7"), user("n4", "f", None, "c1"),
    ], USERS), D, [18, 25], 4)
    events = spark.createDataFrame([
        ev("a1", "i1", "click", at(D, 1)), ev("a2", "i1", "click", at(D, 1)), ev("a2", "i2", "like", at(D, 1)),
        ev("a1", "i3", "click", at(D, 1)),
        ev("b1", "j1", "like", at(D, 1)), ev("b2", "j2", "click", at(D, 1)),
        ev("c1", "k1", "click", at(D, 1)), ev("c2", "k1", "click", at(D, 1)), ev("c2", "k2", "click", at(D, 1)),
        ev("h", "g1", "click", at(D, 1)), ev("h", "g1", "like", at(D, 2)),   # h: no profile, global only
    ], EVENTS)
    pos = weighted_events(events, W, D, 30)
    matrix = spark.createDataFrame([mrow("n5", "g1"), mrow("h", "g1"), mrow("h", "i1")], USER_ITEM_MATRIX)
    targets = new_user_targets(matrix, attrs.where("user_id like 'n%'"), cfg)
    assert sorted(r.user_id for r in targets.collect()) == ["n1", "n2", "n3", "n4", "n5"]  # h has 2 items
    expected = recall_df(spark, [
        ("n1", "i1", 2.0, 1), ("n1", "i2", 2.0, 2),   # (18_24, f, c1)
        ("n2", "j1", 2.0, 1), ("n2", "j2", 1.0, 2),   # (18_24, m, c3) has no users -> (18_24, m)
        ("n3", "k1", 2.0, 1), ("n3", "k2", 1.0, 2),   # (25p, f, c7) and (25p, f) thin -> (25p)
        ("n4", "g1", 3.0, 1), ("n4", "i1", 2.0, 2),   # unknown age: global (g1 3, then i1 / i2 / j1 / k1 at 2)
        ("n5", "i1", 2.0, 1), ("n5", "i2", 2.0, 2),   # not in users: global minus its seen g1
    ])
    check(new_users_recall(pos, attrs, targets, matrix, RecallConfig(top_n=2), cfg), expected)


# ---- the stage -------------------------------------------------------------------------------------------------


def _warehouse(spark, cfg):
    wh = cfg.warehouse
    items = [
        item("x", "a1", "A", ["t1"], days_ago(1), "wx4gaaaa"), item("y", "a2", "A", ["t1"], days_ago(2), "wx4gbbbb"),
        item("z", "a2", "B", ["t2"], days_ago(40), "wx4gcccc"), item("n", "a1", "A", ["t1"], at(D, 5), "wx4gdddd"),
    ]
    users = [user("u1", "f", 20, "c1", "wx4g0000"), user("u2", "f", 21, "c1", "wx4g1111"),
             user("u3", "m", 30, "c2", "wx4g2222"), user("new", "f", 22, "c1", None)]
    events = [ev("u1", "x", "click", at(D, 1)), ev("u1", "x", "like", at(D, 2)), ev("u2", "y", "click", at(D, 1)),
              ev("u2", "x", "click", at(D, 3)), ev("u3", "z", "click", at(D, 1)), ev("u3", "y", "click", at(D, 2)),
              ev("u3", "x", "impression", at(D, 1))]
    matrix = [mrow("u1", "x", 3.0, 2), mrow("u2", "y"), mrow("u2", "x"), mrow("u3", "z"), mrow("u3", "y")]
    replace_partition(spark.createDataFrame(items, ITEMS), wh, "items", D)
    replace_partition(spark.createDataFrame(users, USERS), wh, "users", D)
    replace_partition(spark.createDataFrame([("u3", "a1", at(D, 4))], FOLLOWS), wh, "follows", D)
    replace_partition(spark.createDataFrame(events, EVENTS), wh, "events", D)
    replace_partition(spark.createDataFrame(matrix, USER_ITEM_MATRIX), wh, "user_item_matrix", D)


@pytest.mark.slow
def test_run_recall_rules_writes_every_channel_and_is_idempotent(spark, make_cfg):
    cfg = make_cfg("recall.top_n=3", "recall_rules.hot_min_short_events=1", "recall_rules.similar_author_min_support=1",
                   "recall_rules.author_min_events=1", "recall_rules.new_user_min_bucket_users=1", "recall_rules.new_user_max_items=1")
    _warehouse(spark, cfg)
    stats = run_recall_rules(spark, cfg, D)
    assert [s.table for s in stats] == [f"recall_{c}" for c in RULE_CHANNELS]
    first = {s.table: sorted(tuple(r) for r in read_table(spark, cfg.warehouse, s.table, D).drop("dt").collect())
             for s in stats}
    seen = {("u1", "x"), ("u2", "y"), ("u2", "x"), ("u3", "z"), ("u3", "y")}
    for table, rows in first.items():
        assert rows, f"{table} is empty"
        assert not {(r[0], r[1]) for r in rows} & seen, table
    # new item n (published on D, no events) reaches u3 (category A through y) by content; fresh: x, y, n only
    assert {r[1] for r in first["recall_fresh"]} <= {"x", "y", "n"} and ("u3", "n") in {r[:2] for r in
                                                                                           first["recall_fresh"]}
    assert {r[0] for r in first["recall_new_users"]} == {"new"}  # the users-table user without a matrix row
    # author (min 1 event): u1 -> a1; u2 -> a1, a2; u3 -> a2 and a1 (followed); n is 19 hours old at the end of D
    fresh_n = 1 / (1 + 19 / 24)
    assert first["recall_author"] == sorted([("u1", "n", fresh_n, 1), ("u2", "n", fresh_n, 1),
                                            ("u2", "z", 1 / (1 + 41), 2), ("u3", "n", fresh_n, 1),
                                            ("u3", "x", 1 / (1 + 2), 2)])
    # new: (18_24, f, c1) = u1, u2: x 3 + 1, y 1
    assert first["recall_new_users"] == [("new", "x", 4.0, 1), ("new", "y", 1.0, 2)]
    again = run_recall_rules(spark, cfg, D)
    assert [s.rows for s in again] == [s.rows for s in stats]
    for s in again:
        assert sorted(tuple(r) for r in read_table(spark, cfg.warehouse, s.table, D).drop("dt").collect()) == first[s.table]
