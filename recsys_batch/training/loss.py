"""Retrieval losses on a batch of sample rows (positives and stored easy / hard negatives, shuffled).

Notation: a batch holds P positive rows (user u_p, item v_p) and stored negative rows (item v_n, source
``easy`` or ``hard``); all vectors unit length, s(u, v) = <u, v> / temperature. Per row the samples stage
writes (:mod:`recsys_batch.samples.recall`, contract in :mod:`recsys_batch.training.data`):
``item_pos_freq`` pf(i) = the item's share of the positives, ``item_sampling_prob`` q(i) = the probability
that the easy-negative sampler draws item i (clicks^0.75; written for EVERY row by item, so also for
positives and hard negatives, 0 for items outside the distribution) and ``label_weight`` = the strength
of a positive (its strongest event's weight, click 1 ... share 4), 0 on negatives.

The sample shards are shuffled row by row (``recsys_batch.samples.shards``), so a negative rarely shares a
batch with its own positive. The stored negatives are therefore used as *shared* extra columns for every
user of the batch (mixed negative sampling, Yang et al. 2020) -- negatives for any user, except a user's
own positive item, which is masked.

``softmax`` (listwise, sampled softmax with the logQ correction, Bengio & Senecal 2008, Yi et al. 2019).
For user p the candidate columns are the batch's P positive items (column p is the target) and its E easy
negatives. As a multiset they are P draws from pf and E draws from q, so the expected number of copies of
item j among the columns is P pf(j) + E q(j), and the corrected logit is::

    logit[p, c] = s(u_p, v_c) - log Q(c),   Q(c) = (P pf(c) + E q(c)) / (P + E)

for EVERY column, in-batch and stored alike (the mixture / "balance heuristic" importance weight: one
estimate of the partition function over the union of both samples; it reduces to Yi et al.'s
s - log pf without stored negatives). The earlier version subtracted log pf from the in-batch columns
only, which pushed them up by -log pf (~7 for pf ~ 1e-3) while the stored ones kept raw logits: the
stored negatives ended up with ~0.2% of the softmax mass (81% without logQ), i.e. muted.

Hard negatives (items cut at pre-ranking / ranking for the positive's request) come from a
request-dependent proposal the samples stage does not record: their ``item_sampling_prob`` is q(item)
of the EASY sampler, which is not how they got into the batch. With no proposal probability there is
no correct -log Q for them, and any guess (q of the easy sampler, or none) shifts their share of the
softmax arbitrarily. So with ``logq_correction`` on they are **excluded** from the softmax (they still
train the ``pairwise`` and ``bce`` losses, which need no proposal); with it off every stored negative
is a raw column, as before. A column whose Q is 0 (no proposal mass: a contract violation upstream) is
excluded the same way. Masked (-inf): another user's positive of the SAME item as p's positive, and a
stored negative equal to p's positive item ("accidental hits"). loss = mean_p cross-entropy(logit[p], p).

``bce`` (pointwise): mean over rows of w_r * BCE(s(u_r, v_r), label_r) with w_r = label_weight_r on
positives (engagement strength) and 1 on negatives. label_weight is 0 on negatives by the samples
contract, so using it as the weight of every row (the earlier version) gave negatives no gradient at
all. No logQ: with negatives ~ q, the optimum is s ~ log(p(i | u) / q(i)) (a popularity-discounted,
PMI-like score) -- use ``softmax`` for retrieval by s.

``pairwise``: every (positive p, stored negative n) pair of the batch, pairs with the same item left out:
``hinge`` mean max(0, margin - (cos(u_p, v_p) - cos(u_p, v_n))) or ``log`` mean softplus(-(s+ - s-) +
margin / temperature). Easy and hard negatives alike, no correction.

Cost: O(P x (P + N) x d) for softmax and pairwise, O((P + N) x d) for bce.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-12

#: ``batch["source"]`` codes (:class:`recsys_batch.training.data.SampleStream`)
POSITIVE, EASY, HARD = 0, 1, 2


def softmax_logits(u: torch.Tensor, v_cols: torch.Tensor, temperature: float, log_q: torch.Tensor | None = None,
                   pos_item_ids: torch.Tensor | None = None, col_item_ids: torch.Tensor | None = None) -> torch.Tensor:
    """[P, C] logits s(u_p, v_c) - log_q[c]; the first P columns are the users' own positives (row p's
    label is column p). A column c != p with the item of p's positive is masked (-inf)."""
    logits = u @ v_cols.T / temperature
    if log_q is not None:
        logits = logits - log_q.unsqueeze(0)
    if pos_item_ids is not None and col_item_ids is not None:
        same = pos_item_ids.unsqueeze(1) == col_item_ids.unsqueeze(0)
        same[:, : u.shape[0]].fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    return logits


