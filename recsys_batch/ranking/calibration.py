"""Calibration of the click probability after negative down-sampling, and the fusion of the task scores.

**Calibration.** Non-clicked impressions were kept with probability alpha (``samples.negative_keep_rate``,
stored per row as ``neg_keep_rate``). A model trained on the kept rows predicts
q = p / (p + alpha (1 - p)), so

    p = alpha q / (1 - q + alpha q)                (:func:`calibrate`, the exact inverse of :func:`downsample`)

It is monotone in q: rankings and AUC are unchanged; probabilities, log loss and the fusion are not.

**Fusion.** Online serving ranks by one number (``ranking.fusion_weights`` w, published with the model)::

    score = p_click^w_click * prod_{t in like, collect, share, comment} (1 + p_t)^w_t * (1 + p_watch)^w_watch

with the unconditional p_t = p_click p(t | click) and p_watch = p_click max(0, predicted log1p watch seconds):
a (1 + x)^w factor rewards an engagement without letting a zero wipe the product out; w = 0 drops a task.
"""

from __future__ import annotations

import torch

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


def fusion_vector(weights: dict[str, float]) -> torch.Tensor:
    return torch.tensor([float(weights.get(t, 0.0)) for t in TASKS])


def fuse(probs: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """score = p_click^w0 * prod_{t >= 1} (1 + p_t)^w_t over [B, 6] ``probs`` (:func:`task_probabilities`)."""
    log_s = w[0] * torch.log(probs[:, 0].clamp_min(1e-12)) + (w[1:] * torch.log1p(probs[:, 1:])).sum(1)
    return torch.exp(log_s)
