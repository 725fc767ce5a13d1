"""Run records: the ``_runs`` Delta table, and what they say about each stage and date.

Written with delta-rs (the ``deltalake`` package), not Spark, so JVM-free stages (train, index,
publish) record their runs the same way and a record costs milliseconds instead of a Spark job.
The table is small and append-only. One stage run appends, in order:

* a **start** row (``event = start``, ``status = running``) before the stage writes anything: run id,
  attempt (1 + earlier runs of the stage for the date), host and pid, config hash, and the Delta
  version of every table the stage reads (``input_versions``, the outputs of every stage in its
  :func:`recsys_batch.pipeline.lineage`) as of its start;
* a **commit** row after each table partition it commits (``output_versions = {table: version}``,
  written by :func:`record_commit`, which the write paths of :mod:`recsys_batch.io` call), so a
  multi-table stage killed between two commits shows which tables it replaced and which it did not;
* an **end** row (``success`` or ``failed``, with end time, row counts, all committed versions, error).

A SIGKILL, an OOM kill or a lost node leaves a start without an end. :class:`RunLog` folds the rows
into one :class:`RunState` per run and derives the state of each (stage, date) from its newest run:

``success``   ended well and nothing it read has been rewritten since;
``stale``     ended well, but a stage in its lineage has since committed a newer version of a table it
              read for the dates it read (e.g. ingest of D re-run after matrix of D was built);
``running``   no end row yet, younger than ``runs.stale_running_minutes``;
``killed``    no end row, and its process is gone (same host, pid not alive);
``killed?``   no end row, older than the timeout (another host: the pid cannot be checked);
``failed``    ended with an error.

Only ``success`` is complete: upstream checks and ``backfill`` treat every other state as incomplete.

Staleness compares numbers recorded in ``_runs`` only: the version a run read of table T (its start
row) against the newest version of T that T's producing stage committed for the dates in the run's
lineage (commit rows of every run of that stage and date, ended or not -- a killed run's commits are
in the table all the same). Versions count per table, so a commit of T for another date never makes
a run stale. Not seen: writes made outside a recorded run, and (by design, as Airflow's daily edges)
a re-run of an older date inside a stage's lookback window (matrix of D reads 30 days of events).

Old records (one row per run, written before start/commit rows existed) read as end rows.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pyarrow as pa

from recsys_batch.config import RunsConfig, WarehouseConfig
from recsys_batch.pipeline import STAGE_BY_NAME, get_stage, lineage

log = logging.getLogger(__name__)

RUNS_TABLE = "_runs"
SUCCESS, FAILED, RUNNING = "success", "failed", "running"
STALE, KILLED, MAYBE_KILLED = "stale", "killed", "killed?"
START, COMMIT, END = "start", "commit", "end"

RUNS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("stage", pa.string()), ("run_date", pa.string()),
    ("start_ts", pa.timestamp("us", tz="UTC")), ("end_ts", pa.timestamp("us", tz="UTC")),
    ("duration_s", pa.float64()), ("status", pa.string()),
    ("input_versions", pa.string()), ("output_rows", pa.string()),  # JSON objects: portable across engines
    ("config_hash", pa.string()), ("error", pa.string()), ("host", pa.string()),
    # added with start / commit rows (older tables get them by schema merge; old rows read null)
    ("event", pa.string()), ("recorded_ts", pa.timestamp("us", tz="UTC")), ("attempt", pa.int32()),
    ("output_versions", pa.string()), ("pid", pa.int64()),
])


def delta_rs_uri(path: str) -> str:
    """delta-rs speaks ``s3://``; Hadoop configs say ``s3a://``."""
    return "s3://" + path[len("s3a://"):] if path.startswith("s3a://") else path


_last_ts: datetime | None = None


