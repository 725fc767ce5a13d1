"""Features: point in time, windows, smoothing, vocabularies / OOV / hashing, quantile buckets, coverage,
run_features end to end (tables, feature_spec.json, coverage.json, failure on a required feature)."""

from __future__ import annotations

import json
import logging
import math
from datetime import date, datetime, timedelta, timezone

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_batch.config import BetaPrior, FeaturesConfig
from recsys_batch.features.coverage import CoverageTooLow, check_coverage, coverage_entries, feature_coverage
from recsys_batch.features.spec import (
    bucket_index, categorical_index, dense_value, load_spec, stable_hash64, vocabulary_lookup,
)
from recsys_batch.features.stage import coverage_path, run_features, spec_path
from recsys_batch.features.statistics import (
    add_rates, beta_prior_from_moments, resolve_priors, user_counts, window_events,
)
from recsys_batch.features.transforms import fit_boundaries, fit_table_spec, fit_vocabulary
from recsys_batch.io.tables import read_table, replace_partition
from recsys_batch.schemas import EVENTS, FOLLOWS, ITEMS, USERS, Col

D = date(2026, 11, 20)
FC = FeaturesConfig()


def at(day: date, hh: int = 0, mm: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=timezone.utc)


def ev(user: str, item: str, etype: str, ts: datetime) -> tuple:
    return (user, item, etype, ts, None, None, None)


def _leaky_events(spark):
    """u1 on item a: events inside the windows of D, and three that would leak if read."""
    return spark.createDataFrame([
        ev("u1", "a", "impression", at(D, 10)),
        ev("u1", "a", "click", at(D, 10, 1)),
        ev("u1", "a", "like", at(D, 10, 2)),
        ev("u1", "a", "impression", at(D - timedelta(days=3))),      # 7d and 30d
        ev("u1", "a", "impression", at(D - timedelta(days=20))),     # 30d only
        ev("u1", "a", "impression", at(D - timedelta(days=30))),     # just outside 30d
        ev("u1", "a", "click", at(D + timedelta(days=1), 0, 5)),     # leak: D+1 (within ingest tolerance of batch D)
        ev("u1", "a", "click", at(D + timedelta(days=1), 12)),       # leak: D+1
    ], EVENTS)


def test_point_in_time_windows_and_rates(spark):
    counts = user_counts(window_events(_leaky_events(spark), D, 30), FC)
    rates = add_rates(counts, FC.windows_days, dict(FC.priors)).first()
    assert (rates["impressions_1d"], rates["impressions_7d"], rates["impressions_30d"]) == (1, 2, 3)
    # with leakage clicks_1d would be 3 and the ctr (3 + 1) / (1 + 20)
    assert (rates["clicks_1d"], rates["clicks_7d"], rates["likes_1d"]) == (1, 1, 1)
    assert rates["ctr_1d"] == pytest.approx((1 + 1.0) / (1 + 1.0 + 19.0))
    assert rates["ctr_30d"] == pytest.approx((1 + 1.0) / (3 + 20.0))
    assert rates["like_rate_1d"] == pytest.approx((1 + 1.0) / (1 + 1.0 + 4.0))  # per click, prior (1, 4)
    assert rates["active_days_30d"] == 3
    # the day before sees none of D's events
    before = user_counts(window_events(_leaky_events(spark), D - timedelta(days=1), 30), FC).first()
    assert (before["impressions_1d"], before["clicks_30d"], before["impressions_30d"]) == (0, 0, 2)


def test_beta_prior_method_of_moments_exact(spark):
    # rates 0.1, 0.2, 0.3: m = 0.2, var_pop = 0.02/3, s = 0.16 / v - 1 = 23 -> alpha = 4.6, beta = 18.4
    p = beta_prior_from_moments(0.2, 0.02 / 3)
    assert (p.alpha, p.beta) == (pytest.approx(4.6), pytest.approx(18.4))
    assert beta_prior_from_moments(0.2, 0.0) is None and beta_prior_from_moments(0.2, 0.2) is None
    fc = FeaturesConfig(prior_mode="moments", prior_min_trials=20, windows_days=[30])
    cols = ["impressions_30d", "clicks_30d", "likes_30d", "collects_30d", "shares_30d", "comments_30d"]
    counts = spark.createDataFrame([(100, 10, 0, 0, 0, 0), (100, 20, 0, 0, 0, 0), (100, 30, 0, 0, 0, 0),
                                    (5, 5, 0, 0, 0, 0)],  # 5 impressions < prior_min_trials: not in the fit
                                   ", ".join(f"{c} long" for c in cols))
    priors = resolve_priors(counts, fc, "test")
    assert (priors["ctr"].alpha, priors["ctr"].beta) == (pytest.approx(4.6), pytest.approx(18.4))
    assert priors["like"] == fc.priors["like"]  # no likes: variance 0, fixed prior kept
    smoothed = add_rates(counts.limit(1), [30], priors).first()["ctr_30d"]
    assert smoothed == pytest.approx((10 + 4.6) / (100 + 23.0))


