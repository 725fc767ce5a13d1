"""Column and table names the PyTorch side uses, without importing pyspark.

:mod:`recsys_batch.schemas` holds the canonical names but imports ``pyspark.sql.types`` at module level,
which ``training/``, ``index/`` and ``publish/`` must not. These constants mirror it;
``tests/test_training.py::test_column_names_mirror_schemas`` fails if the two drift apart.
"""

from __future__ import annotations


class C:
    USER = "user_id"
    ITEM = "item_id"
    SCORE = "score"
    RANK = "rank"
    DT = "dt"
    TS = "ts"
    LAST_TS = "last_ts"
    ITEMS = "items"
    # samples (FCol)
    GROUP = "group_id"
    LABEL = "label"
    SOURCE = "source"
    LABEL_WEIGHT = "label_weight"
    SAMPLING_PROB = "item_sampling_prob"
    POS_FREQ = "item_pos_freq"
    LASTN_ITEMS = "lastn_items"
    # exports
    EMBEDDING = "embedding"
    MODEL_VERSION = "model_version"


USER_PREFIX, ITEM_PREFIX = "u_", "i_"

SAMPLES_RECALL = "samples_recall"
USER_FEATURES, ITEM_FEATURES = "user_features", "item_features"
USER_ITEM_MATRIX = "user_item_matrix"
USER_LASTN = "user_lastn"
ITEM_EMBEDDINGS, USER_EMBEDDINGS = "item_embeddings", "user_embeddings"
RECALL_TWO_TOWER = "recall_two_tower"
