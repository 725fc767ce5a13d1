"""Synthetic ranking samples with planted per-task preferences, in the samples stage's ``samples_ranking``
layout (tests, benchmarks). Users / items / clusters / features are the two-tower's synthetic
:class:`~recsys_batch.training.synthetic.World`; impressions per user-day ~ Poisson, half from the user's own
cluster. Planted (logits; c = item cluster == user cluster, f = gender is f, e = item category index even,
h = the item's ``clicks_7d`` >= 7, ~60 % of impressions: the feature's bucket boundary):

    click              -2.0 + 2.0 c + 1.0 (f == e) - 1.0 (f != e)         (a gender x category cross)
    like | click       -1.0 + 2.0 ((age > 40) == (tag % 3 == 0)) - 1.0 (age <= 40)
    collect | click    -2.0 + 1.0 is_new + 2.0 ((age <= 40) == h)         (young users collect popular items,
                                                                           older ones niche items)
    share | click      -2.5 + 2.5 c
    comment | click    -2.5 + 2.0 ((author % 2 == 0) == f)

Every task's ranking needs an interaction: no logistic regression on the features (main effects) orders the
rows as the planted probabilities do -- the ``==`` cells are XORs. (An AND such as (author even) & f, the
first version of comment and like, is not: a linear score ranks the one high cell first and the three equal
ones in any order, which is the Bayes ranking, so LR can reach the ceiling there; collect on is_new alone was
a main effect.) like and collect keep a main effect LR can fit in part.
    log watch seconds  N(2.5 + 1.0 c, 0.5) when clicked, else 0

Non-clicks are kept with probability alpha (``neg_keep_rate``) and get sample_weight 1 / alpha, as
:mod:`recsys_batch.samples.ranking` writes them; ``lastn_items`` = the user's clicked items before the row's
ts, newest first.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from recsys_batch.training.columns import C
from recsys_batch.training.synthetic import World, item_clicks_7d, make_spec, with_feature_columns, write_shards


def _sig(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def true_probabilities(w: World, users: np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
    """The planted probabilities (click; the others conditional on a click) and the watch mean."""
    rng = np.random.default_rng(w.seed + 1)  # the same draws as _user_cols
    gender = np.where(rng.random(w.n_users) < 0.5, "f", "m")[users]
    age = rng.integers(16, 70, w.n_users)[users]
    is_new = (users % 7) == 0
    c = w.user_cluster[users] == w.item_cluster[items]
    f = gender == "f"
    e = (w.category[items] % 2) == 0
    tag0 = (items % 3) == 0
    author_even = ((items * 7 + w.item_cluster[items]) % 50) % 2 == 0
    hot = item_clicks_7d(w)[items] >= 7
    return {"click": _sig(-2.0 + 2.0 * c + np.where(f == e, 1.0, -1.0)),
            "like": _sig(-1.0 + 2.0 * ((age > 40) == tag0) - 1.0 * (age <= 40)),
            "collect": _sig(-2.0 + 1.0 * is_new + 2.0 * ((age <= 40) == hot)), "share": _sig(-2.5 + 2.5 * c),
            "comment": _sig(-2.5 + 2.0 * (author_even == f)), "watch_mu": 2.5 + 1.0 * c}


def make_ranking_samples(w: World, run_date: date, impressions_per_user: float = 20.0, alpha: float = 0.5,
                         seed: int = 0, lastn: int = 20, extra_numeric: int = 0, features_dt: str | None = None
                         ) -> pa.Table:
    """Ranking sample rows of one day (see the module docstring); appends the day's clicks to the histories."""
    rng = np.random.default_rng([seed, run_date.toordinal(), 7])
    n = rng.poisson(impressions_per_user, w.n_users)
    users = np.repeat(np.arange(w.n_users), n)
    order = np.argsort(rng.random(len(users)))
    users = users[order]
    secs = np.sort(rng.integers(0, 86400, len(users)))
    own = rng.random(len(users)) < 0.5
    items = np.where(own, w.draw_positives(users, rng), rng.choice(w.n_items, len(users), p=w.item_pop))
    tp = true_probabilities(w, users, items)
    click = rng.random(len(users)) < tp["click"]
    labels = {"click": click}
    for t in ("like", "collect", "share", "comment"):
        labels[t] = click & (rng.random(len(users)) < tp[t])
    watch = np.where(click, np.round(np.exp(rng.normal(tp["watch_mu"], 0.5)), 1), 0.0)
    keep = click | (rng.random(len(users)) < alpha)
    day0 = datetime(run_date.year, run_date.month, run_date.day, tzinfo=timezone.utc)
    lastn_col, req, pos = [], [], []
    per_user_count: dict[int, int] = {}
    for k in range(len(users)):
        u = int(users[k])
        hist = w.history.setdefault(u, [])
        if keep[k]:
            lastn_col.append([w.iid(x) for x in dict.fromkeys(hist[::-1])][:lastn])
            j = per_user_count.get(u, 0)
            req.append(f"r{run_date.isoformat()}-{u}-{j // 10}")
            pos.append(j % 10)
        per_user_count[u] = per_user_count.get(u, 0) + 1
        if click[k]:
            hist.append(int(items[k]))
    idx = np.flatnonzero(keep)
    uu, ii = users[idx], items[idx]
    ts = [day0 + timedelta(seconds=int(s)) for s in secs[idx]]
    cols: dict[str, pa.Array] = {
        C.USER: pa.array([w.uid(u) for u in uu]), C.ITEM: pa.array([w.iid(i) for i in ii]),
        C.REQUEST: pa.array(req), C.POSITION: pa.array(pos, pa.int32()),
        C.TS: pa.array(ts, pa.timestamp("us", tz="UTC")),
        **{t: pa.array(labels[t][idx].astype(np.int32)) for t in ("click", "like", "collect", "share", "comment")},
        C.WATCH: pa.array(watch[idx]), C.NEG_KEEP_RATE: pa.array(np.full(len(idx), alpha)),
        C.SAMPLE_WEIGHT: pa.array(np.where(click[idx], 1.0, 1.0 / alpha)),
        C.LASTN_ITEMS: pa.array(lastn_col, pa.list_(pa.string())),
        C.FEATURES_DT: pa.array([features_dt or (run_date - timedelta(days=1)).isoformat()] * len(idx)),
    }
    t = pa.table(cols)
    return with_feature_columns(t, w, uu, ii, extra_numeric, rng)


def build_ranking_warehouse(cfg, w: World, days: list[date], impressions_per_user: float = 20.0,  # noqa: ANN001
                            alpha: float = 0.5, known_items: int | None = None, known_users: int | None = None,
                            rows_per_file: int = 5_000, row_group_rows: int = 1024, seed: int = 0) -> None:
    """For each day D: the spec under ``features/dt=D-1`` and the ranking shards of D (JVM-free)."""
    root = Path(cfg.warehouse.root)
    for d in days:
        spec = make_spec(w, known_items)
        if known_users is not None:
            for e in spec["features"]:
                if e["name"] == C.USER:
                    e["vocab"] = e["vocab"][:known_users]
        spec_dir = root / "features" / f"dt={(d - timedelta(days=1)).isoformat()}"
        spec_dir.mkdir(parents=True, exist_ok=True)
        (spec_dir / "feature_spec.json").write_text(json.dumps(spec))
        t = make_ranking_samples(w, d, impressions_per_user, alpha, seed)
        write_shards(t, root / "samples" / "ranking" / f"dt={d.isoformat()}", rows_per_file, row_group_rows,
                     seed=d.toordinal(), spec_path=str(spec_dir / "feature_spec.json"))
