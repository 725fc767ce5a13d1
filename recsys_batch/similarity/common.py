"""Shared machinery of the similarity jobs: dense ids, pair caps, the staged sparse matrix, row blocks.

How a similarity job runs (ItemCF, Swing and UserCF all go through :func:`run_blocked`):

1. **Caps + statistics** (:func:`cap_interactions`, one Spark job, two shuffles): each interaction is
   ranked within its item and within its user by ``cap_strategy``; the same windows give |N(i)|,
   ||r(., i)||, |I(u)|, ||r(u, .)|| **on the input matrix** (the penalties use uncapped counts; the
   caps only decide which interactions generate pairs). Kept rows, with those statistics, are written
   once as Parquet to a staging folder on shared storage (``<warehouse>/_tmp/<job>/<date>/<uuid>``).
2. **Blocks** (second Spark job): ``B`` tasks (``spark.range(B)`` + ``mapInArrow``). Each task reads the
   staged rows with pyarrow (cached per Python worker, so a reused worker reads them once), numbers
   users and items densely *in ascending id order* (so "ties by neighbour id" is "ties by dense index"),
   builds scipy CSR matrices, splits the *output rows* into B contiguous ranges of equal estimated work
   (every task computes the same split), computes its range in chunks of bounded work with the job's
   kernel, and emits only the top-K rows per key. No pair goes through a shuffle; the driver never
   holds the matrix (it collects nothing but counts).
3. The result is persisted (MEMORY_AND_DISK) and counted, then the staging folder is removed.

Memory per task: the staged matrix (CSR + transpose + binary copies, ~50 bytes per capped interaction,
plus the id strings) and one chunk of the product (``CHUNK_WORK`` multiply-adds, ~12 bytes per entry).
Skew: one output row costs at most ``max_users_per_item * max_items_per_user`` multiply-adds and the
blocks are cut by estimated work, so a hot item or heavy user cannot make one task much longer than
the others (except when a single row's work exceeds a block's share).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_batch.config import PairCapConfig, WarehouseConfig
from recsys_batch.io.tables import TableStats, read_table, replace_partition, require_columns
from recsys_batch.schemas import Col

log = logging.getLogger(__name__)

#: dense-index, degree and norm columns of the staged id tables and entries
DEG_U, NORM_U, DEG_I, NORM_I = "deg_u", "norm_u", "deg_i", "norm_i"
STAGED_COLUMNS = [Col.USER, Col.ITEM, Col.SCORE, DEG_U, NORM_U, DEG_I, NORM_I]
#: target multiply-adds per product chunk inside a task (bounds the chunk's memory, ~12 B per entry)
CHUNK_WORK = 4_000_000
#: relative precision scores are rounded to before ranking, so float noise never decides a tie
SCORE_DIGITS = 12
_RN_U, _RN_I = "_rn_u", "_rn_i"


# ---- staging paths -------------------------------------------------------------------------------


def staging_path(wh: WarehouseConfig, job: str, run_date: date) -> str:
    """``<warehouse.root>/_tmp/<job>/<date>/<uuid>`` (absolute when the root is a local folder)."""
    root = wh.root.rstrip("/")
    if "://" not in root and not root.startswith("file:"):
        root = os.path.abspath(root)
    return f"{root}/_tmp/{job}/{run_date.isoformat()}/{uuid.uuid4().hex[:12]}"


def _default_staging(spark: SparkSession, job: str) -> str:
    master = spark.sparkContext.master or ""
    if master.startswith("local"):
        return os.path.join(tempfile.mkdtemp(prefix=f"recsys-{job}-"), "stage")
    wh_dir = spark.conf.get("spark.sql.warehouse.dir").rstrip("/")
    return f"{wh_dir}/_tmp/{job}/{uuid.uuid4().hex[:12]}"


def arrow_fs(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path) for a Hadoop-style URI; ``s3a://`` is read as ``s3://``."""
    from pyarrow import fs

    if uri.startswith("s3a://") or uri.startswith("s3n://"):
        uri = "s3://" + uri.split("://", 1)[1]
    if uri.startswith("file:"):
        uri = "/" + uri[len("file:"):].lstrip("/")
    if "://" not in uri:
        return fs.LocalFileSystem(), os.path.abspath(uri)
    return fs.FileSystem.from_uri(uri)


def delete_path(spark: SparkSession, path: str) -> None:
    """Recursively delete ``path`` through Hadoop's FileSystem (local, hdfs://, s3a://, ...)."""
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if fs.exists(hpath):
        fs.delete(hpath, True)


# ---- caps and staging rows -------------------------------------------------------------------------------