def now() -> datetime:
    """UTC now, strictly increasing within the process (rows of one run sort in the order written)."""
    global _last_ts
    t = datetime.now(timezone.utc)
    if _last_ts is not None and t <= _last_ts:
        t = _last_ts + timedelta(microseconds=1)
    _last_ts = t
    return t


def _append(wh: WarehouseConfig, row: dict[str, Any]) -> None:
    from deltalake import write_deltalake

    full = {k: row.get(k) for k in RUNS_SCHEMA.names}
    table = pa.Table.from_pylist([full], schema=RUNS_SCHEMA)
    write_deltalake(delta_rs_uri(wh.table_path(RUNS_TABLE)), table, mode="append", schema_mode="merge")


def read_run_rows(wh: WarehouseConfig) -> list[dict[str, Any]]:
    """Every row of ``_runs`` as written (start, commit and end rows), oldest first."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        t = DeltaTable(delta_rs_uri(wh.table_path(RUNS_TABLE))).to_pyarrow_table()
    except TableNotFoundError:
        return []
    rows = t.to_pylist()
    for r in rows:
        for k in RUNS_SCHEMA.names:
            r.setdefault(k, None)
    return sorted(rows, key=_row_ts)


def _row_ts(row: dict[str, Any]) -> datetime:
    ts = row.get("recorded_ts") or row.get("end_ts") or row.get("start_ts")
    return ts or datetime.min.replace(tzinfo=timezone.utc)


def _json(s: str | None) -> dict[str, Any]:
    return json.loads(s) if s else {}


# ---- runs -------------------------------------------------------------------------------------------

@dataclass
class RunState:
    """One stage run, folded from its rows."""

    run_id: str
    stage: str
    run_date: str
    start_ts: datetime | None
    status: str = RUNNING
    end_ts: datetime | None = None
    last_ts: datetime | None = None
    attempt: int | None = None
    input_versions: dict[str, int] = field(default_factory=dict)
    output_versions: dict[str, int] = field(default_factory=dict)
    output_rows: dict[str, int] = field(default_factory=dict)
    config_hash: str | None = None
    error: str | None = None
    host: str | None = None
    pid: int | None = None

    @property
    def ended(self) -> bool:
        return self.status in (SUCCESS, FAILED)

    @property
    def duration_s(self) -> float | None:
        if self.start_ts is None or self.end_ts is None:
            return None
        return (self.end_ts - self.start_ts).total_seconds()

    def to_row(self) -> dict[str, Any]:
        """The run as one row (JSON strings for the mappings, as in the table)."""
        return {
            "run_id": self.run_id, "stage": self.stage, "run_date": self.run_date, "attempt": self.attempt,
            "start_ts": self.start_ts, "end_ts": self.end_ts, "duration_s": self.duration_s,
            "status": self.status, "input_versions": json.dumps(self.input_versions, sort_keys=True),
            "output_versions": json.dumps(self.output_versions, sort_keys=True),
            "output_rows": json.dumps(self.output_rows, sort_keys=True), "config_hash": self.config_hash,
            "error": self.error, "host": self.host, "pid": self.pid, "last_ts": self.last_ts,
        }


def fold_runs(rows: list[dict[str, Any]]) -> list[RunState]:
    """One :class:`RunState` per run id from rows sorted oldest first; in order of first row."""
    runs: dict[str, RunState] = {}
    for r in rows:
        st = runs.get(r["run_id"])
        if st is None:
            st = runs[r["run_id"]] = RunState(r["run_id"], r["stage"], r["run_date"], r["start_ts"])
        ts = _row_ts(r)
        st.last_ts = ts if st.last_ts is None or ts > st.last_ts else st.last_ts
        for k in ("attempt", "config_hash", "host", "pid"):
            if r.get(k) is not None:
                setattr(st, k, r[k])
        if r.get("input_versions"):
            st.input_versions = _json(r["input_versions"])
        st.output_versions.update(_json(r.get("output_versions")))
        if r.get("event") in (None, END):  # None: a record written before start rows existed
            st.status, st.end_ts, st.error = r["status"], r["end_ts"], r["error"]
            st.output_rows = _json(r.get("output_rows"))
    return list(runs.values())


def read_runs(wh: WarehouseConfig) -> pa.Table:
    """All runs, one row per run (see :meth:`RunState.to_row`); a run without an end row has status
    ``running`` and no ``end_ts``."""
    rows = [r.to_row() for r in fold_runs(read_run_rows(wh))]
    schema = pa.schema([
        ("run_id", pa.string()), ("stage", pa.string()), ("run_date", pa.string()), ("attempt", pa.int32()),
        ("start_ts", pa.timestamp("us", tz="UTC")), ("end_ts", pa.timestamp("us", tz="UTC")),
        ("duration_s", pa.float64()), ("status", pa.string()), ("input_versions", pa.string()),
        ("output_versions", pa.string()), ("output_rows", pa.string()), ("config_hash", pa.string()),
        ("error", pa.string()), ("host", pa.string()), ("pid", pa.int64()),
        ("last_ts", pa.timestamp("us", tz="UTC")),
    ])
    return pa.Table.from_pylist(rows, schema=schema)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True  # cannot tell: assume alive
    return True


# ---- state of a stage for a date ----------------------------------------------------------------------

@dataclass
class StageState:
    """What the newest run of ``stage`` for ``run_date`` says, and why (``reasons``)."""

    stage: str
    run_date: str
    state: str  # success | stale | running | killed | killed? | failed | none
    run: RunState | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.state == SUCCESS

    @property
    def not_committed(self) -> list[str]:
        """Declared outputs the run has not (yet) committed."""
        done = self.run.output_versions if self.run else {}
        outputs = STAGE_BY_NAME[self.stage].outputs if self.stage in STAGE_BY_NAME else ()
        return [t for t in outputs if t not in done]

    def describe(self) -> str:
        """One line for ``status`` / ``backfill``: the state and its reasons."""
        if self.run is None:
            return "never ran"
        return f"{self.state}: {'; '.join(self.reasons)}" if self.reasons else self.state


class RunLog:
    """Every run of the warehouse, indexed by (stage, date); read once, queried many times."""

    def __init__(self, runs: list[RunState]):
        self.runs = runs
        self._by_key: dict[tuple[str, str], list[RunState]] = {}
        for r in runs:
            self._by_key.setdefault((r.stage, r.run_date), []).append(r)
        for rs in self._by_key.values():
            rs.sort(key=lambda r: (r.last_ts or datetime.min.replace(tzinfo=timezone.utc)))

    @classmethod
    def read(cls, wh: WarehouseConfig) -> RunLog:
        return cls(fold_runs(read_run_rows(wh)))

    def keys(self) -> list[tuple[str, str]]:
        return list(self._by_key)

    def latest(self, stage: str, run_date: date | str) -> RunState | None:
        rs = self._by_key.get((stage, _iso(run_date)))
        return rs[-1] if rs else None

    def attempts(self, stage: str, run_date: date | str) -> int:
        return len(self._by_key.get((stage, _iso(run_date)), []))

    def last_writes(self, stage: str, run_date: date | str) -> dict[str, int]:
        """Newest committed Delta version per table of every run of (stage, date), ended or not."""
        out: dict[str, int] = {}
        for r in self._by_key.get((stage, _iso(run_date)), []):
            for t, v in r.output_versions.items():
                if v is not None and (t not in out or v > out[t]):
                    out[t] = int(v)
        return out

    def stale_reasons(self, run: RunState) -> list[str]:
        """Why a run's output is out of date: a table it read rewritten for a date it read since."""
        if run.stage not in STAGE_BY_NAME:
            return []
        d = date.fromisoformat(run.run_date)
        reasons = []
        for up, offset in lineage(run.stage):
            ud = (d + timedelta(days=offset)).isoformat()
            outputs = get_stage(up).outputs
            for t, v in sorted(self.last_writes(up, ud).items()):
                if t not in outputs:
                    continue  # e.g. rejected_<table>: nobody downstream reads it
                read = run.input_versions.get(t)
                if read is None or v > int(read):
                    seen = f"read v{read}" if read is not None else "did not see it"
                    reasons.append(f"{t} dt={ud} rewritten by {up} (v{v}) after this run {seen}")
        return reasons

    def state(self, stage: str, run_date: date | str, cfg: RunsConfig | None = None,
              at: datetime | None = None) -> StageState:
        cfg = cfg or RunsConfig()
        d = _iso(run_date)
        run = self.latest(stage, d)
        if run is None:
            return StageState(stage, d, "none")
        if run.status == FAILED:
            return StageState(stage, d, FAILED, run, [run.error or "no error recorded"])
        if run.status == RUNNING:
            return _running_state(stage, d, run, cfg, at or datetime.now(timezone.utc))
        reasons = self.stale_reasons(run)
        return StageState(stage, d, STALE if reasons else SUCCESS, run, reasons)

    def states(self, cfg: RunsConfig | None = None, at: datetime | None = None) -> dict[tuple[str, str], StageState]:
        return {k: self.state(k[0], k[1], cfg, at) for k in self._by_key}


