"""Calibration of the click probability after negative down-sampling, and the fusion of the task scores.

**Calibration.** Non-clicked impressions were kept with probability alpha (``samples.negative_keep_rate``,
stored per row as ``neg_keep_rate``). A model trained on the kept rows predicts
q = p / (p + alpha (1 - p)), so

    p = alpha q / (1 - q + alpha q)                (:func:`calibrate`, the exact inverse of :func:`downsample`)

It is monotone in q: rankings and AUC are unchanged; probabilities, log loss and the fusion are not.

**Post-hoc calibration** (``ranking.calibration_hours``; :func:`fit_calibrator`, :func:`apply_calibrator`). The
alpha formula is exact for a model that predicts q well, but the trained model's reliability curve is not the
diagonal: on the synthetic generator the click logits of the true-p 0.047 / 0.269 / 0.731 rows come out at
mean p 0.10 / 0.28 / 0.60 with a within-cell spread of ~0.1 (docs/ranking.md) -- the crosses under-fitted and
noise from the id embeddings -- so the top deciles are under-predicted. Per binary task a monotone
piecewise-linear map g of the raw logit z, K segments with knots t_1 < ... < t_{K-1} at the quantiles of z on
the calibration rows, slopes s_k > 0 and an intercept c::

    g(z) = c + s_0 min(z, t_1) + sum_{k=1}^{K-1} s_k clamp(z - t_k, 0, t_{k+1} - t_k)       (t_K = +inf)

is fitted by (unweighted) log loss on the calibration rows: the last ``calibration_hours`` before the holdout
cut, never trained on (the gate's held-out rows stay untouched). Click is fitted on every calibration row, in
the down-sampled space the model was trained in (q' = sigmoid(g(z)), no sample weights), and the alpha formula
is applied after it: p_click = alpha q' / (1 - q' + alpha q'), i.e. logit p = g(z) + log alpha -- the same
family as a map fitted after the alpha correction (c absorbs log alpha), so sample weights never enter (the
alpha formula stays the one down-sampling correction). The conditional tasks are fitted on the clicked rows.
g is strictly increasing, so per-task rankings and AUC are unchanged. c = 0, s = 1 is the identity (a task
with too few positives / negatives on the calibration rows keeps it).

**Fusion.** Online serving ranks by one number (``ranking.fusion_weights`` w, published with the model)::

    score = p_click^w_click * prod_{t in like, collect, share, comment} (1 + p_t)^w_t * (1 + p_watch)^w_watch

with the unconditional p_t = p_click p(t | click) and p_watch = p_click max(0, predicted log1p watch seconds):
a (1 + x)^w factor rewards an engagement without letting a zero wipe the product out; w = 0 drops a task.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from recsys_batch.ranking.model import TASKS, WATCH

assert WATCH == 5 and len(TASKS) == 6  # task_probabilities indexes the columns literally


def calibrate(q: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """p = alpha q / (1 - q + alpha q); ``alpha`` a tensor or (eager) a float."""
    return alpha * q / (1.0 - q + alpha * q)


def downsample(p: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """q = p / (p + alpha (1 - p)): what a model trained on the down-sampled rows predicts."""
    return p / (p + alpha * (1.0 - p))


def task_probabilities(out: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """[B, 6] serving values from raw outputs: calibrated p_click, unconditional p_like .. p_comment
    (p_click p(t | click)), and p_watch = p_click max(0, log1p watch prediction)."""
    p_click = calibrate(torch.sigmoid(out[:, 0]), alpha)
    cond = torch.sigmoid(out[:, 1:5])  # like .. comment; column 5 = watch (TorchScript: no global constants)
    watch = out[:, 5].clamp_min(0.0)
    return torch.cat([p_click.unsqueeze(1), p_click.unsqueeze(1) * cond, (p_click * watch).unsqueeze(1)], 1)


def apply_calibrator(z: torch.Tensor, knots: torch.Tensor, slopes: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """g(z) per column (see the module docstring): ``z`` [B, T] raw logits, ``knots`` [T, K - 1] increasing,
    ``slopes`` [T, K], ``bias`` [T] -> [B, T] (TorchScript-able)."""
    width = torch.cat([knots[:, 1:] - knots[:, :-1], torch.full_like(knots[:, :1], float("inf"))], 1)
    seg = torch.minimum((z.unsqueeze(-1) - knots).clamp_min(0.0), width)  # [B, T, K - 1]
    return bias + slopes[:, 0] * torch.minimum(z, knots[:, 0]) + (seg * slopes[:, 1:]).sum(-1)


def identity_calibrator(tasks: int, segments: int) -> dict[str, torch.Tensor]:
    """c = 0, s = 1 (knots 0, 1, ..., K - 2: any increasing knots give the identity)."""
    return {"knots": torch.arange(segments - 1, dtype=torch.float32).repeat(tasks, 1),
            "slopes": torch.ones(tasks, segments), "bias": torch.zeros(tasks)}


def _fit_one(z: np.ndarray, y: np.ndarray, segments: int) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(knots, slopes, intercept) minimising the log loss of sigmoid(g(z)) on (z, y); None when the knots
    (quantiles of z) are not distinct."""
    from scipy.optimize import minimize  # the stage's fit only: serving / evaluation do not import scipy

    knots = np.quantile(z, np.linspace(0.0, 1.0, segments + 1)[1:-1])
    if segments > 1 and np.any(np.diff(knots) <= 1e-6):
        return None
    kt, slope0 = torch.from_numpy(knots[None, :]), 1e-3
    zt, yt = torch.from_numpy(z[:, None]), torch.from_numpy(y)

    def loss(th: np.ndarray) -> tuple[float, np.ndarray]:
        t = torch.from_numpy(th).requires_grad_(True)
        s = slope0 + torch.nn.functional.softplus(t[1:])  # slopes > 0: strictly increasing
        g = apply_calibrator(zt, kt, s[None, :], t[:1])[:, 0]
        v = torch.nn.functional.binary_cross_entropy_with_logits(g, yt)
        v.backward()
        return float(v.detach()), t.grad.numpy().copy()

    th0 = np.r_[0.0, np.full(segments, np.log(np.expm1(1.0 - slope0)))]  # the identity
    r = minimize(loss, th0, jac=True, method="L-BFGS-B")
    slopes = slope0 + np.log1p(np.exp(r.x[1:]))
    return knots, slopes, float(r.x[0])


