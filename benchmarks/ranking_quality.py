"""Per-task quality of the ranking model against the logistic-regression baseline on synthetic data with planted
per-task preferences (:mod:`recsys_batch.ranking.synthetic`), two days: a fresh model, then a warm start.

    .venv/bin/python benchmarks/ranking_quality.py [--root /tmp/ranking_quality] [--set ranking.multitask=ple ...]

2,000 users, 1,000 items, 8 clusters, ~30 impressions per user-day (alpha 0.5: ~50k kept rows a day), default
``RankingConfig`` except ``num_workers 0``; prints the stage's per-task table (held-out last 4 h of each day).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from datetime import date

from recsys_batch.config import load_config
from recsys_batch.ranking.synthetic import build_ranking_warehouse
from recsys_batch.ranking.train import run_train_ranking
from recsys_batch.training.synthetic import World


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--root", default="/tmp/ranking_quality")
    p.add_argument("--set", dest="sets", action="append", default=[])
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    shutil.rmtree(a.root, ignore_errors=True)
    cfg = load_config(None, [f"warehouse.root={a.root}", "ranking.num_workers=0", "ranking.progress=false", *a.sets])
    w = World(2000, 1000, 8, seed=3)
    days = [date(2026, 1, 1), date(2026, 1, 2)]
    build_ranking_warehouse(cfg, w, days, impressions_per_user=30, rows_per_file=50_000, row_group_rows=8192)
    for d in days:
        t = time.time()
        r = run_train_ranking(cfg, d)
        print(f"{d}: {time.time() - t:.0f}s, {r.steps} steps, {r.examples:,} examples, gate {r.gate}, "
              f"{r.holdout_rows:,} held-out rows, warm start {'yes' if r.warm_start_from else 'no'}")
        print(r.table, flush=True)


if __name__ == "__main__":
    main()