def _running_state(stage: str, d: str, run: RunState, cfg: RunsConfig, at: datetime) -> StageState:
    committed = ", ".join(f"{t} v{v}" for t, v in sorted(run.output_versions.items())) or "nothing"
    where = f"on {run.host or '?'} pid {run.pid if run.pid is not None else '?'}"
    started = run.start_ts.isoformat(timespec="seconds") if run.start_ts else "?"
    age_min = (at - run.start_ts).total_seconds() / 60 if run.start_ts else float("inf")
    limit = cfg.running_timeout_minutes(stage)
    me = socket.gethostname()
    gone = run.host == me and run.pid is not None and (
        (run.pid == os.getpid() and run.run_id not in _active_ids()) or not _pid_alive(run.pid))
    base = f"run {run.run_id[:8]} (attempt {run.attempt or '?'}) started {started} {where}, no end record"
    if gone:
        state, why = KILLED, f"{base}; that process is gone"
    elif age_min > limit:
        state, why = MAYBE_KILLED, (f"{base} after {age_min:.0f} min "
                                    f"(> runs.stale_running_minutes {limit:g})")
    else:
        state, why = RUNNING, f"{base} yet ({age_min:.0f} min)"
    return StageState(stage, d, state, run, [why, f"committed: {committed}"])


