"""The daily DAG: loads cleanly, has the pipeline's task graph, passes params and Variables to its commands as
literal arguments (never as shell), and runs end to end with `airflow dags test`."""

from __future__ import annotations

import json
import os
import shlex
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


#: what an operator could type into a trigger form or an Airflow Variable; {m} is a file the shell would create
INJECTIONS = ["x; touch {m}", "$(touch {m})", "`touch {m}`", "x && touch {m} #", "x' ; touch {m} ; '", "x\ntouch {m}",
              "x > {m}"]
FREE_TEXT = ("conf_overlay", "jars", "py_files", "extra_args")


def _fake_bin(tmp_path: Path) -> Path:
    """``spark-submit`` and ``python`` stand-ins that record their argv (NUL-separated) in $ARGV_LOG."""
    fake = tmp_path / "fakebin"
    fake.mkdir()
    for name in ("spark-submit", "python"):
        (fake / name).write_text('#!/bin/sh\nprintf \'%s\\0\' "$0" "$@" > "$ARGV_LOG"\n')
        (fake / name).chmod(0o755)
    return fake


def _argv(log: Path) -> list[str]:
    return log.read_text().split("\0")[:-1]


def _expected_argv(fake: Path, task: str, ds: str, values: dict[str, str]) -> list[str]:
    import yaml

    from recsys_batch.pipeline import get_stage

    st = get_stage(task)
    job = str(REPO / "jobs" / st.job_file)
    if not st.spark:
        return [str(fake / "python"), job, "--date", ds, "--conf", values["conf_overlay"]]
    d = yaml.safe_load((REPO / "conf" / "airflow.yaml").read_text())["spark_submit"]
    return [str(fake / "spark-submit"), "--master", d["master"], "--deploy-mode", d["deploy_mode"],
            "--driver-memory", d["driver_memory"], "--executor-memory", d["executor_memory"],
            "--executor-cores", str(d["executor_cores"]), "--num-executors", str(d["num_executors"]),
            "--conf", f"spark.pyspark.python={fake / 'python'}", "--jars", values["jars"],
            "--py-files", values["py_files"], *shlex.split(values["extra_args"]), job, "--date", ds,
            "--conf", values["conf_overlay"], "--set", "spark.master=null"]


_RENDER = """
import json, runpy, sys
cases = json.loads(sys.argv[1])
g = runpy.run_path(sys.argv[2])
dag = g["dag"]
env = dag.get_template_env()

class Variables:  # the template's var.value
    def __init__(self, values):
        self.values = values
    def get(self, key, default=None):
        return self.values.get(key, default)

out = []
for case in cases:
    params = {k: None for k in g["SUBMIT"]}
    params.update(case["params"])
    ctx = {"params": params, "ds": case["ds"], "var": {"value": Variables(case["variables"])}}
    cmds, errors = {}, {}
    for t in dag.tasks:
        try:
            cmds[t.task_id] = t.render_template(t.bash_command, ctx, env)
        except Exception as e:
            errors[t.task_id] = f"{type(e).__name__}: {e}"
    out.append({"cmds": cmds, "errors": errors})
print(json.dumps(out))
"""


