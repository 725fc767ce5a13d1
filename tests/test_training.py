"""Two-tower training: loss formulas, warm start, streaming coverage, quality, DDP, export."""

from __future__ import annotations

import math
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recsys_batch.config import TrainConfig, load_config
from recsys_batch.training.checkpoint import load_checkpoint, warm_start
from recsys_batch.training.data import (
    RECALL_SAMPLE_COLUMNS, SampleStream, count_rows, holdout_cutoff, list_units, make_loader, recall_contract_violations,
    sample_files,
)
from recsys_batch.training.evaluate import ranking_metrics
from recsys_batch.training.features import build_layout
from recsys_batch.training.loss import batch_loss, bce_row_weights, softmax_columns, softmax_logits
from recsys_batch.training.model import TwoTower, shape_from_layouts
from recsys_batch.training.synthetic import World, make_samples, make_spec, write_shards
from recsys_batch.training.train import build_model, fresh_epochs, seed_everything, train

torch.set_num_threads(1)
D1 = date(2026, 1, 1)


def test_jvm_free_stages_import_no_pyspark():
    """train / train_ranking / index / publish run where there is no JVM (GPU boxes, torchrun): no pyspark."""
    import subprocess
    import sys

    code = ("import sys, recsys_batch.training.train, recsys_batch.index.build, recsys_batch.publish.release, "
            "recsys_batch.training.export, recsys_batch.ranking.train; print('pyspark' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


# ---- losses against hand-computed values ------------------------------------------------------------------
#
# One batch of five rows, as SampleStream yields them (rows shuffled: positives and negatives interleaved):
#   row 0 positive item 10  pf .5   q .3   v (1, 0)      user (1, 0)
#   row 1 easy     item 12  pf 0    q .2   v (0, -1)
#   row 2 positive item 11  pf .25  q .1   v (.6, .8)    user (0, 1)
#   row 3 hard     item 13  pf 0    q .05  v (.8, .6)
#   row 4 easy     item 11  pf .25  q .1   v (.6, .8)    (= row 2's positive item)
# temperature .5, so s = 2 cos.

def _batch(label_weight=(2.0, 0.0, 1.0, 0.0, 0.0)) -> tuple[dict, torch.Tensor, torch.Tensor]:
    batch = {"label": torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0]), "source": torch.tensor([0, 1, 0, 2, 1], dtype=torch.int8),
             "pos_freq": torch.tensor([0.5, 0.0, 0.25, 0.0, 0.25]), "samp_prob": torch.tensor([0.3, 0.2, 0.1, 0.05, 0.1]),
             "weight": torch.tensor(label_weight), "user": {}, "item": {"ids": torch.tensor([10, 12, 11, 13, 11])}}
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[1.0, 0.0], [0.0, -1.0], [0.6, 0.8], [0.8, 0.6], [0.6, 0.8]])
    return batch, u, v


def _lse(xs: list[float]) -> float:
    return math.log(sum(math.exp(x) for x in xs))


def test_softmax_logq_corrects_stored_negatives_with_their_own_probability():
    batch, u, v = _batch()
    tc = TrainConfig(temperature=0.5, loss="softmax", logq_correction=True, stored_negatives=True)
    cols, log_q = softmax_columns(batch, tc)
    assert cols.tolist() == [0, 2, 1, 4]  # positives, then the easy negatives; the hard one (row 3) is left out
    # 2 in-batch positives ~ pf, 2 easy negatives ~ q: Q = (2 pf + 2 q) / 4
    q = [(0.5 + 0.3) / 2, (0.25 + 0.1) / 2, (0 + 0.2) / 2, (0.25 + 0.1) / 2]  # .4, .175, .1, .175
    assert torch.allclose(log_q, torch.log(torch.tensor(q)), atol=1e-6)
    lq = [math.log(x) for x in q]
    row0 = [2 - lq[0], 1.2 - lq[1], 0 - lq[2], 1.2 - lq[3]]
    row1 = [0 - lq[0], 1.6 - lq[1], -2 - lq[2], -math.inf]  # row 4 is row 2's own positive item: masked
    got = softmax_logits(u, v[cols], 0.5, log_q, torch.tensor([10, 11]), batch["item"]["ids"][cols])
    assert torch.allclose(got, torch.tensor([row0, row1]), atol=1e-5)
    want = ((_lse(row0) - row0[0]) + (_lse(row1[:3]) - row1[1])) / 2
    assert want == pytest.approx(0.703651, abs=1e-6)
    loss = batch_loss(lambda user, item: (u, v), batch, tc)
    assert loss.item() == pytest.approx(want, abs=1e-5)
    # the stored negatives hold a real share of row 0's softmax mass (~0.2% with the old in-batch-only logQ)
    p0 = torch.softmax(got[0], 0)
    assert (p0[2] + p0[3]).item() == pytest.approx(0.436216, abs=1e-5)


