"""Ingest: contract validation, every quarantine reason, failures, idempotent re-runs."""

from __future__ import annotations

import json
from datetime import date

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from recsys_batch.errors import MissingInput, RejectRatioExceeded, SchemaError
from recsys_batch.ingest import run_ingest, validate
from recsys_batch.io.tables import read_table
from recsys_batch.schemas import EVENTS, Col

D = date(2026, 11, 20)
GOOD = [
    {"user_id": "u1", "item_id": "i1", "event_type": "impression", "ts": "2026-11-20T08:00:00Z",
     "watch_time_s": None, "request_id": "r1", "position": 0},
    {"user_id": "u1", "item_id": "i1", "event_type": "click", "ts": "2026-11-20T08:00:05Z",
     "watch_time_s": 12.5, "request_id": "r1", "position": 0},
    {"user_id": " u2 ", "item_id": "i2", "event_type": "LIKE", "ts": "2026-11-20T23:59:59Z",
     "watch_time_s": None, "request_id": None, "position": None},
    {"user_id": "u3", "item_id": "i3", "event_type": "share", "ts": "2026-11-21T00:05:00Z",  # within tolerance
     "watch_time_s": 0.0, "request_id": "r9", "position": 3},
    {"user_id": "u3", "item_id": "i1", "event_type": "click", "ts": "2026-11-18T10:00:00Z",  # late, accepted
     "watch_time_s": None, "request_id": None, "position": None},
]
BAD = [
    ({"user_id": None, "item_id": "i1", "event_type": "click", "ts": "2026-11-20T08:00:00Z"}, "null_user_id"),
    ({"user_id": "  ", "item_id": "i1", "event_type": "click", "ts": "2026-11-20T08:00:00Z"}, "null_user_id"),
    ({"user_id": "u1", "item_id": None, "event_type": "click", "ts": "2026-11-20T08:00:00Z"}, "null_item_id"),
    ({"user_id": "u1", "item_id": "i1", "event_type": "click", "ts": None}, "null_ts"),
    ({"user_id": "u1", "item_id": "i1", "event_type": "click", "ts": "yesterday-ish"}, "unparsable_ts"),
    ({"user_id": "u1", "item_id": "i1", "event_type": "clik", "ts": "2026-11-20T08:00:00Z"}, "unknown_event_type"),
    ({"user_id": "u1", "item_id": "i1", "event_type": "click", "ts": "2026-11-22T08:00:00Z"}, "future_ts"),
    ({"user_id": "u1", "item_id": "i1", "event_type": "click", "ts": "2026-11-01T08:00:00Z"}, "stale_ts"),
    ({"user_id": "u1", "item_id": "i1", "event_type": "click", "ts": "2026-11-20T09:00:00Z",
      "watch_time_s": -3.0}, "negative_watch_time_s"),
    ({"user_id": "u1", "item_id": "i1", "event_type": "click", "ts": "2026-11-20T09:00:00Z",
      "watch_time_s": "abc"}, "invalid_watch_time_s"),
    ({"user_id": "u1", "item_id": "i1", "event_type": "click", "ts": "2026-11-20T09:00:00Z",
      "position": -1}, "negative_position"),
]


def _write_jsonl(path, rows):
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "part-0.json", "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")


def _events_cfg(make_cfg, tmp_path, rows, *extra):
    _write_jsonl(tmp_path / "raw" / "events" / f"dt={D}", rows)
    return make_cfg("sources.events.format=json", "sources.users=null", "sources.items=null",
                    "sources.follows=null", "sources.rank_logs=null", *extra)


def test_every_reason_is_quarantined_with_its_reason(spark, make_cfg, tmp_path):
    rows = GOOD + [r for r, _ in BAD] + [GOOD[1]]  # plus an exact duplicate of a good row
    cfg = _events_cfg(make_cfg, tmp_path, rows, "ingest.max_reject_ratio=1.0")
    [report] = [r for r in run_ingest(spark, cfg, D) if r.table == "events"]
    expected = {}
    for _, reason in BAD + [(None, "duplicate")]:
        expected[reason] = expected.get(reason, 0) + 1
    assert report.rejected == expected
    assert (report.total, report.valid) == (len(rows), len(GOOD))

    rej = read_table(spark, cfg.warehouse, "rejected_events", D)
    got = {r[Col.REASON]: r for r in rej.collect()}
    assert set(got) == set(expected)
    assert got["unparsable_ts"][Col.TS] == "yesterday-ish"  # the raw value is kept
    assert got["unknown_event_type"][Col.SOURCE_FILE].endswith("part-0.json")

    ev = read_table(spark, cfg.warehouse, "events", D).drop(Col.DT)
    expected_ev = spark.createDataFrame([
        ("u1", "i1", "impression", "2026-11-20 08:00:00", None, "r1", 0),
        ("u1", "i1", "click", "2026-11-20 08:00:05", 12.5, "r1", 0),
        ("u2", "i2", "like", "2026-11-20 23:59:59", None, None, None),
        ("u3", "i3", "share", "2026-11-21 00:05:00", 0.0, "r9", 3),
        ("u3", "i1", "click", "2026-11-18 10:00:00", None, None, None),
    ], "user_id string, item_id string, event_type string, ts string, watch_time_s double, "
       "request_id string, position int").withColumn("ts", F.to_timestamp("ts"))
    assert_df_equality(ev, expected_ev, ignore_row_order=True, ignore_nullable=True)


