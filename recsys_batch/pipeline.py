"""The daily pipeline as one list of stages, shared by the CLI, ``jobs/`` and the Airflow DAG.

A stage's ``run`` is ``"module:function"``, imported only when the stage runs, so reading this list
(the DAG file does) imports neither pyspark nor torch. Every Spark stage's function has the signature
``run(spark, cfg, run_date)``; a stage that needs no JVM has ``run(cfg, run_date)``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stage:
    name: str
    run: str
    upstream: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    spark: bool = True
    doc: str = ""
    #: entry point under jobs/ (spark-submit for Spark stages, plain python otherwise)
    job: str = ""

    @property
    def job_file(self) -> str:
        return self.job or f"{self.name}.py"

    def load(self) -> Any:
        module, func = self.run.split(":")
        return getattr(importlib.import_module(module), func)


STAGES: tuple[Stage, ...] = (
    Stage(
        "check_input", "recsys_batch.checks:check_input", spark=False,
        doc="fail clearly when the day's events have not arrived or are fewer than ingest.min_event_rows",
    ),
    Stage(
        "ingest", "recsys_batch.ingest:run_ingest", upstream=("check_input",),
        outputs=("events", "users", "items", "follows", "rank_logs"),
        doc="validate the day's raw inputs into Delta tables; bad rows to rejected_<table>",
    ),
    Stage(
        "matrix", "recsys_batch.matrix:run_matrix", upstream=("ingest",),
        outputs=("user_item_matrix", "user_lastn", "item_activity", "user_activity", "id_map_user",
                 "id_map_item"),
        doc="time-decayed user-item matrix over the lookback window, last-N, activity, dense ids",
    ),
)

STAGE_BY_NAME = {s.name: s for s in STAGES}


def get_stage(name: str) -> Stage:
    try:
        return STAGE_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGE_BY_NAME)}") from None
