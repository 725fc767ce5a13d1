"""faiss index: recall against exact search, the recall floor, batched search without seen items."""

from __future__ import annotations

from datetime import date

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from recsys_batch.config import IndexConfig, load_config
from recsys_batch.index.build import (
    IndexRecallTooLow, build_index, read_index_file, recall_vs_exact, run_index, search_excluding, write_index_file,
)
from recsys_batch.io import fs

torch.set_num_threads(1)


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_index_kinds_and_recall_check():
    items, users = _unit(5000, 16, 0), _unit(200, 16, 1)
    ic = IndexConfig(exact_max_items=1000, hnsw_ef_search=128, ivf_nlist=64, ivf_nprobe=32)
    exact, kind, _ = build_index(items, IndexConfig(exact_max_items=10_000))
    assert kind == "exact" and recall_vs_exact(exact, items, users, 100) == 1.0
    hnsw, kind, params = build_index(items, ic)
    assert kind == "hnsw" and params["efSearch"] == 128
    assert recall_vs_exact(hnsw, items, users, 100) >= 0.95
    ivf, kind, params = build_index(items, ic, "ivf")
    assert kind == "ivf" and params["nlist"] == 64
    r_good = recall_vs_exact(ivf, items, users, 100)
    ivf.nprobe = 1
    r_bad = recall_vs_exact(ivf, items, users, 100)
    assert r_good > 0.9 and r_bad < 0.5


def test_search_excluding_seen_matches_brute_force():
    items, users = _unit(300, 8, 2), _unit(20, 8, 3)
    index, _, _ = build_index(items, IndexConfig())
    rng = np.random.default_rng(4)
    seen = [rng.choice(300, rng.integers(0, 40), replace=False) for _ in range(20)]
    scores, rows = search_excluding(index, users, 10, seen, batch=7)
    for q in range(20):
        s = items @ users[q]
        s[seen[q]] = -np.inf
        want = np.argsort(-s)[:10]
        assert list(rows[q]) == list(want)
        assert np.allclose(scores[q], s[want], atol=1e-5)
        assert not set(rows[q]) & set(seen[q])


def test_index_bytes_roundtrip_through_the_filesystem(tmp_path):
    import uuid

    import faiss

    items, users = _unit(500, 8, 5), _unit(12, 8, 6)
    index, kind, _ = build_index(items, IndexConfig(exact_max_items=10, kind="hnsw"))
    assert kind == "hnsw"
    faiss.write_index(index, str(tmp_path / "reference.faiss"))
    mem = f"memory://index-{uuid.uuid4().hex[:10]}/dt=2026-01-01/items.faiss"
    try:
        n_mem = write_index_file(index, mem)
        n_local = write_index_file(index, str(tmp_path / "out" / "items.faiss"))
        ref = (tmp_path / "reference.faiss").read_bytes()
        assert n_mem == n_local == len(ref) > 500 * 8 * 4
        assert (tmp_path / "out" / "items.faiss").read_bytes() == ref == fs.read_bytes(mem)  # same bytes as write_index
        want_d, want_i = index.search(users, 10)
        for uri in (mem, str(tmp_path / "out" / "items.faiss")):
            back = read_index_file(uri)
            got_d, got_i = back.search(users, 10)
            assert back.ntotal == 500 and (got_i == want_i).all() and np.allclose(got_d, want_d)
    finally:
        fs.rmtree(mem.rsplit("/", 2)[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from recsys_batch.training.synthetic import World, build_warehouse
    from recsys_batch.training.train import run_train

    root = tmp_path_factory.mktemp("wh")
    base = [f"warehouse.root={root}", "train.batch_size=256", "train.num_workers=0", "train.progress=false",
            "train.hidden_dims=[16]", "train.embedding_dim=16"]
    cfg = load_config(None, base)
    build_warehouse(cfg, World(200, 900, 4, seed=8), [date(2026, 1, 1)])
    run_train(cfg, date(2026, 1, 1))
    return base


def test_run_index_writes_recall_two_tower_without_seen_items(trained):
    from recsys_batch.io.delta_read import read_partition

    cfg = load_config(None, trained + ["index.top_n=50"])
    d = date(2026, 1, 1)
    rep = run_index(cfg, d)
    assert rep.kind == "exact" and rep.recall == 1.0
    assert fs.listdir(rep.path) == ["index_report.json", "items.faiss", "items.parquet"]
    assert read_index_file(f"{rep.path}/items.faiss").ntotal == rep.n_items == 900
    assert fs.read_json(f"{rep.path}/index_report.json")["rows"] == rep.rows
    rec = read_partition(cfg.warehouse, "recall_two_tower", d)
    seen = read_partition(cfg.warehouse, "user_item_matrix", d)
    pairs = set(zip(rec["user_id"].to_pylist(), rec["item_id"].to_pylist(), strict=True))
    assert len(pairs) == rec.num_rows == rep.users * 50
    assert not pairs & set(zip(seen["user_id"].to_pylist(), seen["item_id"].to_pylist(), strict=True))
    ranks = rec.filter(pc.equal(rec["user_id"], rec["user_id"][0])).sort_by("rank")
    assert ranks["rank"].to_pylist() == list(range(1, 51))
    assert ranks["score"].to_pylist() == sorted(ranks["score"].to_pylist(), reverse=True)


def test_run_index_fails_below_the_recall_floor(trained):
    cfg = load_config(None, trained + ["index.exact_max_items=10", "index.kind=ivf", "index.ivf_nlist=20",
                                       "index.ivf_nprobe=1", "index.ivf_train_size=1000"])
    with pytest.raises(IndexRecallTooLow, match=r"recall@100 = 0\.\d+ < index.min_recall 0\.95"):
        run_index(cfg, date(2026, 1, 1))
    ok = load_config(None, trained + ["index.exact_max_items=10", "index.kind=hnsw"])
    assert run_index(ok, date(2026, 1, 1)).recall >= 0.95
