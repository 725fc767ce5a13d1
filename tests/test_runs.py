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

    cfg = make_cfg()
    t = datetime(2026, 11, 21, tzinfo=timezone.utc)

    def ok(stage: str, d: date) -> None:
        _record(cfg, stage, d, {}, {})

    for stage in ("ingest", "matrix", "features"):
        ok(stage, D2)
    assert missing_upstream("samples", cfg.warehouse, D2) == []  # first day: nothing before D2 ever ran
    ok("features", D2 - timedelta(days=2))  # the feed has history: yesterday's runs are required again
    assert missing_upstream("samples", cfg.warehouse, D2) == ["features for 2026-11-19"]
    ok("features", D1)
    assert missing_upstream("samples", cfg.warehouse, D2) == []


# ---- start / commit / end rows, killed runs, staleness ------------------------------------------------

def _flat(text: str) -> str:
    """CLI output with rich's line wrapping undone (words joined by single spaces)."""
    return " ".join(text.split())


def _record(cfg, stage, d, inputs, commits, end=SUCCESS):
    """One run recorded as a stage would record it: start, one commit row per table, an end row (or
    none when ``end`` is None: the process was killed)."""
    from recsys_batch.runs import RunRecorder

    with RunRecorder(cfg.warehouse, stage, d, cfg.config_hash(), inputs, attempt=1) as rec:
        rec.start()
        for t, v in commits.items():
            rec.committed(t, v)
    if end is not None:
        rec.end(end, {t: 10 for t in commits})
    return rec


def test_run_log_folds_rows_and_marks_killed_and_stale_runs(make_cfg):
    """Hand-built records (no Spark): versions are per table, so only a rewrite of a date a run read
    makes it stale; a start without an end is killed (its pid is this process, which is not running it)."""
    from recsys_batch.runs import KILLED, STALE, RunLog, read_run_rows

    cfg = make_cfg()
    _record(cfg, "check_input", D2, {}, {})
    _record(cfg, "ingest", D2, {}, {"rejected_events": 0, "events": 1, "users": 2})
    _record(cfg, "matrix", D2, {"events": 1, "users": 2}, {"user_item_matrix": 0, "user_lastn": 0})
    _record(cfg, "itemcf", D2, {"events": 1, "users": 2, "user_item_matrix": 0, "user_lastn": 0},
            {"itemcf_topk": 0})
    # ingest of another date commits newer versions of the same tables: D2's runs stay complete
    _record(cfg, "ingest", D1, {}, {"rejected_events": 3, "events": 4, "users": 5})
    runs = RunLog.read(cfg.warehouse)
    assert {k: runs.state(*k).state for k in runs.keys()} == {
        ("check_input", "2026-11-20"): "success", ("ingest", "2026-11-20"): "success",
        ("matrix", "2026-11-20"): "success", ("itemcf", "2026-11-20"): "success",
        ("ingest", "2026-11-19"): "success"}

    # ingest of D2 re-run and killed after its events commit: users keeps the old partition
    killed = _record(cfg, "ingest", D2, {}, {"rejected_events": 6, "events": 7}, end=None)
    rows = [r for r in read_run_rows(cfg.warehouse) if r["run_id"] == killed.run_id]
    assert [(r["event"], r["status"]) for r in rows] == [("start", "running"), ("commit", "running"),
                                                          ("commit", "running")]
    runs = RunLog.read(cfg.warehouse)
    st = runs.state("ingest", D2)
    assert st.state == KILLED and not st.complete and st.run.attempt == 1
    assert st.run.output_versions == {"rejected_events": 6, "events": 7}
    assert st.not_committed == ["users", "items", "follows", "rank_logs"]
    assert st.reasons[1] == "committed: events v7, rejected_events v6"
    assert runs.attempts("ingest", D2) == 2
    m = runs.state("matrix", D2)
    assert m.state == STALE and m.reasons == [
        "events dt=2026-11-20 rewritten by ingest (v7) after this run read v1"]
    # itemcf read events through matrix: stale too, before matrix is re-run
    assert runs.state("itemcf", D2).reasons == m.reasons
    assert runs.state("check_input", D2).state == "success"  # not downstream of ingest

    # matrix re-run on the new events: complete again; itemcf now also sees the newer matrix
    _record(cfg, "ingest", D2, {}, {"rejected_events": 8, "events": 9, "users": 10})
    _record(cfg, "matrix", D2, {"events": 9, "users": 10}, {"user_item_matrix": 1, "user_lastn": 1})
    runs = RunLog.read(cfg.warehouse)
    assert runs.state("ingest", D2).state == runs.state("matrix", D2).state == "success"
    assert runs.state("itemcf", D2).reasons == [
        "events dt=2026-11-20 rewritten by ingest (v9) after this run read v1",
        "users dt=2026-11-20 rewritten by ingest (v10) after this run read v2",
        "user_item_matrix dt=2026-11-20 rewritten by matrix (v1) after this run read v0",
        "user_lastn dt=2026-11-20 rewritten by matrix (v1) after this run read v0"]
    # the per-run view: one row per run, the killed one without an end
    view = [r for r in read_runs(cfg.warehouse).to_pylist() if r["stage"] == "ingest" and r["run_date"] == "2026-11-20"]
    assert [r["status"] for r in view] == ["success", "running", "success"]
    assert view[1]["end_ts"] is None and json.loads(view[1]["output_versions"]) == {"events": 7, "rejected_events": 6}


