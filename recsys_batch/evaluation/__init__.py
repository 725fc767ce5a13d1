"""Offline evaluation: splits, ranking metrics, the evaluator stage, its JSON and its HTML report."""

from recsys_batch.evaluation.metrics import (
    coverage_novelty, hit_overlap, item_popularity, list_hits, per_user_metrics, ranking_metrics, truth_pop_percentile,
)
from recsys_batch.evaluation.report import EvaluateResult
from recsys_batch.evaluation.splits import Split, split_time, split_user_chrono

__all__ = ["EvaluateResult", "Split", "coverage_novelty", "hit_overlap", "item_popularity", "list_hits",
           "per_user_metrics", "ranking_metrics", "split_time", "split_user_chrono", "truth_pop_percentile"]
