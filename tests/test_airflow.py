"""The daily DAG: loads cleanly, has the pipeline's task graph, and runs end to end with `airflow dags test`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("airflow", reason="the airflow extra is not installed (pip install .[airflow])")

from recsys_batch.pipeline import STAGES  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "airflow_dags"


def _airflow_env(home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "RECSYS_BATCH_PYTHON": sys.executable,
    }


def _py(code: str, home: Path) -> str:
    res = subprocess.run([sys.executable, "-c", code], env=_airflow_env(home), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.strip().splitlines()[-1]


def test_dagbag_loads_with_the_pipeline_graph(tmp_path):
    out = _py(
        "import json; from airflow.models.dagbag import DagBag\n"
        f"b = DagBag(dag_folder={str(DAGS)!r})\n"
        "d = b.dags['recsys_daily']\n"
        "print(json.dumps({'errors': {k: str(v) for k, v in b.import_errors.items()},"
        " 'tasks': {t.task_id: sorted(t.upstream_task_ids) for t in d.tasks},"
        " 'max_active_runs': d.max_active_runs, 'catchup': d.catchup,"
        " 'retries': d.default_args['retries']}))",
        tmp_path,
    )
    got = json.loads(out)
    assert got["errors"] == {}
    assert got["tasks"] == {s.name: sorted(s.upstream) for s in STAGES}
    assert got["tasks"]["ingest"] == ["check_input"] and got["tasks"]["matrix"] == ["ingest"]
    assert got["max_active_runs"] == 1 and got["catchup"] is False and got["retries"] == 2


def test_dag_file_imports_no_pyspark_or_torch(tmp_path):
    out = _py(
        "import runpy, sys\n"
        f"runpy.run_path({str(DAGS / 'recsys_daily.py')!r})\n"
        "print(('pyspark' in sys.modules, 'torch' in sys.modules))",
        tmp_path,
    )
    assert out == "(False, False)"


#: stages the e2e test builds in-process (warm JVM) and Airflow marks successful instead of re-running them;
#: RECSYS_BATCH_FULL_DAG_TEST=1 runs every task through Airflow instead (about twice as long)
PREBUILT = ("ingest", "matrix", "itemcf", "swing", "usercf", "features", "samples")


@pytest.mark.slow
def test_airflow_dags_test_runs_every_task(spark, tmp_path):
    """A real `airflow dags test` over a tiny synthetic warehouse, SQLite metadata DB in a temp AIRFLOW_HOME.

    Both kinds of task command run for real: ``check_input``, ``train``, ``index`` and ``publish``
    (python) and ``recall`` and ``evaluate`` (spark-submit). The other Spark stages are built in this
    process first (one warm JVM instead of a spark-submit each) and marked successful in the DAG run.
    """
    from datetime import date

    from recsys_batch.config import load_config
    from recsys_batch.generate import generate_synthetic
    from recsys_batch.runner import backfill
    from recsys_batch.runs import latest_status, read_runs

    full = os.environ.get("RECSYS_BATCH_FULL_DAG_TEST") == "1"
    home = tmp_path / "airflow"
    home.mkdir()
    overlay = tmp_path / "tiny.yaml"
    overlay.write_text(
        f"warehouse: {{root: {tmp_path / 'wh'}, raw_root: {tmp_path / 'raw'}}}\n"
        "spark: {shuffle_partitions: 2, driver_memory: 1g}\n"
        "generate: {n_users: 80, n_items: 50, n_authors: 6, n_categories: 4, n_clusters: 2, days: 2,"
        " impressions_per_user_day: 6}\n"
        "samples: {hot_item_share_threshold: null}\n"
        # 80 users hold out too few users for the gate, and the model is a first one: the gate runs and its
        # refusal is recorded in the manifest, but the DAG test is about the tasks, not the model
        "publish: {force: true}\n"
    )
    cfg = load_config(overlay)
    d, prev = date(2026, 11, 20), date(2026, 11, 19)
    generate_synthetic(cfg.generate, d, cfg.warehouse.raw_root)
    # the samples stage joins the previous day's features: a first deployment backfills that day first
    backfill(cfg, prev, prev, ["check_input", "ingest", "matrix", "features"], spark=spark)
    if not full:
        steps = backfill(cfg, d, d, ["check_input", *PREBUILT], spark=spark)
        assert all(s.action == "ran" for s in steps), steps
    env = _airflow_env(home)
    mig = subprocess.run(["airflow", "db", "migrate"], env=env, capture_output=True, text=True, timeout=600)
    assert mig.returncode == 0, mig.stderr[-3000:]
    cmd = ["airflow", "dags", "test", "recsys_daily", d.isoformat(), "-c", json.dumps({"conf_overlay": str(overlay)})]
    if not full:
        cmd += ["--mark-success-pattern", f"^({'|'.join(PREBUILT)})$"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3000)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-5000:]
    assert "state=success" in log, log[-5000:]
    status = latest_status(cfg.warehouse)
    assert {s.name: status[(s.name, d.isoformat())]["status"] for s in STAGES} == {s.name: "success" for s in STAGES}
    # the tasks Airflow ran wrote their own run records (check_input twice when prebuilt: once here, once there)
    runs = read_runs(cfg.warehouse).to_pylist()
    ran = {s.name for s in STAGES} - (set() if full else set(PREBUILT))
    counts = {n: sum(1 for r in runs if r["stage"] == n and r["run_date"] == d.isoformat()) for n in ran}
    assert counts == {n: 2 if (n == "check_input" and not full) else 1 for n in ran}, counts
