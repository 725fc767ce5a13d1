"""Every failure of the ``recsys-batch`` command is exactly one ``error:`` line, exit status 2, no traceback.

The bad arguments below are all rejected before a SparkSession starts, so the file needs no JVM.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import recsys_batch.cli as cli
from recsys_batch.cli import DEMO_MARKER, app, prepare_demo_root
from recsys_batch.errors import RecsysBatchError
from recsys_batch.pipeline import STAGES

REPO = Path(__file__).resolve().parents[1]
STAGE_LIST = ", ".join(s.name for s in STAGES)


def invoke(*args: str, **kw):
    return CliRunner().invoke(app, list(args), **kw)


def error_line(res) -> str:
    """The one ``error:`` line of a failed command (asserting exit 2 and no traceback)."""
    out = res.output
    assert res.exit_code == 2, out
    assert "Traceback" not in out, out
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, out
    return lines[0]


@pytest.fixture()
def paths(tmp_path: Path) -> dict[str, str]:
    empty = tmp_path / "empty_wh"
    empty.mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    return {"missing": str(tmp_path / "no_such_wh"), "empty": str(empty), "file": str(a_file),
            "tmp": str(tmp_path)}


def bad_arguments(p: dict[str, str]) -> dict[str, list[tuple[list[str], str]]]:
    """Per command of ``recsys-batch --help``: bad arguments and a piece of the expected error line."""
    stage_cases = {}
    for st in STAGES:
        cases = [
            (["--date", "2026-02-30"], "error: --date must be YYYY-MM-DD, got '2026-02-30'"),
            (["--date", "yesterday"], "error: --date must be YYYY-MM-DD, got 'yesterday'"),
            (["--set", "matrix.half_life_dayz=3"], "matrix.half_life_dayz: unknown key"),
            (["--conf", "no_such_overlay"], "error: config file not found:"),
            (["--bogus"], "error: No such option: --bogus"),
        ]
        if st.upstream:  # missing warehouse: its upstream stages have not run
            cases.append((["--date", "2026-11-20", "--set", f"warehouse.root={p['missing']}"],
                          f"error: stage {st.name} for 2026-11-20 needs "))
        stage_cases[st.name.replace("_", "-")] = cases
    return {
        **stage_cases,
        "fetch-jars": [(["--dest"], "error: Option '--dest' requires an argument."),
                       (["--bogus"], "error: No such option: --bogus")],
        "package": [(["--out", f"{p['file']}/dist"], f"error: Not a directory: {p['file']}/dist")],
        "check-env": [(["extra"], "error: Got unexpected extra argument")],
        "config": [(["--set", "foo.bar=1"], "foo: unknown key"),
                   (["--set", "noequals"], "error: --set expects key.path=value, got 'noequals'"),
                   (["--set", "generate.n_users=abc"], "generate.n_users: Input should be a valid integer"),
                   (["--conf", "no_such_overlay"], "error: config file not found:")],
        "generate": [(["--date", "20261120"], "error: --date must be YYYY-MM-DD, got '20261120'"),
                     (["--date", "2026-W47-5"], "error: --date must be YYYY-MM-DD, got '2026-W47-5'"),
                     (["--set", "generate.days=0"], "generate.days: Input should be greater than or equal to 1")],
        "import-movielens": [([p["tmp"]], f"error: MovieLens file not found: {p['tmp']}/u.data"),
                             ([], "error: Missing argument 'path'.")],
        "show": [(["no_such_table", "--set", f"warehouse.root={p['empty']}"],
                  f"error: no table 'no_such_table' in {p['empty']}/delta; tables there: (none)"),
                 (["events", "--set", f"warehouse.root={p['missing']}"],
                  f"error: warehouse.root {p['missing']} does not exist"),
                 (["events", "--date", "2026-13-01"], "error: --date must be YYYY-MM-DD, got '2026-13-01'"),
                 ([], "error: Missing argument 'table'.")],
        "report": [(["--date", "2026-11-20", "--set", f"warehouse.root={p['empty']}"],
                    f"error: no evaluation metrics for 2026-11-20: {p['empty']}/reports/evaluate/dt=2026-11-20/"
                    f"metrics.json does not exist; `recsys-batch evaluate --date 2026-11-20 --set "
                    f"warehouse.root={p['empty']}` writes it"),
                   (["--date", "11/20"], "error: --date must be YYYY-MM-DD, got '11/20'")],
        "status": [(["--set", f"warehouse.root={p['missing']}"], f"error: warehouse.root {p['missing']} does not exist"),
                   (["--date", "x"], "error: --date must be YYYY-MM-DD, got 'x'"),
                   (["--limit", "0"], "error: --limit must be at least 1, got 0")],
        "backfill": [(["--from", "2026-11-21", "--to", "2026-11-20"],
                      "error: --from 2026-11-21 is after --to 2026-11-20: no date to run"),
                     (["--from", "2026-11-20", "--to", "2026-11-21", "--stages", "ingest,unknown"],
                      f"error: --stages: unknown stage(s) 'unknown'; stages: {STAGE_LIST}"),
                     (["--from", "2026-11-20", "--to", "2026-11-21", "--stages", ","],
                      f"error: --stages: no stage in ','; stages: {STAGE_LIST}"),
                     (["--from", "11/20/2026", "--to", "2026-11-21"],
                      "error: --from must be YYYY-MM-DD, got '11/20/2026'"),
                     (["--from", "2026-11-20", "--to", "soon"], "error: --to must be YYYY-MM-DD, got 'soon'"),
                     (["--from", "2026-11-20"], "error: Missing option '--to'.")],
        "rollback": [(["--to", "2026-11-31"], "error: --to must be YYYY-MM-DD, got '2026-11-31'"),
                     (["--to", "2026-11-20", "--set", f"warehouse.root={p['empty']}"],
                      "error: rollback: no release of 2026-11-20 under ")],
        "demo": [(["--set", f"warehouse.root={p['tmp']}"], "error: demo --fresh would delete "),
                 (["--date", "bad"], "error: --date must be YYYY-MM-DD, got 'bad'"),
                 (["--rows", "many"], "error: Invalid value for '--rows'")],
    }


def test_every_command_fails_with_one_error_line_and_status_2(paths, monkeypatch):
    monkeypatch.chdir(paths["tmp"])  # relative default paths (warehouse/...) stay in the test's folder
    commands = set(typer.main.get_command(app).commands)
    cases = bad_arguments(paths)
    assert set(cases) == commands  # a new command needs its bad arguments here
    before = sorted(Path(paths["tmp"]).rglob("*"))
    for command, command_cases in cases.items():
        for args, expected in command_cases:
            res = invoke(command, *args)
            line = error_line(res)
            # a multi-line message (the config errors) lists its details under the error line
            assert expected in (line if expected.startswith("error:") else res.output), (command, args, res.output)
    assert sorted(Path(paths["tmp"]).rglob("*")) == before  # nothing written, nothing deleted
    assert not Path(paths["missing"]).exists()


def test_unknown_command_and_option_of_the_group():
    res = invoke("no-such-command")
    assert error_line(res) == "error: No such command 'no-such-command'."
    assert "Usage:" in res.output and "--help' for help." in res.output
    assert error_line(invoke("--bogus")) == "error: No such option: --bogus"


def test_a_user_error_is_printed_in_full_as_text_not_markup(monkeypatch):
    """Rich would take ``[null_user_id=2, ...]`` for markup and drop it: the per-reason counts must stay."""
    msg = ("events for 2026-11-20: 11 of 16 rows rejected (68.75%) > max_reject_ratio 10.00% "
           "[null_user_id=2, bad_event_type=9]. Nothing was published; the rejected rows are in "
           "/wh/delta/rejected_events (dt=2026-11-20) with their reason and source file.")

    def fail(*a, **k):
        raise RecsysBatchError(msg)

    monkeypatch.setattr(cli, "run_stage", fail)
    res = invoke("ingest", "--date", "2026-11-20")
    assert error_line(res) == f"error: {msg}"
    assert res.stdout == ""  # the error goes to stderr


def test_a_bug_is_one_line_with_a_hint_and_debug_shows_the_traceback(monkeypatch):
    def bug(*a, **k):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "_cfg", bug)
    line = error_line(invoke("config"))
    assert line == ("error: unexpected ZeroDivisionError: division by zero -- a bug in recsys-batch; rerun with "
                    "`recsys-batch --debug ...` (or RECSYS_BATCH_DEBUG=1) for the traceback")
    for res in (invoke("--debug", "config"), invoke("config", env={"RECSYS_BATCH_DEBUG": "1"})):
        assert isinstance(res.exception, ZeroDivisionError)
        assert res.exit_code == 1
        assert res.exc_info[2] is not None  # the traceback reaches the developer
    # an error text of many lines (a JVM stack) is cut to its first ones, still on one line
    monkeypatch.setattr(cli, "_cfg", lambda *a: (_ for _ in ()).throw(
        RuntimeError("An error occurred while calling o42.save.\n: java.io.IOException: disk full\n"
                     + "\tat org.apache.Foo.bar(Foo.java:1)\n" * 50)))
    assert error_line(invoke("config")).startswith(
        "error: unexpected RuntimeError: An error occurred while calling o42.save. | : java.io.IOException: disk "
        "full | at org.apache.Foo.bar(Foo.java:1) ... -- a bug in recsys-batch;")
    # --debug shows the traceback of a user error too
    monkeypatch.setattr(cli, "_cfg", lambda *a: (_ for _ in ()).throw(RecsysBatchError("bad")))
    assert isinstance(invoke("--debug", "config").exception, RecsysBatchError)
    assert error_line(invoke("config")) == "error: bad"


def test_backfill_that_stops_at_a_failed_stage_exits_2(monkeypatch):
    import recsys_batch.runner as runner

    def fake_backfill(cfg, first, last, names, force, on_step=None, **kw):
        steps = [runner.BackfillStep(first, "ingest", "ran", 1.0),
                 runner.BackfillStep(first, "matrix", "failed", error="table events has no partition dt=2026-11-20")]
        for s in steps:
            on_step(s)
        return steps

    monkeypatch.setattr(runner, "backfill", fake_backfill)
    res = invoke("backfill", "--from", "2026-11-20", "--to", "2026-11-20", "--stages", "ingest,matrix")
    assert error_line(res) == ("error: backfill stopped at matrix for 2026-11-20: table events has no partition "
                               "dt=2026-11-20")
    assert "2026-11-20 ingest       ran 1.0s" in res.stdout and "2026-11-20 matrix       failed" in res.stdout


def test_backfill_prints_bracketed_errors_verbatim(monkeypatch):
    import recsys_batch.runner as runner

    def fake_backfill(cfg, first, last, names, force, on_step=None, **kw):
        steps = [runner.BackfillStep(first, "matrix", "failed", reason="stale: [ingest re-ran]",
                                     error="column [ts] of events: 3 rows [dt=2026-11-20]")]
        for s in steps:
            on_step(s)
        return steps

    monkeypatch.setattr(runner, "backfill", fake_backfill)
    res = invoke("backfill", "--from", "2026-11-20", "--to", "2026-11-20", "--stages", "matrix")
    assert ("2026-11-20 matrix       failed (was stale: [ingest re-ran]): column [ts] of events: 3 rows "
            "[dt=2026-11-20]") in res.stdout


def test_stage_reports_render_as_field_tables(capsys):
    from recsys_batch.index.build import IndexReport

    cli.render_result("index 2026-11-20", IndexReport("hnsw", 1200, 32, 0.5, {"m": 32}, 100, recall=0.987,
                                                     rows=240_000, path="/wh/index"))
    out = capsys.readouterr().out
    assert "IndexReport" in out and "hnsw" in out and "0.9870" in out and "240000" in out


def test_backfill_accepts_command_spelled_stage_names(monkeypatch):
    import recsys_batch.runner as runner

    seen = {}

    def fake_backfill(cfg, first, last, names, force, on_step=None, **kw):
        seen.update(first=first, last=last, names=names)
        return []

    monkeypatch.setattr(runner, "backfill", fake_backfill)
    res = invoke("backfill", "--from", "2026-11-19", "--to", "2026-11-20", "--stages", " check-input, ingest ")
    assert res.exit_code == 0, res.output
    assert seen == {"first": date(2026, 11, 19), "last": date(2026, 11, 20), "names": ["check_input", "ingest"]}


def test_a_real_process_prints_one_error_line_on_stderr_and_exits_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for args, expected in (
        (["backfill", "--from", "2026-11-21", "--to", "2026-11-20"],
         "error: --from 2026-11-21 is after --to 2026-11-20: no date to run (--to is the last date, inclusive)"),
        (["backfill", "--from", "2026-11-20", "--to", "2026-11-21", "--stages", "unknown"],
         f"error: --stages: unknown stage(s) 'unknown'; stages: {STAGE_LIST}"),
        (["matrix", "--bogus"], "error: No such option: --bogus (Possible options: --verbose)"),
    ):
        run = subprocess.run([sys.executable, "-m", "recsys_batch.cli", *args], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 2, run.stderr
        assert run.stdout == ""
        assert "Traceback" not in run.stderr
        assert [ln for ln in run.stderr.splitlines() if ln.startswith("error:")] == [expected]
        assert run.stderr.rstrip().splitlines()[-1] == expected  # the output ends with the error line


# --- demo --fresh deletes only what the demo created ------------------------------------------------------


class Stop(RecsysBatchError):
    pass


@pytest.fixture()
def stop_after_warehouse(monkeypatch):
    """The demo's first step after preparing its warehouse raises, so the test needs no Spark."""
    import recsys_batch.generate

    def stop(*a, **k):
        raise Stop("stopped after the warehouse step")

    monkeypatch.setattr(recsys_batch.generate, "generate_synthetic", stop)