def test_rerunning_yesterdays_recall_makes_todays_merge_stale_but_is_never_required(make_cfg):
    """merge of D learns its RRF weights from the lists of D - 1 (when there are some): a later re-run of
    recall for D - 1 makes D's merge stale, and D - 1's lists are not a prerequisite of D's merge."""
    from recsys_batch.pipeline import lineage
    from recsys_batch.runner import missing_upstream
    from recsys_batch.runs import STALE, RunLog

    assert {("recall", -1), ("matrix", -1), ("latent", -1), ("index", -1)} <= set(lineage("merge"))
    assert ("recall", -1) in lineage("publish")
    cfg = make_cfg()
    _record(cfg, "recall", D1, {}, {"recall_itemcf": 0})
    _record(cfg, "recall", D2, {}, {"recall_itemcf": 1})
    for stage in ("recall_rules", "latent", "index"):
        _record(cfg, stage, D2, {}, {})
    _record(cfg, "merge", D2, {"recall_itemcf": 1}, {"recall_merged": 0})
    assert RunLog.read(cfg.warehouse).state("merge", D2).state == "success"
    _record(cfg, "recall", D1, {}, {"recall_itemcf": 2})  # yesterday's lists rebuilt after today's merge
    st = RunLog.read(cfg.warehouse).state("merge", D2)
    assert st.state == STALE and st.reasons == [
        "recall_itemcf dt=2026-11-19 rewritten by recall (v2) after this run read v1"]
    _record(cfg, "recall", D1, {}, {}, end="failed")  # a failed D - 1 recall does not block D's merge
    assert missing_upstream("merge", cfg.warehouse, D2) == []


def test_start_without_end_on_another_host_is_running_then_killed_past_the_timeout(make_cfg):
    from datetime import datetime, timedelta, timezone

    from recsys_batch.runs import MAYBE_KILLED, RUNNING, RunLog, _append

    cfg = make_cfg("runs.stale_running_minutes=30", "runs.stale_running_minutes_by_stage={train: 600}")
    t0 = datetime(2026, 11, 21, 3, 0, tzinfo=timezone.utc)
    for stage in ("matrix", "train"):
        _append(cfg.warehouse, {"run_id": f"r-{stage}", "stage": stage, "run_date": D2.isoformat(),
                                "start_ts": t0, "recorded_ts": t0, "status": "running", "event": "start",
                                "attempt": 2, "host": "worker-7.cluster", "pid": 4242, "input_versions": "{}"})
    runs = RunLog.read(cfg.warehouse)
    young = runs.state("matrix", D2, cfg.runs, at=t0 + timedelta(minutes=29))
    assert young.state == RUNNING and young.reasons == [
        "run r-matrix (attempt 2) started 2026-11-21T03:00:00+00:00 on worker-7.cluster pid 4242, "
        "no end record yet (29 min)", "committed: nothing"]
    old = runs.state("matrix", D2, cfg.runs, at=t0 + timedelta(minutes=31))
    assert old.state == MAYBE_KILLED and "after 31 min (> runs.stale_running_minutes 30)" in old.reasons[0]
    assert runs.state("train", D2, cfg.runs, at=t0 + timedelta(minutes=31)).state == RUNNING  # per-stage 600


