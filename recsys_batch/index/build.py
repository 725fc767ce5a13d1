"""Build the item index, check its recall against exact search, and write ``recall_two_tower``.

* Index: exact inner product (``IndexFlatIP``) up to ``index.exact_max_items`` items; above it HNSW
  (``IndexHNSWFlat``, M / efConstruction / efSearch from conf) or IVF (``IndexIVFFlat``, nlist lists
  trained by k-means on a seeded sample of ``ivf_train_size`` vectors, nprobe lists searched). Vectors are
  unit length, so inner product = cosine. Build cost: exact O(n d); HNSW ~O(n log n x M x efConstruction
  x d); IVF O(train x nlist x d x iters) + O(n x nlist x d). Query cost: exact O(n d); HNSW ~O(efSearch
  x M x log n x d); IVF O((nlist + n x nprobe / nlist) x d).
* Recall check: recall@k of the index against exact search for a seeded sample of users'
  embeddings; below ``index.min_recall`` the stage fails with :class:`IndexRecallTooLow` and writes
  nothing (an exact index is 1.0 by construction and is not re-checked beyond the sample).
* ``recall_two_tower``: top ``index.top_n`` (default ``recall.top_n``) items per active user by batched
  search, excluding the user's items in ``user_item_matrix`` dt = D (searched k + max seen, filtered).

Files: ``<root>/index/two_tower/dt=D/{items.faiss, items.parquet (row -> item_id), index_report.json}``, on
any filesystem :mod:`recsys_batch.io.fs` resolves: the index is serialised in memory
(``faiss.serialize_index``: one extra copy of the index's bytes, ~n x d x 4 for flat / HNSW-flat) and
written with :func:`recsys_batch.io.fs.write_atomic`, as is the report; items.parquet is written through
the filesystem by pyarrow. :func:`write_index_file` / :func:`read_index_file` are the pair.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_batch.config import Config, IndexConfig, WarehouseConfig
from recsys_batch.errors import RecsysBatchError
from recsys_batch.io import fs
from recsys_batch.io.delta_read import read_partition, replace_partition_arrow, table_version
from recsys_batch.training.columns import (
    ITEM_EMBEDDINGS, RECALL_TWO_TOWER, USER_EMBEDDINGS, USER_ITEM_MATRIX, C,
)

log = logging.getLogger(__name__)
INDEX_FILE, ROWS_FILE, REPORT_FILE = "items.faiss", "items.parquet", "index_report.json"


class IndexRecallTooLow(RecsysBatchError):
    """The approximate index misses too many of the exact top-k items; carries the numbers."""

    def __init__(self, kind: str, recall: float, floor: float, k: int, users: int, n_items: int, params: dict):
        self.kind, self.recall, self.floor = kind, recall, floor
        super().__init__(
            f"{kind} index recall@{k} = {recall:.4f} < index.min_recall {floor:.4f} on {users:,} sampled users "
            f"over {n_items:,} items ({params}); raise index.hnsw_ef_search / index.ivf_nprobe, or "
            f"index.exact_max_items to use exact search")


@dataclass
class IndexReport:
    kind: str
    n_items: int
    dim: int
    build_seconds: float
    params: dict = field(default_factory=dict)
    recall_k: int = 100
    recall: float | None = None
    recall_users: int = 0
    search_seconds: float = 0.0
    users: int = 0
    rows: int = 0
    output_rows: dict = field(default_factory=dict)
    path: str | None = None
    version: int | None = None


def index_dir(wh: WarehouseConfig, run_date: date) -> str:
    return f"{wh.root.rstrip('/')}/index/two_tower/{C.DT}={run_date.isoformat()}"


def write_index_file(index, uri: str) -> int:  # noqa: ANN001 - faiss.Index
    """``faiss.serialize_index`` -> one atomic write of ``uri`` (any filesystem); returns the bytes written.
    Costs one in-memory copy of the serialised index."""
    import faiss

    data = faiss.serialize_index(index)  # uint8 numpy array, the same bytes faiss.write_index writes
    fs.write_atomic(uri, memoryview(data))
    return int(data.nbytes)


def read_index_file(uri: str):  # noqa: ANN201 - faiss.Index
    """The faiss index at ``uri`` (any filesystem), read into memory and ``faiss.deserialize_index``-ed."""
    import faiss

    return faiss.deserialize_index(np.frombuffer(fs.read_bytes(uri), dtype=np.uint8))


def build_index(vectors: np.ndarray, ic: IndexConfig, kind: str | None = None):  # noqa: ANN201 - faiss.Index
    """(index, kind, params) for float32 unit vectors [n, d]; ``kind`` forces exact / hnsw / ivf."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    kind = kind or ("exact" if n <= ic.exact_max_items else ic.kind)
    if kind == "exact":
        index, params = faiss.IndexFlatIP(d), {}
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, ic.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ic.hnsw_ef_construction
        index.hnsw.efSearch = ic.hnsw_ef_search
        params = {"M": ic.hnsw_m, "efConstruction": ic.hnsw_ef_construction, "efSearch": ic.hnsw_ef_search}
    elif kind == "ivf":
        nlist = ic.ivf_nlist or max(1, int(4 * math.sqrt(n)))
        nlist = min(nlist, max(1, n // 39))  # faiss wants >= 39 training points per list
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(ic.seed)
        sample = x[rng.choice(n, min(n, max(ic.ivf_train_size, 39 * nlist)), replace=False)]
        index.train(sample)
        index.nprobe = min(ic.ivf_nprobe, nlist)
        params = {"nlist": nlist, "nprobe": index.nprobe, "train_size": len(sample)}
    else:
        raise ValueError(f"unknown index kind {kind!r}")
    index.add(x)
    return index, kind, params


def recall_vs_exact(index, vectors: np.ndarray, queries: np.ndarray, k: int) -> float:  # noqa: ANN001
    """Mean over queries of |approx top-k & exact top-k| / k (exact = brute-force inner product)."""
    import faiss

    k = min(k, len(vectors))
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    _, truth = exact.search(queries, k)
    _, got = index.search(queries, k)
    hits = [len(set(a[a >= 0]) & set(b)) for a, b in zip(got, truth, strict=True)]
    return float(np.mean(hits) / k) if len(hits) else 1.0


def search_excluding(index, queries: np.ndarray, k: int, seen: list[np.ndarray], batch: int = 4096  # noqa: ANN001
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, rows) per query without the rows in ``seen[q]``; -1 pads a short list.

    Each batch searches k + (largest seen set in the batch) and filters, so no user loses a slot.
    """
    n = len(queries)
    scores = np.full((n, k), -np.inf, np.float32)
    rows = np.full((n, k), -1, np.int64)
    for s in range(0, n, batch):
        q = np.ascontiguousarray(queries[s:s + batch], dtype=np.float32)
        extra = max((len(x) for x in seen[s:s + batch]), default=0)
        kk = min(k + extra, index.ntotal)
        d, idx = index.search(q, kk)
        for j in range(len(q)):
            r, sc = idx[j], d[j]
            keep = r >= 0
            if len(seen[s + j]):
                keep &= ~np.isin(r, seen[s + j])
            r, sc = r[keep][:k], sc[keep][:k]
            rows[s + j, :len(r)] = r
            scores[s + j, :len(r)] = sc
    return scores, rows


def _vectors(t: pa.Table) -> np.ndarray:
    col = t.column(C.EMBEDDING).combine_chunks()
    if len(col) == 0:
        return np.zeros((0, 1), np.float32)
    flat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), np.float32)
    return flat.reshape(len(col), -1)


def seen_rows(matrix: pa.Table | None, users: list[str], item_row: dict[str, int]) -> list[np.ndarray]:
    """Per user (in ``users`` order), the index rows of the items the user already has."""
    if matrix is None:
        return [np.zeros(0, np.int64) for _ in users]
    by_user: dict[str, list[int]] = {}
    for u, i in zip(matrix.column(C.USER).to_pylist(), matrix.column(C.ITEM).to_pylist(), strict=True):
        r = item_row.get(i)
        if r is not None:
            by_user.setdefault(u, []).append(r)
    return [np.asarray(by_user.get(u, ()), np.int64) for u in users]


def run_index(cfg: Config, run_date: date) -> IndexReport:
    """The index stage for D (non-Spark): index files, recall check, ``recall_two_tower`` dt = D."""
    wh, ic = cfg.warehouse, cfg.index
    items = read_partition(wh, ITEM_EMBEDDINGS, run_date, [C.ITEM, C.EMBEDDING])
    users = read_partition(wh, USER_EMBEDDINGS, run_date, [C.USER, C.EMBEDDING])
    ivec, uvec = _vectors(items), _vectors(users)
    if len(ivec) == 0:
        raise RecsysBatchError(f"index {run_date}: item_embeddings dt={run_date} is empty: nothing to index")
    t0 = time.perf_counter()
    index, kind, params = build_index(ivec, ic)
    rep = IndexReport(kind, len(ivec), ivec.shape[1], time.perf_counter() - t0, params, ic.recall_k)
    rng = np.random.default_rng(ic.seed)
    if len(uvec):
        sample = uvec[rng.choice(len(uvec), min(len(uvec), ic.recall_sample_users), replace=False)]
        rep.recall = 1.0 if kind == "exact" else recall_vs_exact(index, ivec, sample, ic.recall_k)
        rep.recall_users = len(sample)
    log.info("index %s: %s over %s items (d=%d) built in %.2fs, recall@%d %.4f on %d users", run_date, kind,
             f"{len(ivec):,}", ivec.shape[1], rep.build_seconds, ic.recall_k, rep.recall or float("nan"),
             rep.recall_users)
    if rep.recall is not None and rep.recall < ic.min_recall:
        raise IndexRecallTooLow(kind, rep.recall, ic.min_recall, ic.recall_k, rep.recall_users, len(ivec), params)

    item_ids = items.column(C.ITEM).to_pylist()
    item_row = {i: r for r, i in enumerate(item_ids)}
    user_ids = users.column(C.USER).to_pylist()
    matrix = read_partition(wh, USER_ITEM_MATRIX, run_date, [C.USER, C.ITEM], required=False)
    seen = seen_rows(matrix, user_ids, item_row)
    top_n = ic.top_n or cfg.recall.top_n
    t1 = time.perf_counter()
    scores, rows = search_excluding(index, uvec, top_n, seen, ic.search_batch_users) if len(uvec) else (
        np.zeros((0, top_n), np.float32), np.zeros((0, top_n), np.int64))
    rep.search_seconds = time.perf_counter() - t1
    valid = rows >= 0
    u_idx = np.repeat(np.arange(len(user_ids)), valid.sum(1))
    ranks = (np.cumsum(valid, axis=1))[valid].astype(np.int32)
    item_arr = pa.array(item_ids, pa.string())
    out = pa.table({
        C.USER: pa.array(user_ids, pa.string()).take(pa.array(u_idx)) if len(u_idx) else pa.array([], pa.string()),
        C.ITEM: item_arr.take(pa.array(rows[valid])) if valid.any() else pa.array([], pa.string()),
        C.SCORE: pa.array(scores[valid].astype(np.float64)),
        C.RANK: pa.array(ranks, pa.int32()),
    })
    rep.users, rep.rows = len(user_ids), out.num_rows

    folder = index_dir(wh, run_date)
    fs.makedirs(folder)
    write_index_file(index, fs.join(folder, INDEX_FILE))
    rows_fs, rows_path = fs.resolve(fs.join(folder, ROWS_FILE))
    pq.write_table(pa.table({"row": pa.array(np.arange(len(item_ids)), pa.int64()), C.ITEM: item_arr}),
                   rows_path, filesystem=rows_fs)
    rep.version = replace_partition_arrow(out, wh, RECALL_TWO_TOWER, run_date)
    rep.path = folder
    rep.output_rows = {RECALL_TWO_TOWER: out.num_rows}
    report = asdict(rep) | {"input_versions": {t: table_version(wh, t) for t in (ITEM_EMBEDDINGS, USER_EMBEDDINGS)},
                            "run_date": run_date.isoformat()}
    fs.write_atomic(fs.join(folder, REPORT_FILE), json.dumps(report, indent=1, default=str))
    log.info("index %s: recall_two_tower %s rows for %s users (search %.2fs)", run_date, f"{out.num_rows:,}",
             f"{len(user_ids):,}", rep.search_seconds)
    return rep
