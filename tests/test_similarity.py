"""Similarity stage: ItemCF (penalized, cosine), Swing and UserCF against brute-force numpy references,
caps, min_support, ties, planted clusters, and run_itemcf end to end on Delta."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from itertools import combinations

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from recsys_batch.config import EventsConfig, GenerateConfig, ItemCFConfig, MatrixConfig, SwingConfig, UserCFConfig
from recsys_batch.errors import SchemaError
from recsys_batch.io.tables import read_table, replace_partition
from recsys_batch.schemas import EVENTS, ITEM_SIM, USER_ITEM_MATRIX, USER_SIM, Col
from recsys_batch.similarity import itemcf_similarity, run_itemcf, swing_similarity, usercf_similarity
from recsys_batch.similarity.common import cap_interactions, split_by_work, topk_csr

T0 = datetime(2026, 11, 20, tzinfo=timezone.utc)
NO_CAPS = {"max_items_per_user": 10_000, "max_users_per_item": 10_000, "top_k": 1_000}


# ---- data and brute-force references ----------------------------------------------------------------


def random_rows(seed: int = 3, n_users: int = 25, n_items: int = 18, density: float = 0.3) -> list[tuple]:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for i in range(n_items):
            if rng.random() < density:
                ts = T0 - timedelta(minutes=int(rng.integers(0, 100_000)))
                rows.append((f"u{u:02d}", f"i{i:02d}", float(rng.uniform(0.5, 5.0)), 1, ts))
    return rows


@pytest.fixture(scope="module")
def rows() -> list[tuple]:
    return random_rows()


@pytest.fixture(scope="module")
def matrix(spark, rows):
    return spark.createDataFrame(rows, USER_ITEM_MATRIX)


def as_dict(df, key: str = Col.ITEM) -> dict[tuple[str, str], float]:
    return {(r[key], r[Col.NEIGHBOR]): r[Col.SCORE] for r in df.collect()}


def dense(rows):
    users = sorted({r[0] for r in rows})
    items = sorted({r[1] for r in rows})
    R = np.zeros((len(users), len(items)))
    for u, i, s, *_ in rows:
        R[users.index(u), items.index(i)] = s
    return users, items, R


def ref_itemcf(rows, kind="penalized", alpha=0.5, activity_penalty=True):
    users, items, R = dense(rows)
    B = (R > 0).astype(float)
    out = {}
    for a, b in combinations(range(len(items)), 2):
        for i, j in ((a, b), (b, a)):
            common = np.flatnonzero(B[:, i] * B[:, j])
            if len(common) == 0:
                continue
            if kind == "cosine":
                s = R[:, i] @ R[:, j] / (np.linalg.norm(R[:, i]) * np.linalg.norm(R[:, j]))
            else:
                num = sum(1 / math.log(1 + B[u].sum()) if activity_penalty else 1.0 for u in common)
                s = num / (B[:, i].sum() ** (1 - alpha) * B[:, j].sum() ** alpha)
            out[(items[i], items[j])] = s
    return out


def ref_swing(rows, alpha=1.0, c=0.0, beta=0.5):
    users, items, R = dense(rows)
    B = (R > 0).astype(float)
    w = (B.sum(1) + c) ** (-beta)
    out = {}
    for i in range(len(items)):
        for j in range(len(items)):
            if i == j:
                continue
            common = np.flatnonzero(B[:, i] * B[:, j])
            s = sum(w[u] * w[v] / (alpha + B[u] @ B[v]) for u, v in combinations(common, 2))
            if s > 0:
                out[(items[i], items[j])] = s
    return out


def ref_usercf(rows):
    users, items, R = dense(rows)
    B = (R > 0).astype(float)
    n_i = B.sum(0)
    out = {}
    for u in range(len(users)):
        for v in range(len(users)):
            common = np.flatnonzero(B[u] * B[v])
            if u == v or len(common) == 0:
                continue
            out[(users[u], users[v])] = sum(1 / math.log(1 + n_i[i]) for i in common) / math.sqrt(
                B[u].sum() * B[v].sum())
    return out


def assert_close(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k


# ---- formulas ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,alpha,penalty", [
    ("penalized", 0.5, True), ("penalized", 0.8, True), ("penalized", 0.3, False), ("cosine", 0.5, True),
])
def test_itemcf_matches_bruteforce(matrix, rows, kind, alpha, penalty):
    cfg = ItemCFConfig(kind=kind, alpha=alpha, activity_penalty=penalty, **NO_CAPS)
    out = itemcf_similarity(matrix, cfg)
    assert out.schema == ITEM_SIM or [f.name for f in out.schema] == ITEM_SIM.fieldNames()
    assert_close(as_dict(out), ref_itemcf(rows, kind, alpha, penalty))


@pytest.mark.parametrize("alpha,c,beta", [(1.0, 0.0, 0.5), (0.5, 2.0, 0.3)])
def test_swing_matches_bruteforce(matrix, rows, alpha, c, beta):
    out = swing_similarity(matrix, SwingConfig(alpha=alpha, c=c, beta=beta, **NO_CAPS))
    assert_close(as_dict(out), ref_swing(rows, alpha, c, beta))


def test_usercf_matches_bruteforce(matrix, rows):
    out = usercf_similarity(matrix, UserCFConfig(**NO_CAPS))
    assert [f.name for f in out.schema] == USER_SIM.fieldNames()
    assert_close(as_dict(out, Col.USER), ref_usercf(rows))


def test_ranks_topk_length_and_no_self_pairs(matrix, rows):
    full = as_dict(itemcf_similarity(matrix, ItemCFConfig(**NO_CAPS)))
    out = itemcf_similarity(matrix, ItemCFConfig(top_k=3)).toPandas()
    assert (out[Col.ITEM] != out[Col.NEIGHBOR]).all()
    assert out.groupby(Col.ITEM).size().max() == 3
    for item, g in out.groupby(Col.ITEM):
        g = g.sort_values(Col.RANK)
        assert list(g[Col.RANK]) == list(range(1, len(g) + 1))
        best = sorted(((-s, n) for (i, n), s in full.items() if i == item))[:3]
        assert list(g[Col.NEIGHBOR]) == [n for _, n in best]


# ---- caps, support, ties --------------------------------------------------------------------------------


def test_caps_recent_keep_latest_rows(spark):
    ts = [T0 - timedelta(hours=h) for h in range(10)]
    m = spark.createDataFrame([
        ("u1", "a", 1.0, 1, ts[0]), ("u1", "b", 1.0, 1, ts[2]), ("u1", "c", 1.0, 1, ts[1]),   # u1: a, c
        ("u2", "a", 1.0, 1, ts[3]), ("u3", "a", 1.0, 1, ts[5]), ("u4", "a", 1.0, 1, ts[4]),   # a: u1, u2
        ("u4", "b", 1.0, 1, ts[0]), ("u5", "b", 1.0, 1, ts[0]),                               # tie: u4 < u5
    ], USER_ITEM_MATRIX)
    cfg = ItemCFConfig(max_items_per_user=2, max_users_per_item=2)
    kept = {(r[Col.USER], r[Col.ITEM]) for r in cap_interactions(m, cfg).collect()}
    assert kept == {("u1", "a"), ("u1", "c"), ("u2", "a"), ("u4", "b"), ("u5", "b")}
    sample = ItemCFConfig(max_items_per_user=2, max_users_per_item=2, cap_strategy="sample")
    once = {(r[Col.USER], r[Col.ITEM]) for r in cap_interactions(m, sample).collect()}
    assert once == {(r[Col.USER], r[Col.ITEM]) for r in cap_interactions(m, sample).collect()}
    assert len([k for k in once if k[0] == "u1"]) == 2 and len([k for k in once if k[1] == "a"]) <= 2


def test_caps_bound_pairs_but_not_the_penalty_counts(spark):
    # u1 has a, b, c; the per-user cap keeps the latest 2 (a, b) so c gets no pair with u1,
    # but |I(u1)| stays 3 in the activity penalty
    m = spark.createDataFrame([
        ("u1", "a", 1.0, 1, T0), ("u1", "b", 1.0, 1, T0 - timedelta(hours=1)),
        ("u1", "c", 1.0, 1, T0 - timedelta(hours=2)), ("u2", "a", 1.0, 1, T0), ("u2", "c", 1.0, 1, T0),
    ], USER_ITEM_MATRIX)
    got = as_dict(itemcf_similarity(m, ItemCFConfig(max_items_per_user=2)))
    n = {"a": 2, "b": 1, "c": 2}
    assert set(got) == {("a", "b"), ("b", "a"), ("a", "c"), ("c", "a")}
    assert got[("a", "b")] == pytest.approx(1 / math.log(4) / (n["a"] ** 0.5 * n["b"] ** 0.5))
    assert got[("a", "c")] == pytest.approx(1 / math.log(3) / 2)


def test_min_support_drops_pairs(matrix, rows):
    users, items, R = dense(rows)
    B = (R > 0).astype(int)
    co = B.T @ B
    for cfg, fn in ((ItemCFConfig(min_support=4, **NO_CAPS), itemcf_similarity),
                    (SwingConfig(min_support=4, **NO_CAPS), swing_similarity)):
        got = as_dict(fn(matrix, cfg))
        assert got and all(co[items.index(i), items.index(j)] >= 4 for i, j in got)
        full = as_dict(fn(matrix, cfg.model_copy(update={"min_support": 1})))
        want = {k: v for k, v in full.items() if co[items.index(k[0]), items.index(k[1])] >= 4}
        assert_close(got, want)
    cu = B @ B.T
    got = as_dict(usercf_similarity(matrix, UserCFConfig(min_support=3, **NO_CAPS)), Col.USER)
    assert got and all(cu[users.index(u), users.index(v)] >= 3 for u, v in got)


def test_ties_break_by_neighbor_id(spark):
    # x is bought with z, y, w by one user each, all users alike: equal scores for every neighbour
    m = spark.createDataFrame([
        (u, i, 1.0, 1, T0) for u, items in (("u1", "xz"), ("u2", "xy"), ("u3", "xw")) for i in items
    ], USER_ITEM_MATRIX)
    for fn, cfg in ((itemcf_similarity, ItemCFConfig(top_k=2)), (usercf_similarity, UserCFConfig())):
        out = fn(m, cfg).where(F.col(Col.ITEM if fn is itemcf_similarity else Col.USER).isin("x", "u1"))
        got = [(r[Col.NEIGHBOR], r[Col.RANK]) for r in out.orderBy(Col.RANK).collect()]
        assert got == ([("w", 1), ("y", 2)] if fn is itemcf_similarity else [("u2", 1), ("u3", 2)])


def test_missing_columns_name_the_table(spark):
    m = spark.createDataFrame([("u1", "a")], f"{Col.USER} string, {Col.ITEM} string")
    with pytest.raises(SchemaError, match="user_item_matrix.*score"):
        itemcf_similarity(m, ItemCFConfig())


def test_topk_and_split_helpers():
    indptr = np.array([0, 4, 4, 6])
    r, c, s, rk = topk_csr(indptr, np.array([5, 1, 3, 2, 0, 1]), np.array([1.0, 2.0, 2.0, 0.5, 1.0, 1.0]), 2)
    assert list(zip(r, c, rk)) == [(0, 1, 1), (0, 3, 2), (2, 0, 1), (2, 1, 2)]
    b = split_by_work(np.array([1.0, 1, 1, 1, 100, 1]), 3)
    assert b[0] == 0 and b[-1] == 6 and list(b) == sorted(b)


# ---- planted structure -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic(spark, tmp_path_factory):
    from recsys_batch.generate import generate_synthetic
    from recsys_batch.matrix import build_user_item_matrix

    root = tmp_path_factory.mktemp("synthetic")
    end = T0.date()
    gen = GenerateConfig(n_users=400, n_items=200, n_clusters=4, n_authors=20, n_categories=8, days=5,
                         impressions_per_user_day=30, bad_row_ratio=0.0)
    generate_synthetic(gen, end, root)
    events = spark.read.parquet(str(root / "events")).select(*EVENTS.fieldNames())
    events = events.where(F.col(Col.USER).isNotNull() & F.col(Col.ITEM).isNotNull())
    matrix = build_user_item_matrix(events, EventsConfig().weights, end, MatrixConfig()).cache()
    items = pd.read_parquet(root / "_truth" / "item_clusters.parquet").set_index(Col.ITEM)["cluster"]
    users = pd.read_parquet(root / "_truth" / "user_clusters.parquet").set_index(Col.USER)["cluster"]
    return matrix, items.to_dict(), users.to_dict()


def same_cluster_share(df, key: str, clusters: dict) -> float:
    p = df.where(F.col(Col.RANK) <= 10).toPandas()
    return float((p[key].map(clusters) == p[Col.NEIGHBOR].map(clusters)).mean())


def test_planted_clusters_are_recovered(synthetic):
    matrix, items, users = synthetic
    assert same_cluster_share(itemcf_similarity(matrix, ItemCFConfig()), Col.ITEM, items) > 0.7
    assert same_cluster_share(swing_similarity(matrix, SwingConfig()), Col.ITEM, items) > 0.7
    assert same_cluster_share(usercf_similarity(matrix, UserCFConfig()), Col.USER, users) > 0.7


# ---- stage -----------------------------------------------------------------------------------------------


def test_run_itemcf_writes_delta_and_is_idempotent(spark, make_cfg, run_date, rows):
    cfg = make_cfg("itemcf.top_k=5")
    replace_partition(spark.createDataFrame(rows, USER_ITEM_MATRIX), cfg.warehouse, "user_item_matrix", run_date)
    stats = run_itemcf(spark, cfg, run_date)
    assert stats[0].table == "itemcf_topk" and stats[0].rows > 0
    first = read_table(spark, cfg.warehouse, "itemcf_topk", run_date).drop(Col.DT)
    assert first.count() == stats[0].rows
    assert first.groupBy(Col.ITEM).count().agg(F.max("count")).first()[0] == 5
    want = as_dict(itemcf_similarity(spark.createDataFrame(rows, USER_ITEM_MATRIX), cfg.itemcf))
    assert_close(as_dict(first), want)
    again = run_itemcf(spark, cfg, run_date)
    assert again[0].rows == stats[0].rows
    assert read_table(spark, cfg.warehouse, "itemcf_topk").count() == stats[0].rows
    assert not list((tmp := __import__("pathlib").Path(cfg.warehouse.root) / "_tmp").rglob("*.parquet")), tmp
