"""One session-scoped local SparkSession for the whole suite (local[2], UI off, few partitions)."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import pytest

from recsys_batch.config import Config, load_config

os.environ.setdefault("PYSPARK_PYTHON", os.sys.executable)


@pytest.fixture(scope="session")
def spark():
    from recsys_batch.spark import get_spark

    cfg = load_config("local", ["spark.shuffle_partitions=2", "spark.driver_memory=2g"])
    session = get_spark(cfg.spark)
    yield session
    session.stop()


@pytest.fixture()
def make_cfg(tmp_path: Path):
    """Config rooted in a fresh temp warehouse; extra ``key=value`` overrides as arguments."""

    def _make(*overrides: str) -> Config:
        base = [
            f"warehouse.root={tmp_path / 'wh'}",
            f"warehouse.raw_root={tmp_path / 'raw'}",
            "spark.shuffle_partitions=2",
        ]
        return load_config("local", base + list(overrides))

    return _make


@pytest.fixture()
def run_date() -> date:
    return date(2026, 11, 20)
