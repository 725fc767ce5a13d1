"""Run records, upstream checks, the input check and backfill."""

from __future__ import annotations

import json
from datetime import date

import pytest
from typer.testing import CliRunner

from recsys_batch.cli import app
from recsys_batch.config import GenerateConfig
from recsys_batch.errors import MissingInput, UpstreamIncomplete
from recsys_batch.generate import generate_synthetic
from recsys_batch.io.tables import read_table
from recsys_batch.runner import backfill, run_stage
from recsys_batch.runs import FAILED, SUCCESS, latest_status, read_runs

D1, D2 = date(2026, 11, 19), date(2026, 11, 20)
TINY = GenerateConfig(n_users=60, n_items=40, n_authors=5, n_categories=4, n_clusters=2, days=2,
                      impressions_per_user_day=6)


def test_check_input(make_cfg, tmp_path):
    cfg = make_cfg("ingest.min_event_rows=5")
    with pytest.raises(MissingInput, match=r"events for 2026-11-20 have not arrived: .*dt=2026-11-20 does not exist"):
        run_stage("check_input", cfg, D2)
    generate_synthetic(TINY, D2, cfg.warehouse.raw_root)
    [chk] = run_stage("check_input", cfg, D2).result
    assert chk.rows > 5
    too_many = make_cfg("ingest.min_event_rows=100000000")
    with pytest.raises(MissingInput, match="fewer than ingest.min_event_rows=100,000,000"):
        run_stage("check_input", too_many, D2)
    runs = read_runs(cfg.warehouse).to_pylist()
    assert [r["status"] for r in runs if r["stage"] == "check_input"].count(FAILED) == 2
    assert any("have not arrived" in (r["error"] or "") for r in runs)


def test_stage_refuses_without_upstream_and_records_failures(spark, make_cfg):
    cfg = make_cfg()
    with pytest.raises(UpstreamIncomplete, match="stage matrix for 2026-11-20 needs ingest"):
        run_stage("matrix", cfg, D2, spark)
    # forced past the check, the stage fails on its missing input and the failure is recorded
    with pytest.raises(MissingInput):
        run_stage("matrix", cfg, D2, spark, check_upstream=False)
    rec = latest_status(cfg.warehouse)[("matrix", D2.isoformat())]
    assert rec["status"] == FAILED and rec["error"].startswith("MissingInput: table events does not exist")


def test_backfill_skips_complete_dates_and_force_reruns_identically(spark, make_cfg):
    # events only: every Delta commit costs ~1 s locally, and the other inputs add nothing here
    cfg = make_cfg("sources.users=null", "sources.items=null", "sources.follows=null", "sources.rank_logs=null")
    generate_synthetic(TINY, D2, cfg.warehouse.raw_root)
    stages = ["check_input", "ingest", "matrix"]
    first = backfill(cfg, D1, D2, stages, spark=spark)
    assert [(s.run_date, s.stage, s.action) for s in first] == [
        (d, n, "ran") for d in (D1, D2) for n in stages]
    matrix_before = sorted(read_table(spark, cfg.warehouse, "user_item_matrix", D2).drop("dt").collect())
    again = backfill(cfg, D1, D2, stages, spark=spark)
    assert {s.action for s in again} == {"skipped"}
    forced = backfill(cfg, D2, D2, stages, force=True, spark=spark)
    assert [s.action for s in forced] == ["ran"] * 3
    assert sorted(read_table(spark, cfg.warehouse, "user_item_matrix", D2).drop("dt").collect()) == matrix_before
    assert read_table(spark, cfg.warehouse, "events", D2).count() == next(
        json.loads(r["output_rows"])["events"] for r in read_runs(cfg.warehouse).to_pylist()
        if r["stage"] == "ingest" and r["run_date"] == D2.isoformat())

    recs = [r for r in read_runs(cfg.warehouse).to_pylist() if r["stage"] == "matrix"]
    assert len(recs) == 3 and {r["status"] for r in recs} == {SUCCESS}
    assert all(json.loads(r["input_versions"])["events"] >= 0 for r in recs)
    assert all(r["config_hash"] == cfg.config_hash() for r in recs)

    args = ["status", "--set", f"warehouse.root={cfg.warehouse.root}"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0 and "2026-11-20" in out.output and "success" in out.output


def test_prev_day_check_waits_for_yesterday_only_once_the_feed_has_history(make_cfg):
    """samples needs matrix/features of D - 1 -- unless they never succeeded before D (a first day or a
    one-batch import, where samples falls back to the earliest features by design)."""
    from datetime import datetime, timedelta, timezone

    from recsys_batch.runner import missing_upstream
    from recsys_batch.runs import RunRecord, append_run

    cfg = make_cfg()
    t = datetime(2026, 11, 21, tzinfo=timezone.utc)

    def ok(stage: str, d: date) -> None:
        append_run(cfg.warehouse, RunRecord(stage, d, t, t, SUCCESS, "h"))

    for stage in ("ingest", "matrix", "features"):
        ok(stage, D2)
    assert missing_upstream("samples", cfg.warehouse, D2) == []  # first day: nothing before D2 ever ran
    ok("features", D2 - timedelta(days=2))  # the feed has history: yesterday's runs are required again
    assert missing_upstream("samples", cfg.warehouse, D2) == ["features (for 2026-11-19)"]
    ok("features", D1)
    assert missing_upstream("samples", cfg.warehouse, D2) == []
