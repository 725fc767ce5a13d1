"""ItemCF item-to-item similarity (stage ``itemcf``: user_item_matrix -> itemcf_topk)."""

from __future__ import annotations

import logging
from datetime import date

import numpy as np
from pyspark.sql import DataFrame, SparkSession

from recsys_batch.config import Config, ItemCFConfig
from recsys_batch.io.tables import TableStats
from recsys_batch.schemas import Col
from recsys_batch.similarity.common import BlockedJob, StagedMatrix, finish_rows, run_blocked, run_similarity_stage

log = logging.getLogger(__name__)


def _work(m: StagedMatrix) -> np.ndarray:
    """Multiply-adds of row i of R^T R: sum_{u in N_cap(i)} |I_cap(u)| (+1 per row for overhead)."""
    deg_cap = np.diff(m.R.indptr).astype(np.float64)
    return m.binary(transposed=True) @ deg_cap + 1.0


def _operands(m: StagedMatrix, cfg: ItemCFConfig) -> tuple:
    """(left, right) with the normalisation folded in: sim = left[rows] @ right, no per-pair work.

    penalized: left = diag(|N(i)|^-(1-alpha)) B^T, right = diag(a) B diag(|N(j)|^-alpha) (B binary);
    cosine: left = diag(1/||r_i||) R^T, right = R diag(1/||r_j||)."""
    key = f"itemcf:{cfg.kind}:{cfg.activity_penalty}:{cfg.alpha}"
    if key not in m.memo:
        import scipy.sparse as sp

        if cfg.kind == "cosine":
            inv = 1.0 / m.item_norm
            left, right = sp.diags(inv) @ m.Rt, m.R @ sp.diags(inv)
        else:
            n = m.item_deg.astype(np.float64)
            a = 1.0 / np.log1p(m.user_deg.astype(np.float64)) if cfg.activity_penalty else np.ones(len(m.user_deg))
            left = sp.diags(n ** -(1.0 - cfg.alpha)) @ m.binary(transposed=True)
            right = sp.diags(a) @ m.binary() @ sp.diags(n ** -cfg.alpha)
        m.memo[key] = (left.tocsr(), right.tocsr())
    return m.memo[key]


def itemcf_kernel(cfg: ItemCFConfig):  # noqa: ANN201 - returns a Kernel
    """Rows [lo, hi) of the normalised item-item product, top-K per row."""

    def kernel(m: StagedMatrix, lo: int, hi: int):  # noqa: ANN202
        left, right = _operands(m, cfg)
        C = left[lo:hi] @ right
        support = (m.binary(transposed=True)[lo:hi] @ m.binary()) if cfg.min_support > 1 else None
        return finish_rows(C, lo, cfg.top_k, cfg.min_support, support)

    return kernel


def itemcf_similarity(matrix: DataFrame, cfg: ItemCFConfig, staging: str | None = None) -> DataFrame:
    """Top-K ItemCF neighbours per item (schema ``ITEM_SIM``: item_id, neighbor, score, rank).

    ``penalized`` (default; Linden et al. 2003 with the usual activity and popularity penalties)::

        sim(i, j) = sum_{u in N(i) & N(j)} a(u) / (|N(i)|^(1-alpha) * |N(j)|^alpha),
        a(u) = 1 / log(1 + |I(u)|)  (natural log; a(u) = 1 when ``activity_penalty`` is off)

    ``cosine``: sum_u r(u,i) r(u,j) / (||r(., i)|| ||r(., j)||) on the weighted matrix (r = score).

    |N(i)|, |I(u)| and the norms are counted on the input matrix; the caps (``max_items_per_user``,
    then ``max_users_per_item``, ``cap_strategy``) only choose which interactions generate pairs, and
    ``min_support`` drops pairs with fewer common (capped) users. Self pairs are excluded; rank 1 is the
    best; ties by neighbour id ascending (scores compared at 12 significant digits).

    Cost: sum_u min(|I(u)|, cap_items)^2 multiply-adds (each item row i costs
    sum_{u in N_cap(i)} |I_cap(u)| <= max_users_per_item * max_items_per_user, so a hot item is bounded);
    computed as row blocks of R^T diag(a) R with scipy inside ``mapInArrow`` tasks, blocks balanced by
    that per-row work. Memory per task: the staged capped matrix (~32 bytes per interaction) plus one
    chunk of the product (~50 MB). Shuffles: only the id numbering, the caps and the staging write;
    pairs never leave the task. See :mod:`recsys_batch.similarity.common`.
    """
    job = BlockedJob("itemcf", Col.ITEM, True, _work, itemcf_kernel(cfg))
    return run_blocked(matrix, cfg, job, staging)


def run_itemcf(spark: SparkSession, cfg: Config, run_date: date) -> list[TableStats]:
    """Stage ``itemcf``: ``user_item_matrix`` (dt = D) -> ``itemcf_topk`` (dt = D, replaced)."""
    return run_similarity_stage(spark, cfg.warehouse, run_date, "itemcf", itemcf_similarity, cfg.itemcf)
