"""The names the PyTorch side uses, from :mod:`recsys_batch.columns` (no pyspark import).

``C`` is :class:`~recsys_batch.columns.Col` and :class:`~recsys_batch.columns.FCol` in one namespace.
"""

from __future__ import annotations

from recsys_batch.columns import (  # noqa: F401 - re-exported
    ITEM_EMBEDDINGS, ITEM_FEATURES, ITEM_PREFIX, RECALL_TWO_TOWER, SAMPLES_RECALL, USER_EMBEDDINGS, USER_FEATURES,
    USER_ITEM_MATRIX, USER_LASTN, USER_PREFIX, Col, FCol,
)


class C(Col, FCol):
    """Every column name (sample, feature and table columns) as one namespace."""
