"""Retrieval losses on a batch of sample groups (one positive + its stored negatives per group).

Notation: a batch holds P positive rows (user u_p, item v_p) and N stored easy/hard negative rows (item
v_n); all vectors unit length, s(u, v) = <u, v> / temperature.

The sample shards are shuffled row by row (``recsys_batch.samples.shards``), so a negative rarely shares a
batch with its own positive. The stored negatives are therefore used as *shared* extra columns for every
user of the batch (mixed negative sampling, Yang et al. 2020): easy negatives are popularity samples
of the catalog, hard ones items some user was shown and skipped -- negatives for any user, except a
user's own positive item, which is masked.

* ``softmax`` (listwise, Yi et al. 2019 "Sampling-bias-corrected neural modeling"): for each p,
  logits over the batch's positive items corrected by the log sampling probability,
  s(u_p, v_q) - log p_q (p_q = item_pos_freq), plus the stored negatives s(u_p, v_n) (uncorrected: they
  come from another proposal, and hard negatives have no sampling probability); other users' positives
  of the SAME item and stored negatives equal to p's positive item are masked; loss = cross-entropy with
  target column p.
* ``bce`` (pointwise): binary cross-entropy of s(u_r, v_r) per row against the label, weighted by label_weight.
* ``pairwise``: every (positive, stored negative) pair of the batch: ``hinge`` mean max(0, margin -
  (cos(u_p, v_p) - cos(u_p, v_n))) or ``log`` mean softplus(-(s+ - s-) + margin / temperature).
Cost: O(P x (P + N) x d) for softmax and pairwise, O((P + N) x d) for bce.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-12


def softmax_logits(u: torch.Tensor, v_pos: torch.Tensor, temperature: float, log_q: torch.Tensor | None = None,
                   pos_item_ids: torch.Tensor | None = None, v_neg: torch.Tensor | None = None,
                   neg_item_ids: torch.Tensor | None = None) -> torch.Tensor:
    """[P, P + N] logits of the in-batch sampled softmax; the label of row p is column p."""
    logits = u @ v_pos.T / temperature
    if log_q is not None:
        logits = logits - log_q.unsqueeze(0)
    if pos_item_ids is not None:
        same = pos_item_ids.unsqueeze(0) == pos_item_ids.unsqueeze(1)
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    if v_neg is not None and v_neg.shape[0] > 0:
        nl = u @ v_neg.T / temperature
        if pos_item_ids is not None and neg_item_ids is not None:
            nl = nl.masked_fill(pos_item_ids.unsqueeze(1) == neg_item_ids.unsqueeze(0), float("-inf"))
        logits = torch.cat([logits, nl], dim=1)
    return logits


def sampled_softmax_loss(u: torch.Tensor, v_pos: torch.Tensor, temperature: float, log_q: torch.Tensor | None = None,
                         pos_item_ids: torch.Tensor | None = None, v_neg: torch.Tensor | None = None,
                         neg_item_ids: torch.Tensor | None = None) -> torch.Tensor:
    logits = softmax_logits(u, v_pos, temperature, log_q, pos_item_ids, v_neg, neg_item_ids)
    return F.cross_entropy(logits, torch.arange(u.shape[0], device=u.device))


def bce_loss(u_rows: torch.Tensor, v_rows: torch.Tensor, labels: torch.Tensor, temperature: float,
             weights: torch.Tensor | None = None) -> torch.Tensor:
    logits = (u_rows * v_rows).sum(1) / temperature
    return F.binary_cross_entropy_with_logits(logits, labels, weight=weights)


def pairwise_loss(u: torch.Tensor, v_pos: torch.Tensor, v_neg: torch.Tensor, temperature: float,
                  kind: str = "log", margin: float = 0.1, pos_item_ids: torch.Tensor | None = None,
                  neg_item_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the (positive p, stored negative n) pairs of the batch, pairs with the same item left out."""
    if v_neg.shape[0] == 0 or u.shape[0] == 0:
        return u.sum() * 0.0 + v_neg.sum() * 0.0
    d = (u * v_pos).sum(1, keepdim=True) - u @ v_neg.T  # [P, N] cos+ - cos-
    valid = torch.ones_like(d, dtype=torch.bool)
    if pos_item_ids is not None and neg_item_ids is not None:
        valid = pos_item_ids.unsqueeze(1) != neg_item_ids.unsqueeze(0)
    per = F.relu(margin - d) if kind == "hinge" else F.softplus(-(d - margin) / temperature)
    return (per * valid).sum() / valid.sum().clamp_min(1)


def log_q_of(item_pos_freq: torch.Tensor) -> torch.Tensor:
    """log p_j, with p_j clipped to (0, 1] (a missing / zero frequency counts as the smallest one)."""
    return torch.log(item_pos_freq.clamp(min=_EPS, max=1.0))


def batch_loss(model, batch: dict, tc) -> torch.Tensor:  # noqa: ANN001 - TwoTower (or DDP), TrainConfig
    """The configured loss of one batch of :class:`recsys_batch.training.data.SampleStream`.

    ``batch["user"]`` holds the user inputs of the rows ``batch["user_rows"]`` (the positives for
    softmax / pairwise, every row for bce); ``batch["item"]`` those of every row.
    """
    u, v = model(batch["user"], batch["item"])
    label, ids = batch["label"], batch["item"]["ids"]
    if tc.loss == "bce":
        return bce_loss(u, v, label, tc.temperature, batch["weight"])
    pos = torch.nonzero(label > 0.5, as_tuple=False).squeeze(1)
    neg = torch.nonzero(label <= 0.5, as_tuple=False).squeeze(1)
    if tc.loss == "pairwise":
        return pairwise_loss(u, v[pos], v[neg], tc.temperature, tc.pairwise_kind, tc.margin, ids[pos], ids[neg])
    lq = log_q_of(batch["pos_freq"][pos]) if tc.logq_correction else None
    if tc.stored_negatives:
        return sampled_softmax_loss(u, v[pos], tc.temperature, lq, ids[pos], v[neg], ids[neg])
    return sampled_softmax_loss(u, v[pos], tc.temperature, lq, ids[pos])