def _cap_order(cfg: PairCapConfig, tie: str) -> list:
    if cfg.cap_strategy == "recent":
        return [F.col(Col.LAST_TS).desc(), F.col(tie).asc()]
    h = F.xxhash64(F.col(Col.USER), F.col(Col.ITEM), F.lit(int(cfg.seed)))
    return [h.asc(), F.col(tie).asc()]


def cap_interactions(matrix: DataFrame, cfg: PairCapConfig) -> DataFrame:
    """The interactions that generate pairs, with the input-matrix statistics of their user and item.

    An interaction (u, i) is kept iff it is among u's first ``max_items_per_user`` items AND among i's
    first ``max_users_per_item`` users, both ranked on the *input* matrix by ``cap_strategy``
    ("recent": last_ts desc; "sample": xxhash64(user_id, item_id, seed) asc; ties by id asc).
    Adds ``deg_u`` = |I(u)|, ``norm_u`` = ||r(u, .)||, ``deg_i`` = |N(i)|, ``norm_i`` = ||r(., i)||, all
    counted on the input matrix (the penalties use them; the caps only bound pair generation).

    Cost: two shuffles of the matrix (by item, then by user), one sort per partition each. A hot item's
    rows sort in one task (O(|N(i)| log |N(i)|), spilling if needed) -- linear work, not quadratic.
    """
    by_item = Window.partitionBy(Col.ITEM)
    by_user = Window.partitionBy(Col.USER)
    sq = F.col(Col.SCORE) * F.col(Col.SCORE)
    out = (matrix
           .withColumn(_RN_I, F.row_number().over(by_item.orderBy(*_cap_order(cfg, Col.USER))))
           .withColumn(DEG_I, F.count(F.lit(1)).over(by_item))
           .withColumn(NORM_I, F.sqrt(F.sum(sq).over(by_item)))
           .withColumn(_RN_U, F.row_number().over(by_user.orderBy(*_cap_order(cfg, Col.ITEM))))
           .withColumn(DEG_U, F.count(F.lit(1)).over(by_user))
           .withColumn(NORM_U, F.sqrt(F.sum(sq).over(by_user))))
    return (out.where((F.col(_RN_U) <= cfg.max_items_per_user) & (F.col(_RN_I) <= cfg.max_users_per_item))
            .drop(_RN_U, _RN_I))


# ---- staged matrix, loaded inside the tasks ---------------------------------------------------------------


@dataclass
class StagedMatrix:
    """What a task holds: the capped matrix as scipy CSR plus the id tables (all from staging)."""

    R: Any                      # users x items CSR, values = score (capped)
    Rt: Any                     # items x users CSR (transpose)
    user_ids: pa.Array          # dense index -> id, ascending id order
    item_ids: pa.Array
    user_deg: np.ndarray        # |I(u)| on the input matrix
    item_deg: np.ndarray        # |N(i)| on the input matrix
    user_norm: np.ndarray
    item_norm: np.ndarray
    memo: dict[str, Any] = field(default_factory=dict)

    def binary(self, transposed: bool = False) -> Any:
        key = "Rt_bin" if transposed else "R_bin"
        if key not in self.memo:
            m = (self.Rt if transposed else self.R).copy()
            m.data = np.ones_like(m.data)
            self.memo[key] = m
        return self.memo[key]


_WORKER_CACHE: dict[str, StagedMatrix] = {}


