"""spark-submit on a real Spark standalone cluster on localhost (master + one 2-core worker).

The jobs are submitted exactly as a scheduler would: `spark-submit --master spark://... --py-files
<package zip> --jars '<.jars>/*.jar' jobs/<stage>.py --date D --conf <overlay>`, and their outputs
must equal the local-mode outputs on the same input. The cluster is stopped even when the test fails.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import pytest
from chispa import assert_approx_df_equality

from recsys_batch.config import load_config
from recsys_batch.generate import generate_synthetic
from recsys_batch.io.tables import read_table
from recsys_batch.pipeline import get_stage
from recsys_batch.runner import run_stage
from recsys_batch.spark import build_pyfiles_zip, jars_dir

REPO = Path(__file__).resolve().parents[1]
D = date(2026, 11, 20)
STAGES = ["check_input", "ingest", "matrix", "itemcf"]
TABLES = ["events", "rejected_events", "items", "user_item_matrix", "user_lastn", "id_map_item", "itemcf_topk"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spark_env() -> dict[str, str]:
    import pyspark

    home = str(Path(pyspark.__file__).parent)
    return {**os.environ, "SPARK_HOME": home, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}


@contextmanager
def standalone_cluster(workdir: Path):
    env = _spark_env()
    spark_class = str(Path(env["SPARK_HOME"]) / "bin" / "spark-class")
    port, ui, wui = _free_port(), _free_port(), _free_port()
    url = f"spark://127.0.0.1:{port}"
    logs = workdir / "logs"
    logs.mkdir(parents=True)
    procs = []
    try:
        procs.append(subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
             "--webui-port", str(ui)], env=env, stdout=open(logs / "master.log", "w"), stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", "2",
             "--memory", "3g", "--webui-port", str(wui), "--work-dir", str(workdir / "work"), url],
            env=env, stdout=open(logs / "worker.log", "w"), stderr=subprocess.STDOUT))
        deadline = time.time() + 180
        while True:
            try:
                state = json.load(urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=5))
                if state.get("aliveworkers", 0) >= 1:
                    break
            except OSError:
                pass
            if time.time() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError("standalone cluster did not start:\n" + (logs / "master.log").read_text()[-3000:]
                                   + (logs / "worker.log").read_text()[-3000:])
            time.sleep(1)
        yield url
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def _submit(master: str, stage: str, overlay: Path, pyfiles: Path) -> None:
    env = _spark_env()
    st = get_stage(stage)
    job = str(REPO / "jobs" / st.job_file)
    args = ["--date", D.isoformat(), "--conf", str(overlay), "--set", "spark.master=null"]
    if not st.spark:
        cmd = [sys.executable, job, *args]
    else:
        cmd = ["spark-submit", "--master", master, "--deploy-mode", "client", "--total-executor-cores", "2",
               "--executor-memory", "1g", "--driver-memory", "1g",
               "--conf", f"spark.pyspark.python={sys.executable}",
               "--jars", str(jars_dir(load_config(overlay).spark) / "*.jar"), "--py-files", str(pyfiles), job, *args]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200, cwd=REPO)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"


def _overlay(tmp_path: Path, name: str, raw: Path) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(f"warehouse: {{root: {tmp_path / name}, raw_root: {raw}}}\n"
                 "spark: {shuffle_partitions: 4, driver_memory: 1g}\n"
                 "itemcf: {top_k: 20}\n")
    return p


@pytest.mark.slow
def test_spark_submit_on_standalone_cluster_matches_local_mode(spark, tmp_path):
    raw = tmp_path / "raw"
    tiny = load_config("local", ["generate.n_users=150", "generate.n_items=80", "generate.n_clusters=3",
                                 "generate.days=1", "generate.impressions_per_user_day=10"]).generate
    generate_synthetic(tiny, D, raw)
    cluster_overlay, local_overlay = _overlay(tmp_path, "cluster", raw), _overlay(tmp_path, "local", raw)
    pyfiles = build_pyfiles_zip(tmp_path / "dist")

    with standalone_cluster(tmp_path / "standalone") as master:
        for stage in STAGES:
            _submit(master, stage, cluster_overlay, pyfiles)

    local_cfg = load_config(local_overlay)
    for stage in STAGES:
        run_stage(stage, local_cfg, D, spark)
    cluster_cfg = load_config(cluster_overlay)
    for table in TABLES:
        got = read_table(spark, cluster_cfg.warehouse, table, D)
        want = read_table(spark, local_cfg.warehouse, table, D)
        assert got.count() > 0 or table == "rejected_events"
        # sums may add up in another order on another partitioning: equal to 1e-9
        order = [c for c in want.columns if c not in ("score",)]
        assert_approx_df_equality(got.select(*want.columns).orderBy(*order), want.orderBy(*order), 1e-9,
                                  ignore_nullable=True)
