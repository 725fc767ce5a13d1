"""Held-out evaluation of ranking models and the ranking gate (no Spark).

Held-out slice of D: the ranking samples of D with ts >= the cut ``ranking.holdout_hours`` before the end of D
(training never sees them; yesterday's model never saw any of D), at most ``ranking.eval_max_rows`` rows (a
seeded sample of whole users beyond it, so per-user metrics stay complete). Every model -- today's, the
logistic-regression baseline trained on the same rows, yesterday's accepted model with its own spec -- is
scored on the same rows. Per task (:mod:`recsys_batch.ranking.metrics`):

* ``click``: AUC and GAUC (per user) of the calibrated p; log loss, per-decile calibration and ECE of the
  calibrated p against the re-weighted rows (``sample_weight``: the rows then stand for every impression);
* ``like`` / ``collect`` / ``share`` / ``comment``: the same for p(t | click) on the clicked rows (never
  down-sampled: unweighted);
* ``watch_time``: RMSE of log1p seconds on the clicked rows;
* ``fused``: NDCG (whole list and @10) per user of the fused score, gain = click + like + collect + share +
  comment of the row (a row's engagement count), users with a positive gain.

The pre-rank model (``ranking.prerank``, click only) is scored on the same rows: its ``click`` row alone.

Gate (:func:`ranking_gate`), on click GAUC: refuse when fewer than ``gate_min_users`` users have both a click
and a non-click among the held-out rows, when the model does not beat the baseline by more than
``gate_baseline_margin``, or when it is below yesterday's model by more than ``gate_tolerance`` (absolute).
The decision is recorded in the model folder's ``evaluation.json``; a refused model is never warm-started
from nor compared with, and the publish stage ships the newest accepted model in its place
(:mod:`recsys_batch.ranking.release`; ``publish.force`` ships it anyway). The train_ranking stage itself
succeeds: a refused ranking model does not hold back the day's recall lists.
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import torch
from torch import nn

from recsys_batch.config import Config, RankingConfig
from recsys_batch.io.fs import resolve
from recsys_batch.ranking.calibration import calibrate, fuse, fusion_vector, task_probabilities
from recsys_batch.ranking.data import LABELS, encode_targets
from recsys_batch.ranking.metrics import auc, calibration, gauc, logloss, ndcg
from recsys_batch.ranking.model import TASKS, WATCH, run
from recsys_batch.training.columns import C
from recsys_batch.training.data import cut_scalar, holdout_cutoff
from recsys_batch.training.features import TowerLayout, build_layout

log = logging.getLogger(__name__)
EVAL_BATCH = 8192
#: the gate's metric
GATE_METRIC = ("click", "gauc")


def holdout_rows(files: list[str], run_date: date, rc: RankingConfig) -> pa.Table | None:
    """The held-out rows of D (see the module docstring), or None without a cut or without rows."""
    cutoff = holdout_cutoff(run_date, rc.holdout_hours)
    if cutoff is None or not files:
        return None
    fs, _ = resolve(files[0])
    ds = pads.dataset([resolve(f)[1] for f in files], format="parquet", filesystem=fs)
    t = ds.to_table(filter=pc.field(C.TS) >= cut_scalar(cutoff, ds.schema.field(C.TS).type))
    if t.num_rows == 0:
        return None
    if t.num_rows > rc.eval_max_rows:
        users = pc.unique(t.column(C.USER)).to_pylist()
        rng = np.random.default_rng(rc.seed)
        rng.shuffle(users)
        counts = dict(zip(*np.unique(np.asarray(t.column(C.USER).to_pylist(), dtype=object), return_counts=True),
                          strict=True))
        keep, n = [], 0
        for u in users:
            if n + counts[u] > rc.eval_max_rows and keep:
                break
            keep.append(u)
            n += counts[u]
        t = t.filter(pc.is_in(t.column(C.USER), pa.array(keep, pa.string())))
    return t.sort_by([(C.USER, "ascending"), (C.TS, "ascending")])


@torch.no_grad()
def predict(model: nn.Module, user_layout: TowerLayout, item_layout: TowerLayout, table: pa.Table) -> np.ndarray:
    """[rows, 6] raw outputs of ``model`` on every row of ``table`` (sample column names), in batches ([rows, 1]
    for the click-only pre-rank model)."""
    model.eval()
    outs = []
    for s in range(0, table.num_rows, EVAL_BATCH):
        part = table.slice(s, EVAL_BATCH)
        u = {k: torch.from_numpy(v) for k, v in user_layout.encode(part).items()}
        i = {k: torch.from_numpy(v) for k, v in item_layout.encode(part).items()}
        outs.append(run(model, u, i).numpy().astype(np.float32))
    return np.concatenate(outs) if outs else np.zeros((0, len(TASKS)), np.float32)


def _binary(y: np.ndarray, p: np.ndarray, users: np.ndarray, w: np.ndarray | None) -> dict[str, Any]:
    g, n = gauc(users, y, p)
    table, ece = calibration(y, p, w)
    return {"rows": int(len(y)), "positives": int((y > 0.5).sum()), "auc": auc(y, p), "gauc": g, "gauc_users": n,
            "logloss": logloss(y, p, w), "ece": ece, "calibration": table}


def task_metrics(raw: np.ndarray, table: pa.Table, fusion_weights: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Metrics of one model's raw outputs on the held-out rows (see the module docstring)."""
    tg = encode_targets(table)
    labels, watch = tg["labels"].numpy(), tg["watch"].numpy()
    alpha, weight = tg["alpha"], tg["weight"].numpy()
    users = np.asarray(table.column(C.USER).to_pylist(), dtype=object)
    out = torch.from_numpy(raw)
    p_click = calibrate(torch.sigmoid(out[:, 0].double()), alpha.double()).numpy()
    res: dict[str, dict[str, Any]] = {"click": _binary(labels[:, 0], p_click, users, weight)}
    if raw.shape[1] == 1:  # the pre-rank model: click only
        return res
    clicked = labels[:, 0] > 0.5
    cond = torch.sigmoid(out[:, 1:WATCH].double()).numpy()
    for t in range(1, len(LABELS)):
        res[TASKS[t]] = _binary(labels[clicked, t], cond[clicked, t - 1], users[clicked], None)
    err = raw[clicked, WATCH] - np.log1p(np.maximum(watch[clicked], 0.0))
    res["watch_time"] = {"rows": int(clicked.sum()), "rmse_log1p": float(np.sqrt((err ** 2).mean())) if len(err) else
                         float("nan")}
    score = fuse(task_probabilities(out.double(), alpha.double()), fusion_vector(fusion_weights).double()).numpy()
    gain = labels.sum(1)
    nd, groups = ndcg(users, gain, score)
    nd10, _ = ndcg(users, gain, score, 10)
    res["fused"] = {"ndcg": nd, "ndcg@10": nd10, "users": groups}
    return res