def test_demo_fresh_refuses_a_folder_it_did_not_create(tmp_path):
    wh = tmp_path / "mine"
    wh.mkdir()
    (wh / "thesis.tex").write_text("years of work")
    line = error_line(invoke("demo", "--set", f"warehouse.root={wh}"))
    assert line == (f"error: demo --fresh would delete {wh}, which the demo did not create (no {DEMO_MARKER} in it); "
                    "pass --yes to delete it anyway, --keep to build on it, or --set warehouse.root=<new folder>")
    assert sorted(p.name for p in wh.iterdir()) == ["thesis.tex"]
    assert (wh / "thesis.tex").read_text() == "years of work"


def test_demo_fresh_deletes_a_folder_it_created(tmp_path, stop_after_warehouse):
    wh = tmp_path / "wh"
    assert error_line(invoke("demo", "--set", f"warehouse.root={wh}")) == "error: stopped after the warehouse step"
    assert sorted(p.name for p in wh.iterdir()) == [DEMO_MARKER]  # created, with the marker
    (wh / "delta").mkdir()
    (wh / "delta" / "old_table").write_text("old")
    assert error_line(invoke("demo", "--set", f"warehouse.root={wh}")) == "error: stopped after the warehouse step"
    assert sorted(p.name for p in wh.iterdir()) == [DEMO_MARKER]  # the old content is gone