def _dense_ids(col: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """(sorted distinct ids, dense index of every row): ids are numbered in ascending order."""
    import pyarrow.compute as pc

    uniq = pc.unique(col)
    uniq = uniq.take(pc.sort_indices(uniq))
    return uniq, pc.index_in(col, value_set=uniq).to_numpy().astype(np.int64)


def _per_id(idx: np.ndarray, values: np.ndarray, n: int, dtype: Any) -> np.ndarray:
    out = np.zeros(n, dtype=dtype)
    out[idx] = values  # every row of an id carries the same value
    return out


def stage_matrix(table: pa.Table) -> StagedMatrix:
    """Build the task-side matrices from staged rows (user, item, score, deg_u, norm_u, deg_i, norm_i)."""
    import scipy.sparse as sp

    user_ids, u = _dense_ids(table.column(Col.USER))
    item_ids, i = _dense_ids(table.column(Col.ITEM))
    nu, ni = len(user_ids), len(item_ids)
    col = lambda name: table.column(name).to_numpy()  # noqa: E731
    R = sp.csr_matrix((col(Col.SCORE).astype(np.float64), (u, i)), shape=(nu, ni))
    R.sort_indices()
    Rt = R.T.tocsr()
    Rt.sort_indices()
    return StagedMatrix(
        R, Rt, user_ids, item_ids,
        _per_id(u, col(DEG_U), nu, np.int64), _per_id(i, col(DEG_I), ni, np.int64),
        _per_id(u, col(NORM_U), nu, np.float64), _per_id(i, col(NORM_I), ni, np.float64),
    )


def load_staged(root: str, token: str) -> StagedMatrix:
    """Read the staged matrix once per Python worker and run (``token``): reused workers keep it."""
    if token in _WORKER_CACHE:
        return _WORKER_CACHE[token]
    import pyarrow.parquet as pq

    fs, path = arrow_fs(root)
    staged = stage_matrix(pq.read_table(path, filesystem=fs, columns=STAGED_COLUMNS))
    _WORKER_CACHE.clear()  # hold one matrix per worker at most
    _WORKER_CACHE[token] = staged
    return staged


# ---- blocks and top-K --------------------------------------------------------------------------------------


def split_by_work(work: np.ndarray, parts: int) -> np.ndarray:
    """Boundaries ``b[0]=0 <= ... <= b[parts]=n`` of contiguous row ranges of about equal total work."""
    n = len(work)
    cum = np.cumsum(work, dtype=np.float64)
    total = cum[-1] if n else 0.0
    if total <= 0:
        return np.linspace(0, n, parts + 1).astype(np.int64)
    cuts = np.searchsorted(cum, total * np.arange(1, parts) / parts, side="left") + 1
    return np.concatenate([[0], np.minimum(cuts, n), [n]]).astype(np.int64)


def round_scores(x: np.ndarray, digits: int = SCORE_DIGITS) -> np.ndarray:
    """Round to ``digits`` significant digits, so equal-in-theory scores compare equal."""
    x = np.asarray(x, dtype=np.float64)
    out = x.copy()
    nz = np.isfinite(x) & (x != 0)
    if nz.any():
        e = np.floor(np.log10(np.abs(x[nz])))
        scale = 10.0 ** (digits - 1 - e)
        out[nz] = np.round(x[nz] * scale) / scale
    return out


def topk_csr(indptr: np.ndarray, indices: np.ndarray, scores: np.ndarray, k: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` entries of every CSR row: (local row, column, rounded score, 1-based rank).

    Order: score (rounded to 12 significant digits) descending, then column ascending (columns are
    dense ids numbered in id order). Rows longer than k are first cut at their k-th largest raw score
    with ``np.partition`` (minus a 1e-9 relative slack, so near-ties survive to the rounding); only the
    survivors are rounded and ordered with one lexsort.
    """
    counts = np.diff(indptr)
    keep = np.ones(len(indices), dtype=bool)
    for r in np.flatnonzero(counts > k):
        s, e = indptr[r], indptr[r + 1]
        seg = scores[s:e]
        th = np.partition(seg, len(seg) - k)[len(seg) - k]
        keep[s:e] = seg >= th - abs(th) * 1e-9
    rows = np.repeat(np.arange(len(counts), dtype=np.int64), counts)[keep]
    cols, sc = indices[keep], round_scores(scores[keep])
    order = np.lexsort((cols, -sc, rows))
    rows, cols, sc = rows[order], cols[order], sc[order]
    if len(rows) == 0:
        return rows, cols, sc, np.zeros(0, dtype=np.int32)
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    lengths = np.diff(np.r_[starts, len(rows)])
    rank = np.arange(len(rows)) - np.repeat(starts, lengths) + 1
    sel = rank <= k
    return rows[sel], cols[sel], sc[sel], rank[sel].astype(np.int32)


def finish_rows(C: Any, lo: int, k: int, min_support: int = 1, support: Any = None,
                exclude_self: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top-K of a chunk ``C`` (CSR, rows = global rows lo..), dropping self pairs, pairs with
    ``support < min_support`` (``support`` has C's rows/cols) and non-positive scores. Global row idx."""
    import scipy.sparse as sp

    C = sp.csr_matrix(C)
    if support is not None and min_support > 1:
        C = C.multiply(support >= min_support).tocsr()
    C.eliminate_zeros()
    rows = np.repeat(np.arange(C.shape[0], dtype=np.int64), np.diff(C.indptr))
    data = C.data
    mask = data > 0
    if exclude_self:
        mask &= C.indices != rows + lo
    if not mask.all():
        counts = np.bincount(rows[mask], minlength=C.shape[0])
        indptr = np.r_[0, np.cumsum(counts)]
        r, c, s, rk = topk_csr(indptr, C.indices[mask], data[mask], k)
    else:
        r, c, s, rk = topk_csr(C.indptr, C.indices, data, k)
    return r + lo, c.astype(np.int64), s, rk


# ---- the blocked job ----------------------------------------------------------------------------------------


#: a kernel computes global rows [lo, hi) and returns (row idx, neighbour idx, score, rank) arrays
Kernel = Callable[[StagedMatrix, int, int], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
#: estimated work per output row (drives the block split and the chunking)
WorkFn = Callable[[StagedMatrix], np.ndarray]


def _out_schema(key: str) -> T.StructType:
    return T.StructType([
        T.StructField(key, T.StringType(), False), T.StructField(Col.NEIGHBOR, T.StringType(), False),
        T.StructField(Col.SCORE, T.DoubleType(), False), T.StructField(Col.RANK, T.IntegerType(), False),
    ])


def _task(root: str, token: str, blocks: int, rows_are_items: bool, work_fn: WorkFn, kernel: Kernel,
          key: str, chunk_work: int) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    schema = pa.schema([(key, pa.string(), False), (Col.NEIGHBOR, pa.string(), False),
                        (Col.SCORE, pa.float64(), False), (Col.RANK, pa.int32(), False)])

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for b in batch.column(0).to_pylist():
                m = load_staged(root, token)
                work = work_fn(m)
                bounds = split_by_work(work, blocks)
                lo, hi = int(bounds[b]), int(bounds[b + 1])
                if hi <= lo:
                    continue
                # chunks of bounded work inside the block (bounds memory whatever B is)
                sub = split_by_work(work[lo:hi], max(1, int(np.ceil(work[lo:hi].sum() / chunk_work))))
                ids = m.item_ids if rows_are_items else m.user_ids
                for a, z in zip(sub[:-1], sub[1:]):
                    if z <= a:
                        continue
                    r, c, s, rk = kernel(m, lo + int(a), lo + int(z))
                    if len(r) == 0:
                        continue
                    yield pa.RecordBatch.from_arrays(
                        [ids.take(pa.array(r)), ids.take(pa.array(c)), pa.array(s, pa.float64()),
                         pa.array(rk, pa.int32())], schema=schema)

    return run


@dataclass(frozen=True)
class BlockedJob:
    name: str
    key: str                 # Col.ITEM or Col.USER: the output key column
    rows_are_items: bool
    work_fn: WorkFn
    kernel: Kernel
    chunk_work: int = CHUNK_WORK


def required_columns(cfg: PairCapConfig) -> list[str]:
    cols = [Col.USER, Col.ITEM, Col.SCORE]
    return cols + [Col.LAST_TS] if cfg.cap_strategy == "recent" else cols


def run_blocked(matrix: DataFrame, cfg: PairCapConfig, job: BlockedJob, staging: str | None = None,
                blocks: int | None = None) -> DataFrame:
    """Stage the capped matrix, run ``job.kernel`` over B row blocks, return the materialised top-K.

    The returned DataFrame is persisted (MEMORY_AND_DISK) and already computed; the staging folder is
    gone when this returns. ``unpersist()`` it when done.
    """
    require_columns(matrix, required_columns(cfg), table="user_item_matrix", where=job.name)
    spark = matrix.sparkSession
    tmp_parent = None
    if staging is None:
        staging = _default_staging(spark, job.name)
        tmp_parent = os.path.dirname(staging) if "://" not in staging else None
    token = uuid.uuid4().hex
    root = f"{staging.rstrip('/')}/{token[:12]}"
    try:
        base = matrix.select(*required_columns(cfg)).where(F.col(Col.SCORE).isNotNull())
        cap_interactions(base, cfg).select(*STAGED_COLUMNS).write.mode("overwrite").parquet(root)
        if blocks is None:
            blocks = cfg.blocks or 4 * spark.sparkContext.defaultParallelism
        blocks = max(1, int(blocks))
        log.info("%s: %s blocks, staging %s", job.name, blocks, root)
        fn = _task(root, token, blocks, job.rows_are_items, job.work_fn, job.kernel, job.key, job.chunk_work)
        out = (spark.range(blocks, numPartitions=blocks).select(F.col("id").cast("int").alias("block"))
               .mapInArrow(fn, _out_schema(job.key))
               .persist(StorageLevel.MEMORY_AND_DISK))
        out.count()
        return out
    finally:
        delete_path(spark, root)
        if tmp_parent:
            shutil.rmtree(tmp_parent, ignore_errors=True)


def run_similarity_stage(spark: SparkSession, wh: WarehouseConfig, run_date: date, job: str,
                         similarity: Callable[..., DataFrame], job_cfg: PairCapConfig) -> list[TableStats]:
    """A similarity stage: ``user_item_matrix`` (dt = D) -> ``<job>_topk`` (dt = D, replaced)."""
    matrix = read_table(spark, wh, "user_item_matrix", run_date).drop(Col.DT)
    out = similarity(matrix, job_cfg, staging_path(wh, job, run_date))
    try:
        return [replace_partition(out, wh, f"{job}_topk", run_date)]
    finally:
        out.unpersist()
