"""Item-item and user-user similarity (stage 3: matrix -> itemcf_topk / swing_topk / usercf_topk).

Public transforms take the ``user_item_matrix`` DataFrame and a config and return the top-K neighbours;
the ``run_*`` stage functions read and write the Delta partitions. Shared caps, dense ids, staging and
the blocked scipy machinery live in :mod:`recsys_batch.similarity.common`.
"""

from recsys_batch.similarity.itemcf import itemcf_similarity, run_itemcf
from recsys_batch.similarity.swing import run_swing, swing_similarity
from recsys_batch.similarity.usercf import run_usercf, usercf_similarity

__all__ = ["itemcf_similarity", "run_itemcf", "run_swing", "run_usercf", "swing_similarity", "usercf_similarity"]