def test_softmax_without_logq_uses_every_stored_negative_raw():
    batch, u, v = _batch()
    tc = TrainConfig(temperature=0.5, loss="softmax", logq_correction=False, stored_negatives=True)
    cols, log_q = softmax_columns(batch, tc)
    assert cols.tolist() == [0, 2, 1, 3, 4] and log_q is None
    row0, row1 = [2, 1.2, 0, 1.6, 1.2], [0, 1.6, -2, 1.2]  # row 1: row 4 (its own item) masked
    want = ((_lse(row0) - row0[0]) + (_lse(row1) - row1[1])) / 2
    assert want == pytest.approx(0.818230, abs=1e-6)
    assert batch_loss(lambda user, item: (u, v), batch, tc).item() == pytest.approx(want, abs=1e-5)
    # in-batch only with logQ: Q = pf, the same item as another user's positive masked
    tc = TrainConfig(temperature=0.5, logq_correction=True, stored_negatives=False)
    row0, row1 = [2 - math.log(0.5), 1.2 - math.log(0.25)], [0 - math.log(0.5), 1.6 - math.log(0.25)]
    want = ((_lse(row0) - row0[0]) + (_lse(row1) - row1[1])) / 2
    assert batch_loss(lambda user, item: (u, v), batch, tc).item() == pytest.approx(want, abs=1e-5)
    same = softmax_logits(u, v[[0, 2]], 0.5, None, torch.tensor([10, 10]), torch.tensor([10, 10]))
    assert same[0, 1] == -math.inf and same[1, 0] == -math.inf and same[0, 0] == 2.0


def test_bce_weights_positives_by_label_weight_and_negatives_by_one():
    batch, _, v = _batch()
    tc = TrainConfig(temperature=0.5, loss="bce")
    # bce: a user vector per row (rows 0, 1 of user (1, 0); row 2 .. 4 of user (0, 1))
    u_rows = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    assert bce_row_weights(batch["label"], batch["weight"]).tolist() == [2.0, 1.0, 1.0, 1.0, 1.0]
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731 - softplus: BCE(z, 1) = sp(-z), BCE(z, 0) = sp(z)
    logits = [2.0, 0.0, 1.6, 1.2, 1.6]
    want = (2 * sp(-logits[0]) + sp(logits[1]) + sp(-logits[2]) + sp(logits[3]) + sp(logits[4])) / 5
    assert want == pytest.approx(0.875617, abs=1e-6)
    loss = batch_loss(lambda user, item: (u_rows, v), batch, tc)
    assert loss.item() == pytest.approx(want, abs=1e-5)
    # every negative gets a gradient (label_weight is 0 on them: used as the row weight it muted them)
    vv = v.clone().requires_grad_(True)
    batch_loss(lambda user, item: (u_rows, vv), batch, tc).backward()
    assert all(vv.grad[r].abs().sum() > 0 for r in (1, 3, 4))


@pytest.mark.parametrize("kind, want", [
    ("hinge", (0.0 + 0.2 + 0.0 + 0.0 + 0.2) / 5),  # max(0, .4 - d), margin .4
    ("log", None),
])
def test_pairwise_hinge_and_log(kind, want):
    batch, u, v = _batch()
    # every (positive, stored negative) pair, the same item left out: d = cos+ - cos-
    # row 0 (item 10): cos+ = 1, cos- = (0, .8, .6) -> d = (1, .2, .4)
    # row 2 (item 11): cos+ = .8, cos- = (-1, .6) -> d = (1.8, .2); row 4 is item 11 itself
    d = [1.0, 0.2, 0.4, 1.8, 0.2]
    if want is None:
        want = sum(math.log1p(math.exp(-(x - 0.3) / 0.5)) for x in d) / 5
        assert want == pytest.approx(0.492684, abs=1e-6)
    tc = TrainConfig(temperature=0.5, loss="pairwise", pairwise_kind=kind, margin=0.3 if kind == "log" else 0.4)
    assert batch_loss(lambda user, item: (u, v), batch, tc).item() == pytest.approx(want, abs=1e-6)


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