def test_demo_fresh_with_yes_deletes_a_foreign_folder(tmp_path, stop_after_warehouse):
    wh = tmp_path / "old_warehouse"
    (wh / "delta").mkdir(parents=True)
    (wh / "delta" / "events").write_text("from before the marker existed")
    res = invoke("demo", "--yes", "--set", f"warehouse.root={wh}")
    assert error_line(res) == "error: stopped after the warehouse step"
    assert sorted(p.name for p in wh.iterdir()) == [DEMO_MARKER]


def test_demo_keep_leaves_a_foreign_folder_alone(tmp_path, stop_after_warehouse):
    wh = tmp_path / "mine"
    wh.mkdir()
    (wh / "notes.txt").write_text("x")
    assert error_line(invoke("demo", "--keep", "--set", f"warehouse.root={wh}")) == "error: stopped after the warehouse step"
    assert sorted(p.name for p in wh.iterdir()) == ["notes.txt"]  # not deleted, not marked as the demo's


def test_prepare_demo_root_cases(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_demo_root(str(empty), fresh=True)  # an empty folder is adopted
    assert sorted(p.name for p in empty.iterdir()) == [DEMO_MARKER]
    prepare_demo_root(str(tmp_path / "new" / "wh"), fresh=False)  # --keep still marks a folder it creates
    assert (tmp_path / "new" / "wh" / DEMO_MARKER).is_file()
    prepare_demo_root("s3a://bucket/recsys", fresh=True, yes=True)  # remote roots are never touched
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(RecsysBatchError, match="is a file, not a folder"):
        prepare_demo_root(str(a_file), fresh=True, yes=True)
    # never the current folder or one of its parents, even with --yes or a marker
    (tmp_path / DEMO_MARKER).write_text("")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    for root in (".", "..", str(tmp_path)):
        with pytest.raises(RecsysBatchError, match="refuses to delete"):
            prepare_demo_root(root, fresh=True, yes=True)
    assert a_file.read_text() == "x" and (tmp_path / "sub").is_dir()


def test_evaluation_table_fits_150_columns_with_four_ks_and_merged_sole_hits(monkeypatch):
    """The demo's table (4 Ks, 14 channels, m-solo) in a wide console: recall at every K, NDCG at the
    smallest and largest K; the rest is in the JSON and the HTML report."""
    from types import SimpleNamespace

    from rich.console import Console

    import recsys_batch.cli as cli

    ks = [50, 100, 200, 500]
    rows = []
    for ch in ("similar_author", "merged"):
        r = {"channel": ch, "users_with_list": 853, "users": 934, "mrr": 0.1234}
        for k in ks:
            r |= {f"recall@{k}": 0.4123, f"ndcg@{k}": 0.2345, f"hit_rate@{k}": 0.5, f"coverage@{k}": 0.1234,
                  f"pop_percentile@{k}": 0.8123, f"unique_hits@{k}": 1234, f"merged_sole_hits@{k}": 234}
        rows.append(r)
    res = SimpleNamespace(mode="published", skipped=None, extra={"test_users_in_matrix": 853},
                          train_date="2026-12-02", source="events 2026-12-03", test_users=934, catalog_items=5000,
                          ks=ks, rows=rows, columns=list(rows[0]), run_date="2026-12-02", path=None)
    console = Console(width=400, record=True)
    monkeypatch.setattr(cli, "console", console)
    cli.render_metrics(res, "evaluate")
    lines = [ln.rstrip() for ln in console.export_text().splitlines() if "┃" in ln or "│" in ln]
    header = " ".join(lines[0].replace("┃", " ").split())
    assert header == ("channel lists R@50 R@100 R@200 R@500 NDCG@50 NDCG@500 mrr cov@500 pop%@500 uniq@500 "
                      "m-solo@500")
    assert max(len(ln) for ln in lines) <= 150