def _iso(d: date | str) -> str:
    return d.isoformat() if isinstance(d, date) else d


def latest_status(wh: WarehouseConfig) -> dict[tuple[str, str], dict[str, Any]]:
    """(stage, run_date) -> newest run as a row (``status`` as recorded: success | failed | running)."""
    rl = RunLog.read(wh)
    return {k: rl.latest(*k).to_row() for k in rl.keys()}


def is_complete(wh: WarehouseConfig, stage: str, run_date: date, runs: RunLog | None = None) -> bool:
    """The newest run of the stage for the date succeeded and is not stale."""
    return (runs or RunLog.read(wh)).state(stage, run_date).complete


def table_version(wh: WarehouseConfig, name: str) -> int | None:
    """Current Delta version of a warehouse table, None if it does not exist. Reads the log only, not the
    file list (a stage records the version of every table in its lineage at its start)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(delta_rs_uri(wh.table_path(name)), without_files=True).version()
    except TableNotFoundError:
        return None


def lineage_tables(stage: str) -> list[str]:
    """Tables a stage reads, directly or through its upstream stages (the outputs of its lineage)."""
    return sorted({t for up, _ in lineage(stage) for t in get_stage(up).outputs})


# ---- recording ----------------------------------------------------------------------------------------

class RunRecorder:
    """Writes the start, commit and end rows of one stage run."""

    def __init__(self, wh: WarehouseConfig, stage: str, run_date: date, config_hash: str,
                 input_versions: dict[str, int], attempt: int):
        self.wh, self.stage, self.run_date, self.config_hash = wh, stage, run_date, config_hash
        self.input_versions, self.attempt = dict(input_versions), attempt
        self.run_id = uuid.uuid4().hex
        self.output_versions: dict[str, int] = {}
        self.start_ts: datetime | None = None

    def _row(self, event: str, status: str, **kw: Any) -> dict[str, Any]:
        return {"run_id": self.run_id, "stage": self.stage, "run_date": self.run_date.isoformat(),
                "start_ts": self.start_ts, "status": status, "config_hash": self.config_hash,
                "host": socket.gethostname(), "pid": os.getpid(), "attempt": self.attempt, "event": event,
                "recorded_ts": now(), **kw}

    def start(self) -> None:
        self.start_ts = now()
        _append(self.wh, self._row(START, RUNNING, input_versions=json.dumps(self.input_versions, sort_keys=True)))
        log.info("run %s: %s %s attempt %d started", self.run_id[:8], self.stage, self.run_date, self.attempt)

    def committed(self, table: str, version: int) -> None:
        self.output_versions[table] = int(version)
        _append(self.wh, self._row(COMMIT, RUNNING, output_versions=json.dumps({table: int(version)})))

    def end(self, status: str, output_rows: dict[str, int] | None = None, error: str | None = None) -> None:
        end = now()
        _append(self.wh, self._row(
            END, status, end_ts=end, duration_s=(end - self.start_ts).total_seconds(),
            input_versions=json.dumps(self.input_versions, sort_keys=True),
            output_versions=json.dumps(self.output_versions, sort_keys=True),
            output_rows=json.dumps(output_rows or {}, sort_keys=True), error=error))
        log.info("run record: %s %s %s (%.1fs)", self.stage, self.run_date, status,
                 (end - self.start_ts).total_seconds())

    # the recorder of the stage running in this process; the write paths of io/ report commits to it
    def __enter__(self) -> RunRecorder:
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        _ACTIVE.remove(self)


#: recorders of the runs in progress in this process (a stack: a stage runs one at a time; module
#: state rather than a ContextVar so commits made from worker threads are recorded too)
_ACTIVE: list[RunRecorder] = []
#: fault injection for tests: called after each recorded commit as ``hook(stage, table, n_commits)``
_COMMIT_HOOKS: list[Callable[[str, str, int], None]] = []


def _active_ids() -> set[str]:
    return {r.run_id for r in _ACTIVE}


def record_commit(table: str, run_date: date, version: int | None) -> None:
    """Called by the Delta write paths after a partition commit: adds a commit row to the run in
    progress (if any), then runs the test hooks. A write outside a recorded run is not recorded."""
    if not _ACTIVE or version is None:
        return
    rec = _ACTIVE[-1]
    if run_date != rec.run_date:  # not what this run's date is built from: not attributed to it
        log.warning("run %s (%s %s) committed %s for another date, %s; not recorded", rec.run_id[:8],
                    rec.stage, rec.run_date, table, run_date)
        return
    rec.committed(table, version)
    for hook in list(_COMMIT_HOOKS):
        hook(rec.stage, table, len(rec.output_versions))


def add_commit_hook(hook: Callable[[str, str, int], None]) -> Callable[[], None]:
    """Fault injection (tests): call ``hook(stage, table, n_commits)`` after every recorded table commit,
    e.g. to raise or to ``os.kill(os.getpid(), SIGKILL)`` between two commits. Returns its remover."""
    _COMMIT_HOOKS.append(hook)
    return lambda: _COMMIT_HOOKS.remove(hook) if hook in _COMMIT_HOOKS else None
