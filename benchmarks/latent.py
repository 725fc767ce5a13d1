"""The latent channels on a warehouse with a truth table (MovieLens import with --holdout-ratio): the published
lists beside the other channels, then an EASE sweep (lambda, exact vs top-K truncated scoring) on the driver.

    python benchmarks/latent.py --conf /tmp/ml/raw/movielens.yaml --date 1998-04-22 [--lambdas 50,100,200,500]

Prints Recall@{20,50,100,200} of every published ``recall_<channel>`` of D (the evaluator's published mode, so
the same truth and metric as ``recsys-batch evaluate``), then, for EASE on the matrix of D, Recall@50 / @200 per
lambda with exact scoring (binary x_u, and x_u weighted by recency rank) and with B cut to its top-K positive
entries per row (``--lambdas ""`` skips this part). Needs the matrix and latent
stages of D (and the recall stage for the other channels).
"""

from __future__ import annotations

import argparse
from datetime import date

import numpy as np


def published(spark, cfg, d: date, channels: list[str]) -> None:  # noqa: ANN001
    from recsys_batch.evaluation import evaluate as ev

    ev.PUBLISHED_CHANNELS = tuple(channels)
    res = ev.run_published(spark, cfg, d)
    print(f"published lists, {res.test_users} test users")
    ks = cfg.evaluate.ks
    print("| channel | lists | " + " | ".join(f"Recall@{k}" for k in ks) + " |")
    print("|---|---|" + "---|" * len(ks))
    for row in res.rows:
        print(f"| {row['channel']} | {row.get('users_with_list')}/{res.test_users} | "
              + " | ".join(f"{row[f'recall@{k}']:.3f}" for k in ks) + " |")


def ease_sweep(spark, cfg, d: date, lambdas: list[float], ks_topk: list[int],  # noqa: ANN001
               half_lives: list[float]) -> None:
    from recsys_batch.evaluation.evaluate import published_truth
    from recsys_batch.io.tables import read_table
    from recsys_batch.recall.latent import ease_weights, topk_rows

    m = read_table(spark, cfg.warehouse, "user_item_matrix", d).select("user_id", "item_id", "last_ts").toPandas()
    truth, _ = published_truth(spark, cfg, d)
    t = truth.select("user_id", "item_id").distinct().toPandas()
    users, items = sorted(m.user_id.unique()), sorted(m.item_id.unique())
    ui, ii = {u: k for k, u in enumerate(users)}, {i: k for k, i in enumerate(items)}
    x = np.zeros((len(users), len(items)))
    x[m.user_id.map(ui).to_numpy(), m.item_id.map(ii).to_numpy()] = 1.0
    # recency rank of each item among the user's matrix items (last_ts desc, item_id asc), as recall_ease scores
    m["pos"] = m.sort_values(["last_ts", "item_id"], ascending=[False, True]).groupby("user_id").cumcount()
    pos = np.full(x.shape, np.inf)
    pos[m.user_id.map(ui).to_numpy(), m.item_id.map(ii).to_numpy()] = m.pos.to_numpy()
    tr: dict[int, set[int]] = {}
    for u, i in zip(t.user_id, t.item_id, strict=True):
        if u in ui and i in ii and x[ui[u], ii[i]] == 0:
            tr.setdefault(ui[u], set()).add(ii[i])
    n_test = len(tr)  # users with a truth item outside their matrix, as the evaluator counts them
    g = x.T @ x

    def recall(scores: np.ndarray, k: int) -> float:
        s = np.where(x > 0, -np.inf, scores)
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        return float(np.mean([len(tr[u] & set(top[u].tolist())) / len(tr[u]) for u in tr]))

    print(f"\nEASE on the matrix of {d}: {len(users)} users x {len(items)} items, {n_test} test users")
    print("| lambda | scoring | Recall@50 | Recall@200 |\n|---|---|---|---|")
    for lam in lambdas:
        b = ease_weights(g, lam)
        s = x @ b
        print(f"| {lam:g} | exact, binary x_u | {recall(s, 50):.3f} | {recall(s, 200):.3f} |")
        for h in half_lives:
            sw = np.where(x > 0, 0.5 ** (pos / h), 0.0) @ b
            print(f"| {lam:g} | exact, x_u = 0.5^(rank/{h:g}) | {recall(sw, 50):.3f} | {recall(sw, 200):.3f} |")
        for k in ks_topk:
            r, c, sc, _ = topk_rows(b, k)
            bk = np.zeros_like(b)
            bk[r, c] = sc
            sk = x @ bk
            sk = np.where(sk > 0, sk, -np.inf)  # item-based scoring yields positive candidates only
            print(f"| {lam:g} | top-{k} per row, binary x_u | {recall(sk, 50):.3f} | {recall(sk, 200):.3f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--conf", required=True)
    p.add_argument("--date", required=True)
    p.add_argument("--channels", default="itemcf,swing,usercf,popular,item2vec,ease,als")
    p.add_argument("--lambdas", default="50,100,200,500,1000")
    p.add_argument("--topk", default="100,200")
    p.add_argument("--half-lives", default="10,25,50", help="recency half-lives (items) of the weighted scoring")
    p.add_argument("--skip-published", action="store_true")
    a = p.parse_args()
    from recsys_batch.config import load_config
    from recsys_batch.spark import get_spark

    cfg = load_config(a.conf, ["evaluate.ks=[20, 50, 100, 200]"])
    spark = get_spark(cfg.spark)
    d = date.fromisoformat(a.date)
    if not a.skip_published:
        published(spark, cfg, d, a.channels.split(","))
    if a.lambdas:
        ease_sweep(spark, cfg, d, [float(x) for x in a.lambdas.split(",")], [int(x) for x in a.topk.split(",") if x],
                   [float(x) for x in a.half_lives.split(",") if x])


if __name__ == "__main__":
    main()
