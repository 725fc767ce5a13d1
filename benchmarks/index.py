"""faiss item index: build time, queries/s and recall@100 against exact search.

    .venv/bin/python benchmarks/index.py [--sizes 100000,1000000] [--dim 64] [--queries 1000] [--threads 2]

Synthetic items: unit vectors around random unit centres, queries drawn the same way, two data sets
(``--data``): ``clustered`` (256 centres, noise 0.6: a query's neighbours sit in its own cluster, easy for
every index) and ``diffuse`` (4,096 centres, noise 1.0: neighbourhoods cross cluster borders, which is
where IVF with a small nprobe loses recall). Retrieval embeddings lie between the two. Index
parameters come from the default ``IndexConfig`` (HNSW M=32, efConstruction=200, efSearch=256; IVF
nlist=4 sqrt(n), nprobe=32). Reference: the stage fails below recall@100 0.95.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from recsys_batch.config import IndexConfig
from recsys_batch.index.build import build_index


#: synthetic data sets: (centres, noise norm around a unit centre)
DATA = {"clustered": (256, 0.6), "diffuse": (4096, 1.0)}


def clustered(n: int, d: int, rng: np.random.Generator, centres: np.ndarray, noise: float) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + noise * rng.normal(size=(n, d)).astype(np.float32) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    import faiss

    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--kinds", default="exact,hnsw,ivf")
    p.add_argument("--data", default="clustered,diffuse",
                   help="clustered: 256 centres, noise 0.6 (neighbours share a cluster); diffuse: 4,096 centres, "
                        "noise 1.0 (neighbourhoods cross clusters: the hard case for IVF)")
    a = p.parse_args()
    faiss.omp_set_num_threads(a.threads)
    ic = IndexConfig()
    print(f"{'data':>9} {'items':>10} {'kind':>6} {'build s':>9} {'queries/s':>10} {'recall@100':>11}  params")
    for data, n in [(d, int(s)) for s in a.sizes.split(",") for d in a.data.split(",")]:
        n_centres, noise = DATA[data]
        rng = np.random.default_rng(0)
        centres = rng.normal(size=(n_centres, a.dim)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        items = clustered(n, a.dim, rng, centres, noise)
        queries = clustered(a.queries, a.dim, rng, centres, noise)
        truth = None
        for kind in a.kinds.split(","):
            t0 = time.perf_counter()
            index, kind, params = build_index(items, ic, kind)
            build = time.perf_counter() - t0
            t1 = time.perf_counter()
            _, got = index.search(queries, 100)
            qps = len(queries) / (time.perf_counter() - t1)
            if truth is None:
                if kind == "exact":
                    truth = got
                else:
                    ex = faiss.IndexFlatIP(a.dim)
                    ex.add(items)
                    truth = ex.search(queries, 100)[1]
            rec = np.mean([len(set(g) & set(t)) / 100 for g, t in zip(got, truth, strict=True)])
            print(f"{data:>9} {n:>10,} {kind:>6} {build:>9.2f} {qps:>10,.0f} {rec:>11.4f}  {params}", flush=True)
            del index


if __name__ == "__main__":
    main()