def evaluate_models(models: dict[str, tuple[nn.Module, TowerLayout, TowerLayout]], table: pa.Table,
                    fusion_weights: dict[str, float]) -> dict[str, dict[str, dict[str, Any]]]:
    """{model name: task metrics} on the same held-out rows."""
    return {name: task_metrics(predict(m, ul, il, table), table, fusion_weights) for name, (m, ul, il) in models.items()}


def layouts_for_spec(spec: dict, columns: list[str], rc: RankingConfig) -> tuple[TowerLayout, TowerLayout]:
    return (build_layout(spec, "user", columns, rc.exclude_features, "samples", rc.max_lastn),
            build_layout(spec, "item", columns, rc.exclude_features, "samples", rc.max_lastn))


def summary_table(metrics: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (model, task) with the headline numbers (printing, manifests)."""
    rows = []
    for model, tasks in metrics.items():
        for task, m in tasks.items():
            rows.append({"model": model, "task": task, **{k: v for k, v in m.items() if k != "calibration"}})
    return rows


def format_table(metrics: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = [f"{'model':<22} {'task':<11} {'rows':>8} {'auc':>7} {'gauc':>7} {'users':>6} {'logloss':>8} {'ece':>7}"
             f" {'other':>14}"]
    for r in summary_table(metrics):
        f = lambda k: f"{r[k]:.4f}" if isinstance(r.get(k), float) else "-"  # noqa: E731
        other = (f"rmse {r['rmse_log1p']:.3f}" if "rmse_log1p" in r else
                 f"ndcg {r['ndcg']:.4f}" if "ndcg" in r else "")
        lines.append(f"{r['model']:<22} {r['task']:<11} {r.get('rows', r.get('users', 0)):>8} {f('auc'):>7} "
                     f"{f('gauc'):>7} {r.get('gauc_users', '-'):>6} {f('logloss'):>8} {f('ece'):>7} {other:>14}")
    return "\n".join(lines)


def ranking_gate(metrics: dict[str, dict[str, dict[str, Any]]], rc: RankingConfig, new: str = "new",
                 baseline: str | None = "lr", previous: str | None = None) -> dict[str, Any]:
    """Checks on click GAUC of ``metrics[new]`` (see the module docstring): {"checks": [{check, ok, detail}],
    "failures", "decision"} with decision ``passed``, ``refused`` or ``disabled`` (ranking.gate false: recorded,
    not enforced)."""
    task, key = GATE_METRIC
    checks = []
    m = metrics.get(new, {}).get(task, {})
    g, users = m.get(key, float("nan")), m.get("gauc_users", 0)
    checks.append({"check": "users", "ok": users >= rc.gate_min_users,
                   "detail": f"{users} held-out users with a click and a non-click (need {rc.gate_min_users})"})
    if baseline is not None and baseline in metrics:
        b = metrics[baseline][task][key]
        ok = bool(g > b + rc.gate_baseline_margin)
        checks.append({"check": "baseline", "ok": ok, "detail": f"click GAUC {g:.4f} vs logistic regression "
                                                                f"{b:.4f} + margin {rc.gate_baseline_margin:g}"})
    if previous is not None and previous in metrics:
        p = metrics[previous][task][key]
        ok = bool(g >= p - rc.gate_tolerance)
        checks.append({"check": "previous", "ok": ok, "detail": f"click GAUC {g:.4f} vs {previous} {p:.4f} - "
                                                                f"tolerance {rc.gate_tolerance:g}"})
    failures = [c for c in checks if not c["ok"]]  # no held-out GAUC: 0 users, the users check fails
    decision = "disabled" if not rc.gate else "passed" if not failures else "refused"
    return {"metric": f"{task} {key}", "checks": checks, "failures": [c["check"] for c in failures],
            "decision": decision}


def refusal_message(evaluation: dict[str, Any], where: str) -> str:
    """The lines of a refusal: the failed checks, then the metric table."""
    gate = evaluation["gate"]
    failed = [c for c in gate["checks"] if c["check"] in gate["failures"]]
    lines = [f"{where}: the ranking model of {evaluation.get('run_date')} was refused by its gate: {len(failed)} of "
             f"{len(gate['checks'])} checks failed"]
    lines += [f"  {c['check']}: {c['detail']}" for c in failed]
    if evaluation.get("metrics"):
        lines.append(format_table(evaluation["metrics"]))
    return "\n".join(lines)


def evaluate_day(cfg: Config, run_date: date, files: list[str], models: dict) -> tuple[dict, int]:
    """(metrics of ``models`` on D's held-out rows, rows) -- {} and 0 without a held-out slice."""
    t = holdout_rows(files, run_date, cfg.ranking)
    if t is None:
        log.warning("train_ranking %s: no held-out rows (ranking.holdout_hours %g): nothing to evaluate", run_date,
                    cfg.ranking.holdout_hours)
        return {}, 0
    return evaluate_models(models, t, cfg.ranking.fusion_weights), t.num_rows
