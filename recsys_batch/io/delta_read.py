"""Read (and write) warehouse Delta tables without a JVM, for the PyTorch / faiss / publish stages.

Uses delta-rs (the ``deltalake`` package, already used by :mod:`recsys_batch.runs`): it resolves the
latest snapshot from ``_delta_log`` (add/remove actions, checkpoints) and prunes by partition. Spark
reads what :func:`replace_partition_arrow` writes (reader v1 / writer v2 protocol, plain Parquet).
Paths go through :func:`recsys_batch.runs.delta_rs_uri` (``s3a://`` -> ``s3://``).
"""

from __future__ import annotations

import logging
from datetime import date

import pyarrow as pa

from recsys_batch.config import WarehouseConfig
from recsys_batch.errors import MissingInput
from recsys_batch.runs import delta_rs_uri, record_commit

log = logging.getLogger(__name__)
DT = "dt"


def _open(wh: WarehouseConfig, name: str, required: bool = True):  # noqa: ANN202 - DeltaTable | None
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    path = wh.table_path(name)
    try:
        return DeltaTable(delta_rs_uri(path))
    except TableNotFoundError:
        if required:
            raise MissingInput(f"table {name} does not exist at {path}: run the stage that builds it first") from None
        return None


def table_version(wh: WarehouseConfig, name: str) -> int | None:
    t = _open(wh, name, required=False)
    return None if t is None else int(t.version())


def partition_dates(wh: WarehouseConfig, name: str) -> list[str]:
    """Sorted ``dt`` values present in the latest snapshot ([] if the table does not exist)."""
    t = _open(wh, name, required=False)
    if t is None:
        return []
    return sorted({p[DT] for p in t.partitions() if p.get(DT)})


def latest_dt(wh: WarehouseConfig, name: str, run_date: date) -> str | None:
    """Newest ``dt <= run_date`` of a table (None if none)."""
    ds = [d for d in partition_dates(wh, name) if d <= run_date.isoformat()]
    return ds[-1] if ds else None


def read_partition(wh: WarehouseConfig, name: str, dt: date | str, columns: list[str] | None = None,
                   required: bool = True) -> pa.Table | None:
    """Partition ``dt`` of a Delta table as an Arrow table (without the ``dt`` column).

    Raises :class:`MissingInput` naming the table and date when it is absent and ``required``.
    """
    d = dt.isoformat() if isinstance(dt, date) else dt
    t = _open(wh, name, required)
    if t is None:
        return None
    if d not in {p.get(DT) for p in t.partitions()}:
        if required:
            raise MissingInput(f"table {name} has no partition dt={d} at {wh.table_path(name)}: "
                               f"run the stage that builds it for {d} first")
        return None
    tab = t.to_pyarrow_table(filters=[(DT, "=", d)], columns=columns)
    return tab.drop_columns([DT]) if DT in tab.column_names else tab


def partition_files(wh: WarehouseConfig, name: str, dt: date | str) -> list[str]:
    """URIs of the Parquet files of partition ``dt`` in the latest snapshot (for streaming readers)."""
    d = dt.isoformat() if isinstance(dt, date) else dt
    t = _open(wh, name)
    return sorted(t.file_uris(partition_filters=[(DT, "=", d)]))


def replace_partition_arrow(table: pa.Table, wh: WarehouseConfig, name: str, run_date: date) -> int:
    """Replace partition ``dt = run_date`` with ``table`` in one Delta commit; returns the new version.

    The JVM-free twin of :func:`recsys_batch.io.tables.replace_partition` (predicate overwrite).
    """
    from deltalake import write_deltalake

    d = run_date.isoformat()
    if DT in table.column_names:
        table = table.drop_columns([DT])
    table = table.append_column(DT, pa.array([d] * table.num_rows, pa.string()))
    uri = delta_rs_uri(wh.table_path(name))
    exists = _open(wh, name, required=False) is not None
    if exists:
        write_deltalake(uri, table, mode="overwrite", predicate=f"{DT} = '{d}'", partition_by=[DT])
    else:
        write_deltalake(uri, table, mode="overwrite", partition_by=[DT])
    v = table_version(wh, name)
    record_commit(name, run_date, v)  # a commit row in _runs (recsys_batch.runs)
    log.info("wrote %s dt=%s (delta version %s, %s rows)", name, d, v, f"{table.num_rows:,}")
    return int(v)
