"""Swing item-to-item similarity (stage ``swing``: user_item_matrix -> swing_topk)."""

from __future__ import annotations

import logging
from datetime import date

import numpy as np
from pyspark.sql import DataFrame, SparkSession

from recsys_batch.config import Config, SwingConfig
from recsys_batch.io.tables import TableStats
from recsys_batch.schemas import Col
from recsys_batch.similarity.common import BlockedJob, StagedMatrix, finish_rows, run_blocked, run_similarity_stage

log = logging.getLogger(__name__)

#: fixed per-item cost (Python/numpy call overhead) in multiply-add units, for the block balance
_ITEM_OVERHEAD = 20_000.0
#: user pairs enumerated per vectorised step inside an item (bounds memory: ~40 B per pair)
_PAIR_CHUNK = 4_000_000
#: items per emitted chunk are chosen by work; Swing's memory is per item, so chunks can be large
_SWING_CHUNK_WORK = 200_000_000


def _work(m: StagedMatrix) -> np.ndarray:
    """~ |N_cap(i)| * sum_{u in N_cap(i)} |I_cap(u)| (the sparse x dense product) + per-item overhead."""
    deg_cap = np.diff(m.R.indptr).astype(np.float64)
    n_cap = np.diff(m.Rt.indptr).astype(np.float64)
    return n_cap * (m.binary(transposed=True) @ deg_cap) + _ITEM_OVERHEAD


