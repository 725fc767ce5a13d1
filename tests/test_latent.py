"""Latent channels: EASE against a brute-force per-column ridge regression (weights, scores, ranks, the
user cap of the Gram), item2vec sessions by hand and neighbours on planted item groups (deterministic), ALS
on planted blocks, and the stage end to end on a tiny warehouse, re-run idempotently."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import numpy as np
import pytest
from chispa import assert_approx_df_equality

from recsys_batch.config import (
    ALSConfig, EaseConfig, Item2VecConfig, MatrixConfig, RecallConfig, SequentialConfig,
)
from recsys_batch.io.tables import read_table, replace_partition
from recsys_batch.recall.latent import (
    als_recall, cosine_neighbours, ease_gram, ease_recall, ease_weights, item2vec_similarity, item_sessions,
    popular_items, sequential_recall, sequential_similarity, top_n_masked,
)
from recsys_batch.recall.latent_stage import run_latent
from recsys_batch.schemas import EVENTS, RECALL, USER_ITEM_MATRIX

D = date(2026, 11, 20)
W = {"impression": 0.0, "click": 1.0, "like": 2.0, "collect": 3.0, "share": 4.0, "comment": 3.0}


def at(hh: int, mm: int = 0, day: date = D) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=timezone.utc)


# ---- EASE ------------------------------------------------------------------------------------------------

ITEMS = ["a", "b", "c", "d", "e"]
#: user -> items (binary X); a..e in id order = model rows 0..4
BASKETS = {"u1": "abc", "u2": "abd", "u3": "bce", "u4": "acd", "u5": "ab", "u6": "de"}


def _x() -> np.ndarray:
    x = np.zeros((len(BASKETS), len(ITEMS)))
    for r, its in enumerate(BASKETS.values()):
        for i in its:
            x[r, ITEMS.index(i)] = 1.0
    return x


def _brute_ease(x: np.ndarray, lam: float) -> np.ndarray:
    """Column j of B: ridge regression of X_j on the other columns (diag(B) = 0 by construction)."""
    n = x.shape[1]
    b = np.zeros((n, n))
    for j in range(n):
        o = [i for i in range(n) if i != j]
        xo = x[:, o]
        b[o, j] = np.linalg.solve(xo.T @ xo + lam * np.eye(n - 1), xo.T @ x[:, j])
    return b


def _matrix(spark, baskets=BASKETS):
    rows = [(u, i, 1.0 + k, 1, at(1 + k)) for u, its in baskets.items() for k, i in enumerate(its)]
    return spark.createDataFrame(rows, USER_ITEM_MATRIX)


def test_ease_weights_equal_the_per_column_ridge_regression():
    x = _x()
    for lam in (0.5, 3.0):
        got = ease_weights(x.T @ x, lam)
        np.testing.assert_allclose(got, _brute_ease(x, lam), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(ease_weights(x.T @ x, lam, "float32"), _brute_ease(x, lam), rtol=1e-4, atol=1e-5)
    # hand-checkable: two items always together -> B_ab = B_ba = g / (g + lambda) with g = co-count
    g = np.array([[3.0, 3.0], [3.0, 3.0]])
    np.testing.assert_allclose(ease_weights(g, 1.0), [[0.0, 0.75], [0.75, 0.0]])


def test_ease_gram_counts_cooccurrences_with_the_user_cap(spark):
    m = _matrix(spark)
    assert popular_items(m, 3) == ["a", "b", "c"]  # a 4 users, b 4, c 3 and d 3 tie -> c (id asc); e 2
    x = _x()
    np.testing.assert_array_equal(ease_gram(m, ITEMS, 10), x.T @ x)
    # cap 2: each user keeps its 2 most recent items (the later letters of its basket, last_ts = 1 + position)
    capped = {u: its[-2:] for u, its in BASKETS.items()}
    xc = np.zeros_like(x)
    for r, its in enumerate(capped.values()):
        for i in its:
            xc[r, ITEMS.index(i)] = 1.0
    np.testing.assert_array_equal(ease_gram(m, ITEMS, 2), xc.T @ xc)


def test_ease_recall_exact_scores_and_ranks(spark):
    m = _matrix(spark)
    lam = 2.0
    x = _x()
    b = _brute_ease(x, lam)
    s = x @ b
    rows = []
    for r, u in enumerate(BASKETS):
        cand = [(round(s[r, j], 12), ITEMS[j]) for j in range(len(ITEMS)) if x[r, j] == 0]
        cand.sort(key=lambda t: (-t[0], t[1]))
        rows += [(u, i, float(sc), k) for k, (sc, i) in enumerate(cand[:2], start=1)]
    expected = spark.createDataFrame(rows, RECALL)
    cfg = EaseConfig(l2=lam, max_items=5, max_items_per_user=10, recency_half_life_items=None)
    got = ease_recall(m, cfg, RecallConfig(top_n=2))
    assert_approx_df_equality(got, expected, 1e-9, ignore_row_order=True, ignore_nullable=True)
    # spot value: u5 has a, b -> score(c) = B_ac + B_bc, ranked against d, e
    assert got.where("user_id = 'u5' and item_id = 'c'").first().score == pytest.approx(b[0, 2] + b[1, 2])
    got.unpersist()

    # restricted to users; a user without any of the model's items gets no list
    m2 = m.unionByName(spark.createDataFrame([("u7", "z", 1.0, 1, at(1))], USER_ITEM_MATRIX))
    only = ease_recall(m2, cfg.model_copy(update={"max_items": 5}), RecallConfig(top_n=2),
                       users=spark.createDataFrame([("u5",), ("u7",)], "user_id string"))
    assert sorted((r.user_id, r.rank) for r in only.collect()) == [("u5", 1), ("u5", 2)]


def test_ease_recall_weighs_recent_items_by_rank(spark):
    # each basket's last letter is the user's newest item (last_ts = 1 + position): p = len - 1 - position
    m = _matrix(spark)
    b = _brute_ease(_x(), 1.0)
    xw = np.zeros((len(BASKETS), len(ITEMS)))
    for r, its in enumerate(BASKETS.values()):
        for k, i in enumerate(its):
            xw[r, ITEMS.index(i)] = 0.5 ** ((len(its) - 1 - k) / 2.0)
    s = xw @ b
    got = ease_recall(m, EaseConfig(l2=1.0, recency_half_life_items=2.0), RecallConfig(top_n=3)).collect()
    want = {(u, ITEMS[j]): s[r, j] for r, u in enumerate(BASKETS) for j in range(len(ITEMS)) if xw[r, j] == 0}
    assert len(got) == len(want) == 14  # 2 or 3 unseen items per user: all fit in the top 3
    for row in got:
        assert row.score == pytest.approx(want[(row.user_id, row.item_id)], rel=1e-9)
    # u1 = a, b, c (c newest, rank 0; half-life 2 ranks): d scores 0.5 B_ad + 0.5^0.5 B_bd + B_cd
    assert want[("u1", "d")] == pytest.approx(0.5 * b[0, 3] + 0.5 ** 0.5 * b[1, 3] + b[2, 3])


def test_ease_topk_scoring_keeps_the_largest_positive_weights(spark):
    m = _matrix(spark)
    x = _x()
    b = _brute_ease(x, 2.0)
    bk = np.zeros_like(b)
    for i in range(len(ITEMS)):  # top-1 positive weight per row
        j = int(np.argmax(np.where(np.arange(len(ITEMS)) == i, -np.inf, b[i])))
        if b[i, j] > 0:
            bk[i, j] = b[i, j]
    s = x @ bk
    got = {(r.user_id, r.item_id): r.score for r in
           ease_recall(m, EaseConfig(l2=2.0, scoring="topk", top_k=1), RecallConfig(top_n=5)).collect()}
    want = {(u, ITEMS[j]): s[r, j] for r, u in enumerate(BASKETS) for j in range(len(ITEMS))
            if x[r, j] == 0 and s[r, j] > 0}
    assert got.keys() == want.keys()
    for key, v in want.items():
        assert got[key] == pytest.approx(v, rel=1e-9)


def test_top_n_masked_orders_by_score_then_column():
    scores = np.array([[0.5, 0.9, 0.5, 0.1, 0.5], [1.0, 1.0, 1.0, 1.0, 1.0]])
    r, c, s, k = top_n_masked(scores, [np.array([1]), np.array([0, 1, 2, 3])], 3)
    assert list(zip(r.tolist(), c.tolist(), k.tolist())) == [(0, 0, 1), (0, 2, 2), (0, 4, 3), (1, 4, 1)]


# ---- item2vec ------------------------------------------------------------------------------------------------


def test_item_sessions_split_on_gaps_dedupe_and_restrict_to_the_matrix(spark):
    ev = lambda u, i, t, ts: (u, i, t, ts, None, None, None)  # noqa: E731
    events = spark.createDataFrame([
        ev("u1", "a", "click", at(10, 0)), ev("u1", "b", "click", at(10, 10)), ev("u1", "a", "like", at(10, 20)),
        ev("u1", "c", "click", at(10, 20)),                       # same ts as the like: a < c
        ev("u1", "x", "click", at(10, 25)),                       # not in u1's matrix row: dropped
        ev("u1", "d", "click", at(11, 0)),                        # 35 min gap: new session, single item: dropped
        ev("u1", "e", "impression", at(11, 1)),                   # weight 0
        ev("u1", "f", "click", at(13, 0)), ev("u1", "g", "share", at(13, 30)),  # exactly 30 min: same session
        ev("u2", "c", "click", at(9, 0)), ev("u2", "a", "click", at(9, 0)),
    ], EVENTS)
    m = spark.createDataFrame([(u, i, 1.0, 1, at(9)) for u, i in
                               [("u1", "a"), ("u1", "b"), ("u1", "c"), ("u1", "d"), ("u1", "e"), ("u1", "f"),
                                ("u1", "g"), ("u2", "a"), ("u2", "c")]], USER_ITEM_MATRIX)
    got = sorted((r.user_id, r.session, r["items"]) for r in
                 item_sessions(events, m, W, D, MatrixConfig(), 30.0).collect())
    assert got == [("u1", 1, ["a", "b", "c"]), ("u1", 3, ["f", "g"]), ("u2", 1, ["a", "c"])]


def _planted_sessions(spark, seed=3):
    rng = np.random.default_rng(seed)
    groups = {"A": [f"a{k}" for k in range(6)], "B": [f"b{k}" for k in range(6)]}
    rows = []
    for u in range(40):
        g = groups["A" if u % 2 else "B"]
        for s in range(3):
            rows.append((f"u{u:02d}", s + 1, [str(x) for x in rng.permutation(g)]))
    return spark.createDataFrame(rows, "user_id string, session int, items array<string>")


def test_item2vec_neighbours_stay_in_their_planted_group_and_are_deterministic(spark):
    cfg = Item2VecConfig(vector_size=8, window_size=3, min_count=1, max_iter=3, top_k=3)
    sessions = _planted_sessions(spark)
    got = item2vec_similarity(sessions, cfg, seed=5)
    rows = got.collect()
    assert {r.item_id for r in rows} == {f"{g}{k}" for g in "ab" for k in range(6)}
    assert all(r.item_id[0] == r.neighbor[0] for r in rows), [(r.item_id, r.neighbor) for r in rows]
    assert all(r.rank <= 3 and r.score > 0 for r in rows)
    again = item2vec_similarity(_planted_sessions(spark), cfg, seed=5)
    assert sorted(map(tuple, again.collect())) == sorted(map(tuple, rows))


def test_cosine_neighbours_exact_values():
    v = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0], [-1.0, 0.0]], np.float32)
    r, c, s, k = cosine_neighbours(["a", "b", "c", "d"], v, 2)
    got = [(int(a), int(b), round(float(x), 6), int(y)) for a, b, x, y in zip(r, c, s, k, strict=True)]
    h = round(float(np.float32(1 / np.sqrt(2))), 6)
    # a: b (0.707), c has cosine 0 and d -1: dropped; b: a and c tie at 0.707 -> a first; d: nothing positive
    assert got == [(0, 1, h, 1), (1, 0, h, 1), (1, 2, h, 2), (2, 1, h, 1)]


# ---- sequential rules ------------------------------------------------------------------------------------------

SEQ_SESSIONS = [("u1", 1, list("abcab")), ("u1", 2, list("bd")), ("u2", 1, list("acdb")), ("u3", 1, list("ca"))]


def _brute_rules(sessions, steps: int) -> dict[tuple[str, str], float]:
    """sim(i, j) = w(i -> j) / sum_j' w(i -> j'), w = sum of 1 / (q - p) over 0 < q - p <= steps."""
    w: dict[tuple[str, str], float] = {}
    for _, _, s in sessions:
        for p in range(len(s)):
            for q in range(p + 1, min(len(s), p + steps + 1)):
                w[s[p], s[q]] = w.get((s[p], s[q]), 0.0) + 1.0 / (q - p)
    out: dict[tuple[str, str], float] = {}
    for (i, j), v in w.items():
        out[i, j] = v / sum(x for (a, _), x in w.items() if a == i)
    return out


@pytest.mark.parametrize("steps", [1, 2, 10])
def test_sequential_rules_equal_the_brute_force_sums(spark, steps):
    # item_sessions dedupes within a session; "abcab" here also checks that repeats and self-pairs are counted
    # as the formula says (item_based_recall drops i -> i)
    df = spark.createDataFrame(SEQ_SESSIONS, "user_id string, session int, items array<string>")
    got = sequential_similarity(df, SequentialConfig(steps=steps, top_k=10)).collect()
    want = _brute_rules(SEQ_SESSIONS, steps)
    assert {(r.item_id, r.neighbor): r.score for r in got} == pytest.approx(want, abs=1e-11)
    for i in {r.item_id for r in got}:  # ranks 1.. by score desc, neighbor asc
        mine = sorted((r for r in got if r.item_id == i), key=lambda r: r.rank)
        assert [r.rank for r in mine] == list(range(1, len(mine) + 1))
        assert [(-r.score, r.neighbor) for r in mine] == sorted((-r.score, r.neighbor) for r in mine)


def test_sequential_rules_hand_values_and_top_k(spark):
    df = spark.createDataFrame(SEQ_SESSIONS, "user_id string, session int, items array<string>")
    got = {(r.item_id, r.neighbor): (r.score, r.rank)
           for r in sequential_similarity(df, SequentialConfig(steps=2, top_k=2)).collect()}
    # w(a -> .): u1 s1 "abcab": a0->b 1, a0->c 1/2, a3->b 1; u2 "acdb": a->c 1, a->d 1/2
    # -> b 2, c 1.5, d 0.5 (total 4); top 2: b 0.5, c 0.375
    assert {k: v for k, v in got.items() if k[0] == "a"} == {("a", "b"): (0.5, 1), ("a", "c"): (0.375, 2)}
    # w(d -> .): u2 "acdb": d->b 1 -> b 1.0 (u1 s2 "bd" ends on d: nothing after it)
    assert {k: v for k, v in got.items() if k[0] == "d"} == {("d", "b"): (1.0, 1)}


def test_sequential_recall_weighs_seeds_by_recency_rank(spark):
    # u1's newest item is y, then x (last_ts); the matrix scores favour x 10:1 but the rank decides
    m = spark.createDataFrame([("u1", "x", 10.0, 1, at(8)), ("u1", "y", 1.0, 1, at(9)),
                               ("u2", "p", 1.0, 1, at(9))], USER_ITEM_MATRIX)
    rules = spark.createDataFrame([("x", "a", 1.0, 1), ("y", "b", 1.0, 1), ("y", "a", 0.5, 2), ("y", "x", 0.9, 3)],
                                  "item_id string, neighbor string, score double, rank int")
    cfg = SequentialConfig(lastn_items=2, seed_half_life_items=1.0)
    got = sorted(map(tuple, sequential_recall(m, rules, cfg, RecallConfig(top_n=5)).collect()))
    # b: 1.0 (y, weight 0.5^0); a: 0.5 * 0.5^0 (y) + 1.0 * 0.5^1 (x) = 1.0; x is seen. Ties: item_id asc
    assert got == [("u1", "a", 1.0, 1), ("u1", "b", 1.0, 2)]
    one = sorted(map(tuple, sequential_recall(m, rules, cfg.model_copy(update={"lastn_items": 1}),
                                              RecallConfig(top_n=5)).collect()))
    assert one == [("u1", "a", 0.5, 2), ("u1", "b", 1.0, 1)]


# ---- ALS -------------------------------------------------------------------------------------------------------


def test_als_recovers_planted_blocks(spark):
    rows = []
    for u in range(12):
        g = "a" if u < 6 else "b"
        for k in range(5):
            if k != u % 6 % 5:  # each user misses one item of its block
                rows.append((f"u{u:02d}", f"{g}{k}", 1.0, 1, at(1)))
    m = spark.createDataFrame(rows, USER_ITEM_MATRIX)
    got = als_recall(m, ALSConfig(rank=2, max_iter=5, reg_param=1.0, alpha=10.0, num_blocks=2), RecallConfig(top_n=1),
                     seed=1)
    top = {r.user_id: r.item_id for r in got.collect()}
    assert len(top) == 12
    for u in range(12):
        assert top[f"u{u:02d}"] == f"{'a' if u < 6 else 'b'}{u % 6 % 5}"


# ---- the stage ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_run_latent_writes_every_channel_and_reruns_idempotently(spark, make_cfg):
    cfg = make_cfg("recall.top_n=3", "latent.channels=[item2vec, ease, als, sequential]",
                   "latent.item2vec.vector_size=8",
                   "latent.item2vec.min_count=1", "latent.item2vec.max_iter=2", "latent.ease.l2=1.0",
                   "latent.als.rank=2", "latent.als.max_iter=2", "latent.als.num_blocks=1")
    users = {f"u{k}": ("abcd" if k % 2 else "cdef")[: 2 + k % 3] for k in range(6)}
    ev_rows, m_rows = [], []
    for u, its in users.items():
        for pos, i in enumerate(its):
            ts = at(8, 5 * pos, D - timedelta(days=1))
            ev_rows.append((u, i, "click", ts, None, None, None))
            m_rows.append((u, i, 1.0, 1, ts))
    replace_partition(spark.createDataFrame(ev_rows, EVENTS), cfg.warehouse, "events", D - timedelta(days=1))
    replace_partition(spark.createDataFrame(m_rows, USER_ITEM_MATRIX), cfg.warehouse, "user_item_matrix", D)

    stats = run_latent(spark, cfg, D)
    assert [s.table for s in stats] == ["item2vec_topk", "recall_item2vec", "recall_ease", "recall_als",
                                        "sequential_topk", "recall_sequential"]
    first = {}
    for s in stats[1:4] + stats[5:]:
        df = read_table(spark, cfg.warehouse, s.table, D).drop("dt")
        rows = df.collect()
        first[s.table] = sorted(map(tuple, rows))
        reached = {r.user_id for r in rows}
        # EASE and ALS score every item for every user; item2vec only reaches users whose items have neighbours;
        # sequential every user but u2 (c d e f: in every session only c .. f ever follow them, all seen by u2)
        if s.table == "recall_item2vec":
            assert reached and reached <= set(users)
        else:
            assert reached == set(users) - ({"u2"} if s.table == "recall_sequential" else set()), s.table
        assert all((r.item_id not in users[r.user_id]) for r in rows), s.table  # seen excluded
        assert all(1 <= r.rank <= 3 for r in rows)
    # EASE scores all 6 items: u2 (cdef) and u5 (abcd) have 2 unseen, the other four 3 or more -> 2 + 2 + 4 * 3
    assert stats[2].rows == 16

    # re-run one channel (item2vec's run-to-run determinism is tested above; ALS is the slowest): its
    # partition is replaced, not appended to, and the tables of the channels not run are left as they were
    only_ease = cfg.model_copy(update={"latent": cfg.latent.model_copy(update={"channels": ["ease"]})})
    again = run_latent(spark, only_ease, D)
    assert [(s.table, s.rows) for s in again] == [("recall_ease", 16)]
    for table, rows in first.items():
        assert sorted(map(tuple, read_table(spark, cfg.warehouse, table, D).drop("dt").collect())) == rows, table
