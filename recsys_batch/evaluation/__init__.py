"""Offline evaluation: splits, ranking metrics, the evaluator stage and its JSON report."""

from recsys_batch.evaluation.metrics import coverage_novelty, per_user_metrics, ranking_metrics
from recsys_batch.evaluation.report import EvaluateResult
from recsys_batch.evaluation.splits import Split, split_time, split_user_chrono

__all__ = ["EvaluateResult", "Split", "coverage_novelty", "per_user_metrics", "ranking_metrics", "split_time",
           "split_user_chrono"]
