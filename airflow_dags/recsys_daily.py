"""The daily recsys-batch DAG: one task per stage of ``recsys_batch.pipeline.STAGES``.

* Spark stages run ``spark-submit jobs/<stage>.py --date {{ ds }} --conf <overlay>``; JVM-free stages
  (the input check, training, index, publish) run ``python jobs/<stage>.py`` in the same environment.
  Plain ``BashOperator`` commands rather than the Spark provider's operator: the command a task runs
  is exactly the one a person runs by hand (and the README shows), it needs no Airflow connection
  object, and the provider would add a dependency for nothing the command line cannot say.
* Master, deploy mode, resources and the conf overlay come from a triggered run's params, then
  Airflow Variables ``recsys_<key>``, then ``conf/airflow.yaml``; retries, timeouts and pools from
  ``conf/airflow.yaml``.
* ``max_active_runs=1``: the retrain is warm-started from the previous day. ``catchup`` is off;
  backfills are explicit (``recsys-batch backfill`` or ``airflow dags backfill``).

Only Airflow, the standard library, PyYAML and ``recsys_batch.pipeline`` (a plain list of stages,
stdlib only) are imported at parse time: no pyspark, no torch.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Param

from recsys_batch.pipeline import STAGES

REPO = Path(os.environ.get("RECSYS_BATCH_HOME", Path(__file__).resolve().parents[1]))
DEFAULTS = yaml.safe_load((REPO / "conf" / "airflow.yaml").read_text())
DAG_CFG, SUBMIT = DEFAULTS["dag"], DEFAULTS["spark_submit"]
PYTHON = os.environ.get("RECSYS_BATCH_PYTHON", sys.executable)
BIN = str(Path(PYTHON).parent)

log = logging.getLogger(__name__)


def _setting(key: str) -> str:
    """Jinja: the run's param, else the Airflow Variable recsys_<key>, else conf/airflow.yaml."""
    return "{{ params.%s or var.value.get('recsys_%s', '%s') }}" % (key, key, SUBMIT[key])


def _default_jars() -> str:
    return str(REPO / ".jars" / "*.jar")  # spark-submit expands the glob itself


def spark_command(job_file: str) -> str:
    jars = _setting("jars") if SUBMIT["jars"] else "{{ params.jars or var.value.get('recsys_jars', '%s') }}" % _default_jars()
    parts = [
        "spark-submit",
        f"--master '{_setting('master')}'",
        f"--deploy-mode {_setting('deploy_mode')}",
        f"--driver-memory {_setting('driver_memory')}",
        f"--executor-memory {_setting('executor_memory')}",
        f"--executor-cores {_setting('executor_cores')}",
        f"--num-executors {_setting('num_executors')}",
        f"--conf spark.pyspark.python={shlex.quote(PYTHON)}",
        f"--jars '{jars}'",
        "{% if params.py_files or var.value.get('recsys_py_files', '') %}--py-files "
        + _setting("py_files") + "{% endif %}",
        _setting("extra_args"),
        shlex.quote(str(REPO / "jobs" / job_file)),
        "--date {{ ds }}",
        f"--conf {_setting('conf_overlay')}",
        "--set spark.master=null",
    ]
    return " ".join(parts)


def python_command(job_file: str) -> str:
    return f"{shlex.quote(PYTHON)} {shlex.quote(str(REPO / 'jobs' / job_file))} --date {{{{ ds }}}} --conf {_setting('conf_overlay')}"


def on_failure(context) -> None:  # noqa: ANN001
    ti = context.get("task_instance")
    log.error("recsys-batch stage %s failed for %s: %s", getattr(ti, "task_id", "?"), context.get("ds"),
              context.get("exception"))


with DAG(
    dag_id=DAG_CFG["dag_id"],
    description="recsys-batch: ingest -> matrix -> similarity/features -> samples -> train -> index -> evaluate -> publish",
    start_date=datetime.fromisoformat(DAG_CFG["start_date"]).replace(tzinfo=timezone.utc),
    schedule=DAG_CFG["schedule"],
    catchup=DAG_CFG["catchup"],
    max_active_runs=DAG_CFG["max_active_runs"],
    tags=DAG_CFG["tags"],
    params={k: Param(None, type=["null", "string"], description=f"spark-submit {k} (default: Variable "
                     f"recsys_{k}, then conf/airflow.yaml: {v!r})") for k, v in SUBMIT.items()},
    default_args={
        "retries": DAG_CFG["retries"],
        "retry_delay": timedelta(minutes=DAG_CFG["retry_delay_minutes"]),
        "execution_timeout": timedelta(minutes=DAG_CFG["execution_timeout_minutes"]),
        "on_failure_callback": on_failure,
    },
    doc_md=__doc__,
) as dag:
    env = {"PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}", "PYSPARK_PYTHON": PYTHON}
    tasks = {}
    for stage in STAGES:
        tasks[stage.name] = BashOperator(
            task_id=stage.name,
            bash_command=spark_command(stage.job_file) if stage.spark else python_command(stage.job_file),
            cwd=str(REPO),
            env=env,
            append_env=True,
            pool=DAG_CFG["spark_pool"] if stage.spark else DAG_CFG["python_pool"],
            doc=stage.doc,
        )
    for stage in STAGES:
        for up in stage.upstream:
            tasks[up] >> tasks[stage.name]
