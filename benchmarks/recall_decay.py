"""Which time decay fits each recall channel: MovieLens-100K, the evaluator's rebuild split, decay variants.

    .venv/bin/python benchmarks/recall_decay.py --movielens PATH/TO/ml-100k

Imports MovieLens with :func:`recsys_batch.movielens.import_movielens` and loads its overlay (the matrix
window covers every rating; the matrix half-life is the default 7 days), splits the events like
``recsys-batch evaluate`` (``evaluate.split``, default user_chrono), builds the train matrix, computes the
ItemCF / Swing / UserCF neighbour tables once (the default kinds do not read the matrix score) and then
varies only the weights of the recall formulas:

* ItemCF / Swing seeds r(u, i): the matrix score with a 7 / 30-day half-life, undecayed event weights, 1;
* UserCF r(v, i): the matrix score (the formula before issue 11), undecayed weights, presence, a 30 / 90-day
  channel half-life;
* popular: window / half-life pairs (7 d / 2 d was the old default; null = the matrix window / no decay).

Prints Recall@20/50/100 and NDCG@50 per variant (the README's "Which channels decay" numbers).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from pyspark.sql import functions as F


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--movielens", type=Path, required=True, help="folder with MovieLens-100K u.data, u.item, u.user")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)

    from recsys_batch.config import load_config
    from recsys_batch.evaluation.evaluate import evaluate_lists, make_split
    from recsys_batch.matrix import build_user_item_matrix
    from recsys_batch.movielens import import_movielens
    from recsys_batch.recall import item_based_recall, popular_recall, popular_scores, user_based_recall
    from recsys_batch.recall.common import exclude_seen, recent_items, restrict_users, top_n_per_user
    from recsys_batch.schemas import EVENTS, Col
    from recsys_batch.similarity.itemcf import itemcf_similarity
    from recsys_batch.similarity.swing import swing_similarity
    from recsys_batch.similarity.usercf import usercf_similarity
    from recsys_batch.spark import get_spark

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Python workers (similarity) need this venv
    with tempfile.TemporaryDirectory(prefix="recsys-decay-") as tmp:
        stats = import_movielens(args.movielens, Path(tmp) / "raw")
        d = stats["last_date"]
        cfg = load_config(stats["overlay"], [f"warehouse.root={tmp}/wh", *args.overrides])
        spark = get_spark(cfg.spark)
        events = (spark.read.parquet(f"{tmp}/raw/events")
                  .select(*[F.col(f.name).cast(f.dataType) for f in EVENTS.fields]))
        split = make_split(events, cfg, d)
        train, test = split.train.persist(), split.test.persist()
        weights = cfg.events.weights

        def matrix(half_life: float):
            mc = cfg.matrix.model_copy(update={"half_life_days": half_life})
            return build_user_item_matrix(train, weights, split.train_date, mc).persist()

        m_cfg, m30, m_undecayed = matrix(cfg.matrix.half_life_days), matrix(30.0), matrix(1e9)
        users = test.select(Col.USER).distinct().persist()
        t0 = time.perf_counter()
        sims = {"itemcf": itemcf_similarity(m_cfg, cfg.itemcf), "swing": swing_similarity(m_cfg, cfg.swing),
                "usercf": usercf_similarity(m_cfg, cfg.usercf)}
        sims = {k: v.persist() for k, v in sims.items()}
        for s in sims.values():
            s.count()
        rc = cfg.recall.model_copy(update={"top_n": 100})
        hl = cfg.matrix.half_life_days
        lists = {}
        for ch in ("itemcf", "swing"):
            lists[f"{ch} seed=matrix score (hl {hl:g} d)"] = item_based_recall(m_cfg, sims[ch], rc, users)
            lists[f"{ch} seed=matrix score (hl 30 d)"] = item_based_recall(m30, sims[ch], rc, users)
            lists[f"{ch} seed=undecayed weight"] = item_based_recall(m_undecayed, sims[ch], rc, users)
            presence = m_cfg.withColumn(Col.SCORE, F.lit(1.0))
            lists[f"{ch} seed=presence"] = item_based_recall(presence, sims[ch], rc, users)

        def usercf_matrix_score(m):  # r(v, i) = matrix score: the formula before issue 11
            nbr = recent_items(m, rc.neighbor_recent_items, key=Col.NEIGHBOR).select(
                Col.NEIGHBOR, Col.ITEM, F.col(Col.SCORE).alias("_r"))
            sim = restrict_users(sims["usercf"].where(F.col(Col.NEIGHBOR) != F.col(Col.USER)).select(
                Col.USER, Col.NEIGHBOR, F.col(Col.SCORE).alias("_s")), users)
            cand = (sim.join(nbr, on=Col.NEIGHBOR).groupBy(Col.USER, Col.ITEM)
                    .agg(F.sum(F.col("_s") * F.col("_r")).alias(Col.SCORE)))
            return top_n_per_user(exclude_seen(cand, m), rc.top_n)

        lists[f"usercf r=matrix score (hl {hl:g} d)"] = usercf_matrix_score(m_cfg)
        lists["usercf r=undecayed weight"] = usercf_matrix_score(m_undecayed)
        lists["usercf r=presence"] = user_based_recall(m_cfg, sims["usercf"], rc, users, run_date=split.train_date)
        for uhl in (30.0, 90.0):
            ucfg = rc.model_copy(update={"usercf_half_life_days": uhl})
            lists[f"usercf r=hl {uhl:g} d"] = user_based_recall(m_cfg, sims["usercf"], ucfg, users,
                                                                 run_date=split.train_date)
        window = cfg.matrix.lookback_days
        for lb, phl in ((7, 2.0), (30, None), (window, None), (window, 7.0), (window, 30.0), (window, 90.0)):
            pop = popular_scores(train, weights, split.train_date, lb, phl)
            lists[f"popular {lb} d, hl {phl or '-'}"] = popular_recall(pop, m_cfg, users, rc)
        recs = None
        for name, df in lists.items():
            df = df.withColumn("channel", F.lit(name))
            recs = df if recs is None else recs.unionByName(df)
        recs = recs.persist()
        recs.count()
        rows = evaluate_lists(recs, test, m_cfg, [20, 50, 100], list(lists))
        width = max(len(n) for n in lists)
        print(f"{'variant':{width}s}  recall@20  recall@50  recall@100  ndcg@50")
        for r in rows:
            print(f"{r['channel']:{width}s}  {r['recall@20']:9.4f}  {r['recall@50']:9.4f}  {r['recall@100']:10.4f}  "
                  f"{r['ndcg@50']:7.4f}")
        print(f"\n{users.count()} test users ({split.kind} split of {d}), {time.perf_counter() - t0:.0f}s")
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
