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
``weight`` (label_weight), ``pos_freq`` (item_pos_freq), ``samp_prob`` (item_sampling_prob), ``source``
(int8: 0 positive, 1 easy, 2 hard; :mod:`recsys_batch.training.loss` codes), ``row_id`` (global row
number: file order, then row order -- the coverage test uses it).

The contract with the samples stage (:mod:`recsys_batch.samples.recall`, schema
``recsys_batch.schemas.samples_recall_schema``) is :data:`RECALL_SAMPLE_COLUMNS` plus the per-column
meaning checked by :func:`recall_contract_violations` -- the same check runs on the samples stage's output
and on :mod:`recsys_batch.training.synthetic` in the tests, so the synthetic data the training tests use
cannot drift from what the pipeline writes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch
from pyarrow import fs as pafs
from torch.utils.data import IterableDataset, get_worker_info

from recsys_batch.config import WarehouseConfig
from recsys_batch.errors import MissingInput, SchemaError
from recsys_batch.io.fs import resolve
from recsys_batch.training.columns import C
from recsys_batch.training.features import TowerLayout

log = logging.getLogger(__name__)

_META = [C.LABEL, C.SOURCE, C.LABEL_WEIGHT, C.SAMPLING_PROB, C.POS_FREQ, C.TS]

#: the non-feature columns of a recall sample shard and their Arrow types (``ts``: any timestamp unit / zone;
#: Spark may write INT96). Meaning, per row (one group = a positive and its negatives):
#:
#: * ``label`` 1 positive / 0 negative; ``source`` ``positive`` (label 1), ``easy`` or ``hard`` (label 0);
#: * ``label_weight``: the positive's strength = weight of the user's strongest event on the item
#:   (events.weights: click 1 ... share 4), > 0; **0 on every negative** (it is not a row weight);
#: * ``item_sampling_prob``: q(item) of the easy-negative sampler (clicks^0.75 / sum), the same on every
#:   row of the item (positives and hard negatives too), 0 for items outside it; > 0 on easy negatives;
#: * ``item_pos_freq``: the item's share of the positive rows, the same on every row of the item, 0 for
#:   an item with no positive; on the positives it is their empirical item distribution;
#: * ``group_id``, ``user_id``, ``request_id``, ``ts``, ``keep_prob``: a negative has its group's positive's
#:   user, request and ts; no negative is its group's positive item; ``keep_prob`` in (0, 1].
RECALL_SAMPLE_COLUMNS: dict[str, pa.DataType] = {
    C.GROUP: pa.string(), C.USER: pa.string(), C.ITEM: pa.string(), C.LABEL: pa.int32(), C.SOURCE: pa.string(),
    C.REQUEST: pa.string(), C.TS: pa.timestamp("us", tz="UTC"), C.LABEL_WEIGHT: pa.float64(),
    C.SAMPLING_PROB: pa.float64(), C.POS_FREQ: pa.float64(), C.KEEP_PROB: pa.float64(),
    C.LASTN_ITEMS: pa.list_(pa.string()),
}

#: columns the softmax loss needs with train.logq_correction on
LOGQ_COLUMNS = (C.SOURCE, C.SAMPLING_PROB, C.POS_FREQ)


