"""Stream the day's recall samples from Parquet shards into training batches (never the whole day).

Input layout (written by :mod:`recsys_batch.samples.shards`)::

    <warehouse.root>/samples/recall/dt=D/part-NNNNN.parquet   rows already shuffled by Spark
    <warehouse.root>/samples/recall/dt=D/_manifest.json       {"rows", "files": [...], "feature_spec", ...}
    <warehouse.root>/samples/recall/dt=D/_SUCCESS

Work unit = one Parquet row group. Every epoch the units are permuted with ``(seed, epoch)`` and dealt
round-robin to the ``world_size x num_workers`` readers (DDP rank r, DataLoader worker w read units
``(r * num_workers + w) :: world_size * num_workers``), so every row is read exactly once per epoch
across ranks and workers. A reader keeps ``shuffle_row_groups`` row groups in a buffer, permutes their
rows, cuts batches of ``batch_size`` rows and carries the remainder on; memory is bounded by the
buffer, not by the day. Ranks can get a different number of batches: :func:`train` uses DDP's
``join()`` for uneven inputs.

Each batch (a dict of tensors, encoded by :mod:`recsys_batch.training.features`):
``user`` (inputs of ``user_rows``: the positives, or every row for bce), ``item`` (every row), ``label``,
``weight`` (label_weight), ``pos_freq`` (item_pos_freq), ``row_id`` (global row number: file order,
then row order -- the coverage test uses it).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from pyarrow import fs as pafs
from torch.utils.data import IterableDataset, get_worker_info

from recsys_batch.config import WarehouseConfig
from recsys_batch.errors import MissingInput
from recsys_batch.io.fs import resolve
from recsys_batch.training.columns import C
from recsys_batch.training.features import TowerLayout

log = logging.getLogger(__name__)

_META = [C.LABEL, C.LABEL_WEIGHT, C.POS_FREQ, C.TS]


def samples_dir(wh: WarehouseConfig, run_date: date, kind: str = "recall") -> str:
    return f"{wh.root.rstrip('/')}/samples/{kind}/{C.DT}={run_date.isoformat()}"




def sample_files(wh: WarehouseConfig, run_date: date, kind: str = "recall") -> tuple[list[str], dict]:
    """(Parquet shard paths, manifest) of the samples of label day D -- the one adapter to the samples
    stage's layout. Files named in ``_manifest.json`` when present, else every ``part-*.parquet``."""
    folder = samples_dir(wh, run_date, kind)
    fs, inner = resolve(folder)
    info = fs.get_file_info(inner)
    if info.type != pafs.FileType.Directory:
        raise MissingInput(f"samples_{kind} shards for {run_date} not found at {folder}: run the samples stage first")
    manifest: dict = {}
    try:
        with fs.open_input_stream(f"{inner}/_manifest.json") as f:
            manifest = json.loads(f.read().decode())
    except (FileNotFoundError, OSError):
        pass
    if manifest.get("files"):
        names = [f["name"] for f in manifest["files"]]
    else:
        names = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(inner))
                       if i.base_name.startswith("part-") and i.base_name.endswith(".parquet"))
    if not names:
        raise MissingInput(f"samples_{kind} for {run_date}: no part-*.parquet files in {folder}")
    return [f"{folder}/{n}" for n in names], manifest


@dataclass(frozen=True)
class Unit:
    file: str
    row_group: int
    rows: int
    first_row: int  # global row id of its first row


def list_units(files: list[str]) -> list[Unit]:
    """Row groups of the files, in file order (reads only the Parquet footers)."""
    units, start = [], 0
    for f in files:
        fs, inner = resolve(f)
        md = pq.ParquetFile(inner, filesystem=fs).metadata
        for g in range(md.num_row_groups):
            n = md.row_group(g).num_rows
            units.append(Unit(f, g, n, start))
            start += n
    return units


def holdout_cutoff(run_date: date, holdout_hours: float) -> datetime | None:
    """Samples with ts >= end of D - holdout_hours are held out of training for the publish gate."""
    if holdout_hours <= 0:
        return None
    end = datetime(run_date.year, run_date.month, run_date.day, tzinfo=timezone.utc) + timedelta(days=1)
    return end - timedelta(hours=holdout_hours)


def cut_scalar(cutoff: datetime, typ: pa.DataType) -> pa.Scalar:
    """``cutoff`` as a scalar of the ts column's type: Spark may write tz-naive INT96 / micros (UTC wall time)."""
    if pa.types.is_timestamp(typ) and typ.tz is None:
        return pa.scalar(cutoff.astimezone(timezone.utc).replace(tzinfo=None), typ)
    return pa.scalar(cutoff, typ)


