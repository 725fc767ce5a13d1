"""Two-tower training: loss formulas, warm start, streaming coverage, quality, DDP, export."""

from __future__ import annotations

import math
from datetime import date

import numpy as np
import pytest
import torch

from recsys_batch.config import TrainConfig, load_config
from recsys_batch.training.checkpoint import load_checkpoint, warm_start
from recsys_batch.training.data import SampleStream, list_units, make_loader
from recsys_batch.training.evaluate import ranking_metrics
from recsys_batch.training.features import build_layout
from recsys_batch.training.loss import log_q_of, sampled_softmax_loss, softmax_logits
from recsys_batch.training.model import TwoTower, shape_from_layouts
from recsys_batch.training.synthetic import World, make_samples, make_spec, write_shards
from recsys_batch.training.train import build_model, seed_everything, train

torch.set_num_threads(1)
D1 = date(2026, 1, 1)


def test_jvm_free_stages_import_no_pyspark():
    """train / index / publish run where there is no JVM (GPU boxes, torchrun): they must not load pyspark."""
    import subprocess
    import sys

    code = ("import sys, recsys_batch.training.train, recsys_batch.index.build, recsys_batch.publish.release, "
            "recsys_batch.training.export; print('pyspark' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_softmax_logits_and_logq_on_a_hand_computed_batch():
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v_pos = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    p = torch.tensor([0.5, 0.25])
    v_neg = torch.tensor([[0.0, -1.0], [0.6, 0.8]])
    # row 0: [1/0.5 - ln .5, 0.6/0.5 - ln .25, 0/0.5, 0.6/0.5]; row 1: [0 - ln .5, 0.8/0.5 - ln .25, -2, -inf (= own item)]
    got = softmax_logits(u, v_pos, 0.5, log_q_of(p), torch.tensor([10, 11]), v_neg, torch.tensor([12, 11]))
    ln2, ln4 = math.log(2), math.log(4)
    want = torch.tensor([[2 + ln2, 1.2 + ln4, 0.0, 1.2], [ln2, 1.6 + ln4, -2.0, -math.inf]])
    assert torch.allclose(got, want, atol=1e-6)
    loss = sampled_softmax_loss(u, v_pos, 0.5, log_q_of(p), torch.tensor([10, 11]), v_neg, torch.tensor([12, 11]))
    r0 = -(want[0, 0] - torch.logsumexp(want[0], 0))
    r1 = -(want[1, 1] - torch.logsumexp(want[1, :3], 0))
    assert loss.item() == pytest.approx(((r0 + r1) / 2).item(), abs=1e-6)
    # the same item as another user's positive is masked, not a negative
    same = softmax_logits(u, v_pos, 0.5, None, torch.tensor([10, 10]))
    assert same[0, 1] == -math.inf and same[1, 0] == -math.inf and same[0, 0] == 2.0


def _spec(vocab: list[str]) -> dict:
    w = World(10, 10, 2, seed=0)
    spec = make_spec(w)
    for e in spec["features"]:
        if e["name"] == "item_id":
            e["vocab"] = vocab
    return spec


def test_warm_start_keeps_known_rows_and_grows_new_ones():
    tc = TrainConfig(hidden_dims=[8], embedding_dim=4, id_embedding_dim=4, feature_embedding_dim=2)
    old_spec, new_spec = _spec(["a", "b", "c"]), _spec(["c", "a", "d", "e", "f"])
    torch.manual_seed(0)
    ou, oi = build_layout(old_spec, "user"), build_layout(old_spec, "item")
    old = TwoTower(shape_from_layouts(ou, oi, tc))
    nu, ni = build_layout(new_spec, "user"), build_layout(new_spec, "item")
    new = TwoTower(shape_from_layouts(nu, ni, tc))
    fresh = new.item_tower.id_table.weight.detach().clone()
    from recsys_batch.training.checkpoint import layout_meta

    ck = {"state_dict": old.state_dict(), "layouts": {"user": layout_meta(ou), "item": layout_meta(oi)}}
    stats = warm_start(new, ck, nu, ni)
    ow, nw = old.item_tower.id_table.weight, new.item_tower.id_table.weight
    assert nw.shape[0] == 5 + 4 + 1 > ow.shape[0] == 3 + 4 + 1  # grown
    # index: 0 missing, vocab 1..V, then 4 OOV rows
    for v, (i_old, i_new) in {"a": (1, 2), "c": (3, 1)}.items():
        assert torch.equal(nw[i_new], ow[i_old]), v
    assert torch.equal(nw[0], ow[0])
    assert torch.equal(nw[6:10], ow[4:8])  # OOV (hash) rows, same bucket count
    for i_new in (3, 4, 5):  # d, e, f: new ids keep their fresh rows
        assert torch.equal(nw[i_new], fresh[i_new])
    assert stats["item.id"] == {"kept": 1 + 2 + 4, "new": 3}
    assert torch.equal(new.item_tower.mlp[0].weight, old.item_tower.mlp[0].weight)
    assert new.user_tower.seq_table is new.item_tower.id_table  # last-N pooling still shares the item table


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    w = World(200, 300, 4, seed=5)
    t = make_samples(w, D1, 3.0)
    files = write_shards(t, tmp_path_factory.mktemp("s") / "recall" / "dt=2026-01-01", 1000, 256)
    return w, t, files


def _stream(w, t, files, rank=0, world=1, batch=128):
    spec = make_spec(w)
    return SampleStream(files, build_layout(spec, "user", t.column_names), build_layout(spec, "item", t.column_names),
                        batch, seed=3, rank=rank, world_size=world, shuffle_row_groups=2, units=list_units(files))


def test_stream_covers_every_row_once_across_workers_and_ranks(shards):
    w, t, files = shards
    assert len(list_units(files)) >= 8
    seen: list[int] = []
    for rank in (0, 1):
        s = _stream(w, t, files, rank, 2)
        s.set_epoch(1)
        for b in make_loader(s, num_workers=2):
            seen += b["row_id"].tolist()
            assert int((b["label"] > 0.5).sum()) == b["user"]["ids"].shape[0]
    assert sorted(seen) == list(range(t.num_rows))
    # another epoch is another order, same rows
    s = _stream(w, t, files)
    s.set_epoch(2)
    rows2 = [r for b in s for r in b["row_id"].tolist()]
    assert sorted(rows2) == list(range(t.num_rows)) and rows2 != sorted(rows2)


def test_tiny_model_beats_popularity_on_recall_at_50(tmp_path):
    w = World(300, 400, 6, seed=11, in_cluster=0.9)
    days = [date(2026, 1, d) for d in range(1, 5)]
    tables = [make_samples(w, d, 3.0, seed=1) for d in days]
    train_t, test_t = tables[:-1], tables[-1]
    import pyarrow as pa

    t = pa.concat_tables(train_t)
    files = write_shards(t, tmp_path / "train", 5000, 1024)
    spec = make_spec(w)
    tc = TrainConfig(batch_size=256, epochs=4, learning_rate=0.01, num_workers=0, hidden_dims=[32],
                     embedding_dim=32, id_embedding_dim=16, feature_embedding_dim=4)
    seed_everything(0)
    model, ul, il = build_model(spec, t.column_names, tc)
    train(model, SampleStream(files, ul, il, tc.batch_size, 0, units=list_units(files)), tc)
    # held-out day: one state row per user (first positive), truth = its positives of that day
    pos = test_t.filter(pa.compute.equal(test_t["label"], 1))
    users, first = np.unique(np.asarray(pos["user_id"].to_pylist(), dtype=object), return_index=True)
    states = pos.take(pa.array(first))
    truth: dict[str, set[str]] = {}
    for u, i in zip(pos["user_id"].to_pylist(), pos["item_id"].to_pylist(), strict=True):
        truth.setdefault(u, set()).add(i)
    seen = {u: set(x) for u, x in zip(states["user_id"].to_pylist(), states["lastn_items"].to_pylist(), strict=True)}
    from recsys_batch.training.export import embed_table
    from recsys_batch.training.synthetic import item_features

    items = item_features(w)
    ivec = embed_table(model, build_layout(spec, "item", items.column_names, source="table"), items, "item")
    uvec = embed_table(model, build_layout(spec, "user", states.column_names), states, "user")
    ids = np.asarray(items["item_id"].to_pylist(), dtype=object)
    model_recs = {}
    for j, u in enumerate(states["user_id"].to_pylist()):
        order = ids[np.argsort(-(uvec[j] @ ivec.T))]
        model_recs[u] = [i for i in order if i not in seen[u]][:50]
    counts = pa.compute.value_counts(t.filter(pa.compute.equal(t["label"], 1))["item_id"]).to_pylist()
    popular = [c["values"] for c in sorted(counts, key=lambda c: -c["counts"])]
    pop_recs = {u: [i for i in popular if i not in seen[u]][:50] for u in truth}
    m, p = ranking_metrics(model_recs, truth, [50]), ranking_metrics(pop_recs, truth, [50])
    assert m["recall@50"] > p["recall@50"] * 1.2, (m, p)


# ---- DDP: two CPU processes (gloo) == one process averaging the two ranks' losses -----------------------

def _ddp_worker(rank: int, world: int, files: list[str], cols: list[str], port: int, out: str) -> None:
    import torch.distributed as dist

    from recsys_batch.training.synthetic import World as W
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        w = W(200, 300, 4, seed=5)
        spec = make_spec(w)
        tc = TrainConfig(batch_size=128, max_steps=6, num_workers=0, hidden_dims=[16], embedding_dim=16,
                         id_embedding_dim=8, feature_embedding_dim=4, learning_rate=0.01)
        seed_everything(tc.seed)
        model, ul, il = build_model(spec, cols, tc)
        s = SampleStream(files, ul, il, tc.batch_size, 3, rank, world, 2, units=list_units(files))
        res = train(model, s, tc)
        torch.save(torch.tensor(res.losses), f"{out}/losses_{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_single_process(shards, tmp_path):
    import socket

    import torch.multiprocessing as mp

    w, t, files = shards
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, files, t.column_names, port, str(tmp_path)), nprocs=2, join=True)
    ddp = (torch.load(tmp_path / "losses_0.pt") + torch.load(tmp_path / "losses_1.pt")) / 2

    # reference: one process, one model, each step = mean of the losses of both ranks' batches
    from recsys_batch.training.loss import batch_loss

    spec = make_spec(w)
    tc = TrainConfig(batch_size=128, max_steps=6, num_workers=0, hidden_dims=[16], embedding_dim=16,
                     id_embedding_dim=8, feature_embedding_dim=4, learning_rate=0.01)
    seed_everything(tc.seed)
    model, ul, il = build_model(spec, t.column_names, tc)
    its = [iter(SampleStream(files, ul, il, tc.batch_size, 3, r, 2, 2, units=list_units(files))) for r in (0, 1)]
    opt = torch.optim.Adam(model.parameters(), lr=tc.learning_rate)
    ref = []
    for _ in range(6):
        losses = [batch_loss(model, next(it), tc) for it in its]
        loss = sum(losses) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        ref.append(float(loss.detach()))
    assert len(ddp) == 6
    assert torch.allclose(ddp, torch.tensor(ref), atol=1e-4), (ddp, ref)
    assert ref[-1] < ref[0]


