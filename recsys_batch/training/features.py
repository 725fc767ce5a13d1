"""Turn raw feature values (Arrow columns) into model inputs, following the day's ``feature_spec.json``.

The spec is written by the features stage (:mod:`recsys_batch.features.spec` describes the index
conventions: 0 missing, 1..V vocabulary, V+1..V+H hashed out-of-vocabulary rows). Encoding is vectorised
with pyarrow compute (``index_in`` against the vocabulary) and numpy (``searchsorted`` for buckets); only
out-of-vocabulary values are hashed in Python, once per distinct value. Cost: O(rows x features).

A tower's inputs (one :class:`TowerLayout` per tower):

* ``ids``   int64 [B]        -- the user id / item id row (its own table, ``id_embedding_dim`` wide);
* ``cat``   int64 [B, F]     -- categoricals and numeric buckets, offset into ONE fused table
  (one embedding lookup per batch instead of one per feature -- the per-op overhead dominates on CPU);
* ``lists`` int64 [B, M, L]  -- multi-valued categoricals (tags, top categories), offset into the fused
  table, 0 = padding, mean-pooled;
* ``dense`` float32 [B, D]   -- standardised numerics (``(transform(x) - mean) / std``) and booleans;
* ``seq``   int64 [B, S]     -- user tower only: the last-N items as item-id rows (0 = padding), pooled
  with the item tower's id embeddings.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys_batch.features.spec import stable_hash64
from recsys_batch.training.columns import ITEM_PREFIX, USER_PREFIX, C

log = logging.getLogger(__name__)

#: slots per multi-valued categorical (tags, top categories); longer lists are cut
LIST_SLOTS = 8
_CAT_TYPES = ("categorical",)
_LIST_TYPES = ("categorical_list",)


@dataclass
class _Cat:
    """One categorical (vocabulary) feature: value -> row index (see module docstring)."""

    name: str
    column: str
    vocab: list[str]
    num_oov: int
    vocab_array: pa.Array = field(init=False, repr=False)
    _oov_cache: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.vocab_array = pa.array(self.vocab, pa.string())

    @property
    def size(self) -> int:
        return len(self.vocab) + self.num_oov + 1

    def encode(self, arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Row index per value: 0 missing (null / ""), 1..V vocabulary, V+1+hash%H out of vocabulary."""
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks() if arr.num_chunks else pa.array([], pa.string())
        if pa.types.is_dictionary(arr.type):
            arr = arr.cast(pa.string())
        if not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
            arr = arr.cast(pa.string())
        idx = pc.index_in(arr, value_set=self.vocab_array)
        out = np.asarray(idx.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64) + 1
        missing = np.asarray(pc.fill_null(pc.or_(pc.is_null(arr), pc.equal(arr, "")), True).to_numpy(
            zero_copy_only=False), dtype=bool)
        oov = (out == 0) & ~missing
        if oov.any():
            vals = arr.filter(pa.array(oov)).to_pylist()
            out[oov] = [self._oov_row(v) for v in vals]
        out[missing] = 0
        return out

    def _oov_row(self, v: str) -> int:
        r = self._oov_cache.get(v)
        if r is None:
            r = len(self.vocab) + 1 + stable_hash64(v) % self.num_oov
            if len(self._oov_cache) < 1_000_000:
                self._oov_cache[v] = r
        return r