def test_old_single_row_records_still_read(make_cfg):
    """Records written before start/commit rows existed (no event, recorded_ts, output_versions columns)."""
    from datetime import datetime, timezone

    import pyarrow as pa
    from deltalake import write_deltalake

    from recsys_batch.runs import RunLog, delta_rs_uri

    cfg = make_cfg()
    t = datetime(2026, 11, 21, 3, 0, tzinfo=timezone.utc)
    old_schema = pa.schema([(n, pa.timestamp("us", tz="UTC") if n.endswith("_ts") else
                             pa.float64() if n == "duration_s" else pa.string())
                            for n in ("run_id", "stage", "run_date", "start_ts", "end_ts", "duration_s", "status",
                                      "input_versions", "output_rows", "config_hash", "error", "host")])
    write_deltalake(delta_rs_uri(cfg.warehouse.table_path("_runs")), pa.Table.from_pylist([
        {"run_id": "a", "stage": "ingest", "run_date": "2026-11-20", "start_ts": t, "end_ts": t, "duration_s": 0.0,
         "status": "success", "input_versions": "{}", "output_rows": "{}", "config_hash": "h", "error": None,
         "host": "h"}], schema=old_schema), mode="append")
    _record(cfg, "matrix", D2, {"events": 0}, {"user_item_matrix": 0})  # appends with the new columns
    runs = RunLog.read(cfg.warehouse)
    assert runs.state("ingest", D2).state == runs.state("matrix", D2).state == "success"
    assert latest_status(cfg.warehouse)[("ingest", "2026-11-20")]["status"] == SUCCESS


def test_downstream_closure_and_lineage():
    from recsys_batch.pipeline import lineage, with_downstream

    assert with_downstream(["itemcf"]) == ["itemcf", "recall", "merge", "evaluate", "report", "publish"]
    assert with_downstream(["features"]) == ["features", "samples", "train", "train_ranking", "index", "merge",
                                             "evaluate", "report", "publish"]
    assert with_downstream(["matrix"])[:6] == ["matrix", "itemcf", "swing", "usercf", "features", "samples"]
    assert {"recall_rules", "latent", "merge"} <= set(with_downstream(["matrix"]))
    assert lineage("samples") == (("check_input", 0), ("check_input", -1), ("ingest", 0), ("ingest", -1),
                                  ("matrix", 0), ("matrix", -1), ("features", 0), ("features", -1))


EVENTS_ONLY = ("sources.users=null", "sources.items=null", "sources.follows=null", "sources.rank_logs=null")


def test_rerun_ingest_makes_downstream_stale_and_a_killed_matrix_is_rerun(spark, make_cfg, monkeypatch):
    """Re-running ingest of D marks matrix and itemcf of D stale; a matrix run that dies after its first
    table commit (the end row never written) shows as killed with what it committed; one backfill
    re-runs matrix and then itemcf, and the rebuilt matrix equals the first one."""
    from recsys_batch import runs as runs_mod
    from recsys_batch.runner import missing_upstream

    cfg = make_cfg(*EVENTS_ONLY)
    generate_synthetic(TINY, D2, cfg.warehouse.raw_root)
    stages = ["check_input", "ingest", "matrix", "itemcf"]
    assert {s.action for s in backfill(cfg, D2, D2, stages, spark=spark)} == {"ran"}
    matrix_before = sorted(read_table(spark, cfg.warehouse, "user_item_matrix", D2).drop("dt").collect())

    run_stage("ingest", cfg, D2, spark)  # re-run: events of D2 committed again
    states = runs_mod.RunLog.read(cfg.warehouse).states(cfg.runs)
    state = {k[0]: s for k, s in states.items()}
    assert {k: s.state for k, s in state.items()} == {
        "check_input": "success", "ingest": "success", "matrix": "stale", "itemcf": "stale"}
    new_events = state["ingest"].run.output_versions["events"]
    read_before = state["matrix"].run.input_versions["events"]
    assert new_events > read_before
    assert state["matrix"].reasons == [
        f"events dt=2026-11-20 rewritten by ingest (v{new_events}) after this run read v{read_before}"]
    assert missing_upstream("itemcf", cfg.warehouse, D2) == [
        f"matrix (stale: events dt=2026-11-20 rewritten by ingest (v{new_events}) after this run read v{read_before})"]
    with pytest.raises(UpstreamIncomplete, match=r"stage itemcf for 2026-11-20 needs matrix \(stale: events"):
        run_stage("itemcf", cfg, D2, spark)
    out = CliRunner().invoke(app, ["status", "--set", f"warehouse.root={cfg.warehouse.root}"])
    assert out.exit_code == 0, out.output
    assert (f"matrix 2026-11-20 stale: events dt=2026-11-20 rewritten by ingest (v{new_events}) after this run "
            f"read v{read_before}") in _flat(out.output)

    # matrix dies right after committing user_item_matrix; the end row is never written (as under SIGKILL)
    class Killed(BaseException):
        pass

    def die(stage, table, n):  # noqa: ANN001, ANN202
        if stage == "matrix" and n == 1:
            raise Killed(table)

    remove = runs_mod.add_commit_hook(die)
    monkeypatch.setattr(runs_mod.RunRecorder, "end", lambda self, *a, **k: None)
    with pytest.raises(Killed):
        run_stage("matrix", cfg, D2, spark)
    remove()
    monkeypatch.undo()
    st = runs_mod.RunLog.read(cfg.warehouse).state("matrix", D2, cfg.runs)
    assert st.state == "killed" and st.run.attempt == 2
    assert list(st.run.output_versions) == ["user_item_matrix"]
    assert st.not_committed == ["user_lastn", "item_activity", "user_activity", "id_map_user", "id_map_item"]
    out = _flat(CliRunner().invoke(app, ["status", "--set", f"warehouse.root={cfg.warehouse.root}"]).output)
    assert "matrix 2026-11-20 killed: run " in out and "that process is gone" in out
    assert "not committed: user_lastn, item_activity, user_activity, id_map_user, id_map_item" in out

    steps = backfill(cfg, D2, D2, stages, spark=spark)
    assert [(s.stage, s.action) for s in steps] == [
        ("check_input", "skipped"), ("ingest", "skipped"), ("matrix", "ran"), ("itemcf", "ran")]
    assert steps[2].reason.startswith("killed: run ")
    assert steps[3].reason.startswith("stale: events dt=2026-11-20 rewritten by ingest")
    assert {s.action for s in backfill(cfg, D2, D2, stages, spark=spark)} == {"skipped"}
    assert sorted(read_table(spark, cfg.warehouse, "user_item_matrix", D2).drop("dt").collect()) == matrix_before
    final = runs_mod.RunLog.read(cfg.warehouse).state("matrix", D2)
    assert final.run.attempt == 3 and len(final.run.output_versions) == 6