def _render(cases: list[dict], home: Path, fake: Path) -> list[dict]:
    env = {**_airflow_env(home), "RECSYS_BATCH_PYTHON": str(fake / "python")}
    res = subprocess.run([sys.executable, "-c", _RENDER, json.dumps(cases), str(DAGS / "recsys_daily.py")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_params_and_variables_reach_the_commands_as_literal_arguments(tmp_path):
    """Render every task's bash_command with hostile params (a triggered run) or Variables, run it through
    bash with recording stand-ins for spark-submit and python: nothing is executed, each value arrives
    as exactly the argument(s) it spells."""
    fake = _fake_bin(tmp_path)
    marker = tmp_path / "pwned"
    ds = "2026-11-20"
    cases, expected = [], []
    for i, inj in enumerate(INJECTIONS):
        values = {k: ("" if k == "extra_args" else f"{k}-") + inj.format(m=marker) for k in FREE_TEXT}
        via_params = i % 2 == 0  # alternate: trigger params, then Airflow Variables recsys_<key>
        cases.append({"ds": ds, "params": values if via_params else {},
                      "variables": {} if via_params else {f"recsys_{k}": v for k, v in values.items()}})
        expected.append(values)
    rendered = _render(cases, tmp_path, fake)
    work = tmp_path / "work"
    work.mkdir()
    n = 0
    for case, values in zip(rendered, expected, strict=True):
        assert case["errors"] == {}
        assert set(case["cmds"]) == {s.name for s in STAGES}
        for task, cmd in case["cmds"].items():
            log = tmp_path / f"argv{n}"
            n += 1
            run = subprocess.run(["bash", "-c", cmd], cwd=work, capture_output=True, text=True, timeout=60,
                                 env={"PATH": f"{fake}:/usr/bin:/bin", "ARGV_LOG": str(log)})
            assert run.returncode == 0, (task, cmd, run.stderr)
            assert list(tmp_path.glob("pwned*")) == [], (task, cmd)
            assert _argv(log) == _expected_argv(fake, task, ds, values), (task, cmd)
    assert sorted(p.name for p in work.iterdir()) == []


def test_structured_settings_and_ds_are_validated(tmp_path):
    """master, deploy mode, memory and counts must match their pattern whichever source set them, and ds
    must be a date: a bad value fails the task at render time, naming the setting."""
    fake = _fake_bin(tmp_path)
    marker = tmp_path / "pwned"
    keys = ("master", "deploy_mode", "driver_memory", "executor_memory", "executor_cores", "num_executors")
    cases = []
    for k in keys:
        cases.append({"ds": "2026-11-20", "params": {k: f"2; touch {marker}"}, "variables": {}})
        cases.append({"ds": "2026-11-20", "params": {}, "variables": {f"recsys_{k}": f"$(touch {marker})"}})
    cases.append({"ds": f"2026-11-20; touch {marker}", "params": {}, "variables": {}})
    cases.append({"ds": "2026-13-45", "params": {}, "variables": {}})
    good = {"ds": "2026-11-20", "params": {"master": "spark://h1:7077,h2:7077", "deploy_mode": "cluster",
                                            "driver_memory": "512m", "executor_cores": "4"},
            "variables": {"recsys_master": "yarn", "recsys_num_executors": "10", "recsys_executor_memory": "2G"}}
    rendered = _render([*cases, good], tmp_path, fake)
    spark_tasks = {s.name for s in STAGES if s.spark}
    for case, got in zip(cases[: 2 * len(keys)], rendered, strict=False):
        key = next(iter(case["params"] or {k[len("recsys_"):]: v for k, v in case["variables"].items()}))
        assert set(got["errors"]) == spark_tasks, key  # python tasks do not take spark-submit settings
        assert all(f"ValueError: recsys_daily: {key}=" in e for e in got["errors"].values()), got["errors"]
    for got in rendered[2 * len(keys): -1]:
        assert set(got["errors"]) == {s.name for s in STAGES}
        assert all("recsys_daily: ds=" in e and "is not a date YYYY-MM-DD" in e for e in got["errors"].values())
    ok = rendered[-1]
    assert ok["errors"] == {}
    assert shlex.split(ok["cmds"]["matrix"])[1:9] == ["--master", "spark://h1:7077,h2:7077", "--deploy-mode", "cluster",
                                                      "--driver-memory", "512m", "--executor-memory", "2G"]
    assert shlex.split(ok["cmds"]["matrix"])[9:13] == ["--executor-cores", "4", "--num-executors", "10"]
    assert not marker.exists()


@pytest.mark.slow
def test_airflow_tasks_test_passes_hostile_params_and_variables_as_arguments(tmp_path):
    """The real thing: `airflow tasks test` renders and runs a Spark task and a python task with a hostile
    run param and a hostile Variable (AIRFLOW_VAR_RECSYS_EXTRA_ARGS); the recording stand-ins get them as
    literal arguments and no file appears."""
    fake = _fake_bin(tmp_path)
    home = tmp_path / "airflow"
    home.mkdir()
    marker = tmp_path / "pwned"
    env = {**_airflow_env(home), "RECSYS_BATCH_PYTHON": str(fake / "python")}
    mig = subprocess.run(["airflow", "db", "migrate"], env=env, capture_output=True, text=True, timeout=600)
    assert mig.returncode == 0, mig.stderr[-3000:]
    overlay, extra = f"local; touch {marker}", f"--name $(touch {marker})"
    for task in ("check_input", "matrix"):
        log = tmp_path / f"argv-{task}"
        run = subprocess.run(
            ["airflow", "tasks", "test", "recsys_daily", task, "2026-11-20", "-t", json.dumps({"conf_overlay": overlay})],
            env={**env, "ARGV_LOG": str(log), "AIRFLOW_VAR_RECSYS_EXTRA_ARGS": extra}, cwd=tmp_path,
            capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
        values = {"conf_overlay": overlay, "jars": str(REPO / ".jars" / "*.jar"), "py_files": "", "extra_args": extra}
        want = _expected_argv(fake, task, "2026-11-20", values)
        if task == "matrix":  # empty py_files: no --py-files option at all
            i = want.index("--py-files")
            del want[i: i + 2]
        assert _argv(log) == want
    assert not marker.exists()


#: stages the e2e test builds in-process (warm JVM) and Airflow marks successful instead of re-running them;
#: RECSYS_BATCH_FULL_DAG_TEST=1 runs every task through Airflow instead (about twice as long)
PREBUILT = ("ingest", "matrix", "itemcf", "swing", "usercf", "features", "samples", "recall_rules", "latent")


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
