"""A small end-to-end run of `recsys-batch demo` and the stage commands through the CLI."""

from __future__ import annotations

from datetime import date

from typer.testing import CliRunner

from recsys_batch.cli import app
from recsys_batch.io.tables import read_table
from recsys_batch.config import load_config

SMALL = ["generate.n_users=120", "generate.n_items=80", "generate.n_authors=10", "generate.n_categories=6",
         "generate.n_clusters=3", "generate.days=2", "generate.impressions_per_user_day=8",
         # on 80 items every item is "hot" for word2vec-style down-sampling, and 4 held-out hours hold few
         # positives: keep them all and hold out half the day, so the gate has users to evaluate
         "samples.hot_item_share_threshold=null", "train.holdout_hours=12",
         # 120 users hold out ~10 users: fewer than publish.gate_min_users, so the gate refuses; the demo's
         # release is forced (the gate still runs and records its table and reasons)
         "publish.force=true"]


def test_demo_end_to_end(spark, tmp_path):
    wh = [f"warehouse.root={tmp_path}/wh", f"warehouse.raw_root={tmp_path}/wh/raw"]
    args = ["demo", "--date", "2026-11-20", "--rows", "1"]
    for s in SMALL + wh:
        args += ["--set", s]
    res = CliRunner().invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    for name in ("user_item_matrix", "rejected_events", "ingest 2026-11-19", "matrix 2026-11-20", "itemcf_topk",
                 "recall_itemcf", "samples 2026-11-20", "publish 2026-11-20", "current release", "total"):
        assert name in res.output
    cfg = load_config("local", SMALL + wh)
    ev = read_table(spark, cfg.warehouse, "events")
    # D + 1 is generated and ingested as the truth of the published evaluation of D's recall tables
    assert sorted(r.dt for r in ev.select("dt").distinct().collect()) == ["2026-11-19", "2026-11-20", "2026-11-21"]
    assert "ingest 2026-11-21" in res.output and "published lists of 2026-11-20 vs positive events of 2026-11-21" \
        in " ".join(res.output.split()), res.output
    m = read_table(spark, cfg.warehouse, "user_item_matrix", date(2026, 11, 20))
    assert m.count() > 0 and m.where("score <= 0").count() == 0
    # the generator plants bad rows: they are quarantined, not lost
    assert read_table(spark, cfg.warehouse, "rejected_events").count() > 0
    # the evaluation's HTML report, printed after its table, beside the metrics JSON, with its plots embedded
    (report,) = [ln[len("report: "):] for ln in res.output.splitlines() if ln.startswith("report: ")]
    assert report == f"{tmp_path}/wh/reports/evaluate/dt=2026-11-20/report.html"
    assert open(report).read().count("data:image/png;base64,") >= 4
    # the release's gate table: the new model beside yesterday's (leak-free) ItemCF and popular lists
    from recsys_batch.publish.release import current_release

    gate = current_release(cfg)["manifest"]["metrics"]["gate"]
    assert [r["name"] for r in gate["rows"]] == ["two_tower_new", "itemcf", "popular"], gate
    assert gate["decision"] == "forced" and gate["users"] < 100, gate
    assert "users" in [c["check"] for c in gate["checks"] if not c["ok"]], gate

    # re-running a stage through its command replaces the date: same counts
    before = m.count()
    again = CliRunner().invoke(app, ["matrix", "--date", "2026-11-20"] + sum((["--set", s] for s in SMALL + wh), []))
    assert again.exit_code == 0, again.output
    assert read_table(spark, cfg.warehouse, "user_item_matrix", date(2026, 11, 20)).count() == before


def test_cli_errors_are_one_clear_line(tmp_path):
    res = CliRunner().invoke(app, ["ingest", "--date", "2026-11-20", "--set", "matrix.nope=1"])
    assert res.exit_code == 2 and "matrix.nope: unknown key" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["ingest", "--date", "20-11-2026"])
    assert res.exit_code == 2 and "--date must be YYYY-MM-DD" in res.output