KILL_AFTER = """
import os, signal, sys
from recsys_batch import runs
from recsys_batch.runner import job_main

def kill(stage, table, n):
    if n == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)

runs.add_commit_hook(kill)
sys.exit(job_main("ingest", sys.argv[2:]))
"""


@pytest.mark.slow
def test_ingest_sigkilled_between_commits_is_shown_killed_and_rerun(spark, make_cfg, tmp_path):
    """A real SIGKILL in a child process after ingest's third table commit (rejected_events,
    rejected_users, events; users not yet): `status` shows the re-run as killed with what it committed,
    not the earlier success, and `backfill` re-runs it instead of "skipped (complete)"."""
    import os
    import subprocess
    import sys

    sets = [f"warehouse.root={tmp_path / 'wh'}", f"warehouse.raw_root={tmp_path / 'raw'}",
            "spark.shuffle_partitions=2", "spark.driver_memory=1g",
            "sources.items=null", "sources.follows=null", "sources.rank_logs=null"]
    cfg = make_cfg(*sets[3:])
    generate_synthetic(TINY, D2, cfg.warehouse.raw_root)
    assert {s.action for s in backfill(cfg, D2, D2, ["check_input", "ingest"], spark=spark)} == {"ran"}

    argv = ["3", "--date", D2.isoformat(), "--conf", "local"] + [a for s in sets for a in ("--set", s)]
    child = subprocess.run([sys.executable, "-c", KILL_AFTER, *argv], capture_output=True, text=True,
                           timeout=900, env={**os.environ, "PYSPARK_PYTHON": sys.executable})
    assert child.returncode == -9, child.stderr[-3000:]

    out = CliRunner().invoke(app, ["status", "--conf", "local", *[a for s in sets for a in ("--set", s)]])
    assert out.exit_code == 0, out.output
    text = _flat(out.output)
    assert "ingest 2026-11-20 killed: run " in text and "(attempt 2)" in text, text
    # rejected_users stays at v0: the quarantine is empty both times, and Delta records no empty commit
    assert "that process is gone; committed: events v1, rejected_events v1, rejected_users v0" in text, text
    assert "not committed: users, items, follows, rank_logs" in text, text

    steps = backfill(cfg, D2, D2, ["check_input", "ingest"], spark=spark)
    assert [(s.stage, s.action) for s in steps] == [("check_input", "skipped"), ("ingest", "ran")]
    from recsys_batch.runs import RunLog

    st = RunLog.read(cfg.warehouse).state("ingest", D2)
    assert st.state == "success" and st.run.attempt == 3
    assert st.run.output_versions == {"events": 2, "rejected_events": 2, "rejected_users": 0, "users": 1}