def test_dropout_is_training_only_and_keeps_the_checkpoint_layout():
    spec = make_spec(World(20, 30, 2, seed=0))
    kw = dict(hidden_dims=[8, 8], embedding_dim=4, id_embedding_dim=4, feature_embedding_dim=2)
    plain, _, _ = build_model(spec, None, TrainConfig(**kw))
    drop, ul, il = build_model(spec, None, TrainConfig(dropout=0.5, id_dropout=0.5, **kw))
    assert list(plain.state_dict()) == list(drop.state_dict())  # checkpoints load into a model without dropout
    t = make_samples(World(20, 30, 2, seed=0), D1, 2.0)
    s = SampleStream([], ul, il, 64)
    b = s.encode(t.append_column("_row", pa.array(np.arange(t.num_rows))))
    drop.eval()
    u1, u2 = drop.user(b["user"]), drop.user(b["user"])
    assert torch.equal(u1, u2)  # eval: no dropout
    drop.train()
    torch.manual_seed(0)
    assert not torch.allclose(drop.user(b["user"]), u1)


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
                         id_embedding_dim=8, feature_embedding_dim=4, learning_rate=0.01, dropout=0.0, id_dropout=0.0)
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
    # no dropout: the comparison is of the gradient averaging, not of two random streams
    tc = TrainConfig(batch_size=128, max_steps=6, num_workers=0, hidden_dims=[16], embedding_dim=16,
                     id_embedding_dim=8, feature_embedding_dim=4, learning_rate=0.01, dropout=0.0, id_dropout=0.0)
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
                             "train.progress=false", "train.hidden_dims=[16]", "train.embedding_dim=16",
                             "train.epochs=1", "train.fresh_min_steps=1", "train.dropout=0.2", "train.id_dropout=0.3"])
    w = World(150, 200, 4, seed=2)
    d1, d2 = date(2026, 1, 1), date(2026, 1, 2)
    build_warehouse(cfg, w, [d1, d2], known_items=190)

    def train_rows(d: date) -> int:
        t = pa.concat_tables([pq.read_table(f, columns=["ts"]) for f in sample_files(cfg.warehouse, d)[0]])
        return int(pa.compute.sum(pa.compute.less(t["ts"], holdout_cutoff(d, cfg.train.holdout_hours))).as_py())

    n1 = train_rows(d1)
    assert count_rows(sample_files(cfg.warehouse, d1)[0], holdout_cutoff(d1, 4.0)) == n1
    per_epoch = math.ceil(n1 / 256)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"fresh_min_steps": 2 * per_epoch + 1})})
    assert fresh_epochs(n1, cfg.train) == 3
    r1 = run_train(cfg, d1)
    assert r1.warm_start_from is None and r1.examples == 3 * n1  # fresh: whole epochs up to train.fresh_min_steps
    r2 = run_train(cfg, d2)
    assert r2.warm_start_from.endswith("dt=2026-01-01/checkpoint.pt")
    assert r2.examples == train_rows(d2)  # warm start: train.epochs
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
    from recsys_batch.training.synthetic import user_features

    uf = user_features(w)
    row = uf.filter(pa.compute.equal(uf["user_id"], uid)).to_pylist()[0]
    raw.update(gender=row["gender"], age=row["age"])
    vec = emb.embed(raw)
    want = np.asarray(users["embedding"][0].as_py(), np.float32)
    assert vec.shape == want.shape and np.allclose(vec, want, atol=1e-5)
    ck = load_checkpoint(r2.checkpoint)
    assert ck["extra"]["model_version"] == r2.model_version


# ---- the synthetic samples are what the samples stage writes ---------------------------------------------