def recall_contract_violations(t: pa.Table, atol: float = 1e-9) -> list[str]:
    """What in ``t`` (recall sample rows) breaks :data:`RECALL_SAMPLE_COLUMNS`' meaning; [] when none.

    Reads the whole table into Python: for tests and small samples. Cost O(rows).
    """
    out: list[str] = []
    missing = [c for c in RECALL_SAMPLE_COLUMNS if c not in t.column_names]
    if missing:
        return [f"missing columns {missing}"]
    for c, typ in RECALL_SAMPLE_COLUMNS.items():
        got = t.schema.field(c).type
        ok = pa.types.is_timestamp(got) if pa.types.is_timestamp(typ) else got == typ
        if not ok:
            out.append(f"{c}: type {got}, want {typ}")
    rows = t.select(list(RECALL_SAMPLE_COLUMNS)).to_pylist()
    pos = [r for r in rows if r[C.LABEL] == 1]
    neg = [r for r in rows if r[C.LABEL] == 0]
    if len(pos) + len(neg) != len(rows):
        out.append("label not in {0, 1}")
    if any(r[C.SOURCE] != "positive" for r in pos) or any(r[C.SOURCE] not in ("easy", "hard") for r in neg):
        out.append("source is not positive (label 1) / easy or hard (label 0)")
    if any(not r[C.LABEL_WEIGHT] > 0 for r in pos):
        out.append("label_weight <= 0 on a positive")
    if any(r[C.LABEL_WEIGHT] != 0 for r in neg):
        out.append("label_weight != 0 on a negative")
    if any(not r[C.SAMPLING_PROB] > 0 for r in neg if r[C.SOURCE] == "easy"):
        out.append("item_sampling_prob <= 0 on an easy negative")
    for col in (C.SAMPLING_PROB, C.POS_FREQ):
        by_item: dict[str, float] = {}
        for r in rows:
            if abs(by_item.setdefault(r[C.ITEM], r[col]) - r[col]) > atol:
                out.append(f"{col} differs between rows of item {r[C.ITEM]}")
                break
    counts: dict[str, int] = {}
    for r in pos:
        counts[r[C.ITEM]] = counts.get(r[C.ITEM], 0) + 1
    freq = {r[C.ITEM]: r[C.POS_FREQ] for r in pos}
    bad = sorted(i for i, n in counts.items() if abs(freq[i] - n / len(pos)) > 1e-6)
    if bad:
        out.append(f"item_pos_freq is not the item's share of the positive rows (items {bad[:5]})")
    if any(r[C.POS_FREQ] != 0 for r in neg if r[C.ITEM] not in counts):
        out.append("item_pos_freq != 0 for an item with no positive")
    heads = {}
    for r in pos:
        if r[C.GROUP] in heads:
            out.append(f"group {r[C.GROUP]} has more than one positive")
            break
        heads[r[C.GROUP]] = r
    for r in neg:
        h = heads.get(r[C.GROUP])
        if h is None:
            out.append(f"negative of group {r[C.GROUP]} without its positive")
            break
        if (r[C.USER], r[C.REQUEST], r[C.TS]) != (h[C.USER], h[C.REQUEST], h[C.TS]):
            out.append(f"negative of group {r[C.GROUP]} differs from its positive in user / request / ts")
            break
        if r[C.ITEM] == h[C.ITEM]:
            out.append(f"negative of group {r[C.GROUP]} is its positive's item")
            break
    if any(not 0 < r[C.KEEP_PROB] <= 1 for r in rows):
        out.append("keep_prob outside (0, 1]")
    return out


def require_loss_columns(columns: list[str], loss: str, logq_correction: bool, where: str) -> None:
    """Fail early (naming the shard) when the sample shards lack what the configured loss reads."""
    need = [C.LABEL, C.TS]
    if loss == "bce":
        need.append(C.LABEL_WEIGHT)
    if loss == "softmax" and logq_correction:
        need += list(LOGQ_COLUMNS)
    missing = [c for c in need if c not in columns]
    if missing:
        raise SchemaError("samples_recall shards", missing, columns,
                          f"{where}; train.loss={loss}, train.logq_correction={logq_correction}")


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


def count_rows(files: list[str], cutoff: datetime | None, part: str = "train") -> int:
    """Rows of the shards in ``part`` (``train``: ts < cutoff, ``holdout``: ts >= cutoff, ``all``); reads the
    ts column only."""
    if not files:
        return 0
    fs, _ = resolve(files[0])
    ds = pads.dataset([resolve(f)[1] for f in files], format="parquet", filesystem=fs)
    if cutoff is None or part == "all":
        return ds.count_rows()
    cut = cut_scalar(cutoff, ds.schema.field(C.TS).type)
    return ds.count_rows(filter=(pc.field(C.TS) < cut) if part == "train" else (pc.field(C.TS) >= cut))


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
        for key, col, default in (("weight", C.LABEL_WEIGHT, 1.0), ("pos_freq", C.POS_FREQ, 0.0),
                                  ("samp_prob", C.SAMPLING_PROB, 0.0)):
            if col in t.column_names:
                x = t.column(col).cast(pa.float32()).fill_null(default).to_numpy()
                out[key] = torch.from_numpy(np.array(x, np.float32))
            else:
                out[key] = torch.full((t.num_rows,), default, dtype=torch.float32)
        if C.SOURCE in t.column_names:  # missing: negatives count as easy ones
            src = t.column(C.SOURCE)
            hard = np.asarray(pc.fill_null(pc.equal(src, "hard"), False).to_numpy(zero_copy_only=False), bool)
        else:
            hard = np.zeros(t.num_rows, bool)
        source = np.where(label > 0.5, 0, np.where(hard, 2, 1)).astype(np.int8)
        out["source"] = torch.from_numpy(source)
        return out


def make_loader(stream: SampleStream, num_workers: int) -> torch.utils.data.DataLoader:
    """A DataLoader over the stream: batches are built in the workers (``batch_size=None``)."""
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers,
                                       persistent_workers=False, prefetch_factor=4 if num_workers else None)
