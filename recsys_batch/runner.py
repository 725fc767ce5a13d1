"""Run one stage for one date: load config, build the session, call the stage, summarise.

Used by the CLI and by the thin ``jobs/<stage>.py`` spark-submit entry points, so both behave the same.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

from recsys_batch.config import Config, load_config
from recsys_batch.errors import RecsysBatchError
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


def run_stage(name: str, cfg: Config, run_date: date, spark: Any = None) -> StageResult:
    stage = get_stage(name)
    fn = stage.load()
    t0 = time.perf_counter()
    log.info("stage %s for %s (config %s)", name, run_date, cfg.config_hash())
    if stage.spark:
        if spark is None:
            from recsys_batch.spark import get_spark

            spark = get_spark(cfg.spark)
        result = fn(spark, cfg, run_date)
    else:
        result = fn(cfg, run_date)
    return StageResult(name, run_date, time.perf_counter() - t0, result)


def job_main(stage: str, argv: list[str] | None = None) -> int:
    """Entry point of ``jobs/<stage>.py`` under spark-submit: ``--date D [--conf X] [--set k=v ...]``."""
    p = argparse.ArgumentParser(prog=f"jobs/{stage}.py", description=get_stage(stage).doc)
    p.add_argument("--date", default=None, help="run date YYYY-MM-DD (default: yesterday, UTC)")
    p.add_argument("--conf", default=None, help="overlay name in conf/ (local, cluster) or a YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spark = None
    try:
        cfg = load_config(args.conf, args.overrides)
        run_date = parse_date(args.date) if args.date else default_run_date()
        if get_stage(stage).spark:
            from recsys_batch.spark import get_spark

            spark = get_spark(cfg.spark)
        res = run_stage(stage, cfg, run_date, spark)
        log.info("stage %s for %s done in %.1fs: %s", stage, run_date, res.seconds, res.result)
        return 0
    except RecsysBatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if spark is not None:
            spark.stop()
