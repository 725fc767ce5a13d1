"""Recall lists per channel (``recall_itemcf``, ``recall_swing``, ``recall_usercf``, ``recall_popular``).

Pure transforms in :mod:`recsys_batch.recall.channels`; the stage (I/O at the edge) in
:mod:`recsys_batch.recall.stage`.
"""

from recsys_batch.recall.channels import (
    item_based_recall, popular_recall, popular_scores, popular_window, user_based_recall,
)
from recsys_batch.recall.common import active_users, exclude_seen, recent_items, top_n_per_user

__all__ = ["active_users", "exclude_seen", "item_based_recall", "popular_recall", "popular_scores", "popular_window",
           "recent_items", "top_n_per_user", "user_based_recall"]
