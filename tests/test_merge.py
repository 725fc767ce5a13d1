"""Merged recall and the exposure filter: Bloom sizing (exact values), no false negatives and a measured FPR near
p, the serialized filter read in a fresh process and by the plain-Python serving spec, RRF and snake against
hand-computed rows (quotas, dedup, channel provenance), the filter dropping shown items before the quotas, and
the stage on a tiny warehouse (idempotent re-run, missing channels skipped, the table the release copies)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone

import pytest
from chispa import assert_approx_df_equality

from recsys_batch.config import MergeConfig, load_config
from recsys_batch.errors import ConfigError, MissingInput
from recsys_batch.io.delta_read import read_partition
from recsys_batch.io.tables import read_table, replace_partition
from recsys_batch.pipeline import STAGES, get_stage
from recsys_batch.recall.exposure import (
    bloom_contains, bloom_indexes, bloom_size, build_bloom, build_exposure_bloom, expected_fpr, exposed_items,
    load_bloom, stable_hash, storage_bits,
)
from recsys_batch.recall.merge import (
    channel_validation, learned_weights, merge_recall, snake_order, validation_sample,
)
from recsys_batch.recall.merge_stage import fusion_weights, metrics_path, run_merge
from recsys_batch.schemas import EVENTS, RECALL, RECALL_MERGED

D = date(2026, 11, 20)


def at(day: date, hh: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hh, tzinfo=timezone.utc)


# ---- the Bloom filter (no Spark) -----------------------------------------------------------------------

def test_bloom_sizing_exact_values():
    # m = ceil(-n ln p / ln(2)^2), k = round(m/n ln 2):
    # n=100, p=.01: 958.51 -> 959, 6.647 -> 7;  n=1: 9.585 -> 10, 6.93 -> 7
    # n=1000, p=.001: 14377.59 -> 14378, 9.966 -> 10;  n=10, p=.1: 47.93 -> 48, 3.327 -> 3
    assert bloom_size(100, 0.01) == (959, 7)
    assert bloom_size(1, 0.01) == (10, 7)
    assert bloom_size(1000, 0.001) == (14378, 10)
    assert bloom_size(10, 0.1) == (48, 3)
    assert [storage_bits(m) for m in (10, 64, 65, 959)] == [64, 64, 128, 960]
    assert expected_fpr(1000, 9600, 7) == pytest.approx((1 - 2.718281828459045 ** (-7000 / 9600)) ** 7)
    with pytest.raises(ValueError, match="n >= 1"):
        bloom_size(0, 0.01)


def test_filter_has_no_false_negatives_and_measured_fpr_close_to_p():
    items = [f"item{j}" for j in range(1000)]
    bloom, m_bits, k = build_bloom(items, 0.01)
    assert (m_bits, k) == (9600, 7)
    assert all(i in bloom for i in items)
    probes = [f"never-shown-{j}" for j in range(5000)]
    fpr = sum(p in bloom for p in probes) / len(probes)
    # expected (1 - e^(-7000/9600))^7 = 0.00997; 5000 probes: standard error 0.0014
    assert expected_fpr(1000, m_bits, k) == pytest.approx(0.00997, abs=5e-5)
    assert 0.005 <= fpr <= 0.015, fpr


def test_serialized_filter_is_the_documented_spec_and_reads_in_a_fresh_process(tmp_path):
    bloom, m_bits, k = build_bloom(["only"], 0.01)
    data = bloom.save_bytes()
    # layout: k as uint64 LE, then m_bits bits LSB-first; exactly the bits of the spec's indexes are set
    assert data[:8] == (7).to_bytes(8, "little") and len(data) == 8 + m_bits // 8 == 16
    bits = {j for j in range(m_bits) if data[8 + j // 8] >> (j % 8) & 1}
    assert bits == set(bloom_indexes("only", k, m_bits))
    assert stable_hash("only") == int.from_bytes(__import__("hashlib").sha256(b"only").digest()[:16], "big",
                                                 signed=True)

    items = [f"i{j}" for j in range(300)]
    big, _, _ = build_bloom(items, 0.01)
    blob = big.save_bytes()
    probes = items + [f"p{j}" for j in range(300)]
    here = [p in big for p in probes]
    assert here == [bloom_contains(blob, p) for p in probes]  # the plain-Python spec agrees with rbloom
    (tmp_path / "f.bin").write_bytes(blob)
    (tmp_path / "probes.json").write_text(json.dumps(probes))
    code = ("import json, sys; from recsys_batch.recall.exposure import load_bloom;"
            "b = load_bloom(open(sys.argv[1], 'rb').read());"
            "print(json.dumps([p in b for p in json.load(open(sys.argv[2]))]))")
    env = dict(os.environ, PYTHONHASHSEED="12345")  # another salt for str hash(): must not matter
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "f.bin"), str(tmp_path / "probes.json")],
                         env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == here
    assert all(here[:300])
    assert load_bloom(blob) == big


def test_snake_order_round_robin_skips_duplicates():
    assert snake_order({"a": ["x", "y"], "b": ["x", "z"]}, ["a", "b"], 10) == ["x", "z", "y"]
    assert snake_order({"a": ["x", "y", "w"], "b": ["z"]}, ["b", "a", "missing"], 3) == ["z", "x", "y"]
    assert snake_order({}, ["a"], 3) == []


# ---- merge on Spark --------------------------------------------------------------------------------------

LISTS = {
    # u1: z is beyond itemcf's quota 2, x beyond popular's quota 1; u2's ranks have gaps (re-ranked 1, 2)
    "itemcf": [("u1", "x", 0.9, 1), ("u1", "y", 0.8, 2), ("u1", "z", 0.7, 3), ("u2", "a", 0.5, 3),
               ("u2", "b", 0.4, 5)],
    "usercf": [("u1", "y", 0.9, 1), ("u1", "w", 0.8, 2), ("u1", "x", 0.7, 3)],
    "popular": [("u1", "v", 9.0, 1), ("u1", "x", 8.0, 2)],
}
QUOTAS = {"itemcf": 2, "usercf": 3, "popular": 1}


def lists_df(spark, names=tuple(LISTS)):
    return {c: spark.createDataFrame(LISTS[c], RECALL) for c in names}


def merged_df(spark, rows):
    return spark.createDataFrame(rows, RECALL_MERGED)


def check(actual, expected):
    assert_approx_df_equality(actual, expected, 1e-12, ignore_row_order=True, ignore_nullable=True)


def test_rrf_quotas_dedup_and_provenance(spark):
    cfg = MergeConfig(quotas=QUOTAS, weights={"usercf": 2.0}, rrf_k=60, top_n=3)
    # x: itemcf 1, usercf 3 -> 1/61 + 2/63 = 0.04814; y: itemcf 2, usercf 1 -> 1/62 + 2/61 = 0.04892
    # w: usercf 2 -> 2/62 = 0.03226; v: popular 1 -> 1/61 (cut by top_n 3); z and popular's x: beyond quota
    expected = merged_df(spark, [
        ("u1", "y", 1 / 62 + 2 / 61, 1, ["itemcf", "usercf"]),
        ("u1", "x", 1 / 61 + 2 / 63, 2, ["itemcf", "usercf"]),
        ("u1", "w", 2 / 62, 3, ["usercf"]),
        ("u2", "a", 1 / 61, 1, ["itemcf"]),
        ("u2", "b", 1 / 62, 2, ["itemcf"]),
    ])
    check(merge_recall(lists_df(spark), cfg), expected)


def test_snake_merge_order_and_provenance(spark):
    cfg = MergeConfig(method="snake", quotas=QUOTAS, top_n=10)
    # quota lists: itemcf [x, y], usercf [y, w, x], popular [v]
    # turn 1: itemcf x, usercf y, popular v; turn 2: itemcf's y is taken (list used up), usercf w; then done
    expected = merged_df(spark, [
        ("u1", "x", 1.0, 1, ["itemcf", "usercf"]), ("u1", "y", 1 / 2, 2, ["itemcf", "usercf"]),
        ("u1", "v", 1 / 3, 3, ["popular"]), ("u1", "w", 1 / 4, 4, ["usercf"]),
        ("u2", "a", 1.0, 1, ["itemcf"]), ("u2", "b", 1 / 2, 2, ["itemcf"]),
    ])
    check(merge_recall(lists_df(spark), cfg), expected)


def test_exposure_filter_drops_shown_items_before_the_quotas(spark):
    cfg = MergeConfig(quotas=QUOTAS, weights={"usercf": 2.0}, top_n=3, exposure_days=7,
                      max_exposed_items_per_user=2, bloom_fp_rate=0.001)
    ev = [
        ("u1", "x", "impression", at(D, 5)),                      # shown on D: dropped from every channel
        ("u1", "w", "impression", at(D - timedelta(days=7), 5)),  # 8 days before the end of D: outside
        ("u1", "v", "click", at(D, 6)),                           # a click is not an impression
        ("u3", "p", "impression", at(D, 1)), ("u3", "q", "impression", at(D, 2)),
        ("u3", "r", "impression", at(D, 3)), ("u3", "r", "impression", at(D, 0)),
    ]
    events = spark.createDataFrame([(*e, None, None, None) for e in ev], EVENTS)
    shown = exposed_items(events, D, cfg)
    # u3 keeps its newest 2 distinct items (r at 03:00, q at 02:00); p falls to the cap
    assert sorted((r.user_id, r.item_id) for r in shown.collect()) == [("u1", "x"), ("u3", "q"), ("u3", "r")]
    blooms = build_exposure_bloom(shown, cfg)
    rows = {r.user_id: r for r in blooms.collect()}
    assert (rows["u1"].n_items, rows["u1"].m_bits, rows["u1"].k_hashes, rows["u1"].fp_rate) == (1, 64, 10, 0.001)
    assert (rows["u3"].n_items, rows["u3"].probes) == (2, 20)
    assert "x" in load_bloom(rows["u1"].bloom) and "q" in load_bloom(rows["u3"].bloom)
    assert not any(i in load_bloom(rows["u1"].bloom) for i in ("y", "z", "w", "v"))
    # without x: itemcf quota 2 takes y, z; usercf [y, w]; popular [v]
    # y = 1/61 + 2/61, w = 2/62, v = 1/61 > z = 1/62 (cut by top_n)
    expected = merged_df(spark, [
        ("u1", "y", 3 / 61, 1, ["itemcf", "usercf"]), ("u1", "w", 2 / 62, 2, ["usercf"]),
        ("u1", "v", 1 / 61, 3, ["popular"]),
        ("u2", "a", 1 / 61, 1, ["itemcf"]), ("u2", "b", 1 / 62, 2, ["itemcf"]),
    ])
    check(merge_recall(lists_df(spark), cfg, blooms), expected)
    off = merge_recall(lists_df(spark), cfg.model_copy(update={"filter_exposed": False}), blooms)
    assert [r.item_id for r in off.where("user_id = 'u1'").orderBy("rank").collect()] == ["y", "x", "w"]


def test_merge_config_and_stage_wiring():
    with pytest.raises(ConfigError, match="merge.weights names unknown channel"):
        load_config(None, ["merge.weights={nope: 2}"])
    with pytest.raises(ConfigError, match="at least one channel needs a quota"):
        load_config(None, ["merge.quotas={itemcf: 0}"])
    assert load_config(None, ["merge.quotas={itemcf: 0, swing: 5}"]).merge.channels == ["swing"]
    cfg = load_config(None)
    assert cfg.merge.method == "rrf" and cfg.merge.rrf_k == 60 and cfg.merge.bloom_fp_rate == 0.01
    assert {"hot", "fresh", "author", "similar_author", "geo", "new_users", "item2vec", "ease", "als",
            "two_tower", "itemcf"} <= set(cfg.merge.quotas)
    assert {"recall_merged", "exposure_bloom"} <= set(cfg.publish.optional_tables)
    names = [s.name for s in STAGES]
    assert names.index("index") < names.index("merge") < names.index("evaluate")
    assert get_stage("merge").outputs == ("recall_merged", "exposure_bloom")
    assert "merge" in get_stage("evaluate").upstream


PREV = {  # lists of D - 1 for the validation; test pairs of D: u1 {b, c}, u2 {e}, u4 {a}
    "itemcf": [("u1", "a", 0.9, 1), ("u1", "b", 0.8, 2), ("u1", "c", 0.7, 3), ("u2", "a", 0.9, 1)],
    "usercf": [("u1", "c", 0.9, 1), ("u3", "d", 0.9, 1)],
}
TEST = [("u1", "b"), ("u1", "c"), ("u2", "e"), ("u4", "a")]


def test_channel_validation_recall_over_the_users_a_channel_lists(spark):
    lists = {c: spark.createDataFrame(rows, RECALL) for c, rows in PREV.items()}
    test = spark.createDataFrame(TEST + [("u1", "b")], "user_id string, item_id string")  # a duplicate pair
    # k = 2. itemcf lists test users u1, u2: u1 top 2 {a, b} & {b, c} = 1 of 2; u2 {a} & {e} = 0 -> (2, 0.25)
    # usercf lists u1 (u3 is no test user): {c} & {b, c} = 1 of 2 -> (1, 0.5); u4 is in no list
    expected = spark.createDataFrame([("itemcf", 2, 0.25), ("usercf", 1, 0.5)],
                                     "channel string, users long, recall double")
    check(channel_validation(lists, test, 2), expected)
    # k = 3 adds itemcf's c for u1: (2/2 + 0) / 2
    got = {r.channel: (r.users, r.recall) for r in channel_validation(lists, test, 3).collect()}
    assert got == {"itemcf": (2, 0.5), "usercf": (1, 0.5)}


def test_learned_weights_relative_recall_with_config_fallback():
    cfg = MergeConfig(quotas={"itemcf": 2, "usercf": 2, "popular": 1, "hot": 0}, weights={"popular": 0.3},
                      learn_min_users=2)
    # usercf validated on 1 < 2 users, popular and hot not at all: merge.weights (1 when not listed)
    weights, source = learned_weights({"itemcf": (2, 0.25), "usercf": (1, 0.5)}, cfg)
    assert weights == {"itemcf": 1.0, "usercf": 1.0, "popular": 0.3, "hot": 1.0}
    assert source == {"itemcf": "validation", "usercf": "config", "popular": "config", "hot": "config"}
    one = cfg.model_copy(update={"learn_min_users": 1})
    weights, _ = learned_weights({"itemcf": (2, 0.25), "usercf": (1, 0.5), "popular": (5, 0.1)}, one)
    assert weights == {"itemcf": 0.5, "usercf": 1.0, "popular": pytest.approx(0.2), "hot": 1.0}
    # every validated recall 0: nothing to learn from
    assert learned_weights({"itemcf": (9, 0.0)}, cfg)[0] == {"itemcf": 1.0, "usercf": 1.0, "popular": 0.3, "hot": 1.0}


# ---- the stage -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_run_merge_learns_rrf_weights_from_the_previous_day(spark, make_cfg):
    cfg = make_cfg("merge.quotas={itemcf: 2, usercf: 3, popular: 1}", "merge.weights={popular: 0.3}",
                   "merge.top_n=3", "merge.learn_k=2", "merge.learn_min_users=1", "merge.fpr_probes_per_user=0",
                   "merge.learn_method=ratio")
    prev = D - timedelta(days=1)
    assert fusion_weights(spark, cfg, D) == ({"itemcf": 1.0, "usercf": 1.0, "popular": 0.3},
                                             {"weights_from": "config", "validation_date": None, "validation": {},
                                              "why": "no recall_<channel> lists for dt=2026-11-19"})
    for c, rows in PREV.items():
        replace_partition(spark.createDataFrame(rows, RECALL), cfg.warehouse, f"recall_{c}", prev, count=False)
    for c, df in lists_df(spark).items():
        replace_partition(df, cfg.warehouse, f"recall_{c}", D, count=False)
    ev = [(u, i, "click", at(D, 9), None, None, None) for u, i in TEST]
    ev += [("u1", "a", "click", at(prev, 9), None, None, None),       # ts on D - 1: not after the lists
           ("u2", "f", "impression", at(D, 9), None, None, None)]     # not a positive
    replace_partition(spark.createDataFrame(ev, EVENTS), cfg.warehouse, "events", D, count=False)
    # D - 1's matrix holds (u1, c): not truth -> itemcf u1 {a, b} & {b} = 1/1, u2 0 -> 0.5; usercf u1 {c} & {b} = 0
    matrix = spark.createDataFrame([("u1", "c")], "user_id string, item_id string")
    replace_partition(matrix, cfg.warehouse, "user_item_matrix", prev, count=False)
    run_merge(spark, cfg, D)
    metrics = json.loads(open(metrics_path(cfg.warehouse.root, D)).read())
    assert metrics["validation"] == {"itemcf": {"users": 2, "recall@2": 0.5}, "usercf": {"users": 1, "recall@2": 0.0}}
    assert metrics["rrf_weights"] == {"itemcf": 1.0, "usercf": 0.0, "popular": 0.3}
    assert metrics["weights_from"] == {"itemcf": "validation", "usercf": "validation", "popular": "config"}
    assert metrics["validation_date"] == "2026-11-19"
    # D's fusion with those weights (no exposure: no impression on D in u1's lists): itemcf [x, y] 1/61, 1/62;
    # usercf weighs 0 ([y, w, x]); popular [v] 0.3/61 -> x 1/61, y 1/62, v 0.3/61 (w 0, cut by top_n 3)
    expected = merged_df(spark, [
        ("u1", "x", 1 / 61, 1, ["itemcf", "usercf"]), ("u1", "y", 1 / 62, 2, ["itemcf", "usercf"]),
        ("u1", "v", 0.3 / 61, 3, ["popular"]),
        ("u2", "a", 1 / 61, 1, ["itemcf"]), ("u2", "b", 1 / 62, 2, ["itemcf"]),
    ])
    check(read_table(spark, cfg.warehouse, "recall_merged", D).drop("dt"), expected)

    # learn_method search, objective recall@2, from the ratio weights (itemcf 1, usercf 0; popular has no D-1
    # list: config 0.3, not searched). Sample: u1 (truth b; c is in the matrix), u2 (truth e); u4 has no list.
    # At the start u1's top 2 = itemcf's a, b -> 1, u2 0 -> 0.5, the best any weights can do (u2's e is in
    # no list; usercf > 0 puts c into u1's top 2 and pushes b out): the search keeps the ratio weights
    search = cfg.model_copy(update={"merge": cfg.merge.model_copy(update={"learn_method": "search",
                                                                           "search_ks": [2]})})
    weights, info = fusion_weights(spark, search, D)
    assert weights == {"itemcf": 1.0, "usercf": 0.0, "popular": 0.3}
    assert info["weights_from"] == {"itemcf": "search", "usercf": "search", "popular": "config"}
    assert info["search"] == {"users": 2, "ks": [2], "ratio_weights": {"itemcf": 1.0, "usercf": 0.0},
                              "objective_ratio_weights": 0.5, "objective": 0.5}


def test_validation_sample_quota_rows_hits_and_user_cap(spark):
    lists = {c: spark.createDataFrame(rows, RECALL) for c, rows in PREV.items()}
    test = spark.createDataFrame(TEST + [("u1", "b")], "user_id string, item_id string")  # a duplicate pair
    s = validation_sample(lists, test, {"itemcf": 2, "usercf": 1}, 10)
    # test users with a list: u1, u2 (u4 has none; u3 is no test user); itemcf cut to its top 2 for u1
    assert s.channels == ("itemcf", "usercf") and s.n_truth.tolist() == [2.0, 1.0]
    items = ["a", "b", "c"]  # codes in item_id order
    got = sorted(zip(s.user.tolist(), [items[i] for i in s.item], [s.channels[c] for c in s.channel],
                     s.rank.tolist(), s.hit.tolist()))
    assert got == [(0, "a", "itemcf", 1.0, False), (0, "b", "itemcf", 2.0, True), (0, "c", "usercf", 1.0, True),
                   (1, "a", "itemcf", 1.0, False)]
    one = validation_sample(lists, test, {"itemcf": 2, "usercf": 1}, 1)
    assert len(one.n_truth) == 1 and set(one.user.tolist()) == {0}


@pytest.mark.slow
def test_run_merge_skips_missing_channels_and_is_idempotent(spark, make_cfg, caplog):
    cfg = make_cfg("merge.quotas={itemcf: 2, swing: 5, usercf: 3, popular: 1, hot: 0}", "merge.weights={usercf: 2.0}",
                   "merge.top_n=3", "merge.fpr_probes_per_user=50")
    with pytest.raises(MissingInput, match="recall_itemcf \\(no table\\)"):
        run_merge(spark, cfg, D)
    for c, df in lists_df(spark).items():  # swing: no table; hot: not merged (quota 0); popular: not for D
        replace_partition(df, cfg.warehouse, f"recall_{c}", D - timedelta(days=1 if c == "popular" else 0),
                          count=False)
    shown = [("u1", "x", "impression", at(D, 5), None, None, None),
             ("u2", "b", "impression", at(D - timedelta(days=2), 5), None, None, None)]  # arrived late, in D
    replace_partition(spark.createDataFrame(shown, EVENTS), cfg.warehouse, "events", D, count=False)

    with caplog.at_level(logging.INFO, logger="recsys_batch.recall.merge_stage"):
        stats = run_merge(spark, cfg, D)
    skipped = ["recall_swing (no table)", "recall_popular (no rows for dt=2026-11-20)"]
    assert f"skipped 2 configured channel(s) without a list for dt=2026-11-20: {', '.join(skipped)}" in caplog.text
    assert "measured false-positive rate" in caplog.text
    assert [(s.table, s.rows) for s in stats] == [("exposure_bloom", 2), ("recall_merged", 4)]
    # u1 without x (shown on D): itemcf [y, z], usercf [y, w]; u2 without b (shown two days ago)
    expected = merged_df(spark, [
        ("u1", "y", 3 / 61, 1, ["itemcf", "usercf"]), ("u1", "w", 2 / 62, 2, ["usercf"]),
        ("u1", "z", 1 / 62, 3, ["itemcf"]),
        ("u2", "a", 1 / 61, 1, ["itemcf"]),
    ])
    got = read_table(spark, cfg.warehouse, "recall_merged", D).drop("dt")
    check(got, expected)
    metrics = json.loads(open(metrics_path(cfg.warehouse.root, D)).read())
    assert (metrics["users"], metrics["items"], metrics["probes"], metrics["target_fp_rate"]) == (2, 2, 100, 0.01)
    assert metrics["skipped_channels"] == skipped and metrics["channels"] == ["itemcf", "usercf"]

    run_merge(spark, cfg, D)  # a re-run replaces dt=D: same rows, no duplicates
    check(read_table(spark, cfg.warehouse, "recall_merged", D).drop("dt"), expected)
    assert read_table(spark, cfg.warehouse, "exposure_bloom", D).count() == 2
    # what the (JVM-free) publish stage copies into the release: delta-rs -> Arrow; the bytes load as filters
    pub = read_partition(cfg.warehouse, "exposure_bloom", D).to_pylist()
    by_user = {r["user_id"]: load_bloom(r["bloom"]) for r in pub}
    assert "x" in by_user["u1"] and "b" in by_user["u2"]
