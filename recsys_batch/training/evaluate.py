"""Held-out evaluation of two-tower checkpoints for the publish gate (no Spark).

Held-out set of run date D: the recall samples of D with ts >= the cut ``train.holdout_hours`` before
the end of D (training never sees them, and yesterday's model never saw any of D). Per user (a seeded
sample of at most ``publish.gate_max_users``): the user's state = the first held-out positive row
(its u_* features of D - 1 and the last-N items before that moment); truth = the user's held-out positive
items not in that last-N. A model retrieves top-K over the catalog (``item_features``, newest dt <= D)
excluding the last-N; the ItemCF / popular channels are their ``recall_<channel>`` lists of D - 1
(built on data up to the end of D - 1, so nothing of D leaks in). :func:`popular_lists` is the popular
baseline computed here when ``recall_popular`` of D - 1 is missing: the most frequent positive items of
D's rows before the cut (what training saw), the user's last-N excluded like the model's lists.

Recall@K = |top-K & truth| / |truth|; NDCG@K = sum_{hits} 1/log2(1 + rank) / sum_{r <= min(K, |truth|)}
1/log2(1 + r); both averaged over users. Cost: one pass over the shards' ts column, O(users x items x d).
"""

from __future__ import annotations

import logging
from datetime import date, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from recsys_batch.config import Config
from recsys_batch.io.delta_read import read_partition
from recsys_batch.training.checkpoint import load_checkpoint
from recsys_batch.training.columns import C
from recsys_batch.io.fs import resolve
from recsys_batch.training.data import cut_scalar, holdout_cutoff, sample_files
from recsys_batch.training.export import _missing_columns, catalog_items, embed_table
from recsys_batch.training.features import build_layout

log = logging.getLogger(__name__)


def ranking_metrics(recs: dict[str, list[str]], truth: dict[str, set[str]], ks: list[int]) -> dict[str, float]:
    """Mean recall@K and NDCG@K over the users of ``truth`` (a user without a list scores 0)."""
    out: dict[str, float] = {}
    users = [u for u in truth if truth[u]]
    for k in ks:
        rec, nd = [], []
        for u in users:
            t, lst = truth[u], recs.get(u, [])[:k]
            hits = [r for r, i in enumerate(lst, 1) if i in t]
            rec.append(len(hits) / len(t))
            idcg = sum(1.0 / np.log2(1 + r) for r in range(1, min(k, len(t)) + 1))
            nd.append(sum(1.0 / np.log2(1 + r) for r in hits) / idcg)
        out[f"recall@{k}"] = float(np.mean(rec)) if rec else 0.0
        out[f"ndcg@{k}"] = float(np.mean(nd)) if nd else 0.0
    return out


def holdout_set(cfg: Config, run_date: date) -> tuple[pa.Table, dict[str, set[str]]] | None:
    """(one state row per sampled held-out user, truth items per user), or None without a holdout."""
    cutoff = holdout_cutoff(run_date, cfg.train.holdout_hours)
    if cutoff is None:
        return None
    files, _ = sample_files(cfg.warehouse, run_date)
    fs, _ = resolve(files[0])
    ds = pads.dataset([resolve(f)[1] for f in files], format="parquet", filesystem=fs)
    ts_type = ds.schema.field(C.TS).type
    flt = (pc.field(C.TS) >= cut_scalar(cutoff, ts_type)) & (pc.field(C.LABEL) == 1)
    t = ds.to_table(filter=flt)
    if t.num_rows == 0:
        return None
    t = t.sort_by([(C.USER, "ascending"), (C.TS, "ascending")])
    users = t.column(C.USER).to_numpy(zero_copy_only=False)
    first = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    states = t.take(pa.array(first))
    rng = np.random.default_rng(cfg.publish.seed)
    if states.num_rows > cfg.publish.gate_max_users:
        states = states.take(pa.array(np.sort(rng.choice(states.num_rows, cfg.publish.gate_max_users, replace=False))))
    keep = set(states.column(C.USER).to_pylist())
    seen = dict(zip(states.column(C.USER).to_pylist(), states.column(C.LASTN_ITEMS).to_pylist(), strict=True))
    truth: dict[str, set[str]] = {}
    for u, i in zip(t.column(C.USER).to_pylist(), t.column(C.ITEM).to_pylist(), strict=True):
        if u in keep and i not in set(seen.get(u) or ()):
            truth.setdefault(u, set()).add(i)
    return states, truth