def test_reject_ratio_fails_before_publishing(spark, make_cfg, tmp_path):
    rows = GOOD + [r for r, _ in BAD]
    cfg = _events_cfg(make_cfg, tmp_path, rows, "ingest.max_reject_ratio=0.1")
    with pytest.raises(RejectRatioExceeded) as ei:
        run_ingest(spark, cfg, D)
    msg = str(ei.value)
    assert "events for 2026-11-20" in msg and f"11 of {len(rows)} rows rejected" in msg
    assert "unknown_event_type=1" in msg and "rejected_events" in msg
    assert read_table(spark, cfg.warehouse, "events", required=False) is None  # nothing published
    assert read_table(spark, cfg.warehouse, "rejected_events", D).count() == 11  # nothing lost


def test_missing_required_column_names_source_and_column(spark, make_cfg, tmp_path):
    rows = [{k: v for k, v in r.items() if k != "ts"} for r in GOOD]
    cfg = _events_cfg(make_cfg, tmp_path, rows)
    with pytest.raises(SchemaError) as ei:
        run_ingest(spark, cfg, D)
    assert "source events" in str(ei.value) and "missing required column(s): ts" in str(ei.value)
    assert f"dt={D}" in str(ei.value)


def test_missing_required_source(spark, make_cfg):
    cfg = make_cfg()
    with pytest.raises(MissingInput, match="required source events has no data for 2026-11-20"):
        run_ingest(spark, cfg, D)


def test_rerun_replaces_the_date(spark, make_cfg, tmp_path):
    cfg = _events_cfg(make_cfg, tmp_path, GOOD + [GOOD[0]], "ingest.max_reject_ratio=0.5")
    first = run_ingest(spark, cfg, D)[0]
    second = run_ingest(spark, cfg, D)[0]
    assert (first.valid, first.rejected) == (second.valid, second.rejected) == (5, {"duplicate": 1})
    assert read_table(spark, cfg.warehouse, "events", D).count() == 5
    assert read_table(spark, cfg.warehouse, "rejected_events", D).count() == 1


def test_epoch_and_csv_sources(spark, make_cfg, tmp_path):
    d = tmp_path / "raw" / "events" / f"dt={D}"
    d.mkdir(parents=True)
    (d / "a.csv").write_text("user_id,item_id,event_type,ts\nu1,i1,click,1763640000\nu2,i2,click,oops\n")
    cfg = make_cfg("sources.events.format=csv", "sources.users=null", "sources.items=null",
                   "sources.follows=null", "sources.rank_logs=null", "ingest.max_reject_ratio=0.5")
    raw = spark.read.option("header", "true").csv(str(d))
    out = validate(raw, "events", cfg, D).select(Col.USER, Col.TS, "__reason").orderBy(Col.USER).collect()
    # CSV epochs arrive as text and are read in ingest.epoch_unit; other text must be ISO-8601
    assert [r["__reason"] for r in out] == ["stale_ts", "unparsable_ts"]
    assert out[0][Col.TS].isoformat() == "2025-11-20T12:00:00"
    num = spark.createDataFrame([("u1", "i1", "click", 1763640000)], "user_id string, item_id string, "
                                "event_type string, ts long")
    [row] = validate(num, "events", cfg, D).collect()
    assert row[Col.TS].isoformat() == "2025-11-20T12:00:00" and row["__reason"] == "stale_ts"


def test_dimension_snapshots_and_rank_logs(spark, make_cfg, run_date):
    cfg = make_cfg()
    items = spark.createDataFrame([
        ("i1", "a1", "food", "x|y", "2026-11-01 00:00:00", "video", 30.0),
        ("i1", "a1", "food", "x|y", "2026-11-01 00:00:00", "video", 30.0),  # exact duplicate
        ("i1", "a2", "tech", "z", "2026-11-02 00:00:00", "note", None),      # same key, other values
        ("i2", "a1", "food", "", "2026-12-30 00:00:00", "note", None),       # published in the future
        ("i3", "a3", "travel", None, None, "VIDEO", -5.0),
    ], "item_id string, author_id string, category string, tags string, publish_ts string, "
       "media_type string, duration_s double")
    got = {(r[Col.ITEM], r["__reason"]) for r in validate(items, "items", cfg, run_date).collect()}
    assert got == {("i1", None), ("i1", "duplicate"), ("i1", "duplicate_key"), ("i2", "future_ts"),
                   ("i3", "negative_duration_s")}
    [ok] = [r for r in validate(items, "items", cfg, run_date).collect() if r["__reason"] is None]
    assert ok[Col.TAGS] == ["x", "y"] and ok[Col.AUTHOR] == "a1"

    logs = spark.createDataFrame([
        ("r1", "u1", "i1", "2026-11-20 01:00:00", "recall", "true"),
        ("r1", "u1", "i2", "2026-11-20 01:00:00", "rank", "0"),
        ("r1", "u1", "i3", "2026-11-20 01:00:00", "rerank", "true"),
        ("r1", "u1", "i4", "2026-11-20 01:00:00", "prerank", "maybe"),
    ], "request_id string, user_id string, item_id string, ts string, stage string, passed string")
    got = [(r[Col.ITEM], r[Col.PASSED], r["__reason"])
           for r in validate(logs, "rank_logs", cfg, run_date).orderBy(Col.ITEM).collect()]
    assert got == [("i1", True, None), ("i2", False, None), ("i3", True, "unknown_stage"),
                   ("i4", None, "invalid_passed")]


def test_contract_schema_is_the_declared_one(spark, make_cfg, tmp_path):
    cfg = _events_cfg(make_cfg, tmp_path, GOOD)
    run_ingest(spark, cfg, D)
    ev = read_table(spark, cfg.warehouse, "events", D).drop(Col.DT)
    assert [(f.name, f.dataType) for f in ev.schema] == [(f.name, f.dataType) for f in EVENTS]
