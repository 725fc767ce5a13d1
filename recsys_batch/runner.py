"""Run one stage for one date: load config, build the session, call the stage, summarise.

Used by the CLI and by the thin ``jobs/<stage>.py`` spark-submit entry points, so both behave the same.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

from recsys_batch.config import Config, load_config
from recsys_batch.errors import OlderThanLive, RecsysBatchError, UpstreamIncomplete
from recsys_batch.pipeline import get_stage

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    stage: str
    run_date: date
    seconds: float
    result: Any


def default_run_date() -> date:
    """Yesterday in UTC: a daily job processes the day that has just closed."""
    return datetime.now(timezone.utc).date() - timedelta(days=1)


def parse_date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise RecsysBatchError(f"--date must be YYYY-MM-DD, got {value!r}") from None


def output_rows(result: Any) -> dict[str, int]:
    """{table: rows written} from what a stage returned (TableStats, IngestReport, or an object
    with an ``output_rows`` mapping)."""
    if hasattr(result, "output_rows") and isinstance(result.output_rows, dict):
        return {str(k): int(v) for k, v in result.output_rows.items()}
    out: dict[str, int] = {}
    for r in result if isinstance(result, list | tuple) else [result]:
        if hasattr(r, "table") and hasattr(r, "valid"):  # IngestReport
            if not getattr(r, "skipped", None):
                out[r.table] = int(r.valid)
                out[f"rejected_{r.table}"] = int(r.n_rejected)
        elif hasattr(r, "table") and hasattr(r, "rows"):
            out[r.table] = int(r.rows)
    return out


def missing_upstream(name: str, wh: Any, run_date: date, runs: Any = None) -> list[str]:
    """Upstream stages of ``name`` not complete for ``run_date`` (``prev_day`` ones for the day before):
    never run, failed, running, killed, or stale (see :mod:`recsys_batch.runs`); each with its state.
    A ``prev_day`` stage is required only once it has succeeded for some date before D (the feed's first
    day, e.g. a one-batch import, has no D - 1: samples then falls back to the earliest features, as
    documented in docs/features_and_samples.md)."""
    from recsys_batch.runs import SUCCESS, RunLog

    runs = runs if runs is not None else RunLog.read(wh)
    stage = get_stage(name)
    prev = run_date - timedelta(days=1)
    day = run_date.isoformat()
    ran_before = {st for (st, d) in runs.keys() if d < day
                  and any(r.status == SUCCESS for r in runs._by_key.get((st, d), []))}
    out = []
    edges = [(u, run_date, "") for u in stage.upstream] + [
        (u, prev, f" for {prev}") for u in stage.prev_day if u in ran_before]
    for u, d, suffix in edges:
        st = runs.state(u, d)
        if not st.complete:
            out.append(f"{u}{suffix}" if st.run is None else f"{u}{suffix} ({st.describe()})")
    return out


def run_stage(name: str, cfg: Config, run_date: date, spark: Any = None, *, check_upstream: bool = True,
              record: bool = True) -> StageResult:
    """Run one stage for one date, recording it in ``_runs``: a start row before anything is written, a
    commit row per table partition committed (from the write paths of :mod:`recsys_batch.io`), an end
    row (success, or failed with the error). A run killed outright leaves its start and commit rows only;
    ``status`` shows it as running / killed and ``backfill`` re-runs it.

    With ``check_upstream`` the stage refuses to start unless every upstream stage is complete for the
    date (succeeded and not stale), and says which one is not and why.
    """
    from recsys_batch.runs import FAILED, RUNNING, SUCCESS, RunLog, RunRecorder, lineage_tables, table_version

    stage = get_stage(name)
    runs = RunLog.read(cfg.warehouse) if (record or check_upstream) else None
    if check_upstream:
        missing = missing_upstream(name, cfg.warehouse, run_date, runs)
        if missing:
            raise UpstreamIncomplete(
                f"stage {name} for {run_date} needs {', '.join(missing)} to have succeeded first "
                f"(see `recsys-batch status`; `recsys-batch backfill --from {run_date} --to {run_date}` "
                f"re-runs what is incomplete or stale); run it, or pass --no-check to override")
    fn = stage.load()
    recorder = None
    if record:
        prev = runs.state(name, run_date, cfg.runs)
        if prev.run is not None and prev.run.status == RUNNING:
            log.warning("stage %s for %s: the previous attempt has no end record (%s); starting attempt %d",
                        name, run_date, prev.describe(), runs.attempts(name, run_date) + 1)
        inputs = {t: v for t in lineage_tables(name) if (v := table_version(cfg.warehouse, t)) is not None}
        recorder = RunRecorder(cfg.warehouse, name, run_date, cfg.config_hash(), inputs,
                               runs.attempts(name, run_date) + 1)
        recorder.start()
    t0 = time.perf_counter()
    log.info("stage %s for %s (config %s)", name, run_date, cfg.config_hash())
    try:
        with recorder if recorder is not None else contextlib.nullcontext():  # commits go to this run
            if stage.spark:
                if spark is None:
                    from recsys_batch.spark import get_spark

                    spark = get_spark(cfg.spark)
                result = fn(spark, cfg, run_date)
            else:
                result = fn(cfg, run_date)
    except BaseException as e:
        if recorder is not None:
            recorder.end(FAILED, error=f"{type(e).__name__}: {e}"[:4000])
        raise
    if recorder is not None:
        recorder.end(SUCCESS, output_rows(result))
    return StageResult(name, run_date, time.perf_counter() - t0, result)


@dataclass
class BackfillStep:
    run_date: date
    stage: str
    action: str  # ran | skipped | failed | refused
    seconds: float = 0.0
    error: str | None = None
    #: why it ran: the state it was in (never ran / failed / killed / stale: ...; forced)
    reason: str | None = None


def backfill(cfg: Config, first: date, last: date, stages: list[str] | None = None, force: bool = False,
             spark: Any = None, on_step: Any = None, downstream: bool = False) -> list[BackfillStep]:
    """Run ``stages`` (default: the whole pipeline; with ``downstream`` also every stage downstream of
    them) for every date first..last in order.

    A stage is skipped when complete: its newest run succeeded and nothing it read has been rewritten
    since. Everything else runs: never ran, failed, killed (a start row without an end), stale (an
    upstream stage re-ran after it, e.g. ingest re-run for D re-runs matrix of D, then every stage
    built on matrix -- Airflow's "clear downstream" in one command). The state is re-read before each
    step, so a stage re-run here makes its downstream stale in turn. ``force`` re-runs everything;
    every run is idempotent, so a forced re-run replaces the date's partitions with identical results.

    A stage that looks *running* (a start row without an end, younger than runs.stale_running_minutes,
    its process not known to be gone) is not started twice: the backfill stops there unless ``force``.
    A publish refused because the date is older than the live release is reported (``refused``) and the
    backfill goes on. Stops at the first other failure.
    """
    from recsys_batch.pipeline import STAGES, with_downstream
    from recsys_batch.runs import RUNNING, RunLog

    names = stages or [s.name for s in STAGES]
    for n in names:
        get_stage(n)
    if downstream:
        names = with_downstream(names)
    steps: list[BackfillStep] = []

    def emit(step: BackfillStep) -> None:
        steps.append(step)
        if on_step:
            on_step(step)

    d = first
    while d <= last:
        for n in names:
            st = RunLog.read(cfg.warehouse).state(n, d, cfg.runs)
            if not force and st.complete:
                emit(BackfillStep(d, n, "skipped"))
                continue
            if not force and st.state == RUNNING:
                emit(BackfillStep(d, n, "failed", error=(
                    f"{st.describe()}; not started twice: wait for it to end (or to count as killed after "
                    f"runs.stale_running_minutes={cfg.runs.running_timeout_minutes(n):g}), or pass --force")))
                return steps
            reason = "forced" if force else st.describe()
            if spark is None and get_stage(n).spark:
                from recsys_batch.spark import get_spark

                spark = get_spark(cfg.spark)
            try:
                res = run_stage(n, cfg, d, spark)
            except OlderThanLive as e:
                emit(BackfillStep(d, n, "refused", error=str(e), reason=reason))
                continue
            except RecsysBatchError as e:
                emit(BackfillStep(d, n, "failed", error=str(e), reason=reason))
                return steps
            emit(BackfillStep(d, n, "ran", res.seconds, reason=reason))
        d += timedelta(days=1)
    return steps


def job_parser(stage: str) -> argparse.ArgumentParser:
    """The arguments every ``jobs/<stage>.py`` takes: ``--date D [--conf X] [--set k=v ...] [--no-check]``."""
    p = argparse.ArgumentParser(prog=f"jobs/{stage}.py", description=get_stage(stage).doc)
    p.add_argument("--date", default=None, help="run date YYYY-MM-DD (default: yesterday, UTC)")
    p.add_argument("--conf", default=None, help="overlay name in conf/ (local, cluster) or a YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-check", action="store_true", help="run even if upstream stages are not complete")
    return p


def ddp_job_main(stage: str, argv: list[str] | None = None) -> int:
    """Entry point of a non-Spark stage launched by ``torchrun`` (one process per rank; ``RANK`` /
    ``WORLD_SIZE`` / ``MASTER_ADDR`` in the environment).

    Every rank joins the process group (gloo on CPU, nccl with CUDA) and runs the same stage function,
    which shards its input by rank. Rank 0 alone checks the upstream stages and writes the run record
    (and, inside the stage, the checkpoint and exports). The ranks agree on go / no-go first, so a
    refused run ends every rank at once instead of leaving the others waiting in DDP set-up.
    """
    import torch
    import torch.distributed as dist

    args = job_parser(stage).parse_args(argv)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s %(levelname)s [rank {rank}/{world}] %(name)s: %(message)s")
    try:
        mine = ""
        try:
            cfg = load_config(args.conf, args.overrides)
            run_date = parse_date(args.date) if args.date else default_run_date()
            if rank == 0 and not args.no_check and (missing := missing_upstream(stage, cfg.warehouse, run_date)):
                mine = (f"stage {stage} for {run_date} needs {', '.join(missing)} to have succeeded first "
                        f"(see `recsys-batch status`); run it, or pass --no-check to override")
        except RecsysBatchError as e:
            mine = str(e)
        verdicts: list[str] = [""] * world
        dist.all_gather_object(verdicts, mine)  # every rank starts, or none does
        if any(verdicts):
            print(f"error (rank {rank} of {world}): {next(v for v in verdicts if v)}", file=sys.stderr)
            return 2
        try:
            res = run_stage(stage, cfg, run_date, check_upstream=False, record=rank == 0)
        except RecsysBatchError as e:
            print(f"error (rank {rank} of {world}): {e}", file=sys.stderr)
            return 2
        log.info("stage %s for %s done on rank %d of %d in %.1fs", stage, run_date, rank, world, res.seconds)
        return 0
    finally:
        dist.destroy_process_group()


def job_main(stage: str, argv: list[str] | None = None) -> int:
    """Entry point of ``jobs/<stage>.py`` under spark-submit: ``--date D [--conf X] [--set k=v ...]``."""
    args = job_parser(stage).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spark = None
    try:
        cfg = load_config(args.conf, args.overrides)
        run_date = parse_date(args.date) if args.date else default_run_date()
        if get_stage(stage).spark:
            from recsys_batch.spark import get_spark

            spark = get_spark(cfg.spark)
        res = run_stage(stage, cfg, run_date, spark, check_upstream=not args.no_check)
        log.info("stage %s for %s done in %.1fs: %s", stage, run_date, res.seconds, res.result)
        return 0
    except RecsysBatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if spark is not None:
            spark.stop()
