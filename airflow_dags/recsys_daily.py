"""The daily recsys-batch DAG: one task per stage of ``recsys_batch.pipeline.STAGES``.

* Spark stages run ``spark-submit jobs/<stage>.py --date {{ ds }} --conf <overlay>``; JVM-free stages
  (the input check, training, index, publish) run ``python jobs/<stage>.py`` in the same environment.
  Plain ``BashOperator`` commands rather than the Spark provider's operator: the command a task runs
  is exactly the one a person runs by hand (and the README shows), it needs no Airflow connection
  object, and the provider would add a dependency for nothing the command line cannot say.
* Master, deploy mode, resources and the conf overlay come from a triggered run's params, then
  Airflow Variables ``recsys_<key>``, then ``conf/airflow.yaml``; retries, timeouts and pools from
  ``conf/airflow.yaml``. Whoever may trigger the DAG or edit Variables must not get a shell: each
  value reaches ``bash_command`` through the macros below, which check the structured ones (master,
  deploy mode, memory, counts, ``ds``) against a pattern and ``shlex.quote`` every one (``extra_args``
  is split into words and each word quoted), so ``; rm ...`` or ``$(...)`` arrive as literal arguments.
* ``max_active_runs=1``: the retrain is warm-started from the previous day. ``catchup`` is off;
  backfills are explicit (``recsys-batch backfill`` or ``airflow dags backfill``).

Only Airflow, the standard library, PyYAML and ``recsys_batch.pipeline`` (a plain list of stages,
stdlib only) are imported at parse time: no pyspark, no torch.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

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


#: what a resolved setting must look like, whichever source it came from (a triggered run's params are
#: also checked against these when the run is created). Free-text settings (the overlay, jars, py_files,
#: extra_args) are not restricted: every one is shell-quoted instead.
PATTERNS = {
    "master": r"^(local(\[[0-9*]+(,[0-9]+)?\])?|yarn|(spark|mesos|k8s)://[A-Za-z0-9._:/\[\]@%,+-]+)$",
    "deploy_mode": r"^(client|cluster)$",
    "driver_memory": r"^[0-9]+[kKmMgGtTpP]?[bB]?$",
    "executor_memory": r"^[0-9]+[kKmMgGtTpP]?[bB]?$",
    "executor_cores": r"^[0-9]+$",
    "num_executors": r"^[0-9]+$",
}
DS_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"


def setting(key: str, params: Any, variables: Any) -> str:
    """The run's param ``key``, else the Airflow Variable ``recsys_<key>``, else conf/airflow.yaml; checked
    against :data:`PATTERNS` (a ``ValueError`` fails the task before its command runs)."""
    value = (params or {}).get(key) or variables.get(f"recsys_{key}", None) or SUBMIT[key]
    if key == "jars" and not value:
        value = str(REPO / ".jars" / "*.jar")  # quoted below, so spark-submit expands the glob itself
    value = str(value)
    if key in PATTERNS and not re.fullmatch(PATTERNS[key], value):
        raise ValueError(f"recsys_daily: {key}={value!r} (run param or Variable recsys_{key}) does not match "
                         f"{PATTERNS[key]}")
    return value


def sh_arg(key: str, params: Any, variables: Any) -> str:
    """Jinja macro: one setting as a single shell word."""
    return shlex.quote(setting(key, params, variables))


def sh_option(flag: str, key: str, params: Any, variables: Any) -> str:
    """Jinja macro: ``flag 'value'``, or nothing when the setting is empty."""
    value = setting(key, params, variables)
    return f"{flag} {shlex.quote(value)}" if value else ""


def sh_args(key: str, params: Any, variables: Any) -> str:
    """Jinja macro: a setting holding several arguments (``extra_args``), split like a shell would and
    each word quoted again: no operator, substitution or redirection survives."""
    return " ".join(shlex.quote(a) for a in shlex.split(setting(key, params, variables)))


def sh_ds(ds: Any) -> str:
    """Jinja macro: the run date, checked to be a date YYYY-MM-DD."""
    value = str(ds)
    try:
        if re.fullmatch(DS_PATTERN, value) and date.fromisoformat(value):
            return value
    except ValueError:
        pass
    raise ValueError(f"recsys_daily: ds={ds!r} is not a date YYYY-MM-DD")


MACROS = {"recsys_arg": sh_arg, "recsys_option": sh_option, "recsys_args": sh_args, "recsys_ds": sh_ds}


def _arg(key: str) -> str:
    return "{{ recsys_arg('%s', params, var.value) }}" % key


def spark_command(job_file: str) -> str:
    parts = [
        "spark-submit",
        f"--master {_arg('master')}",
        f"--deploy-mode {_arg('deploy_mode')}",
        f"--driver-memory {_arg('driver_memory')}",
        f"--executor-memory {_arg('executor_memory')}",
        f"--executor-cores {_arg('executor_cores')}",
        f"--num-executors {_arg('num_executors')}",
        f"--conf spark.pyspark.python={shlex.quote(PYTHON)}",
        f"--jars {_arg('jars')}",
        "{{ recsys_option('--py-files', 'py_files', params, var.value) }}",
        "{{ recsys_args('extra_args', params, var.value) }}",
        shlex.quote(str(REPO / "jobs" / job_file)),
        "--date {{ recsys_ds(ds) }}",
        f"--conf {_arg('conf_overlay')}",
        "--set spark.master=null",
    ]
    return " ".join(parts)


def python_command(job_file: str) -> str:
    return (f"{shlex.quote(PYTHON)} {shlex.quote(str(REPO / 'jobs' / job_file))} --date {{{{ recsys_ds(ds) }}}} "
            f"--conf {_arg('conf_overlay')}")


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
                     f"recsys_{k}, then conf/airflow.yaml: {v!r})", **({"pattern": f"^$|{PATTERNS[k]}"} if k in PATTERNS else {}))
            for k, v in SUBMIT.items()},
    user_defined_macros=MACROS,
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