def test_vocabulary_oov_and_hashed_fallback(spark):
    df = spark.createDataFrame([("a",), ("a",), ("a",), ("b",), ("b",), ("c",), (None,), ("",)], "cat string")
    small = fit_vocabulary(df, "cat", FeaturesConfig(vocab_max_size=10, vocab_min_count=2))
    assert small == {"vocab": ["a", "b"], "num_oov_buckets": 1, "huge_id_space": False}
    entry = {**small}
    assert [categorical_index(entry, v) for v in ("a", "b", "c", "never-seen", None, "")] == [1, 2, 3, 3, 0, 0]

    huge = fit_vocabulary(df, "cat", FeaturesConfig(vocab_max_size=2, hash_buckets=1000))
    assert huge["vocab"] == ["a", "b"] and huge["huge_id_space"] and huge["num_oov_buckets"] == 1000
    idx = categorical_index(huge, "c")
    assert idx == 3 + stable_hash64("c") % 1000 and 3 <= idx < 1003
    assert stable_hash64("c") == int.from_bytes(__import__("hashlib").blake2b(b"c", digest_size=8).digest(), "little")
    lookup = vocabulary_lookup(huge)
    assert categorical_index(huge, "b", lookup) == 2

    tags = spark.createDataFrame([(["x", "y"],), (["x"],), (None,), ([],)], "tags array<string>")
    assert fit_vocabulary(tags, "tags", FC, is_list=True)["vocab"] == ["x", "y"]


def test_quantile_boundaries_and_buckets(spark):
    df = spark.createDataFrame([(float(x), x) for x in range(1, 101)] + [(None, 0)], "x double, n long")
    fc = FeaturesConfig(quantile_buckets=4, quantile_relative_error=0.0)
    assert fit_boundaries(df, ["x"], fc) == {"x": [25.0, 50.0, 75.0]}
    entry = {"boundaries": [25.0, 50.0, 75.0], "transform": "none", "default": 50.0}
    assert [bucket_index(entry, v) for v in (None, 1.0, 24.9, 25.0, 74.0, 75.0, 1e9)] == [0, 1, 1, 2, 3, 4, 4]
    const = spark.createDataFrame([(7.0,)] * 5, "x double")
    assert fit_boundaries(const, ["x"], fc) == {"x": [7.0]}  # de-duplicated
    spec = {e["column"]: e for e in fit_table_spec(df, "t", "none", "t_", fc)}
    assert spec["n"]["transform"] == "log1p" and spec["x"]["transform"] == "none"
    assert spec["n"]["num_buckets"] == len(spec["n"]["boundaries"]) + 2
    assert dense_value(spec["n"], 9) == pytest.approx(math.log(10)) and dense_value(spec["n"], None) == 0.0
    assert spec["x"]["default"] == pytest.approx(50.5)  # mean of 1..100 for a non-count numeric


def test_coverage_numbers_warning_and_failure(spark, caplog):
    df = spark.createDataFrame(
        [("f", 1, ["x"], float("nan")), (None, None, [], 1.0), ("", 3, None, 2.0), ("m", 4, ["y", "z"], 3.0)],
        "gender string, age int, tags array<string>, r double")
    rows, present = feature_coverage(df, {"gender": "u_gender", "age": "u_age", "tags": "i_tags", "r": "u_r"})
    assert rows == 4 and present == {"u_gender": 2, "u_age": 3, "i_tags": 2, "u_r": 3}
    fc = FeaturesConfig(coverage_min=0.6, coverage_min_by_feature={"u_age": 0.8}, required_features=[])
    feats = coverage_entries("user_features", rows, present, fc)
    assert feats["u_gender"]["coverage"] == 0.5 and feats["u_gender"]["status"] == "warn"
    assert feats["u_age"]["coverage"] == 0.75 and feats["u_age"]["status"] == "warn"  # own threshold 0.8
    assert feats["u_r"]["status"] == "ok"
    with caplog.at_level(logging.WARNING, logger="recsys_batch.features.coverage"):
        check_coverage({"features": feats}, D.isoformat(), fc)
    assert "u_gender coverage 50.00% below 60.00%" in caplog.text
    strict = FeaturesConfig(coverage_min=0.6, required_features=["u_gender", "i_missing"])
    with pytest.raises(CoverageTooLow, match=r"u_gender 50.00% < 60.00% \(2 of 4 rows of user_features\)") as e:
        check_coverage({"features": coverage_entries("user_features", rows, present, strict)}, D.isoformat(), strict)
    assert set(e.value.failures) == {"u_gender", "i_missing"}


