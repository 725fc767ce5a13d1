"""Run records: every stage run appends one row to the ``_runs`` Delta table.

Written with delta-rs (the ``deltalake`` package), not Spark, so JVM-free stages (train, index,
publish) record their runs the same way and a record costs milliseconds instead of a Spark job.
The table is small (one row per stage run) and append-only; "the state of stage S for date D" is
its newest record.

Columns: run_id, stage, run_date, start_ts, end_ts, duration_s, status (success | failed),
input_versions (table -> Delta version read), output_rows (table -> rows written), config_hash,
error, host.
"""

from __future__ import annotations

import json
import logging
import socket
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

import pyarrow as pa

from recsys_batch.config import WarehouseConfig

log = logging.getLogger(__name__)

RUNS_TABLE = "_runs"
SUCCESS, FAILED = "success", "failed"

RUNS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("stage", pa.string()), ("run_date", pa.string()),
    ("start_ts", pa.timestamp("us", tz="UTC")), ("end_ts", pa.timestamp("us", tz="UTC")),
    ("duration_s", pa.float64()), ("status", pa.string()),
    ("input_versions", pa.string()), ("output_rows", pa.string()),  # JSON objects: portable across engines
    ("config_hash", pa.string()), ("error", pa.string()), ("host", pa.string()),
])


def delta_rs_uri(path: str) -> str:
    """delta-rs speaks ``s3://``; Hadoop configs say ``s3a://``."""
    return "s3://" + path[len("s3a://"):] if path.startswith("s3a://") else path


@dataclass
class RunRecord:
    stage: str
    run_date: date
    start_ts: datetime
    end_ts: datetime
    status: str
    config_hash: str
    input_versions: dict[str, int] = field(default_factory=dict)
    output_rows: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_row(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "stage": self.stage, "run_date": self.run_date.isoformat(),
            "start_ts": self.start_ts, "end_ts": self.end_ts,
            "duration_s": (self.end_ts - self.start_ts).total_seconds(), "status": self.status,
            "input_versions": json.dumps(self.input_versions, sort_keys=True),
            "output_rows": json.dumps(self.output_rows, sort_keys=True),
            "config_hash": self.config_hash, "error": self.error, "host": socket.gethostname(),
        }


def now() -> datetime:
    return datetime.now(timezone.utc)


def append_run(wh: WarehouseConfig, record: RunRecord) -> None:
    from deltalake import write_deltalake

    table = pa.Table.from_pylist([record.to_row()], schema=RUNS_SCHEMA)
    write_deltalake(delta_rs_uri(wh.table_path(RUNS_TABLE)), table, mode="append")
    log.info("run record: %s %s %s (%.1fs)", record.stage, record.run_date, record.status,
             (record.end_ts - record.start_ts).total_seconds())


def read_runs(wh: WarehouseConfig) -> pa.Table:
    """All run records (empty table if none yet)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(delta_rs_uri(wh.table_path(RUNS_TABLE))).to_pyarrow_table()
    except TableNotFoundError:
        return RUNS_SCHEMA.empty_table()


def latest_status(wh: WarehouseConfig) -> dict[tuple[str, str], dict[str, Any]]:
    """(stage, run_date) -> newest record."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for row in read_runs(wh).to_pylist():
        key = (row["stage"], row["run_date"])
        if key not in latest or row["end_ts"] >= latest[key]["end_ts"]:
            latest[key] = row
    return latest


def is_complete(wh: WarehouseConfig, stage: str, run_date: date,
                status: dict[tuple[str, str], dict[str, Any]] | None = None) -> bool:
    status = latest_status(wh) if status is None else status
    rec = status.get((stage, run_date.isoformat()))
    return rec is not None and rec["status"] == SUCCESS


def table_version(wh: WarehouseConfig, name: str) -> int | None:
    """Current Delta version of a warehouse table, None if it does not exist."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(delta_rs_uri(wh.table_path(name))).version()
    except TableNotFoundError:
        return None