def fit_calibrator(raw: np.ndarray, labels: np.ndarray, tasks: list[int], segments: int = 5,
                   min_class_rows: int = 50) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Per binary task t in ``tasks`` (0 = click on every row, 1..4 = p(t | click) on the rows with click = 1)
    the map g of the module docstring on ``raw`` [n, >= 5] logits and ``labels`` [n, 5]; the other tasks, and
    a task with fewer than ``min_class_rows`` positives or negatives, keep the identity. Returns the [5, ...]
    tensors and {task index: "fitted" | why not}."""
    cal = identity_calibrator(5, segments)
    status: dict[str, str] = {}
    clicked = labels[:, 0] > 0.5
    for t in tasks:
        rows = np.ones(len(labels), bool) if t == 0 else clicked
        z, y = raw[rows, t].astype(np.float64), (labels[rows, t] > 0.5).astype(np.float64)
        pos = int(y.sum())
        if min(pos, len(y) - pos) < min_class_rows:
            status[str(t)] = f"identity: {pos} positives / {len(y) - pos} negatives < {min_class_rows}"
            continue
        fit = _fit_one(z, y, segments)
        if fit is None:
            status[str(t)] = "identity: the logits' quantiles are not distinct"
            continue
        cal["knots"][t] = torch.from_numpy(fit[0]).float()
        cal["slopes"][t] = torch.from_numpy(fit[1]).float()
        cal["bias"][t] = fit[2]
        status[str(t)] = f"fitted on {len(y)} rows ({pos} positives)"
    return cal, status


def fusion_vector(weights: dict[str, float]) -> torch.Tensor:
    return torch.tensor([float(weights.get(t, 0.0)) for t in TASKS])


def fuse(probs: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """score = p_click^w0 * prod_{t >= 1} (1 + p_t)^w_t over [B, 6] ``probs`` (:func:`task_probabilities`)."""
    log_s = w[0] * torch.log(probs[:, 0].clamp_min(1e-12)) + (w[1:] * torch.log1p(probs[:, 1:])).sum(1)
    return torch.exp(log_s)


class CalibratedModel(nn.Module):
    """``model`` with :func:`apply_calibrator` on its first ``bias.shape[0]`` output columns (the binary tasks'
    logits; the watch column passes through): the stage's evaluation of today's / yesterday's model and the
    exported ``RankingServing`` score through it. The raw model is what is checkpointed and warm-started."""

    def __init__(self, model: nn.Module, cal: dict[str, torch.Tensor]):
        super().__init__()
        self.model = model
        self.register_buffer("knots", cal["knots"].float().clone())
        self.register_buffer("slopes", cal["slopes"].float().clone())
        self.register_buffer("bias", cal["bias"].float().clone())

    def forward(self, u_ids: torch.Tensor, u_cat: torch.Tensor, u_lists: torch.Tensor, u_dense: torch.Tensor,
                seq: torch.Tensor, i_ids: torch.Tensor, i_cat: torch.Tensor, i_lists: torch.Tensor,
                i_dense: torch.Tensor) -> torch.Tensor:
        out = self.model(u_ids, u_cat, u_lists, u_dense, seq, i_ids, i_cat, i_lists, i_dense)
        n = self.bias.shape[0]
        return torch.cat([apply_calibrator(out[:, :n], self.knots, self.slopes, self.bias), out[:, n:]], 1)


def calibrator_to_meta(cal: dict[str, torch.Tensor], status: dict[str, str] | None = None) -> dict[str, Any]:
    return {"knots": cal["knots"].tolist(), "slopes": cal["slopes"].tolist(), "bias": cal["bias"].tolist(),
            **({"status": status} if status is not None else {})}


def calibrator_from_meta(meta: dict[str, Any] | None) -> dict[str, torch.Tensor] | None:
    if not meta:
        return None
    return {k: torch.tensor(meta[k], dtype=torch.float32) for k in ("knots", "slopes", "bias")}
