"""Input checks that need no JVM: is the day's raw batch there, and big enough?

Used by the first task of the daily DAG (and ``recsys-batch check-input``) so a missing or
truncated upstream delivery fails clearly before any Spark job starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date

from recsys_batch.config import Config
from recsys_batch.errors import MissingInput
from recsys_batch.io.fs import resolve

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputCheck:
    table: str
    path: str
    rows: int


def count_rows(path: str, fmt: str) -> int | None:
    """Rows of a source folder/file, None if it does not exist."""
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    if fmt == "delta":
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        from recsys_batch.runs import delta_rs_uri

        try:
            return DeltaTable(delta_rs_uri(path)).to_pyarrow_dataset().count_rows()
        except TableNotFoundError:
            return None
    fs, p = resolve(path)
    if fs.get_file_info(p).type == pafs.FileType.NotFound:
        return None
    fmt_arg = {"parquet": "parquet", "csv": "csv", "json": "json"}[fmt]
    return ds.dataset(p, format=fmt_arg, filesystem=fs, exclude_invalid_files=False).count_rows()


def check_input(cfg: Config, run_date: date) -> list[InputCheck]:
    """Fail unless the events batch of ``run_date`` exists with at least ``ingest.min_event_rows`` rows."""
    src = cfg.sources.events
    path = src.resolve(run_date, cfg.warehouse.raw_root)
    rows = count_rows(path, src.format)
    if rows is None:
        raise MissingInput(f"events for {run_date} have not arrived: {path} does not exist")
    if rows < cfg.ingest.min_event_rows:
        raise MissingInput(f"events for {run_date} at {path} hold {rows:,} rows, fewer than "
                           f"ingest.min_event_rows={cfg.ingest.min_event_rows:,}: the delivery looks truncated")
    log.info("events for %s: %s rows at %s", run_date, f"{rows:,}", path)
    return [InputCheck("events", path, rows)]