def sampled_softmax_loss(u: torch.Tensor, v_cols: torch.Tensor, temperature: float, log_q: torch.Tensor | None = None,
                         pos_item_ids: torch.Tensor | None = None, col_item_ids: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """Mean cross-entropy of :func:`softmax_logits` with target column p for row p."""
    logits = softmax_logits(u, v_cols, temperature, log_q, pos_item_ids, col_item_ids)
    return F.cross_entropy(logits, torch.arange(u.shape[0], device=u.device))


def mixture_q(pos_freq: torch.Tensor, sampling_prob: torch.Tensor, n_pos: int, n_easy: int) -> torch.Tensor:
    """Q(c) = (P pf(c) + E q(c)) / (P + E): the proposal probability of a column drawn from P in-batch
    positives (~ item_pos_freq) and E easy negatives (~ item_sampling_prob)."""
    n = max(n_pos + n_easy, 1)
    return (n_pos * pos_freq + n_easy * sampling_prob) / n


def bce_row_weights(labels: torch.Tensor, label_weight: torch.Tensor) -> torch.Tensor:
    """label_weight on positives (engagement strength), 1 on negatives (their label_weight is 0)."""
    return torch.where(labels > 0.5, label_weight, torch.ones_like(label_weight))


def bce_loss(u_rows: torch.Tensor, v_rows: torch.Tensor, labels: torch.Tensor, temperature: float,
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """mean_r weights_r * BCE(s(u_r, v_r), label_r); pass :func:`bce_row_weights`."""
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


def softmax_columns(batch: dict, tc) -> tuple[torch.Tensor, torch.Tensor | None]:  # noqa: ANN001 - TrainConfig
    """(row indices of the softmax columns: positives first, then the stored negatives used; their log Q
    or None) for ``tc`` (see the module docstring)."""
    label, source = batch["label"], batch["source"]
    pos = torch.nonzero(label > 0.5, as_tuple=False).squeeze(1)
    neg = label <= 0.5
    if not tc.stored_negatives:
        stored = torch.nonzero(torch.zeros_like(neg), as_tuple=False).squeeze(1)
    elif tc.logq_correction:  # hard negatives have no proposal probability; easy ones without q neither
        stored = torch.nonzero(neg & (source == EASY) & (batch["samp_prob"] > 0), as_tuple=False).squeeze(1)
    else:
        stored = torch.nonzero(neg, as_tuple=False).squeeze(1)
    cols = torch.cat([pos, stored])
    if not tc.logq_correction:
        return cols, None
    q = mixture_q(batch["pos_freq"][cols], batch["samp_prob"][cols], len(pos), len(stored))
    return cols, torch.log(q.clamp(min=_EPS))


def batch_loss(model, batch: dict, tc) -> torch.Tensor:  # noqa: ANN001 - TwoTower (or DDP), TrainConfig
    """The configured loss of one batch of :class:`recsys_batch.training.data.SampleStream`.

    ``batch["user"]`` holds the user inputs of the rows ``batch["user_rows"]`` (the positives for
    softmax / pairwise, every row for bce); ``batch["item"]`` those of every row.
    """
    u, v = model(batch["user"], batch["item"])
    label, ids = batch["label"], batch["item"]["ids"]
    if tc.loss == "bce":
        return bce_loss(u, v, label, tc.temperature, bce_row_weights(label, batch["weight"]))
    pos = torch.nonzero(label > 0.5, as_tuple=False).squeeze(1)
    if tc.loss == "pairwise":
        neg = torch.nonzero(label <= 0.5, as_tuple=False).squeeze(1)
        return pairwise_loss(u, v[pos], v[neg], tc.temperature, tc.pairwise_kind, tc.margin, ids[pos], ids[neg])
    cols, log_q = softmax_columns(batch, tc)
    return sampled_softmax_loss(u, v[cols], tc.temperature, log_q, ids[pos], ids[cols])