def model_lists(checkpoint: str, states: pa.Table, cfg: Config, run_date: date, k: int) -> dict[str, list[str]]:
    """Top-k items per held-out user from a checkpoint (exact search), the user's last-N excluded."""
    ck = load_checkpoint(checkpoint)
    model, spec = ck["model"], ck["spec"]
    items = catalog_items(cfg, run_date)
    ilay = build_layout(spec, "item", items.column_names, cfg.train.exclude_features, "table", cfg.train.max_lastn)
    ivec = embed_table(model, ilay, _missing_columns(items, ilay), "item")
    ulay = build_layout(spec, "user", states.column_names, cfg.train.exclude_features, "samples", cfg.train.max_lastn)
    uvec = embed_table(model, ulay, _missing_columns(states, ulay), "user")
    item_ids = np.asarray(items.column(C.ITEM).to_pylist(), dtype=object)
    row_of = {i: r for r, i in enumerate(item_ids)}
    scores = uvec @ ivec.T
    out: dict[str, list[str]] = {}
    for j, (u, last) in enumerate(zip(states.column(C.USER).to_pylist(), states.column(C.LASTN_ITEMS).to_pylist(),
                                      strict=True)):
        s = scores[j]
        for i in last or ():
            r = row_of.get(i)
            if r is not None:
                s[r] = -np.inf
        top = np.argpartition(-s, min(k, len(s) - 1))[:k]
        out[u] = list(item_ids[top[np.argsort(-s[top])]])
    return out


def popular_lists(cfg: Config, run_date: date, states: pa.Table, k: int) -> dict[str, list[str]] | None:
    """Leak-free popular baseline for the held-out users of :func:`holdout_set` without Spark: items
    ranked by their number of positive sample rows of D with ts < the holdout cut (count desc, item id
    asc), per user the top ``k`` not in the state's last-N. None without a holdout cut or without a
    positive row before it. Cost: one pass over the shards' item / label / ts columns, O(users x (k + N))."""
    cutoff = holdout_cutoff(run_date, cfg.train.holdout_hours)
    if cutoff is None:
        return None
    files, _ = sample_files(cfg.warehouse, run_date)
    fs, _ = resolve(files[0])
    ds = pads.dataset([resolve(f)[1] for f in files], format="parquet", filesystem=fs)
    flt = (pc.field(C.TS) < cut_scalar(cutoff, ds.schema.field(C.TS).type)) & (pc.field(C.LABEL) == 1)
    t = ds.to_table(columns=[C.ITEM], filter=flt)
    if t.num_rows == 0:
        return None
    counts = t.group_by(C.ITEM).aggregate([([], "count_all")])
    counts = counts.sort_by([("count_all", "descending"), (C.ITEM, "ascending")])
    ranked = counts.column(C.ITEM).to_pylist()
    out: dict[str, list[str]] = {}
    for u, last in zip(states.column(C.USER).to_pylist(), states.column(C.LASTN_ITEMS).to_pylist(), strict=True):
        seen = set(last or ())
        lst: list[str] = []
        for i in ranked:
            if i not in seen:
                lst.append(i)
                if len(lst) == k:
                    break
        out[u] = lst
    return out


def channel_lists(cfg: Config, channel: str, run_date: date, users: set[str]) -> dict[str, list[str]] | None:
    t = read_partition(cfg.warehouse, f"recall_{channel}", run_date - timedelta(days=1), [C.USER, C.ITEM, C.RANK],
                       required=False)
    if t is None:
        return None
    t = t.filter(pc.is_in(t.column(C.USER), pa.array(sorted(users), pa.string()))).sort_by([(C.USER, "ascending"),
                                                                                          (C.RANK, "ascending")])
    out: dict[str, list[str]] = {}
    for u, i in zip(t.column(C.USER).to_pylist(), t.column(C.ITEM).to_pylist(), strict=True):
        out.setdefault(u, []).append(i)
    return out
