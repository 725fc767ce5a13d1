"""Offline metrics of the ranking model (numpy; O(n log n) each).

* ``auc``: P(score of a random positive > that of a random negative), ties counting 1/2 (Mann-Whitney U with
  average ranks). Uniform down-sampling of the negatives leaves it unbiased, so it is computed on the rows as
  sampled.
* ``gauc``: sum_u n_u AUC_u / sum_u n_u over the users with at least one positive and one negative row,
  n_u = the user's impressions (rows) -- Zhou et al. 2018 (DIN) / Zhu et al. 2017; users with one class are
  left out (their AUC is undefined). Returns the number of users counted as well.
* ``logloss``: - sum_r w_r [y log p + (1 - y) log(1 - p)] / sum_r w_r, p clipped to [1e-7, 1 - 1e-7].
* ``calibration``: rows sorted by p and cut into ``bins`` groups of (nearly) equal count (deciles); per bin
  the (weighted) mean prediction and observed rate; ECE = sum_b (W_b / W) |pred_b - obs_b|.
* ``ndcg``: per group (user) with a positive gain, DCG = sum_i g_i / log2(1 + rank_i) with the rows ranked
  by score (ties by row order), divided by the DCG of the gains sorted; averaged over those groups.

Weights: with click rows down-sampled at keep rate alpha, the click log loss and calibration of calibrated
probabilities use w = ``sample_weight`` (1 on clicks, 1 / alpha on kept non-clicks): the re-weighted rows
stand for every impression, so "observed" is the true click rate and a calibrated model matches it.
"""

from __future__ import annotations

import numpy as np


def _ranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks, ties averaged."""
    order = np.argsort(s, kind="mergesort")
    ss = s[order]
    ranks = np.empty(len(s), np.float64)
    bounds = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    return ranks


def auc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney AUC; NaN when one class is missing."""
    y = np.asarray(y) > 0.5
    s = np.asarray(s, np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _ranks(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def gauc(groups: np.ndarray, y: np.ndarray, s: np.ndarray) -> tuple[float, int]:
    """(impression-weighted mean of per-group AUC over groups with both classes, number of such groups)."""
    groups = np.asarray(groups)
    y, s = np.asarray(y), np.asarray(s, np.float64)
    order = np.argsort(groups, kind="mergesort")
    g = groups[order]
    bounds = np.flatnonzero(np.r_[True, g[1:] != g[:-1], True])
    num = den = 0.0
    n = 0
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        idx = order[a:b]
        yy = y[idx] > 0.5
        if yy.all() or not yy.any():
            continue
        num += (b - a) * auc(yy, s[idx])
        den += b - a
        n += 1
    return (num / den if den else float("nan")), n


def logloss(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> float:
    y = np.asarray(y, np.float64)
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    w = np.ones_like(y) if w is None else np.asarray(w, np.float64)
    if w.sum() == 0:
        return float("nan")
    return float(-(w * (y * np.log(p) + (1 - y) * np.log(1 - p))).sum() / w.sum())


def calibration(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None, bins: int = 10
                ) -> tuple[list[dict], float]:
    """([{bin, rows, predicted, observed}], ECE) over equal-count bins of p."""
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    w = np.ones_like(y) if w is None else np.asarray(w, np.float64)
    if len(y) == 0 or w.sum() == 0:
        return [], float("nan")
    order = np.argsort(p, kind="mergesort")
    table, ece = [], 0.0
    for k, idx in enumerate(np.array_split(order, min(bins, len(order)))):
        if not len(idx):
            continue
        ww = w[idx]
        pred, obs = float((ww * p[idx]).sum() / ww.sum()), float((ww * y[idx]).sum() / ww.sum())
        table.append({"bin": k, "rows": int(len(idx)), "predicted": pred, "observed": obs})
        ece += ww.sum() / w.sum() * abs(pred - obs)
    return table, float(ece)


def ndcg(groups: np.ndarray, gain: np.ndarray, score: np.ndarray, k: int | None = None) -> tuple[float, int]:
    """(mean NDCG@k over groups with a positive gain, number of such groups); k None = the whole group."""
    groups = np.asarray(groups)
    gain, score = np.asarray(gain, np.float64), np.asarray(score, np.float64)
    order = np.argsort(groups, kind="mergesort")
    g = groups[order]
    bounds = np.flatnonzero(np.r_[True, g[1:] != g[:-1], True])
    vals = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        idx = order[a:b]
        gg = gain[idx]
        if gg.sum() <= 0:
            continue
        kk = len(idx) if k is None else min(k, len(idx))
        disc = 1.0 / np.log2(np.arange(2, kk + 2))
        ranked = gg[np.argsort(-score[idx], kind="mergesort")][:kk]
        ideal = np.sort(gg)[::-1][:kk]
        vals.append(float((ranked * disc).sum() / (ideal * disc).sum()))
    return (float(np.mean(vals)) if vals else float("nan")), len(vals)