def _row_entries(csr, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """(position of the row in ``rows``, column) of every stored entry of ``csr[rows]`` (pure numpy)."""
    starts = csr.indptr[rows]
    lens = csr.indptr[rows + 1] - starts
    pos = np.repeat(np.arange(len(rows)), lens)
    offs = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
    return pos, csr.indices[np.repeat(starts, lens) + offs]


def _pairs(members: np.ndarray, lengths: np.ndarray, colptr: np.ndarray):  # noqa: ANN202
    """Yield (u, v, column - a, a, b) for every ordered pair (u, v) of S_j, j in column chunks [a, b)
    of at most ``_PAIR_CHUNK`` pairs (sum_j |S_j|^2 in total)."""
    sq = lengths.astype(np.int64) ** 2
    cum = np.cumsum(sq)
    a = 0
    while a < len(lengths):
        b = max(a + 1, int(np.searchsorted(cum, (cum[a - 1] if a else 0) + _PAIR_CHUNK, side="right")))
        pc = sq[a:b]
        total = int(pc.sum())
        col = np.repeat(np.arange(b - a), pc)
        t = np.arange(total) - np.repeat(np.cumsum(pc) - pc, pc)
        ln = lengths[a:b][col]
        base = colptr[a:b][col]
        yield members[base + t // ln], members[base + t % ln], col, a, b
        a = b


def swing_item(m: StagedMatrix, i: int, cfg: SwingConfig, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(neighbour idx, score) of item ``i`` against every j sharing >= max(2, min_support) capped users.

    With N = N_cap(i) (n users) and D the binary n x m matrix of the items j != i that at least two
    users of N share: O = D D^T + 1 (the +1 is item i itself) is |I(u) & I(v)| for u, v in N;
    M_uv = w_u w_v / (alpha + O_uv) with M_uu = 0; sim(i, j) = 1/2 sum_{u, v in N & N(j)} M_uv
    = 1/2 colsum(D o (M D)). Both O and the sums are evaluated by enumerating the ordered user pairs
    of each shared item (sum_j |N(i) & N(j)|^2 <= n * nnz(D) operations, vectorised in chunks of
    <= 4M pairs), never as dense n x m products; M is n x n dense (8 MB at n = 1,000).
    """
    Rt = m.Rt
    users = Rt.indices[Rt.indptr[i]:Rt.indptr[i + 1]]
    n = len(users)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.float64))
    if n < 2:
        return empty
    pos, cols_all = _row_entries(m.R, users)
    cols, inv, cnt = np.unique(cols_all, return_inverse=True, return_counts=True)
    shared = (cnt >= 2) & (cols != i)
    if not shared.any():
        return empty
    sel = shared[inv]
    newcol = np.cumsum(shared) - 1
    n_cols = int(shared.sum())
    r_sel, c_sel = pos[sel], newcol[inv[sel]]
    wu = w[users]
    # column-sorted layout of D: the users S_j of every shared item j, contiguous
    order = np.lexsort((r_sel, c_sel))
    members = r_sel[order]
    lengths = np.bincount(c_sel, minlength=n_cols)
    colptr = np.r_[0, np.cumsum(lengths)]
    # |I(u) & I(v)| - 1 for u, v in N: count, over the shared items, the pairs (u, v) of S_j
    overlap = np.zeros(n * n)
    for u, v, _, _, _ in _pairs(members, lengths, colptr):
        overlap += np.bincount(u * n + v, minlength=n * n)
    M = np.outer(wu, wu) / (cfg.alpha + overlap.reshape(n, n) + 1.0)
    np.fill_diagonal(M, 0.0)
    sim = np.zeros(n_cols)
    for u, v, col, a, b in _pairs(members, lengths, colptr):
        sim[a:b] += 0.5 * np.bincount(col, weights=M[u, v], minlength=b - a)
    neighbours = cols[shared]
    ok = (cnt[shared] >= cfg.min_support) & (sim > 0)
    return neighbours[ok].astype(np.int64), sim[ok]


def swing_kernel(cfg: SwingConfig):  # noqa: ANN201 - returns a Kernel
    """Items [lo, hi): :func:`swing_item` per item, then top-K per row."""

    def kernel(m: StagedMatrix, lo: int, hi: int):  # noqa: ANN202
        import scipy.sparse as sp

        key = f"swing:w:{cfg.c}:{cfg.beta}"
        if key not in m.memo:
            m.memo[key] = (m.user_deg.astype(np.float64) + cfg.c) ** (-cfg.beta)
        w = m.memo[key]
        cols, vals, lengths = [], [], []
        for i in range(lo, hi):
            c, v = swing_item(m, i, cfg, w)
            cols.append(c)
            vals.append(v)
            lengths.append(len(c))
        indptr = np.r_[0, np.cumsum(lengths)].astype(np.int64)
        C = sp.csr_matrix((np.concatenate(vals) if vals else np.zeros(0),
                           np.concatenate(cols) if cols else np.zeros(0, np.int64), indptr),
                          shape=(hi - lo, m.Rt.shape[0]))
        return finish_rows(C, lo, cfg.top_k)

    return kernel


def swing_similarity(matrix: DataFrame, cfg: SwingConfig, staging: str | None = None) -> DataFrame:
    """Top-K Swing neighbours per item (schema ``ITEM_SIM``; Yang et al. 2020, "Large Scale Product
    Graph Construction for Recommendation in E-commerce")::

        sim(i, j) = sum_{u < v in N(i) & N(j)} w_u w_v / (alpha + |I(u) & I(v)|),  w_u = (|I(u)| + c)^-beta

    |I(u)| in w_u is counted on the input matrix; N(.) and the overlaps |I(u) & I(v)| are taken on the
    capped matrix (the caps choose which interactions generate pairs; ``max_users_per_item`` is the
    Swing cap, default 1,000). ``min_support`` drops pairs with fewer common capped users (a pair
    needs at least 2 to score). Self pairs excluded, rank 1 best, ties by neighbour id ascending.

    Cost: per item i with n = |N_cap(i)| <= max_users_per_item: the user-pair overlaps D D^T (sum over
    shared items j of |N(i) & N(j)|^2) and one sparse x dense product of n * nnz(D) multiply-adds,
    so the total is about sum_i |N_cap(i)| * sum_{u in N_cap(i)} |I_cap(u)|; hot items are bounded by
    the cap, and blocks are balanced by this estimate. Memory per task: the staged matrix plus an
    n x n dense matrix and a <= 4M-entry dense slice per item (~40 MB). No pairs are shuffled.
    """
    job = BlockedJob("swing", Col.ITEM, True, _work, swing_kernel(cfg), _SWING_CHUNK_WORK)
    return run_blocked(matrix, cfg, job, staging)


def run_swing(spark: SparkSession, cfg: Config, run_date: date) -> list[TableStats]:
    """Stage ``swing``: ``user_item_matrix`` (dt = D) -> ``swing_topk`` (dt = D, replaced)."""
    return run_similarity_stage(spark, cfg.warehouse, run_date, "swing", swing_similarity, cfg.swing)
