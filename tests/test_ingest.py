"""Ingest: contract validation, every quarantine reason, failures, idempotent re-runs."""

from __future__ import annotations

import json
import shutil
from datetime import date, datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F
from typer.testing import CliRunner

from recsys_batch.cli import app
from recsys_batch.errors import (EmptySource, MissingInput, RecsysBatchError, RejectRatioExceeded, SchemaError,
                                 SourceUnreadable)
from recsys_batch.ingest import run_ingest, validate
from recsys_batch.io.tables import read_table
from recsys_batch.runs import table_version
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


# ---- whole numbers, Parquet sources, unreadable sources, globs, the CLI's error line ----------------------

ONLY_EVENTS = ("sources.users=null", "sources.items=null", "sources.follows=null", "sources.rank_logs=null")


def _parquet(path, positions=(0, 1), ts_unit="us", position_type=None, ts=None):
    """A small events file written by pyarrow (as an upstream job or pandas would write it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(positions)
    ts = ts or [datetime(2026, 11, 20, 8, 0, i, tzinfo=timezone.utc) for i in range(n)]
    pq.write_table(pa.table({
        "user_id": [f"u{i}" for i in range(n)], "item_id": [f"i{i}" for i in range(n)],
        "event_type": ["click"] * n,
        "ts": pa.array(ts, pa.timestamp(ts_unit, tz="UTC")),
        "position": pa.array(list(positions), position_type),
    }), path)


def test_integer_columns_take_whole_numbers_only(spark, make_cfg):
    cfg = make_cfg()
    ts = "2026-11-20T08:00:00Z"
    text = [("1.0", "1", None), ("2.7", None, "non_integral_position"), (" 3 ", "3", None), ("+4", "4", None),
            ("1e2", "100", None), ("-1.0", "-1", "negative_position"), ("abc", None, "invalid_position"),
            ("99999999999", None, "invalid_position"), ("NaN", None, "invalid_position"), (None, None, None)]
    raw = spark.createDataFrame([(f"u{i}", "i1", "click", ts, p) for i, (p, _, _) in enumerate(text)],
                                "user_id string, item_id string, event_type string, ts string, position string")
    got = {r[Col.USER]: (r[Col.POSITION], r["__reason"]) for r in validate(raw, "events", cfg, D).collect()}
    assert got == {f"u{i}": (None if v is None else int(v), reason) for i, (_, v, reason) in enumerate(text)}

    num = [(1.0, 1, None), (2.7, None, "non_integral_position"), (-0.5, None, "non_integral_position"),
           (float("nan"), None, "invalid_position"), (1e20, None, "invalid_position")]
    raw = spark.createDataFrame([(f"u{i}", "i1", "click", ts, p) for i, (p, _, _) in enumerate(num)],
                                "user_id string, item_id string, event_type string, ts string, position double")
    got = {r[Col.USER]: (r[Col.POSITION], r["__reason"]) for r in validate(raw, "events", cfg, D).collect()}
    assert got == {f"u{i}": (v, reason) for i, (_, v, reason) in enumerate(num)}

    big = spark.createDataFrame([("u1", "i1", "click", ts, 2**40)], "user_id string, item_id string, "
                                "event_type string, ts string, position long")
    assert [(r[Col.POSITION], r["__reason"]) for r in validate(big, "events", cfg, D).collect()] == [
        (None, "invalid_position")]  # out of int range: rejected, not wrapped


def test_csv_position_1_0_is_1_and_2_7_is_rejected(spark, make_cfg, tmp_path):
    d = tmp_path / "raw" / "events" / f"dt={D}"
    d.mkdir(parents=True)
    (d / "a.csv").write_text("user_id,item_id,event_type,ts,position\n"
                             "u1,i1,click,2026-11-20T08:00:00Z,1.0\n"
                             "u2,i2,click,2026-11-20T08:00:00Z,2\n"
                             "u3,i3,click,2026-11-20T08:00:00Z,2.7\n")
    cfg = make_cfg("sources.events.format=csv", *ONLY_EVENTS, "ingest.max_reject_ratio=0.5")
    [report] = [r for r in run_ingest(spark, cfg, D) if r.table == "events"]
    assert (report.total, report.valid, report.rejected) == (3, 2, {"non_integral_position": 1})
    ev = read_table(spark, cfg.warehouse, "events", D)
    assert sorted((r[Col.USER], r[Col.POSITION]) for r in ev.collect()) == [("u1", 1), ("u2", 2)]
    [rej] = read_table(spark, cfg.warehouse, "rejected_events", D).collect()
    assert (rej[Col.USER], rej[Col.POSITION], rej[Col.REASON]) == ("u3", "2.7", "non_integral_position")


def test_parquet_fractional_position_is_rejected_not_truncated(spark, make_cfg, tmp_path):
    _parquet(tmp_path / "raw" / "events" / f"dt={D}" / "a.parquet", positions=[1.0, 2.7, 3.0],
             position_type=pa.float64())
    cfg = make_cfg(*ONLY_EVENTS, "ingest.max_reject_ratio=0.5")
    [report] = [r for r in run_ingest(spark, cfg, D) if r.table == "events"]
    assert (report.valid, report.rejected) == (2, {"non_integral_position": 1})
    ev = read_table(spark, cfg.warehouse, "events", D)
    assert sorted((r[Col.USER], r[Col.POSITION]) for r in ev.collect()) == [("u0", 1), ("u2", 3)]
    [rej] = read_table(spark, cfg.warehouse, "rejected_events", D).collect()
    assert (rej[Col.USER], rej[Col.POSITION], rej[Col.REASON]) == ("u1", "2.7", "non_integral_position")


def test_parquet_nanosecond_timestamps_are_read(spark, make_cfg, tmp_path):
    # pandas writes timestamp[ns] by default; Spark alone refuses the column (PARQUET_TYPE_ILLEGAL)
    base = 1_795_161_600_000_000_000  # 2026-11-20 08:00:00 UTC in ns
    ns = [base + 123_456_789, base + 1_000, base - 86_400 * 10**9 * 2]  # .123456789, +1 us, two days earlier
    path = tmp_path / "raw" / "events" / f"dt={D}" / "a.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({"user_id": ["u1", "u2", "u3"], "item_id": ["i1", "i2", "i3"],
                             "event_type": ["click"] * 3, "ts": pa.array(ns, pa.timestamp("ns", tz="UTC"))}), path)
    assert pq.read_schema(path).field("ts").type == pa.timestamp("ns", tz="UTC")
    cfg = make_cfg(*ONLY_EVENTS)
    [report] = [r for r in run_ingest(spark, cfg, D) if r.table == "events"]
    assert (report.total, report.valid, report.rejected) == (3, 3, {})
    ev = read_table(spark, cfg.warehouse, "events", D)
    got = sorted((r[Col.USER], r[Col.TS].isoformat()) for r in ev.collect())
    assert got == [("u1", "2026-11-20T08:00:00.123456"), ("u2", "2026-11-20T08:00:00.000001"),
                   ("u3", "2026-11-18T08:00:00")]  # microseconds kept, nanoseconds truncated


def _versions(cfg):
    return {t: table_version(cfg.warehouse, t) for t in ("events", "rejected_events", "items", "rejected_items")}


def _rows(spark, cfg, table):
    return sorted(read_table(spark, cfg.warehouse, table, D).drop(Col.DT).collect())


def test_unreadable_sources_fail_naming_the_file_and_publish_nothing(spark, make_cfg, tmp_path):
    folder = tmp_path / "raw" / "events" / f"dt={D}"
    _parquet(folder / "a.parquet", positions=[0, 1, 2])
    _parquet(folder / "b.parquet", positions=[3])
    cfg = make_cfg(*ONLY_EVENTS)
    run_ingest(spark, cfg, D)  # a good batch is published first: a failed re-run must leave it as it is
    before, events, quarantine = _versions(cfg), _rows(spark, cfg, "events"), _rows(spark, cfg, "rejected_events")
    assert len(events) == 4 and before["events"] is not None

    def truncate(p):
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])

    def corrupt_pages(p):  # the footer stays intact: only reading the data finds it
        b = bytearray(p.read_bytes())
        b[8:200] = b"\xff" * 192
        p.write_bytes(bytes(b))

    cases = {
        "empty folder": (lambda p: shutil.rmtree(folder) or folder.mkdir(), EmptySource, str(folder),
                         "holds no data files"),
        "0-byte file": (lambda p: p.write_bytes(b""), SourceUnreadable, "b.parquet", "empty (0 bytes"),
        "truncated": (truncate, SourceUnreadable, "b.parquet", "is not a Parquet file"),
        "garbage": (lambda p: p.write_bytes(bytes(range(256)) * 12), SourceUnreadable, "b.parquet",
                    "not a readable Parquet file"),
        "corrupt pages": (corrupt_pages, SourceUnreadable, "b.parquet", "PageHeader"),
    }
    for name, (spoil, error, names, says) in cases.items():
        shutil.rmtree(folder, ignore_errors=True)
        _parquet(folder / "a.parquet", positions=[0, 1, 2])
        _parquet(folder / "b.parquet", positions=[3])
        spoil(folder / "b.parquet")
        with pytest.raises(error) as ei:
            run_ingest(spark, cfg, D)
        msg = str(ei.value)
        assert isinstance(ei.value, RecsysBatchError) and names in msg and says in msg, (name, msg)
        assert "\n" not in msg and msg.startswith("source events:"), (name, msg)
        assert _versions(cfg) == before, name  # no commit at all: not the events, not the quarantine
    assert _rows(spark, cfg, "events") == events and _rows(spark, cfg, "rejected_events") == quarantine

    # a bad optional source stops the whole batch before the good one is written
    shutil.rmtree(folder)
    _parquet(folder / "a.parquet", positions=[5])
    items = tmp_path / "raw" / "items" / f"dt={D}"
    items.mkdir(parents=True)
    (items / "part-0.parquet").write_bytes(b"PAR1 not really")
    cfg_items = make_cfg("sources.users=null", "sources.follows=null", "sources.rank_logs=null")
    with pytest.raises(SourceUnreadable, match=r"source items: cannot read .*/items/dt=2026-11-20/part-0\.parquet"):
        run_ingest(spark, cfg_items, D)
    assert _versions(cfg) == before and _rows(spark, cfg, "events") == events


def test_glob_source_path(spark, make_cfg, tmp_path):
    raw = tmp_path / "raw" / "events"
    _parquet(raw / "web" / f"dt={D}" / "a.parquet", positions=[0, 1])
    _parquet(raw / "app" / f"dt={D}" / "b.parquet", positions=[7], ts=[datetime(2026, 11, 20, 9, tzinfo=timezone.utc)])
    _parquet(raw / "tv" / f"dt={D}" / "c.parquet", positions=[9])  # not in the glob
    (raw / "web" / f"dt={D}" / "_SUCCESS").write_text("")
    cfg = make_cfg('sources.events.path="{raw_root}/events/{web,app}/dt={date}"', *ONLY_EVENTS)
    [report] = [r for r in run_ingest(spark, cfg, D) if r.table == "events"]
    assert report.source == f"{tmp_path}/raw/events/{{web,app}}/dt={D}"
    assert (report.total, report.valid) == (3, 3)
    ev = read_table(spark, cfg.warehouse, "events", D).collect()
    assert sorted((r[Col.USER], r[Col.POSITION], r[Col.TS].hour) for r in ev) == [
        ("u0", 0, 8), ("u0", 7, 9), ("u1", 1, 8)]  # web's two rows and app's one; tv is not in the glob
    # nothing matches: the usual missing-input error, naming the glob
    cfg = make_cfg('sources.events.path="{raw_root}/events/{radio,print}/dt={date}"', *ONLY_EVENTS)
    with pytest.raises(MissingInput, match=r"events/\{radio,print\}/dt=2026-11-20 does not exist"):
        run_ingest(spark, cfg, D)


def _cli(tmp_path, *args):
    sets = [f"warehouse.root={tmp_path / 'wh'}", f"warehouse.raw_root={tmp_path / 'raw'}",
            "spark.shuffle_partitions=2", *ONLY_EVENTS]
    return CliRunner().invoke(app, [*args, "--date", D.isoformat(), *sum((["--set", s] for s in sets), [])])


def _one_error_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert "Traceback" not in output and not any(ln.lstrip().startswith("at ") for ln in lines), output
    errors = [i for i, ln in enumerate(lines) if ln.startswith("error:")]
    assert len(errors) == 1, output  # (log lines of the run may come before it)
    return " ".join(ln.strip() for ln in lines[errors[0]:])  # rich wraps a long line at 160 columns


def test_cli_unreadable_source_is_one_error_line_exit_2(spark, tmp_path):
    folder = tmp_path / "raw" / "events" / f"dt={D}"
    _parquet(folder / "a.parquet")
    (folder / "b.parquet").write_bytes(b"")
    res = _cli(tmp_path, "ingest", "--no-check")
    assert res.exit_code == 2, res.output
    text = _one_error_line(res.output)
    assert f"cannot read {folder}/b.parquet" in text and "0 bytes" in text
    assert table_version_or_none(tmp_path, "events") is None  # nothing published


def table_version_or_none(tmp_path, table):
    from recsys_batch.config import WarehouseConfig

    return table_version(WarehouseConfig(root=str(tmp_path / "wh")), table)


def test_cli_reject_ratio_error_keeps_the_counts_per_reason(spark, tmp_path):
    _write_jsonl(tmp_path / "raw" / "events" / f"dt={D}", GOOD + [r for r, _ in BAD])
    res = _cli(tmp_path, "ingest", "--no-check", "--set", "sources.events.format=json",
               "--set", "ingest.max_reject_ratio=0.04")
    assert res.exit_code == 2, res.output
    text = _one_error_line(res.output)
    assert "11 of 16 rows rejected (68.75%) > max_reject_ratio 4.00%; by reason: null_user_id=2, " in text
    for reason, n in (("unknown_event_type", 1), ("stale_ts", 1), ("negative_position", 1)):
        assert f"{reason}={n}" in text
    assert table_version_or_none(tmp_path, "events") is None