class SampleStream(IterableDataset):
    """Seeded, sharded, bounded-memory stream of encoded batches (see the module docstring).

    ``part`` selects rows by ``ts`` against ``cutoff``: ``train`` (ts < cutoff), ``holdout`` (ts >= cutoff)
    or ``all``. ``user_rows``: ``positives`` (softmax / pairwise) or ``all`` (bce).
    """

    def __init__(self, files: list[str], user_layout: TowerLayout, item_layout: TowerLayout, batch_size: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1, shuffle_row_groups: int = 4,
                 cutoff: datetime | None = None, part: str = "all", user_rows: str = "positives",
                 units: list[Unit] | None = None):
        super().__init__()
        self.files, self.user_layout, self.item_layout = list(files), user_layout, item_layout
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.shuffle_row_groups, self.cutoff, self.part, self.user_rows = shuffle_row_groups, cutoff, part, user_rows
        self.units = units if units is not None else list_units(self.files)
        self.epoch = 0
        schema = pq.read_schema(resolve(self.files[0])[1], filesystem=resolve(self.files[0])[0]) \
            if self.files else pa.schema([])
        wanted = set(user_layout.columns()) | set(item_layout.columns()) | set(_META)
        self.columns = [c for c in schema.names if c in wanted]

    @property
    def total_rows(self) -> int:
        return sum(u.rows for u in self.units)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def my_units(self, worker: int = 0, num_workers: int = 1) -> list[Unit]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.units))
        readers = self.world_size * num_workers
        me = self.rank * num_workers + worker
        return [self.units[i] for i in order[me::readers]]

    def _read(self, unit: Unit, cache: dict) -> pa.Table:
        pf = cache.get(unit.file)
        if pf is None:
            fs, inner = resolve(unit.file)
            pf = cache[unit.file] = pq.ParquetFile(inner, filesystem=fs)
        t = pf.read_row_group(unit.row_group, columns=self.columns)
        t = t.append_column("_row", pa.array(np.arange(unit.first_row, unit.first_row + t.num_rows, dtype=np.int64)))
        if self.cutoff is not None and self.part != "all" and C.TS in t.column_names:
            ts = t.column(C.TS)
            cut = cut_scalar(self.cutoff, ts.type)
            keep = pc.less(ts, cut) if self.part == "train" else pc.greater_equal(ts, cut)
            t = t.filter(pc.fill_null(keep, False))
        return t

    def __iter__(self):  # noqa: ANN204
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        units = self.my_units(wid, nw)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, wid])
        cache: dict = {}
        carry: pa.Table | None = None
        for start in range(0, len(units), self.shuffle_row_groups):
            parts = [self._read(u, cache) for u in units[start:start + self.shuffle_row_groups]]
            if carry is not None and carry.num_rows:
                parts.insert(0, carry)
            buf = pa.concat_tables(parts) if parts else None
            if buf is None or buf.num_rows == 0:
                carry = None
                continue
            buf = buf.take(pa.array(rng.permutation(buf.num_rows)))
            n_full = buf.num_rows // self.batch_size * self.batch_size
            for b in range(0, n_full, self.batch_size):
                yield self.encode(buf.slice(b, self.batch_size))
            carry = buf.slice(n_full) if n_full < buf.num_rows else None
        if carry is not None and carry.num_rows:
            yield self.encode(carry)

    def encode(self, t: pa.Table) -> dict:
        """Tensors of one batch of sample rows (see the module docstring)."""
        label = np.array(t.column(C.LABEL).cast(pa.float32()).fill_null(0).to_numpy(), np.float32)
        rows = np.arange(t.num_rows) if self.user_rows == "all" else np.flatnonzero(label > 0.5)
        ut = t if self.user_rows == "all" else t.take(pa.array(rows))
        out = {
            "user": {k: torch.from_numpy(v) for k, v in self.user_layout.encode(ut).items()},
            "item": {k: torch.from_numpy(v) for k, v in self.item_layout.encode(t).items()},
            "label": torch.from_numpy(label),
            "user_rows": torch.from_numpy(rows.astype(np.int64)),
            "row_id": torch.from_numpy(np.array(t.column("_row").to_numpy(), np.int64)),
        }
        for key, col, default in (("weight", C.LABEL_WEIGHT, 1.0), ("pos_freq", C.POS_FREQ, 0.0)):
            if col in t.column_names:
                x = t.column(col).cast(pa.float32()).fill_null(default).to_numpy()
                out[key] = torch.from_numpy(np.array(x, np.float32))
            else:
                out[key] = torch.full((t.num_rows,), default, dtype=torch.float32)
        return out


def make_loader(stream: SampleStream, num_workers: int) -> torch.utils.data.DataLoader:
    """A DataLoader over the stream: batches are built in the workers (``batch_size=None``)."""
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers,
                                       persistent_workers=False, prefetch_factor=4 if num_workers else None)