@dataclass
class _Num:
    name: str
    column: str
    boundaries: np.ndarray
    transform: str
    mean: float
    std: float
    default: float

    @property
    def num_buckets(self) -> int:
        return len(self.boundaries) + 2

    def values(self, arr: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
        """(bucket index: 0 missing else 1 + #boundaries <= x, standardised dense value)."""
        x = np.asarray(pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        miss = np.isnan(x)
        b = np.where(miss, 0, 1 + np.searchsorted(self.boundaries, np.where(miss, 0.0, x), side="right"))
        v = np.where(miss, self.default, x)
        if self.transform == "log1p":
            v = np.log1p(np.maximum(v, 0.0))
        return b.astype(np.int64), ((v - self.mean) / (self.std or 1.0)).astype(np.float32)


def _cat(entry: dict[str, Any], column: str) -> _Cat:
    return _Cat(entry["name"], column, list(entry.get("vocab") or []), max(1, int(entry.get("num_oov_buckets", 1))))


@dataclass
class TowerLayout:
    """The inputs of one tower, resolved against the spec and the columns actually present."""

    side: str  # "user" | "item"
    id_feature: _Cat
    cats: list[_Cat]
    nums: list[_Num]
    bools: list[tuple[str, str]]  # (name, column)
    lists: list[_Cat]
    seq: _Cat | None = None  # user tower: last-N items, encoded with the item-id vocabulary
    seq_len: int = 20
    offsets: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        sizes = [c.size for c in self.cats] + [n.num_buckets for n in self.nums] + [c.size for c in self.lists]
        # fused table row 0 is shared padding; each feature's block starts after the previous one
        self.offsets = np.cumsum([1] + sizes[:-1]).astype(np.int64) if sizes else np.zeros(0, np.int64)
        self.fused_size = int(1 + sum(sizes))

    @property
    def n_cat(self) -> int:
        return len(self.cats) + len(self.nums)

    @property
    def n_dense(self) -> int:
        return len(self.nums) + len(self.bools)

    def columns(self) -> list[str]:
        cols = [self.id_feature.column] + [c.column for c in self.cats] + [n.column for n in self.nums]
        cols += [b[1] for b in self.bools] + [c.column for c in self.lists]
        return cols + ([self.seq.column] if self.seq is not None else [])

    def blocks(self) -> list[tuple[str, int, int, str, list[str] | None]]:
        """(feature name, offset, size, kind, vocab) of each block of the fused table (warm start remaps)."""
        out, k = [], 0
        for c in self.cats:
            out.append((c.name, int(self.offsets[k]), c.size, "cat", c.vocab))
            k += 1
        for n in self.nums:
            out.append((n.name, int(self.offsets[k]), n.num_buckets, "bucket", None))
            k += 1
        for c in self.lists:
            out.append((c.name, int(self.offsets[k]), c.size, "cat", c.vocab))
            k += 1
        return out

    def encode(self, table: pa.Table) -> dict[str, np.ndarray]:
        """Model inputs of every row of ``table`` (columns named as in :meth:`columns`)."""
        n = table.num_rows
        out: dict[str, np.ndarray] = {"ids": self.id_feature.encode(table.column(self.id_feature.column))}
        cat = np.zeros((n, self.n_cat), np.int64)
        dense = np.zeros((n, self.n_dense), np.float32)
        k = 0
        for c in self.cats:
            cat[:, k] = c.encode(table.column(c.column)) + self.offsets[k]
            k += 1
        for j, nm in enumerate(self.nums):
            b, v = nm.values(table.column(nm.column))
            cat[:, k] = b + self.offsets[k]
            dense[:, j] = v
            k += 1
        for j, (_, col) in enumerate(self.bools):
            x = table.column(col).cast(pa.float32()).fill_null(0.0)
            dense[:, len(self.nums) + j] = np.asarray(x.to_numpy(), np.float32)
        lists = np.zeros((n, len(self.lists), LIST_SLOTS), np.int64)
        for j, c in enumerate(self.lists):
            idx = encode_list(c, table.column(c.column), LIST_SLOTS)
            lists[:, j, :] = np.where(idx > 0, idx + self.offsets[k], 0)
            k += 1
        out.update(cat=cat, dense=dense, lists=lists)
        if self.seq is not None:
            out["seq"] = encode_list(self.seq, table.column(self.seq.column), self.seq_len)
        return out


def encode_list(cat: _Cat, arr: pa.Array | pa.ChunkedArray, slots: int) -> np.ndarray:
    """[n, slots] row indices of the first ``slots`` values of each list; 0 pads (and marks missing)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], pa.list_(pa.string()))
    n = len(arr)
    out = np.zeros((n, slots), np.int64)
    if n == 0:
        return out
    arr = pc.list_slice(arr, 0, slots)
    values = pc.list_flatten(arr)
    if pa.types.is_struct(values.type):  # user_lastn.items: [{item_id, ts, weight}]
        values = pc.struct_field(values, C.ITEM)
    lengths = np.asarray(pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False), np.int64)
    enc = cat.encode(values)
    rows = np.repeat(np.arange(n), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    cols = np.arange(len(rows)) - np.repeat(starts, lengths)
    out[rows, cols] = enc
    return out


def build_layout(spec: dict[str, Any], side: str, available: list[str] | None = None,
                 exclude: list[str] = (), source: str = "samples", seq_len: int = 20) -> TowerLayout:
    """The tower layout of ``side`` ("user" / "item") from the spec.

    ``source="samples"`` reads columns by spec name (``user_id``, ``u_gender``, ``i_tags``, ``lastn_items``);
    ``source="table"`` by the feature table's own column (``gender``, ``tags``): the item export reads
    ``item_features`` directly. Spec features missing from ``available`` or in ``exclude`` are left out
    (logged once); numeric lists are not used.
    """
    key, prefix = (C.USER, USER_PREFIX) if side == "user" else (C.ITEM, ITEM_PREFIX)
    feats = spec["features"]
    by_name = {e["name"]: e for e in feats}
    if key not in by_name:
        raise ValueError(f"feature spec has no entry {key!r}; features: {sorted(by_name)[:20]}")
    avail = set(available) if available is not None else None

    def col(e: dict[str, Any]) -> str:
        return e["name"] if source == "samples" else e.get("column", e["name"])

    cats, nums, bools, lists, skipped = [], [], [], [], []
    for e in feats:
        name = e["name"]
        if not name.startswith(prefix) or name in exclude:
            continue
        if avail is not None and col(e) not in avail:
            skipped.append(name)
            continue
        t = e.get("type")
        if t in _CAT_TYPES:
            cats.append(_cat(e, col(e)))
        elif t in _LIST_TYPES:
            lists.append(_cat(e, col(e)))
        elif t == "numeric":
            std = float(e.get("std") or 1.0)
            nums.append(_Num(name, col(e), np.asarray(e.get("boundaries") or [], np.float64), e.get("transform", "none"),
                             float(e.get("mean") or 0.0), std if std > 0 and math.isfinite(std) else 1.0,
                             float(e.get("default") or 0.0)))
        elif t == "boolean":
            bools.append((name, col(e)))
    if skipped:
        log.info("%s tower: %d spec features not in the input, left out: %s", side, len(skipped), ", ".join(skipped[:10]))
    id_entry = by_name[key]
    layout = TowerLayout(side, _cat(id_entry, id_entry["name"] if source == "samples" else key), cats, nums, bools, lists,
                         seq_len=seq_len)
    if side == "user":
        lastn = by_name.get(C.LASTN_ITEMS)
        if lastn is not None and (avail is None or C.LASTN_ITEMS in avail) and C.LASTN_ITEMS not in exclude:
            item = by_name[C.ITEM]
            layout.seq = _Cat(C.LASTN_ITEMS, C.LASTN_ITEMS, list(item.get("vocab") or []),
                              max(1, int(item.get("num_oov_buckets", 1))))
    return layout
