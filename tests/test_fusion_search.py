"""The merge's weight search (recsys_batch.recall.fusion_search): fused recall against a brute-force RRF, and
the coordinate ascent on planted channels. numpy only."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_batch.recall.fusion_search import FusedRecall, sample_from_rows, search_weights

CH = ["good", "noise", "fixed"]


def _brute(rows, truth, w, k, rrf_k=60.0):
    """recall@k of sum_c w_c / (rrf_k + rank), order score desc, item asc, mean over the truth's users."""
    out = []
    for u, t in sorted(truth.items()):
        score: dict[str, float] = {}
        for u2, i, c, r in rows:
            if u2 == u:
                score[i] = score.get(i, 0.0) + w[c] / (rrf_k + r)
        top = sorted(score, key=lambda i: (-score[i], i))[:k]
        out.append(len(set(top) & t) / len(t))
    return float(np.mean(out))


def _sample(rows, truth):
    users = sorted(truth)
    u, i, c, r = zip(*rows)
    return sample_from_rows(u, i, c, r, [x in truth.get(a, ()) for a, x in zip(u, i)], users,
                            [len(truth[x]) for x in users], CH)


def _random_lists(seed):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(7):
        for c in CH:
            for r, it in enumerate(rng.choice(30, size=10, replace=False), 1):
                rows.append((f"u{u}", f"i{it:02d}", c, r))
    truth = {f"u{u}": {f"i{x:02d}" for x in rng.choice(30, 5, replace=False)} for u in range(7)}
    return rows, truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fused_recall_equals_brute_force_rrf(seed):
    rows, truth = _random_lists(seed)
    f = FusedRecall(_sample(rows, truth), 60.0, [1, 3, 10])
    for w in ({"good": 1.0, "noise": 1.0, "fixed": 1.0}, {"good": 4.0, "noise": 0.0, "fixed": 0.25},
              {"good": 0.0, "noise": 0.0, "fixed": 0.0}):  # all zero: item_id order
        got = f.recall(np.array([w[c] for c in CH]))
        assert got == pytest.approx({k: _brute(rows, truth, w, k) for k in (1, 3, 10)}, abs=1e-12)


def test_search_drops_a_noise_channel_and_keeps_unsearched_weights():
    # per user: "good" ranks the user's two truth items 2 and 3 (behind a miss), "noise" ranks misses 1..3,
    # "fixed" one miss. Equal weights put the misses first; the search must weigh noise down.
    rows, truth = [], {}
    for u in range(5):
        truth[f"u{u}"] = {f"t{u}a", f"t{u}b"}
        rows += [(f"u{u}", f"m{u}", "good", 1), (f"u{u}", f"t{u}a", "good", 2), (f"u{u}", f"t{u}b", "good", 3),
                 (f"u{u}", f"n{u}x", "noise", 1), (f"u{u}", f"n{u}y", "noise", 2), (f"u{u}", f"m{u}", "noise", 3),
                 (f"u{u}", f"z{u}", "fixed", 1)]
    s = _sample(rows, truth)
    start = {"good": 1.0, "noise": 1.0, "fixed": 1.0}
    w, obj = search_weights(s, start, ["noise", "good"], 60.0, [3], [0.0, 0.5, 1.0, 2.0], rounds=2)
    assert w["fixed"] == 1.0  # not searched
    # start: m (1/61 + 1/63), then n_x and z tie at 1/61 (item_id) -> 0. noise at 0 leaves good's m, t_a, t_b
    # (1/61, 1/62, 1/63) against fixed's z (1/61; m < z by item_id): top 3 = m, z, t_a -> 1/2 (noise 0.5:
    # the same top 3, not better); good at 2 then puts both truth items above z: m, t_a, t_b -> 2/2
    assert w == {"good": 2.0, "noise": 0.0, "fixed": 1.0}
    assert obj["start"] == pytest.approx(_brute(rows, truth, start, 3))
    assert obj["searched"] == pytest.approx(_brute(rows, truth, w, 3)) == pytest.approx(1.0)
    assert obj["searched"] > obj["start"]


def test_search_keeps_the_start_on_ties():
    rows, truth = _random_lists(3)
    s = _sample(rows, truth)
    start = {"good": 1.0, "noise": 1.0, "fixed": 1.0}
    # k = 10 = every list's length: with one channel the weights cannot change which items reach the top k
    only = sample_from_rows(*zip(*[(u, i, c, r, i in truth[u]) for u, i, c, r in rows if c == "good"]),
                            sorted(truth), [len(truth[x]) for x in sorted(truth)], CH)
    w, obj = search_weights(only, start, CH, 60.0, [10], [0.0, 2.0], rounds=3)
    assert w == start and obj["start"] == obj["searched"]
    assert search_weights(s, start, [], 60.0, [3], [0.0], rounds=1)[0] == start
