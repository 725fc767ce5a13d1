"""Stream the day's ranking samples (``samples/ranking/dt=D/part-*.parquet``) into training batches.

The two-tower's :class:`~recsys_batch.training.data.SampleStream` does the work (row groups permuted by
(seed, epoch) and dealt to DDP ranks x DataLoader workers, a bounded shuffle buffer, the holdout cut on
``ts``); this subclass reads the ranking columns and encodes every row on both sides. A batch::

    user, item   encoded inputs of every row (``TowerLayout.encode``)
    labels       float32 [B, 5]  click, like, collect, share, comment
    watch        float32 [B]     watch_time_s (0 without)
    alpha        float32 [B]     neg_keep_rate
    weight       float32 [B]     sample_weight (1 clicked, 1 / alpha non-clicked; evaluation only)
    row_id       int64 [B]       global row number (file order, then row order)
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from recsys_batch.errors import SchemaError
from recsys_batch.training.columns import C
from recsys_batch.training.data import SampleStream

LABELS = (C.CLICK, C.LIKE, C.COLLECT, C.SHARE, C.COMMENT)
#: the non-feature columns the ranking stage reads from the shards
RANKING_META = (*LABELS, C.WATCH, C.NEG_KEEP_RATE, C.SAMPLE_WEIGHT, C.TS, C.USER, C.ITEM)


def require_ranking_columns(columns: list[str], where: str) -> None:
    missing = [c for c in RANKING_META if c not in columns]
    if missing:
        raise SchemaError("samples_ranking shards", missing, columns, where)


def encode_targets(t: pa.Table) -> dict[str, torch.Tensor]:
    def col(name: str, default: float) -> np.ndarray:
        return np.array(t.column(name).cast(pa.float32()).fill_null(default).to_numpy(), np.float32)

    return {"labels": torch.from_numpy(np.stack([col(c, 0.0) for c in LABELS], 1).reshape(t.num_rows, len(LABELS))),
            "watch": torch.from_numpy(col(C.WATCH, 0.0)), "alpha": torch.from_numpy(col(C.NEG_KEEP_RATE, 1.0)),
            "weight": torch.from_numpy(col(C.SAMPLE_WEIGHT, 1.0))}


class RankingStream(SampleStream):
    """:class:`SampleStream` over ranking sample shards (see the module docstring)."""

    def __init__(self, *args, **kwargs):  # noqa: ANN002, ANN003 - SampleStream's arguments
        kwargs["user_rows"] = "all"
        super().__init__(*args, **kwargs)
        if self.files:
            from recsys_batch.io.fs import resolve
            import pyarrow.parquet as pq

            names = pq.read_schema(resolve(self.files[0])[1], filesystem=resolve(self.files[0])[0]).names
            wanted = set(self.user_layout.columns()) | set(self.item_layout.columns()) | set(RANKING_META)
            self.columns = [c for c in names if c in wanted]

    def encode(self, t: pa.Table) -> dict:
        out = {"user": {k: torch.from_numpy(v) for k, v in self.user_layout.encode(t).items()},
               "item": {k: torch.from_numpy(v) for k, v in self.item_layout.encode(t).items()},
               "row_id": torch.from_numpy(np.array(t.column("_row").to_numpy(), np.int64))}
        out.update(encode_targets(t))
        return out
