"""The masked multi-task loss of the ranking model.

Per batch of B impressions with outputs ``out [B, 6]`` (raw, ``model.TASKS`` order), labels ``[B, 5]``
(click, like, collect, share, comment) and watch seconds ``[B]``; C = the clicked rows (click = 1):

    L_click = (1/B) sum_{all rows} BCE(out_click, click)                 -- unweighted, see below
    L_t     = (1/B) sum_{r in C} BCE(out_t, label_t)   t in like, collect, share, comment   -- p(t | click)
    L_watch = (1/B) sum_{r in C} (out_watch - y_r)^2 / (2 s^2),  y = log1p(watch_s)          -- E[log1p T | click]
    L = sum_t w_t L_t           (w_t = ranking.task_weights, default 1; a task with no clicked row adds 0)

**Per impression, not per click** (``ranking.conditional_loss: impressions``). L is the mean over the batch's
impressions of the joint negative log-likelihood of each impression's labels under the factorisation
p(click) prod_t p(t | click) (plus the watch regression): the conditional sums are divided by B, the rows.
Dividing them by |C| instead (a mean per clicked row, ``clicks``) multiplies the conditional tasks' weight by
B / |C| = 1 / click share of the batch (~2 on the synthetic samples, 1 / CTR ~ 20-50 on real traffic without
down-sampling): the few clicked rows, noisy per batch, then dominate the gradients of the shared embeddings
and experts. On the synthetic generator (click share ~0.45) the two give the same held-out metrics within
noise (docs/ranking.md); the choice is made for the real click shares.

**Watch time is a Gaussian log-likelihood, not a raw squared error.** Summing a BCE (a few tenths per row) and a
squared error in log seconds (variance ~4 on a mix of unwatched notes at 0 and videos at log1p ~5) lets the
regression own the shared experts: their outputs grow to fit it and the binary towers' ReLUs die. Measured on the
demo's samples (six days; held-out click AUC, oracle 0.64): 0.50 with the raw squared error -- 99% of the click
tower's units dead, its output constant -- and 0.62 with this term (both with the user x item match inputs).
The term is the Gaussian negative log-likelihood with s^2 = the variance of y over the batch's clicked rows
(detached, floored at 0.01; the constant log s dropped): 1/2 at the mean predictor whatever the unit of y, like
a BCE's scale, so no task weight has to undo a unit. Its minimiser, E[y | x], is the squared error's.

**Conditional tasks.** like / collect / share / comment / watch happen only after a click, so their towers
model p(t | click) on the clicked rows (masked), and serving uses p(t) = p(click) p(t | click). This is the
decomposition ESMM (Ma et al. 2018) writes into the network; we keep it in the loss instead because our
samples keep *every* clicked impression (only non-clicks are down-sampled), so the clicked rows are an
unbiased sample of the population the conditional towers are applied to -- after multiplying by p(click),
exactly the use ESMM's product makes of them -- and the click tower's alpha calibration stays a one-tower
affair. (ESMM's product trained on all rows would learn q(click) p(t | click) on the down-sampled rows and
need the same alpha correction through the product.)

**Down-sampling: the alpha formula, not sample weights.** Non-clicks are kept with probability alpha
(``neg_keep_rate``); the click tower is trained unweighted and converges to q = p / (p + alpha (1 - p)),
mapped back by :func:`recsys_batch.ranking.calibration.calibrate`. ``sample_weight`` (1 / alpha on negatives)
would give calibrated outputs directly, but multiplies the gradient variance of the negatives; using both
would correct twice. Clicked rows are never down-sampled, so the conditional tasks need neither.

**Watch time: regression on log1p seconds** (clicked rows), not YouTube 2016's weighted logistic regression.
WLR weights positives by watch time and reads E[T] off the odds, which is E[T] (1 + P) -- close to E[T] only
when the click probability P is small -- and its negatives are the non-clicks, whose down-sampling weight
would enter the odds; it also re-learns the click rate that has its own tower. log1p tames the heavy tail
(a 2-hour outlier does not dominate the squared error) and is independent of alpha.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recsys_batch.ranking.model import TASKS, WATCH


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ``mask``; 0 (still in the graph) when the mask is empty."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp_min(1.0)


#: floor of the watch-time variance s^2 (a batch whose clicked rows all watched the same time)
MIN_WATCH_VARIANCE = 0.01


def watch_variance(y: torch.Tensor, clicked: torch.Tensor) -> torch.Tensor:
    """s^2: variance (population) of ``y`` over the ``clicked`` rows, detached, >= MIN_WATCH_VARIANCE (1 without
    clicked rows: their terms are masked out anyway)."""
    y = y.detach()[clicked]
    if y.numel() == 0:
        return torch.ones((), dtype=y.dtype)
    return ((y - y.mean()) ** 2).mean().clamp_min(MIN_WATCH_VARIANCE)


def task_losses(out: torch.Tensor, labels: torch.Tensor, watch_s: torch.Tensor,
                per_impression: bool = True) -> torch.Tensor:
    """[T] per-task losses (see the module docstring). ``per_impression``: the conditional tasks' sums over the
    clicked rows are divided by the batch's rows (the joint likelihood per impression); else by its clicked
    rows (a mean per clicked row)."""
    clicked = labels[:, 0] > 0.5
    losses = [F.binary_cross_entropy_with_logits(out[:, 0], labels[:, 0])]
    cond = [F.binary_cross_entropy_with_logits(out[:, t], labels[:, t], reduction="none")
            for t in range(1, labels.shape[1])]
    y = torch.log1p(watch_s.clamp_min(0.0))
    cond.append((out[:, WATCH] - y) ** 2 / (2.0 * watch_variance(y, clicked)))
    for x in cond:
        if per_impression:
            losses.append((x * clicked.to(x.dtype)).sum() / max(int(labels.shape[0]), 1))
        else:
            losses.append(masked_mean(x, clicked))
    return torch.stack(losses)


def task_weight_vector(weights: dict[str, float]) -> torch.Tensor:
    return torch.tensor([float(weights.get(t, 1.0)) for t in TASKS])


def multitask_loss(out: torch.Tensor, labels: torch.Tensor, watch_s: torch.Tensor,
                   weights: torch.Tensor | None = None, per_impression: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(total, per-task [T]) with ``weights`` [T] (default 1 each)."""
    per = task_losses(out, labels, watch_s, per_impression)
    w = torch.ones_like(per) if weights is None else weights.to(per.dtype)
    return (w * per).sum(), per.detach()