def _write_inputs(spark, cfg):
    wh = cfg.warehouse
    prev = D - timedelta(days=1)
    replace_partition(_leaky_events(spark).where(F.col(Col.TS) < at(D + timedelta(days=1), 1)), wh, "events", D,
                      count=False)
    replace_partition(_leaky_events(spark).where(F.col(Col.TS) >= at(D + timedelta(days=1), 1)), wh, "events",
                      D + timedelta(days=1), count=False)
    users = spark.createDataFrame([("u1", "f", 30, "hz", "wtmkq1", at(D - timedelta(days=400)), "ios", "x"),
                                   ("u2", None, 17, None, None, at(D, 5), "android", None)], USERS)
    replace_partition(users, wh, "users", prev, count=False)  # features of D use the latest snapshot <= D
    items = spark.createDataFrame([
        ("a", "au1", "food", ["t1", "t2"], at(D - timedelta(days=40)), "video", 42.0, "wtmkq3", "hz", "x"),
        ("b", "au1", "food", ["t1"], at(D - timedelta(days=2)), "note", None, None, "hz", "y"),
        ("z", "au2", "pets", [], at(D + timedelta(days=1), 3), "video", 5.0, None, None, "future"),  # after D
    ], ITEMS)
    replace_partition(items, wh, "items", D, count=False)
    follows = spark.createDataFrame([("u1", "au1", at(D, 9)), ("u2", "au1", at(D, 23)),
                                     ("u3", "au1", at(D + timedelta(days=1), 0, 5))], FOLLOWS)
    replace_partition(follows, wh, "follows", D, count=False)


def test_run_features_end_to_end(spark, make_cfg):
    cfg = make_cfg("features.required_features=[i_category]", "features.coverage_min=0.5")
    _write_inputs(spark, cfg)
    stats = run_features(spark, cfg, D)
    assert [s.table for s in stats] == ["user_features", "item_features", "feature_spec", "coverage_report"]
    uf = {r[Col.USER]: r for r in read_table(spark, cfg.warehouse, "user_features", D).collect()}
    assert set(uf) == {"u1", "u2"}
    u1 = uf["u1"]
    assert (u1["clicks_1d"], u1["impressions_30d"], u1["gender"], u1["age_bucket"]) == (1, 3, "f", "25_34")
    assert u1["ctr_media_video_30d"] == pytest.approx(2 / 23) and u1["top_categories"] == ["food"]
    assert uf["u2"]["is_new"] and uf["u2"]["age_bucket"] == "lt18" and uf["u2"]["clicks_30d"] == 0
    itf = {r[Col.ITEM]: r for r in read_table(spark, cfg.warehouse, "item_features", D).collect()}
    assert set(itf) == {"a", "b"}  # z is published after the end of D
    a = itf["a"]
    assert (a["author_items"], a["author_followers"], a["clicks_7d"]) == (2, 2, 1)  # u3 follows after D
    assert a["ctr_gender_f_30d"] == pytest.approx(2 / 23) and a["ctr_gender_m_30d"] == pytest.approx(1 / 20)
    assert a["duration_bucket"] == "15_60" and a["item_age_days"] == pytest.approx(41.0)  # to the end of D

    spec = load_spec(spec_path(cfg.warehouse, D))
    by_name = {e["name"]: e for e in spec["features"]}
    assert by_name["i_category"]["vocab"] == ["food"] and by_name["user_id"]["vocab"] == ["u1", "u2"]
    assert by_name["u_clicks_7d"]["transform"] == "log1p" and by_name["lastn_items"]["vocab_from"] == Col.ITEM
    cov = json.loads(open(coverage_path(cfg.warehouse, D)).read())
    assert cov["features"]["u_gender"]["coverage"] == 0.5 and cov["features"]["i_duration_s"]["coverage"] == 0.5

    # a required feature below threshold fails before anything is published for that date
    # (D + 1: the items snapshot of D now includes z, published D + 1 03:00, so 2 of 3 items have a duration)
    fc = cfg.features.model_copy(update={"required_features": ["i_duration_s"], "coverage_min": 0.9})
    with pytest.raises(CoverageTooLow, match=r"i_duration_s 66.67% < 90.00% \(2 of 3 rows of item_features\)"):
        run_features(spark, cfg.model_copy(update={"features": fc}), D + timedelta(days=1))
    assert read_table(spark, cfg.warehouse, "user_features", D + timedelta(days=1)).count() == 0