def _stage_recall_shard(spark, tmp_path) -> pa.Table:
    """Recall samples of a tiny day built by the samples stage's own code, written as its shards."""
    from datetime import datetime, timezone

    from recsys_batch.config import Config, FeaturesConfig, SamplesConfig, WarehouseConfig
    from recsys_batch.samples.shards import write_shards as stage_write_shards
    from recsys_batch.samples.stage import build_samples
    from recsys_batch.schemas import EVENTS, RANK_LOGS, item_features_schema, user_features_schema
    from pyspark.sql import types as T

    d = date(2026, 11, 20)

    def at(h, m=0):
        return datetime(2026, 11, 20, h, m, tzinfo=timezone.utc)

    events = spark.createDataFrame([
        ("u1", "a", "impression", at(10), None, "r1", 0), ("u1", "a", "click", at(10, 1), None, "r1", 0),
        ("u1", "b", "impression", at(10), None, "r1", 1), ("u1", "h", "click", at(11, 1), None, "r2", 0),
        ("u1", "h", "like", at(11, 2), None, "r2", 0), ("u2", "a", "click", at(12, 1), None, "r3", 0),
        ("u3", "c", "share", at(13), None, "r4", 0),
    ], EVENTS)
    rank_logs = spark.createDataFrame(
        [("r1", "u1", "d", at(9), "prerank", False), ("r3", "u2", "e", at(9), "rank", False)], RANK_LOGS)

    def feature_df(schema: T.StructType, rows: list[dict]):
        def default(f):
            t = f.dataType
            if isinstance(t, T.ArrayType):
                return []
            if isinstance(t, T.StringType):
                return None if f.nullable else "x"
            return False if isinstance(t, T.BooleanType) else 0.0 if isinstance(t, T.DoubleType) else 0
        return spark.createDataFrame([tuple(r.get(f.name, default(f)) for f in schema.fields) for r in rows], schema)

    fc = FeaturesConfig()
    uf = feature_df(user_features_schema(fc), [{"user_id": u} for u in ("u1", "u2", "u3")])
    itf = feature_df(item_features_schema(fc), [{"item_id": i, "clicks_7d": n} for i, n in
                                                 (("a", 50), ("b", 5), ("c", 10), ("d", 1), ("e", 1), ("h", 20),
                                                  ("k", 30), ("m", 40), ("n", 8))])
    cfg = Config(warehouse=WarehouseConfig(root=str(tmp_path / "wh")),
                 samples=SamplesConfig(negatives_per_positive=4, hard_negative_ratio=0.25, easy_oversample=4.0,
                                       hot_item_share_threshold=None, rows_per_file=1000))
    from datetime import timedelta

    from pyspark.sql import functions as F

    from recsys_batch.samples.common import Snapshot, plan_frame, window_label_events

    prev = (d - timedelta(days=1)).isoformat()  # features of D - 1: the exact point-in-time snapshot
    plan = plan_frame(spark, {d: Snapshot(d - timedelta(days=1), "exact")})
    recall, _ = build_samples(window_label_events(events, d, d, cfg.events.weights), rank_logs,
                              uf.withColumn("dt", F.lit(prev)), itf.withColumn("dt", F.lit(prev)), plan, itf, None,
                              d, cfg)
    stage_write_shards(recall, cfg.warehouse, "recall", d, cfg.samples, ["group_id", "item_id", "source"])
    folder = tmp_path / "wh" / "samples" / "recall" / "dt=2026-11-20"
    return pq.read_table(sorted(folder.glob("part-*.parquet"))[0])


def test_synthetic_samples_match_the_samples_stage_schema_and_meaning(spark, tmp_path):
    stage = _stage_recall_shard(spark, tmp_path)
    w = World(50, 80, 4, seed=3)
    files = write_shards(make_samples(w, D1, 3.0), tmp_path / "synthetic", 10_000, 512)
    synth = pq.read_table(files[0])
    assert set(stage["source"].to_pylist()) == set(synth["source"].to_pylist()) == {"positive", "easy", "hard"}
    for c in RECALL_SAMPLE_COLUMNS:  # the same Arrow type in both shard files (timestamps: any unit)
        a, b = stage.schema.field(c).type, synth.schema.field(c).type
        assert a == b or (pa.types.is_timestamp(a) and pa.types.is_timestamp(b)), (c, a, b)
    assert recall_contract_violations(stage) == []
    assert recall_contract_violations(synth) == []
    # what the stage writes, seen through the contract: label_weight = strongest event's weight, 0 on negatives
    rows = stage.to_pylist()
    lw = {(r["user_id"], r["item_id"]): r["label_weight"] for r in rows if r["label"] == 1}
    assert lw == {("u1", "a"): 1.0, ("u1", "h"): 2.0, ("u2", "a"): 1.0, ("u3", "c"): 4.0}
    assert {r["label_weight"] for r in rows if r["label"] == 0} == {0.0}
    # the check catches what the old synthetic writer did: label_weight 1.0 on every row
    old = synth.set_column(synth.schema.get_field_index("label_weight"), "label_weight",
                           pa.array([1.0] * synth.num_rows))
    assert "label_weight != 0 on a negative" in recall_contract_violations(old)


def test_stream_batches_carry_source_and_both_probabilities(shards):
    w, t, files = shards
    b = next(iter(_stream(w, t, files)))
    t = pa.concat_tables([pq.read_table(f) for f in files])  # row_id: file order, then row order
    rows = {r: i for i, r in enumerate(b["row_id"].tolist())}
    src = {"positive": 0, "easy": 1, "hard": 2}
    for r, i in list(rows.items())[:50]:
        assert b["source"][i].item() == src[t["source"][r].as_py()]
        assert b["samp_prob"][i].item() == pytest.approx(t["item_sampling_prob"][r].as_py(), rel=1e-6)
        assert b["pos_freq"][i].item() == pytest.approx(t["item_pos_freq"][r].as_py(), rel=1e-6)
        assert b["weight"][i].item() == t["label_weight"][r].as_py()