# ---- the stage: warm start across days, exports, TorchScript user tower ----------------------------------

def test_run_train_warm_starts_and_exports_a_loadable_user_tower(tmp_path):
    from recsys_batch.io.delta_read import read_partition
    from recsys_batch.training.export import UserEmbedder
    from recsys_batch.training.synthetic import build_warehouse
    from recsys_batch.training.train import run_train

    cfg = load_config(None, [f"warehouse.root={tmp_path / 'wh'}", "train.batch_size=256", "train.num_workers=0",
                             "train.progress=false", "train.hidden_dims=[16]", "train.embedding_dim=16"])
    w = World(150, 200, 4, seed=2)
    d1, d2 = date(2026, 1, 1), date(2026, 1, 2)
    build_warehouse(cfg, w, [d1, d2], known_items=190)
    r1 = run_train(cfg, d1)
    assert r1.warm_start_from is None and r1.steps > 0
    r2 = run_train(cfg, d2)
    assert r2.warm_start_from.endswith("dt=2026-01-01/checkpoint.pt")
    assert r2.warm_start_rows["item.id"]["kept"] == 1 + 190 + 4
    items = read_partition(cfg.warehouse, "item_embeddings", d2)
    assert items.num_rows == 200  # the whole catalog, the 10 cold (out-of-vocabulary) items included
    users = read_partition(cfg.warehouse, "user_embeddings", d2)
    assert users.num_rows > 100
    # the TorchScript user tower embeds a user from raw values like the trained model does
    emb = UserEmbedder(str(tmp_path / "wh" / "models" / "two_tower" / "dt=2026-01-02"))
    uid = users["user_id"][0].as_py()
    u = int(uid[1:])
    raw = {"user_id": uid, "gender": None, "age": None, "is_new": u % 7 == 0,
           "top_categories": [f"c{w.user_cluster[u]}"], "lastn_items": [f"i{i}" for i in w.history[u][::-1][:20]]}
    import pyarrow as pa
    from recsys_batch.training.synthetic import user_features

    uf = user_features(w)
    row = uf.filter(pa.compute.equal(uf["user_id"], uid)).to_pylist()[0]
    raw.update(gender=row["gender"], age=row["age"])
    vec = emb.embed(raw)
    want = np.asarray(users["embedding"][0].as_py(), np.float32)
    assert vec.shape == want.shape and np.allclose(vec, want, atol=1e-5)
    ck = load_checkpoint(r2.checkpoint)
    assert ck["extra"]["model_version"] == r2.model_version
