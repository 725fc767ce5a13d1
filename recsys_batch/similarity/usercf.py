"""UserCF user-to-user similarity (stage ``usercf``: user_item_matrix -> usercf_topk)."""

from __future__ import annotations

import logging
from datetime import date

import numpy as np
from pyspark.sql import DataFrame, SparkSession

from recsys_batch.config import Config, UserCFConfig
from recsys_batch.io.tables import TableStats
from recsys_batch.schemas import Col
from recsys_batch.similarity.common import BlockedJob, StagedMatrix, finish_rows, run_blocked, run_similarity_stage

log = logging.getLogger(__name__)


def _work(m: StagedMatrix) -> np.ndarray:
    """Multiply-adds of row u of R diag(p) R^T: sum_{i in I_cap(u)} |N_cap(i)| (+1 per row)."""
    n_cap = np.diff(m.Rt.indptr).astype(np.float64)
    return m.binary() @ n_cap + 1.0


def usercf_kernel(cfg: UserCFConfig):  # noqa: ANN201 - returns a Kernel
    """Rows [lo, hi) of the normalised user-user product, top-K per row."""

    def kernel(m: StagedMatrix, lo: int, hi: int):  # noqa: ANN202
        if "usercf" not in m.memo:
            import scipy.sparse as sp

            # normalisation folded into the operands: sim = left[rows] @ right, no per-pair work
            p = 1.0 / np.log1p(m.item_deg.astype(np.float64))
            s = 1.0 / np.sqrt(m.user_deg.astype(np.float64))
            m.memo["usercf"] = ((sp.diags(s) @ m.binary()).tocsr(),
                                (sp.diags(p) @ m.binary(transposed=True) @ sp.diags(s)).tocsr())
        left, right = m.memo["usercf"]
        C = left[lo:hi] @ right
        support = (m.binary()[lo:hi] @ m.binary(transposed=True)) if cfg.min_support > 1 else None
        return finish_rows(C, lo, cfg.top_k, cfg.min_support, support)

    return kernel


def usercf_similarity(matrix: DataFrame, cfg: UserCFConfig, staging: str | None = None) -> DataFrame:
    """Top-K UserCF neighbours per user (schema ``USER_SIM``: user_id, neighbor, score, rank).

        sim(u, v) = sum_{i in I(u) & I(v)} 1 / log(1 + |N(i)|) / sqrt(|I(u)| * |I(v)|)   (natural log;
        the inverse-popularity weight of user-based CF, e.g. Breese et al. 1998 / "Recommender notes")

    |N(i)| and |I(u)| are counted on the input matrix; caps (``max_items_per_user`` then
    ``max_users_per_item``) only choose which interactions generate pairs; ``min_support`` drops pairs
    with fewer common (capped) items. Self pairs excluded, rank 1 best, ties by neighbour id ascending.

    Cost: sum_i min(|N(i)|, cap_users)^2 multiply-adds; row u costs sum_{i in I_cap(u)} |N_cap(i)|
    <= max_items_per_user * max_users_per_item, so a hot item (or heavy user) is bounded by the caps.
    Row blocks of R diag(p) R^T with scipy in ``mapInArrow`` tasks, balanced by that work; memory per
    task: the staged capped matrix plus one product chunk. The user x user product is much wider than
    the item one (dense-ish rows when a hot item links everybody), which is what ``max_users_per_item``
    is for.
    """
    job = BlockedJob("usercf", Col.USER, False, _work, usercf_kernel(cfg))
    return run_blocked(matrix, cfg, job, staging)


def run_usercf(spark: SparkSession, cfg: Config, run_date: date) -> list[TableStats]:
    """Stage ``usercf``: ``user_item_matrix`` (dt = D) -> ``usercf_topk`` (dt = D, replaced)."""
    return run_similarity_stage(spark, cfg.warehouse, run_date, "usercf", usercf_similarity, cfg.usercf)
