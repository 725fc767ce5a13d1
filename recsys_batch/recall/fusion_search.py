"""RRF weights searched on a validation sample (``merge.learn_method: search``): pure numpy, no Spark.

The merge of D fuses the channels by score(u, i) = sum_c w_c / (k + rank_c(u, i)). With D - 1's channel lists
and D's positive events (what users did after those lists were built) the weights can be chosen for what
they do to the *fused* list, not channel by channel: coordinate ascent over a grid of values, one channel at a
time, keeping a change only when the mean of recall@K over ``ks`` of the fused list on the validation users
goes up (ties keep the current weight, so the result does not depend on float noise between equal
objectives). It starts from the recall-ratio weights (:func:`recsys_batch.recall.merge.learned_weights`), so
it can only do better than them on the validation sample.

Why: the ratio weights w_c = recall_c / max recall are nearly flat (0.5-1.0 on MovieLens-100K), while the
fused list is best with the strong channels weighted several times the weak ones. Measured with
``benchmarks/fusion.py --search`` (README "Merged list"), which runs this code: weights searched on one half
of the users and scored on the other gave R@50 0.407 / 0.400 against 0.386 / 0.379 for the ratio weights,
R@200 0.724 / 0.737 against 0.726 / 0.733.

Cost: the sample is at most ``merge.search_max_users`` users x sum of quotas rows (2,000 x ~1,000 = ~2M rows,
~100 MB of arrays on the driver); each evaluation is one matrix-vector product and one sort of the sample's
distinct (user, item) pairs, rounds x |searched channels| x |grid| evaluations (2 x 15 x 7 = 210; measured
0.43 s an evaluation on 2.2M rows, ~1.5 min at the cap on one core).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FusionSample:
    """A validation sample in integer codes. Per (user, item, channel) row of the channels' quota lists:
    ``user`` [R] (0..U-1), ``item`` [R] (codes in item_id order, the merge's tie-break), ``channel`` [R]
    (index into ``channels``), ``rank`` [R] (1-based, within the quota), ``hit`` [R] (the pair is a test
    pair); ``n_truth`` [U]: test pairs per user (> 0)."""

    channels: tuple[str, ...]
    user: np.ndarray
    item: np.ndarray
    channel: np.ndarray
    rank: np.ndarray
    hit: np.ndarray
    n_truth: np.ndarray


class FusedRecall:
    """recall@K of the RRF-fused list for weight vectors, on one :class:`FusionSample` (the pairs and their
    reciprocal ranks are built once)."""

    def __init__(self, s: FusionSample, rrf_k: float, ks: list[int]):
        n_items = int(s.item.max(initial=0)) + 1
        pairs, inv = np.unique(s.user.astype(np.int64) * n_items + s.item, return_inverse=True)
        self.pair_user = (pairs // n_items).astype(np.int64)
        self.pair_item = (pairs % n_items).astype(np.int64)
        self.rr = np.zeros((len(pairs), len(s.channels)))
        np.add.at(self.rr, (inv, s.channel), 1.0 / (rrf_k + s.rank))
        self.hit = np.zeros(len(pairs), bool)
        self.hit[inv[s.hit]] = True
        self.n_truth = s.n_truth.astype(np.float64)
        self.ks = sorted(ks)
        self._first = np.searchsorted(self.pair_user, np.arange(len(self.n_truth)))  # pairs sorted by user

    def recall(self, w: np.ndarray) -> dict[int, float]:
        """{k: mean over the sample's users of |fused top k & T_u| / |T_u|}; order score desc, item asc."""
        score = self.rr @ w
        # pairs are in (user, item) order: a stable sort on -score keeps item order among ties, then a stable
        # (radix) sort on user groups them -- the order of lexsort((item, -score, user)), ~3x faster
        by_score = np.argsort(-score, kind="stable")
        order = by_score[np.argsort(self.pair_user[by_score], kind="stable")]
        u = self.pair_user[order]
        pos = np.arange(len(order)) - self._first[u]
        hit = self.hit[order]
        out = {}
        for k in self.ks:
            h = np.bincount(u[hit & (pos < k)], minlength=len(self.n_truth))
            out[k] = float(np.mean(h / self.n_truth)) if len(self.n_truth) else 0.0
        return out

    def objective(self, w: np.ndarray) -> float:
        r = self.recall(w)
        return float(np.mean([r[k] for k in self.ks]))


def search_weights(sample: FusionSample, start: dict[str, float], searched: list[str], rrf_k: float,
                   ks: list[int], grid: list[float], rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """Coordinate ascent (module doc). ``start``: a weight per channel of the sample (its fixed value when
    not in ``searched``). Returns (weights, {"start": objective at ``start``, "searched": at the result}),
    the objective = mean recall@k over ``ks`` of the fused list on the sample."""
    f = FusedRecall(sample, rrf_k, ks)
    w = np.array([float(start[c]) for c in sample.channels])
    best = start_obj = f.objective(w)
    for _ in range(rounds):
        changed = False
        for c in searched:
            if c not in sample.channels:
                continue
            j = sample.channels.index(c)
            for v in grid:
                if v == w[j]:
                    continue
                trial = w.copy()
                trial[j] = v
                o = f.objective(trial)
                if o > best + 1e-12:
                    best, w, changed = o, trial, True
        if not changed:
            break
    return ({c: float(w[j]) for j, c in enumerate(sample.channels)},
            {"start": start_obj, "searched": best})


def sample_from_rows(user_ids, item_ids, channel_names, ranks, hits, truth_users, truth_counts,  # noqa: ANN001
                     channels: list[str]) -> FusionSample:
    """A :class:`FusionSample` from id columns (arrays of strings): the quota rows (user, item, channel,
    rank, hit) and the per-user test-pair counts (``truth_users``, ``truth_counts``). Rows of users without
    a count, or of channels not in ``channels``, are dropped; users without rows keep recall 0."""
    import pandas as pd  # noqa: PLC0415 - only the merge's search needs it

    u = pd.Categorical(np.asarray(user_ids, dtype=object), categories=list(truth_users)).codes
    c = pd.Categorical(np.asarray(channel_names, dtype=object), categories=list(channels)).codes
    keep = (u >= 0) & (c >= 0)
    icode, _ = pd.factorize(np.asarray(item_ids, dtype=object)[keep], sort=True)
    return FusionSample(channels=tuple(channels), user=u[keep].astype(np.int64), item=icode.astype(np.int64),
                        channel=c[keep].astype(np.int64), rank=np.asarray(ranks, np.float64)[keep],
                        hit=np.asarray(hits, bool)[keep], n_truth=np.asarray(truth_counts, np.float64))


__all__ = ["FusedRecall", "FusionSample", "sample_from_rows", "search_weights"]
