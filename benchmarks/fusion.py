"""Offline comparison of fusions of one warehouse date's published channel lists (pandas, no JVM).

    .venv/bin/python benchmarks/fusion.py --warehouse W --date D --truth PARQUET_DIR [--search]

Reads every ``recall_<channel>`` table of dt=D (delta-rs), the truth pairs (a Parquet folder with user_id,
item_id, e.g. the MovieLens import's ``holdout``) minus D's ``user_item_matrix`` -- the published
evaluation's test pairs -- and prints Recall@K for each channel and for RRF fusions with the default quotas
of ``merge.quotas`` (no exposure filter: on the MovieLens import it holds 22 users). The users are split
into two random halves (seed 0); "learned" weights are measured on one half and scored on the other,
as the merge stage learns them on D-1's lists and applies them to D's:

* ``RRF w=1``: plain RRF (the fallback of ``merge.learn_weights``);
* ``RRF w=old hand-set``: the weights the merge used before (picked on MovieLens);
* ``RRF w=recall@100/best``: :func:`recsys_batch.recall.merge.learned_weights` from the other half;
* ``--search``: the merge's own search (``merge.learn_method: search``,
  :func:`recsys_batch.recall.fusion_search.search_weights`): from the ratio weights, per-channel weights in
  ``merge.search_grid`` by coordinate ascent (``merge.search_rounds``) on the mean Recall@``merge.search_ks``
  of the fused list on the other half;
* ``--learned-ceiling``: a LightGBM scorer (binary log loss, and LambdaRank) over the whole union of the
  channel lists (no quotas), fitted on one half's held-out truth and scored on the other half. Features per
  (user, item): per channel 1 / (60 + rank) and log rank (absent: rank 1,000) and score / the user's best score
  in that channel, the number of channels, log item popularity and log user activity in the matrix. Labels
  from the truth itself, of the same users' distribution: an upper bound of any learned fusion (a pre-ranker
  over the union) of these lists, which a daily pipeline would fit on D - 1's lists and D's positives.
  Needs ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

from recsys_batch.config import DEFAULT_MERGE_QUOTAS, MergeConfig, WarehouseConfig
from recsys_batch.io.delta_read import read_partition
from recsys_batch.recall.fusion_search import sample_from_rows, search_weights
from recsys_batch.recall.merge import learned_weights

KS = (20, 50, 100, 200, 500)
CHANNELS = tuple(DEFAULT_MERGE_QUOTAS)  # every channel the merge knows, in its snake order


def load(wh: WarehouseConfig, d: str) -> pd.DataFrame:
    frames = []
    for c in CHANNELS:
        try:
            t = read_partition(wh, f"recall_{c}", d, columns=["user_id", "item_id", "score", "rank"]).to_pandas()
        except Exception:  # noqa: BLE001 - no table
            continue
        if len(t):
            frames.append(t.assign(ch=c))
    lists = pd.concat(frames, ignore_index=True)
    lists["rank"] = lists.groupby(["user_id", "ch"])["rank"].rank(method="first").astype(int)
    return lists


def rrf(lists: pd.DataFrame, quotas: dict[str, int], weights: dict[str, float], k: float = 60.0,
        top_n: int = 500) -> pd.DataFrame:
    q = lists[lists["rank"] <= lists.ch.map(quotas).fillna(0)]
    s = q.ch.map(weights).fillna(1.0) / (k + q["rank"])
    f = q.assign(s=s).groupby(["user_id", "item_id"], as_index=False)["s"].sum()
    f = f.sort_values(["user_id", "s", "item_id"], ascending=[True, False, True])
    f["rank"] = f.groupby("user_id").cumcount() + 1
    return f[f["rank"] <= top_n]


def union_features(lists: pd.DataFrame, chans: list[str], matrix: pd.DataFrame, pairs: set) -> pd.DataFrame:
    """One row per (user, item) of the union of the lists: the features of ``--learned-ceiling`` and y."""
    rank = lists.pivot_table(index=["user_id", "item_id"], columns="ch", values="rank", aggfunc="min")
    best = lists.groupby(["user_id", "ch"])["score"].transform("max")
    norm = lists.assign(s=lists["score"] / best.where(best != 0, 1.0)).pivot_table(
        index=["user_id", "item_id"], columns="ch", values="s", aggfunc="max")
    x = pd.DataFrame(index=rank.index)
    for c in chans:
        x[f"rr_{c}"] = (1.0 / (60.0 + rank[c])).fillna(0.0)
        x[f"logrank_{c}"] = np.log(rank[c]).fillna(np.log(1000.0))
        x[f"norm_{c}"] = norm[c].fillna(0.0)
    x["channels"] = rank.notna().sum(axis=1)
    x = x.reset_index()
    x["item_pop"] = np.log1p(x.item_id.map(matrix.groupby("item_id").size()).fillna(0.0))
    x["user_act"] = np.log1p(x.user_id.map(matrix.groupby("user_id").size()).fillna(0.0))
    x["y"] = [float((u, i) in pairs) for u, i in zip(x.user_id, x.item_id)]
    return x


def learned_ceiling(lists: pd.DataFrame, chans: list[str], matrix: pd.DataFrame, pairs: set,
                    fit_users: set) -> list[tuple[str, pd.DataFrame]]:
    import lightgbm as lgb  # noqa: PLC0415 - bench extra

    x = union_features(lists, chans, matrix, pairs)
    feats = [c for c in x.columns if c not in ("user_id", "item_id", "y")]
    train = x[x.user_id.isin(fit_users)].sort_values("user_id")
    out = []
    for objective in ("binary", "lambdarank"):
        group = train.groupby("user_id", sort=True).size().to_numpy() if objective == "lambdarank" else None
        params = {"objective": objective, "learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 50,
                  "seed": 0, "deterministic": True, "num_threads": 2, "verbose": -1}
        model = lgb.train(params, lgb.Dataset(train[feats], train["y"], group=group), num_boost_round=300)
        f = x[["user_id", "item_id"]].assign(s=model.predict(x[feats]))
        f = f.sort_values(["user_id", "s", "item_id"], ascending=[True, False, True])
        f["rank"] = f.groupby("user_id").cumcount() + 1
        out.append((f"LightGBM {objective} over the union (ceiling)", f[f["rank"] <= max(KS)]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--warehouse", required=True)
    p.add_argument("--date", required=True)
    p.add_argument("--truth", required=True, help="Parquet folder with user_id, item_id")
    p.add_argument("--search", action="store_true")
    p.add_argument("--learned-ceiling", action="store_true")
    a = p.parse_args(argv)
    wh = WarehouseConfig(root=a.warehouse, raw_root=a.warehouse + "/raw")
    lists = load(wh, a.date)
    chans = [c for c in CHANNELS if c in set(lists.ch)]
    matrix = read_partition(wh, "user_item_matrix", a.date, columns=["user_id", "item_id"]).to_pandas()
    truth = pd.read_parquet(a.truth)[["user_id", "item_id"]].drop_duplicates()
    test = truth.merge(matrix.assign(_m=1), how="left", on=["user_id", "item_id"])
    test = test[test._m.isna()]
    n_test = test.groupby("user_id").size()
    pairs = set(zip(test.user_id, test.item_id))
    users = np.array(sorted(n_test.index))
    np.random.default_rng(0).shuffle(users)
    halves = [set(users[: len(users) // 2]), set(users[len(users) // 2:])]

    def recall(ranked: pd.DataFrame, users: set, ks=KS) -> dict[int, float]:
        f = ranked[ranked.user_id.isin(users)]
        n = n_test[n_test.index.isin(users)]
        h = f[[(u, i) in pairs for u, i in zip(f.user_id, f.item_id)]]
        return {k: float((h[h["rank"] <= k].groupby("user_id").size() / n).reindex(n.index).fillna(0).mean())
                for k in ks}

    cfg = MergeConfig(learn_min_users=1)
    quotas = cfg.quotas
    print(f"{len(n_test)} test users; channels {', '.join(chans)}; quotas {quotas}; rrf_k {cfg.rrf_k}")
    print(f"{'list':46s} {'users':>6s} " + " ".join(f"{'R@' + str(k):>7s}" for k in KS))
    for fit, ev in ((0, 1), (1, 0)):
        rows = [(c, lists[lists.ch == c]) for c in chans]
        val = {c: (len(halves[fit]), recall(lists[lists.ch == c], halves[fit], (100,))[100]) for c in chans}
        learned, _ = learned_weights(val, cfg)
        rows += [("RRF w=1", rrf(lists, quotas, {})),
                 ("RRF w=old hand-set (popular .3, swing .5)", rrf(lists, quotas, {"popular": 0.3, "swing": 0.5})),
                 ("RRF w=recall@100/best", rrf(lists, quotas, learned))]
        if a.search:  # the merge's own search (merge.learn_method: search), from the ratio weights
            q = lists[(lists["rank"] <= lists.ch.map(quotas).fillna(0)) & lists.user_id.isin(halves[fit])]
            fit_users = sorted(halves[fit])
            sample = sample_from_rows(q.user_id.to_numpy(), q.item_id.to_numpy(), q.ch.to_numpy(),
                                      q["rank"].to_numpy(), [(u, i) in pairs for u, i in zip(q.user_id, q.item_id)],
                                      fit_users, n_test.reindex(fit_users).to_numpy(), chans)
            w, obj = search_weights(sample, {c: learned[c] for c in chans}, chans, cfg.rrf_k, cfg.search_ks,
                                    cfg.search_grid, cfg.search_rounds)
            rows.append(("RRF w=searched (merge.learn_method search)", rrf(lists, quotas, w)))
            print(f"searched on half {fit}: {w} (mean R@{cfg.search_ks} on that half {obj['start']:.4f} -> "
                  f"{obj['searched']:.4f})")
        if a.learned_ceiling:
            rows.append(("RRF w=1 over the union (no quotas)", rrf(lists, {c: 10**6 for c in chans}, {})))
            rows += learned_ceiling(lists, chans, matrix, pairs, halves[fit])
        print(f"weights learned on half {fit}: " + ", ".join(f"{c} {learned[c]:.3f}" for c in chans))
        for name, ranked in rows:
            r = recall(ranked, halves[ev])
            print(f"{name:46s} {len(halves[ev]):6d} " + " ".join(f"{r[k]:7.4f}" for k in KS), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
