"""A small synthetic world with planted clusters, in the samples stage's layout (tests, benchmarks).

Users and items belong to one of K clusters; a user's positives come from its own cluster with
probability ``in_cluster`` (item ~ Zipf popularity within the cluster), else from the whole catalog.
Item category = its cluster (noisy: ``category_noise``), so the towers can learn the structure from ids,
features and the last-N sequence. Produces the feature spec, recall sample rows with the samples stage's
columns and meaning (:func:`make_samples`; ``tests/test_training.py`` runs the same contract check on both),
and user / item feature tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_batch.training.columns import C
from recsys_batch.training.data import RECALL_SAMPLE_COLUMNS


@dataclass
class World:
    n_users: int
    n_items: int
    n_clusters: int
    seed: int = 0
    in_cluster: float = 0.85
    category_noise: float = 0.1
    user_cluster: np.ndarray = field(init=False)
    item_cluster: np.ndarray = field(init=False)
    item_pop: np.ndarray = field(init=False)
    history: dict[int, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.user_cluster = rng.integers(0, self.n_clusters, self.n_users)
        self.item_cluster = rng.integers(0, self.n_clusters, self.n_items)
        self.item_pop = np.zeros(self.n_items)
        for k in range(self.n_clusters):
            idx = np.flatnonzero(self.item_cluster == k)
            ranks = rng.permutation(len(idx)) + 1
            self.item_pop[idx] = 1.0 / ranks ** 1.0
        self.item_pop /= self.item_pop.sum()
        self.rng = rng
        self.category = np.where(rng.random(self.n_items) < self.category_noise,
                                 rng.integers(0, self.n_clusters, self.n_items), self.item_cluster)

    def uid(self, u: int) -> str:
        return f"u{u}"

    def iid(self, i: int) -> str:
        return f"i{i}"

    def draw_positives(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = np.empty(len(users), np.int64)
        glob = self.item_pop
        for k in range(self.n_clusters):
            sel = np.flatnonzero(self.user_cluster[users] == k)
            if not len(sel):
                continue
            mask = self.item_cluster == k
            p = np.where(mask, glob, 0.0)
            p /= p.sum()
            inside = rng.random(len(sel)) < self.in_cluster
            out[sel[inside]] = rng.choice(self.n_items, inside.sum(), p=p)
            out[sel[~inside]] = rng.choice(self.n_items, (~inside).sum(), p=glob)
        return out


def make_spec(w: World, known_items: int | None = None, lastn: int = 20, extra_numeric: int = 0) -> dict:
    """The feature spec (features-stage format); items >= ``known_items`` are out of vocabulary (cold)."""
    known = w.n_items if known_items is None else known_items
    cat = lambda name, vocab, oov=1, col=None: {"name": name, "column": col or name.split("_", 1)[-1],  # noqa: E731
                                                "type": "categorical", "vocab": vocab, "num_oov_buckets": oov,
                                                "size": len(vocab) + oov + 1, "default": 0}
    num = lambda name, b, tr="none", mean=0.0, std=1.0: {"name": name, "column": name.split("_", 1)[-1],  # noqa: E731
                                                         "type": "numeric", "boundaries": b, "transform": tr,
                                                         "num_buckets": len(b) + 2, "mean": mean, "std": std,
                                                         "default": 0.0}
    cats = [f"c{k}" for k in range(w.n_clusters)]
    feats = [
        cat(C.USER, [w.uid(u) for u in range(w.n_users)], 4, C.USER),
        cat("u_gender", ["f", "m"]), num("u_age", [20, 30, 40, 50], mean=35.0, std=12.0),
        {"name": "u_is_new", "column": "is_new", "type": "boolean", "default": False},
        {**cat("u_top_categories", cats), "type": "categorical_list", "column": "top_categories"},
        cat(C.ITEM, [w.iid(i) for i in range(known)], 4, C.ITEM),
        cat("i_category", cats), cat("i_author_id", [f"a{a}" for a in range(50)], 1, "author_id"),
        {**cat("i_tags", [f"t{t}" for t in range(3 * w.n_clusters)]), "type": "categorical_list", "column": "tags"},
        num("i_clicks_7d", [1.0, 2.0, 3.0, 4.0], "log1p", 1.5, 1.0),
        {"name": C.LASTN_ITEMS, "table": "samples", "column": C.LASTN_ITEMS, "type": "categorical_list",
         "vocab_from": C.ITEM, "max_len": lastn, "default": []},
    ]
    for side in ("u", "i"):  # noise numerics: a realistic feature count for benchmarks
        feats += [num(f"{side}_x{k}", [0.1 * b for b in range(1, 10)]) for k in range(extra_numeric)]
    return {"version": 1, "run_date": "synthetic", "features": feats}


def _user_cols(w: World, users: np.ndarray) -> dict[str, pa.Array]:
    rng = np.random.default_rng(w.seed + 1)
    gender = np.where(rng.random(w.n_users) < 0.5, "f", "m")
    age = rng.integers(16, 70, w.n_users)
    uc = w.user_cluster
    return {"gender": pa.array(gender[users]), "age": pa.array(age[users], pa.int32()),
            "is_new": pa.array((users % 7) == 0), "top_categories": pa.array([[f"c{uc[u]}"] for u in users])}


def item_clicks_7d(w: World) -> np.ndarray:
    """Per item: the ``clicks_7d`` feature value (a function of its popularity)."""
    return np.round(np.log1p(w.item_pop * w.n_items * 5) * 3)


def _item_cols(w: World, items: np.ndarray) -> dict[str, pa.Array]:
    return {"category": pa.array([f"c{w.category[i]}" for i in items]),
            "author_id": pa.array([f"a{(i * 7 + w.item_cluster[i]) % 50}" for i in items]),
            "tags": pa.array([[f"t{w.item_cluster[i] * 3 + i % 3}"] for i in items]),
            "clicks_7d": pa.array(item_clicks_7d(w)[items], pa.int64())}


#: strongest-event weights of a positive (events.weights: click 1, like 2, collect / comment 3, share 4) and
#: how often each is a positive's strongest event
_POS_WEIGHTS, _POS_WEIGHT_P = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.7, 0.15, 0.1, 0.05])


def make_samples(w: World, run_date: date, positives_per_user: float = 3.0, negatives: int = 4,
                 seed: int = 0, lastn: int = 20, extra_numeric: int = 0, hard_negative_ratio: float = 0.25,
                 easy_oversample: float = 2.0) -> pa.Table:
    """Recall sample rows of one label day with the samples stage's columns and meaning
    (:data:`recsys_batch.training.data.RECALL_SAMPLE_COLUMNS`); appends the day's positives to the histories.

    As :mod:`recsys_batch.samples.recall`: one positive per (user, item) of the day (the first draw),
    label_weight = its strongest event's weight, 0 on negatives; per positive ``round(negatives x
    hard_negative_ratio)`` hard negatives (the user's cluster ∝ popularity: "recalled, then cut") and easy
    ones ~ popularity^0.75 for the rest, oversampled and never one of the user's positives of the day;
    item_sampling_prob = q(item) of the easy sampler on every row, item_pos_freq = the item's share of the
    day's positive rows.
    """
    rng = np.random.default_rng([seed, run_date.toordinal()])
    n_pos = rng.poisson(positives_per_user, w.n_users)
    users = np.repeat(np.arange(w.n_users), n_pos)
    day0 = datetime(run_date.year, run_date.month, run_date.day, tzinfo=timezone.utc)
    secs = np.sort(rng.integers(0, 86400, len(users)))
    users = users[rng.permutation(len(users))]
    items = w.draw_positives(users, rng)
    _, first = np.unique(users * w.n_items + items, return_index=True)  # one positive per (user, item)
    keep = np.sort(first)
    users, items, secs = users[keep], items[keep], secs[keep]
    day_items: dict[int, set[int]] = {}
    for u, i in zip(users, items, strict=True):
        day_items.setdefault(int(u), set()).add(int(i))
    freq = np.bincount(items, minlength=w.n_items) / max(len(items), 1)
    neg_p = w.item_pop ** 0.75
    neg_p /= neg_p.sum()
    weights = rng.choice(_POS_WEIGHTS, len(users), p=_POS_WEIGHT_P)
    n_hard = int(round(negatives * hard_negative_ratio))
    n_draw = int(np.ceil(negatives * easy_oversample))
    easy_draws = rng.choice(w.n_items, (len(users), n_draw), p=neg_p)
    hard_draws = np.zeros((len(users), n_draw if n_hard else 0), np.int64)
    for k in range(w.n_clusters) if n_hard else ():
        sel = np.flatnonzero(w.user_cluster[users] == k)
        p = np.where(w.item_cluster == k, w.item_pop, 0.0)
        hard_draws[sel] = rng.choice(w.n_items, (len(sel), n_draw), p=p / p.sum())
    cols = (C.GROUP, C.USER, C.ITEM, C.LABEL, C.SOURCE, C.REQUEST, C.TS, C.LABEL_WEIGHT, C.SAMPLING_PROB,
            C.POS_FREQ, C.KEEP_PROB, C.LASTN_ITEMS, "_u", "_i")
    rows: dict[str, list] = {k: [] for k in cols}

    def firsts(draws: np.ndarray, n: int, banned: set[int]) -> list[int]:
        out: list[int] = []
        for x in draws:
            if len(out) == n:
                break
            if int(x) not in banned:
                out.append(int(x))
        return out

    for k, (u, i) in enumerate(zip(users, items, strict=True)):
        hist = w.history.setdefault(int(u), [])
        last = [w.iid(x) for x in dict.fromkeys(hist[::-1])][:lastn]
        ts = day0 + timedelta(seconds=int(secs[k]))
        g = f"{run_date.isoformat()}-{k}"
        banned = day_items[int(u)]
        hard = firsts(np.array(list(dict.fromkeys(hard_draws[k].tolist()))), n_hard, banned) if n_hard else []
        easy = firsts(easy_draws[k], negatives - len(hard), banned)
        group = [(i, 1, "positive", float(weights[k]))] + [(n, 0, "hard", 0.0) for n in hard] \
            + [(n, 0, "easy", 0.0) for n in easy]
        for item, label, src, lw in group:
            for c, val in ((C.GROUP, g), (C.USER, w.uid(u)), (C.ITEM, w.iid(item)), (C.LABEL, label),
                           (C.SOURCE, src), (C.REQUEST, f"r{g}"), (C.TS, ts), (C.LABEL_WEIGHT, lw),
                           (C.SAMPLING_PROB, float(neg_p[item])), (C.POS_FREQ, float(freq[item])),
                           (C.KEEP_PROB, 1.0), (C.LASTN_ITEMS, last), ("_u", u), ("_i", item)):
                rows[c].append(val)
        hist.append(int(i))
    uu, ii = np.asarray(rows.pop("_u"), np.int64), np.asarray(rows.pop("_i"), np.int64)
    t = pa.table({c: pa.array(rows[c], typ) for c, typ in RECALL_SAMPLE_COLUMNS.items()})
    return with_feature_columns(t, w, uu, ii, extra_numeric, rng)


def with_feature_columns(t: pa.Table, w: World, uu: np.ndarray, ii: np.ndarray, extra_numeric: int,
                         rng: np.random.Generator) -> pa.Table:
    """``t`` plus the user (``u_*``) and item (``i_*``) feature columns of row ``r``'s user ``uu[r]`` and item
    ``ii[r]``, then ``extra_numeric`` uniform noise columns per side (``u_x0``..., ``i_x0``...)."""
    for k, v in _user_cols(w, uu).items():
        t = t.append_column(f"u_{k}", v)
    for k, v in _item_cols(w, ii).items():
        t = t.append_column(f"i_{k}", v)
    for side in ("u", "i"):
        for k in range(extra_numeric):
            t = t.append_column(f"{side}_x{k}", pa.array(rng.random(t.num_rows)))
    return t


def write_shards(table: pa.Table, folder: str | Path, rows_per_file: int = 20_000, row_group_rows: int = 4096,
                 seed: int = 0, spec_path: str | None = None) -> list[str]:
    """Shuffled part-NNNNN.parquet files + _manifest.json + _SUCCESS, like the samples stage writes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = table.take(pa.array(np.random.default_rng(seed).permutation(table.num_rows)))
    names = []
    for f, s in enumerate(range(0, table.num_rows, rows_per_file)):
        name = f"part-{f:05d}.parquet"
        pq.write_table(table.slice(s, rows_per_file), folder / name, row_group_size=row_group_rows)
        names.append(name)
    manifest = {"kind": "recall", "rows": table.num_rows,
                "files": [{"name": n, "rows": pq.ParquetFile(folder / n).metadata.num_rows} for n in names]}
    if spec_path:
        manifest["feature_spec"] = spec_path
    (folder / "_manifest.json").write_text(json.dumps(manifest))
    (folder / "_SUCCESS").write_text("")
    return [str(folder / n) for n in names]


def user_features(w: World) -> pa.Table:
    users = np.arange(w.n_users)
    return pa.table({C.USER: pa.array([w.uid(u) for u in users]), **_user_cols(w, users)})


def item_features(w: World) -> pa.Table:
    items = np.arange(w.n_items)
    return pa.table({C.ITEM: pa.array([w.iid(i) for i in items]), **_item_cols(w, items)})


def user_lastn(w: World, lastn: int = 20) -> pa.Table:
    """user_lastn rows (items: list<struct<item_id, ts, weight>>, newest first) from the histories."""
    ts0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    users = sorted(w.history)
    items = [[{C.ITEM: w.iid(i), C.TS: ts0, "weight": 1.0} for i in w.history[u][::-1][:lastn]] for u in users]
    typ = pa.list_(pa.struct([(C.ITEM, pa.string()), (C.TS, pa.timestamp("us", tz="UTC")), ("weight", pa.float64())]))
    return pa.table({C.USER: pa.array([w.uid(u) for u in users]), C.ITEMS: pa.array(items, typ)})


def build_warehouse(cfg, w: World, days: list[date], positives_per_user: float = 3.0,  # noqa: ANN001 - Config
                    known_items: int | None = None, rows_per_file: int = 20_000, row_group_rows: int = 4096) -> None:
    """A JVM-free warehouse for the train / index / publish stages: for each day D the samples shards
    of D (+ spec under features/dt=D-1), and Delta user_features / item_features / user_lastn /
    user_activity / user_item_matrix of D (the matrix = every positive so far)."""
    from recsys_batch.io.delta_read import replace_partition_arrow

    root = Path(cfg.warehouse.root)
    spec = make_spec(w, known_items)
    for d in days:
        prev = d - timedelta(days=1)
        spec_dir = root / "features" / f"dt={prev.isoformat()}"
        spec_dir.mkdir(parents=True, exist_ok=True)
        (spec_dir / "feature_spec.json").write_text(json.dumps(spec))
        t = make_samples(w, d, positives_per_user, seed=w.seed)
        write_shards(t, root / "samples" / "recall" / f"dt={d.isoformat()}", rows_per_file, row_group_rows,
                     seed=d.toordinal(), spec_path=str(spec_dir / "feature_spec.json"))
        wh = cfg.warehouse
        replace_partition_arrow(user_features(w), wh, "user_features", d)
        replace_partition_arrow(item_features(w), wh, "item_features", d)
        replace_partition_arrow(user_lastn(w), wh, "user_lastn", d)
        end = datetime(d.year, d.month, d.day, 12, tzinfo=timezone.utc)
        users = sorted(w.history)
        replace_partition_arrow(pa.table({C.USER: [w.uid(u) for u in users],
                                          C.LAST_TS: pa.array([end] * len(users), pa.timestamp("us", tz="UTC"))}),
                                wh, "user_activity", d)
        pairs = sorted({(u, i) for u, hs in w.history.items() for i in hs})
        replace_partition_arrow(pa.table({C.USER: [w.uid(u) for u, _ in pairs], C.ITEM: [w.iid(i) for _, i in pairs],
                                          C.SCORE: [1.0] * len(pairs)}), wh, "user_item_matrix", d)
        (root / "features" / f"dt={d.isoformat()}").mkdir(parents=True, exist_ok=True)
        (root / "features" / f"dt={d.isoformat()}" / "feature_spec.json").write_text(json.dumps(spec))
