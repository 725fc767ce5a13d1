"""Multi-task ranking model: layer shapes, DCN-v2 / DIN / losses / metrics / calibration / fusion against
hand-computed values, warm start with a grown vocabulary, the stage, the gate, export."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from recsys_batch.config import RankingConfig
from recsys_batch.ranking.calibration import (
    CalibratedModel, apply_calibrator, calibrate, downsample, fit_calibrator, fuse, fusion_vector, identity_calibrator,
    task_probabilities,
)
from recsys_batch.ranking.cross import CrossNetV2
from recsys_batch.ranking.din import DINAttention
from recsys_batch.ranking.experts import MMoE, PLE
from recsys_batch.ranking.loss import multitask_loss, task_losses
from recsys_batch.ranking.metrics import auc, calibration, gauc, logloss, ndcg
from recsys_batch.ranking.model import LogisticBaseline, RankingModel, RankingShape, run
from recsys_batch.training.model import TowerShape

torch.set_num_threads(1)


def _sp(x: float) -> float:  # softplus: BCE(z, 1) = sp(-z), BCE(z, 0) = sp(z)
    return math.log1p(math.exp(x))


# ---- layers ---------------------------------------------------------------------------------------------

def test_dcn_v2_cross_layers_match_hand_computed_values():
    net = CrossNetV2(2, layers=2, rank=None)
    with torch.no_grad():
        net.layers[0].u.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        net.layers[0].u.bias.copy_(torch.tensor([0.0, 1.0]))
        net.layers[1].u.weight.copy_(torch.eye(2))
        net.layers[1].u.bias.zero_()
    x0 = torch.tensor([[1.0, 2.0]])
    # x1 = x0 * (W x0 + b) + x0 = (1, 2) * ((1, 4) + (0, 1)) + (1, 2) = (2, 12)
    # x2 = x0 * (I x1) + x1 = (1 * 2, 2 * 12) + (2, 12) = (4, 36)
    assert net(x0).tolist() == [[4.0, 36.0]]
    # low rank: W = U V^T, U = (1, 1)^T, V = (1, -1)^T (rank 1), b = 0; one layer
    lr = CrossNetV2(2, layers=1, rank=1)
    with torch.no_grad():
        lr.layers[0].v.weight.copy_(torch.tensor([[1.0, -1.0]]))
        lr.layers[0].u.weight.copy_(torch.tensor([[1.0], [1.0]]))
        lr.layers[0].u.bias.zero_()
    # W x0 = (1 - 2) (1, 1) = (-1, -1); x1 = (1, 2) * (-1, -1) + (1, 2) = (0, 0)
    assert lr(x0).tolist() == [[0.0, 0.0]]
    assert CrossNetV2(5, 0)(torch.ones(3, 5)).shape == (3, 5)


def test_din_attention_is_masked_and_not_softmax_normalised():
    din = DINAttention(1, hidden=[])
    with torch.no_grad():  # a = 1 q + 1 k + 0 (q - k) + 1 (q k)
        din.first.weight.copy_(torch.tensor([[1.0, 1.0, 0.0, 1.0]]))
        din.first.bias.zero_()
    q = torch.tensor([[2.0]])
    keys = torch.tensor([[[1.0], [3.0], [5.0]]])
    mask = torch.tensor([[True, True, False]])
    # a = (2 + 1 + 2, 2 + 3 + 6, masked) = (5, 11, 0); v = 5 * 1 + 11 * 3 = 38 (a softmax would give <= 5)
    assert din(q, keys, mask).tolist() == [[38.0]]
    big = DINAttention(4, [8, 4])
    bq, bk, bm = torch.randn(3, 4), torch.randn(3, 6, 4), torch.rand(3, 6) > 0.3
    qe = bq.unsqueeze(1).expand_as(bk)  # the split first layer equals the MLP on the concatenation
    a = big.rest(big.first(torch.cat([qe, bk, qe - bk, qe * bk], -1))).squeeze(-1) * bm
    assert torch.allclose(big(bq, bk, bm), (a.unsqueeze(-1) * bk).sum(1), atol=1e-5)
    assert big(bq, bk, bm).shape == (3, 4)
    with torch.no_grad():  # the q - k input alone: a = (2 - 1, 2 - 3, 2 - 5), v = 1 x 1 - 1 x 3 - 3 x 5 = -17
        din.first.weight.copy_(torch.tensor([[0.0, 0.0, 1.0, 0.0]]))
    assert din(q, keys, torch.ones(1, 3, dtype=torch.bool)).tolist() == [[-17.0]]
    assert din(q, keys, torch.zeros(1, 3, dtype=torch.bool)).tolist() == [[0.0]]  # empty history


def test_mmoe_and_ple_give_one_vector_per_task():
    x = torch.randn(5, 12)
    mm = MMoE(12, n_tasks=6, n_experts=3, expert_dims=[16, 8])
    assert mm(x).shape == (6, 5, 8)
    for levels in (1, 2):
        ple = PLE(12, n_tasks=6, n_shared=2, n_task=1, expert_dims=[8], levels=levels)
        assert ple(x).shape == (6, 5, 8)
        assert len(ple.levels[-1].shared_gate) == 0  # the last level has no shared gate (no unused parameters)
        out = ple(x).sum()
        out.backward()
        assert all(p.grad is not None for p in ple.parameters())


def _shape(kind="mmoe", has_seq=True, **kw) -> RankingShape:
    return RankingShape(TowerShape(20, 30, 3, 1, 2, has_seq), TowerShape(25, 40, 4, 1, 1, False), kind,
                        id_embedding_dim=4, feature_embedding_dim=2, din_hidden_dims=(8,), expert_dims=(16,),
                        tower_dims=(8,), **kw)


def _inputs(b=7, seq_len=5, has_seq=True):
    g = torch.Generator().manual_seed(0)
    user = {"ids": torch.randint(0, 20, (b,), generator=g), "cat": torch.randint(1, 30, (b, 3), generator=g),
            "lists": torch.randint(0, 30, (b, 1, 8), generator=g), "dense": torch.randn(b, 2, generator=g)}
    if has_seq:
        user["seq"] = torch.randint(0, 25, (b, seq_len), generator=g)
    item = {"ids": torch.randint(0, 25, (b,), generator=g), "cat": torch.randint(1, 40, (b, 4), generator=g),
            "lists": torch.randint(0, 40, (b, 1, 8), generator=g), "dense": torch.randn(b, 1, generator=g)}
    return user, item


@pytest.mark.parametrize("kind", ["mmoe", "ple", "lr"])
def test_models_output_one_column_per_task(kind):
    for has_seq in (True, False):
        shape = _shape(kind, has_seq)
        model = LogisticBaseline(shape) if kind == "lr" else RankingModel(shape)
        user, item = _inputs(has_seq=has_seq)
        out = run(model, user, item)
        assert out.shape == (7, 6) and torch.isfinite(out).all()
        if not has_seq and kind != "mmoe":  # scripting is slow: the no-DIN variant once
            continue
        # the TorchScript serving module (calibration + fusion) gives the eager values
        from recsys_batch.ranking.export import RankingServing

        model.eval()
        serving = RankingServing(model, 0.25, {"click": 1.0, "like": 2.0, "watch_time": 0.5})
        scripted = torch.jit.script(serving)
        seq = user.get("seq", torch.zeros((7, 0), dtype=torch.int64))
        args = (user["ids"], user["cat"], user["lists"], user["dense"], seq, item["ids"], item["cat"], item["lists"],
                item["dense"])
        assert torch.allclose(scripted(*args), serving(*args), atol=1e-6) and scripted(*args).shape == (7, 7)
        # with a post-hoc calibration map (here g(z) = 2 z - 1 on click, 0.5 z on like): the exported module
        # applies it to the logits before the alpha correction / the conditional sigmoid
        cal = identity_calibrator(5, 2)
        cal["slopes"][0], cal["bias"][0], cal["slopes"][1] = 2.0, -1.0, 0.5
        got = torch.jit.script(RankingServing(model, 0.25, {"click": 1.0}, cal))(*args)
        raw = model(*args)
        p_click = calibrate(torch.sigmoid(2 * raw[:, 0] - 1), 0.25)
        assert torch.allclose(got[:, 0], p_click, atol=1e-6)
        assert torch.allclose(got[:, 1], p_click * torch.sigmoid(0.5 * raw[:, 1]), atol=1e-6)
        assert torch.allclose(got[:, 2], p_click * torch.sigmoid(raw[:, 2]), atol=1e-6)  # collect: identity
    if kind != "lr":  # x0 width: 3 id vectors (user, item, DIN) + (3 + 1 + 4 + 1) fields x 2 + 2 + 1 dense
        assert RankingModel(_shape(kind)).inputs.out_dim == 3 * 4 + 9 * 2 + 3
        assert RankingModel(_shape(kind, False)).inputs.out_dim == 2 * 4 + 9 * 2 + 3
    assert RankingShape.from_dict(_shape(kind).to_dict()) == _shape(kind)


# ---- pre-rank model ---------------------------------------------------------------------------------------

def _prerank(has_seq=True, pairs=(("list", 0, "cat", 0),), lookups=None):
    from recsys_batch.ranking.prerank import PrerankModel, PrerankShape

    shape = PrerankShape(TowerShape(20, 30, 3, 1, 2, has_seq), TowerShape(25, 40, 4, 1, 1, False), id_embedding_dim=2,
                         feature_embedding_dim=2, tower_dims=(), vector_dim=2, cross_dims=(), pairs=pairs)
    return PrerankModel(shape, lookups if lookups is not None else [np.zeros(40, np.int64) for _ in pairs])


def test_prerank_towers_shapes_and_the_score_is_the_sum_of_the_three_towers():
    from recsys_batch.ranking.export import PrerankServing
    from recsys_batch.ranking.prerank import PrerankShape

    for has_seq in (True, False):
        m = _prerank(has_seq)
        user, item = _inputs(has_seq=has_seq)
        seq = user.get("seq", torch.zeros((7, 0), dtype=torch.int64))
        u = m.user_vector(user["ids"], user["cat"], user["lists"], user["dense"], seq)
        v = m.item_vector(item["ids"], item["cat"], item["lists"], item["dense"])
        x = m.cross_features(user["cat"], user["lists"], seq, item["ids"], item["cat"], item["lists"])
        assert u.shape == v.shape == (7, 2) and x.shape == (7, 5)
        assert run(m, user, item).shape == (7, 1)
    assert PrerankShape.from_dict(m.shape.to_dict()) == m.shape
    # a hand-set case: the towers are single linear layers picking the id embeddings, the cross tower a linear map
    lookup = np.zeros(40, np.int64)
    lookup[7] = 12  # item fused row 7 (say i_category = "c1") <-> user fused row 12 (u_top_categories has "c1")
    m = _prerank(lookups=[lookup])
    with torch.no_grad():
        m.user_id.weight[3] = torch.tensor([1.0, 2.0])
        m.item_id.weight[4] = torch.tensor([3.0, -1.0])  # the candidate
        m.item_id.weight[5] = torch.tensor([1.0, 1.0])   # history items
        m.item_id.weight[6] = torch.tensor([0.0, 2.0])
        m.user_tower[-1].weight.zero_(), m.user_tower[-1].bias.zero_()
        m.user_tower[-1].weight[0, 0] = m.user_tower[-1].weight[1, 1] = 1.0  # u = e_user(id)
        m.item_tower[-1].weight.zero_(), m.item_tower[-1].bias.zero_()
        m.item_tower[-1].weight[0, 0] = m.item_tower[-1].weight[1, 1] = 1.0  # v = e_item(id)
        m.cross_tower[-1].weight.copy_(torch.tensor([[1.0, 0.5, 0.25, 2.0, 3.0]]))
        m.cross_tower[-1].bias.fill_(-1.0)
        m.bias.fill_(0.5)
    u_ids, u_cat, u_dense = torch.tensor([3, 3]), torch.tensor([[1, 2, 3], [1, 2, 3]]), torch.zeros(2, 2)
    u_lists = torch.tensor([[[12, 0, 0, 0, 0, 0, 0, 0]], [[11, 0, 0, 0, 0, 0, 0, 0]]])
    seq = torch.tensor([[5, 4, 6, 0], [0, 0, 0, 0]])
    i_ids, i_cat = torch.tensor([4, 4]), torch.tensor([[7, 1, 1, 1], [7, 1, 1, 1]])
    i_lists, i_dense = torch.zeros(2, 1, 8, dtype=torch.long), torch.zeros(2, 1)
    x = m.cross_features(u_cat, u_lists, seq, i_ids, i_cat, i_lists)
    # row 0: candidate 4 in the last-N; dots with e(5), e(4), e(6) = 2, 10, -2 -> mean 10/3, max 10; a history;
    #        the item's category row 7 -> user row 12, among the user's values. row 1: empty history, row 11
    assert torch.allclose(x, torch.tensor([[1.0, 10 / 3, 10.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0]]))
    # <u, v> = (1, 2) . (3, -1) = 1; cross = 1 + 0.5 * 10/3 + 0.25 * 10 + 2 + 3 - 1 = 7.5 + 5/3; bias 0.5
    args = (u_ids, u_cat, u_lists, u_dense, seq, i_ids, i_cat, i_lists, i_dense)
    want = torch.tensor([1.0 + 7.5 + 5 / 3 + 0.5, 1.0 - 1.0 + 0.5])
    assert torch.allclose(m(*args)[:, 0], want)
    # serving: TorchScript, calibrated; the cached path (user vector, item vector, cross logit) gives the same
    scripted = torch.jit.script(PrerankServing(m, 0.25))
    q = torch.sigmoid(want)
    assert torch.allclose(scripted(*args), 0.25 * q / (1 - q + 0.25 * q))
    cached = scripted.score_cached(scripted.user_vector(u_ids, u_cat, u_lists, u_dense, seq),
                                   scripted.item_vector(i_ids, i_cat, i_lists, i_dense),
                                   scripted.cross_logit(u_cat, u_lists, seq, i_ids, i_cat, i_lists))
    assert torch.allclose(cached, scripted(*args))


def test_prerank_distillation_loss_matches_hand_computed_values():
    from recsys_batch.ranking.prerank import distill_loss

    z, y, zt = torch.tensor([1.0, -2.0]), torch.tensor([0.0, 1.0]), torch.tensor([math.log(3.0), 0.0])
    hard = (_sp(1.0) + _sp(2.0)) / 2  # BCE(1, 0) = sp(1), BCE(-2, 1) = sp(2)
    # soft targets sigmoid(zt) = 0.75, 0.5: BCE(z, t) = t sp(-z) + (1 - t) sp(z)
    soft = ((0.75 * _sp(-1.0) + 0.25 * _sp(1.0)) + (0.5 * _sp(2.0) + 0.5 * _sp(-2.0))) / 2
    assert math.isclose(float(distill_loss(z, y, zt, 0.25)), 0.75 * hard + 0.25 * soft, rel_tol=1e-6)
    assert math.isclose(float(distill_loss(z, y, None, 0.25)), hard, rel_tol=1e-6)
    assert math.isclose(float(distill_loss(z, y, zt, 0.0)), hard, rel_tol=1e-6)
    assert math.isclose(float(distill_loss(z, y, zt, 1.0)), soft, rel_tol=1e-6)


# ---- loss, calibration, fusion ---------------------------------------------------------------------------

def test_masked_multitask_loss_matches_hand_computed_values():
    # three impressions; rows 0 and 2 clicked. outputs: click, like, collect, share, comment logits, log1p watch
    out = torch.tensor([[1.0, 0.5, 0.0, 0.0, 0.0, 2.0],
                        [-1.0, 3.0, 3.0, 3.0, 3.0, 9.0],   # not clicked: only its click logit counts
                        [0.0, -0.5, 1.0, 0.0, 0.0, 1.0]])
    labels = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 1.0, 0.0]])
    watch = torch.tensor([math.e - 1.0, 100.0, 0.0])  # log1p: 1, -, 0
    # per clicked row (conditional_loss: clicks): sums over the 2 clicked rows / 2
    per_click = [
        (_sp(-1.0) + _sp(-1.0) + _sp(0.0)) / 3,  # click: every row
        (_sp(-0.5) + _sp(-0.5)) / 2,              # like | click: rows 0 (y=1, z=.5), 2 (y=0, z=-.5)
        (_sp(0.0) + _sp(1.0)) / 2,                # collect | click
        (_sp(0.0) + _sp(0.0)) / 2,                # share | click
        (_sp(0.0) + _sp(0.0)) / 2,                # comment | click
        # watch: (pred - y)^2 / (2 s^2) on clicked rows, y = log1p s = 1, 0: s^2 = population variance = 1/4
        ((2.0 - 1.0) ** 2 + (1.0 - 0.0) ** 2) / (2 * 0.25) / 2,
    ]
    assert task_losses(out, labels, watch, per_impression=False).tolist() == pytest.approx(per_click, abs=1e-6)
    # per impression (the default, the joint likelihood): the same sums / 3 rows
    want = [per_click[0]] + [x * 2 / 3 for x in per_click[1:]]
    assert task_losses(out, labels, watch).tolist() == pytest.approx(want, abs=1e-6)
    total, per = multitask_loss(out, labels, watch, torch.tensor([1.0, 2.0, 0.0, 0.0, 0.0, 0.5]))
    assert total.item() == pytest.approx(want[0] + 2 * want[1] + 0.5 * want[5], abs=1e-6)
    # no clicked row: the conditional tasks add 0 (not NaN) and still backpropagate
    z = out.clone().requires_grad_(True)
    t, per = multitask_loss(z, torch.zeros(3, 5), watch)
    assert per[1:].tolist() == [0.0] * 5 and per[0].item() == pytest.approx((_sp(1) + _sp(-1) + _sp(0)) / 3, abs=1e-6)
    t.backward()
    assert z.grad[:, 1:].abs().sum() == 0 and z.grad[:, 0].abs().sum() > 0


def test_calibration_is_the_exact_inverse_of_down_sampling():
    # alpha .5, p .2: q = .2 / (.2 + .5 * .8) = 1/3; back: (.5 / 3) / (1 - 1/3 + .5 / 3) = .2
    assert downsample(torch.tensor(0.2, dtype=torch.float64), 0.5).item() == pytest.approx(1 / 3, abs=1e-15)
    assert calibrate(torch.tensor(1 / 3, dtype=torch.float64), 0.5).item() == pytest.approx(0.2, abs=1e-15)
    p = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
    for a in (0.01, 0.1, 0.5, 1.0):
        assert torch.allclose(calibrate(downsample(p, a), a), p, atol=1e-14, rtol=0)
    assert torch.equal(calibrate(p, 1.0), p)  # no down-sampling: identity


def test_post_hoc_calibration_map_on_hand_computed_values():
    # knots (-1, 1), slopes (.5, 2, 1), intercept .25: g(z) = .25 + .5 min(z, -1) + 2 clamp(z + 1, 0, 2)
    # + clamp(z - 1, 0, inf)
    knots, slopes, bias = torch.tensor([[-1.0, 1.0]]), torch.tensor([[0.5, 2.0, 1.0]]), torch.tensor([0.25])
    z = torch.tensor([[-3.0], [-1.0], [0.0], [1.0], [2.0]])
    want = [0.25 - 1.5, 0.25 - 0.5, 0.25 - 0.5 + 2.0, 0.25 - 0.5 + 4.0, 0.25 - 0.5 + 4.0 + 1.0]
    assert apply_calibrator(z, knots, slopes, bias)[:, 0].tolist() == pytest.approx(want)
    ident = identity_calibrator(5, 4)
    zz = torch.linspace(-8, 8, 33).unsqueeze(1).repeat(1, 5)
    assert torch.allclose(apply_calibrator(zz, ident["knots"], ident["slopes"], ident["bias"]), zz)
    # the wrapper maps the five binary columns and passes the watch column through
    class Raw(torch.nn.Module):
        def forward(self, *args):
            return torch.tensor([[-3.0, 0.0, 1.0, 2.0, -1.0, 7.0]])
    cal = identity_calibrator(5, 3)
    cal["knots"][0], cal["slopes"][0], cal["bias"][0] = knots[0], slopes[0], bias[0]
    out = CalibratedModel(Raw(), cal)(*[torch.zeros(1)] * 9)
    assert out.tolist() == [pytest.approx([-1.25, 0.0, 1.0, 2.0, -1.0, 7.0])]


def test_fit_calibrator_recovers_a_planted_map_and_keeps_the_identity_without_data():
    # logits whose true map is logit p = 2 z - .5 (an under-confident model): a 2-segment fit recovers it
    g = np.random.default_rng(0)
    z = g.normal(0.0, 1.5, 40_000)
    y = (g.random(len(z)) < 1 / (1 + np.exp(-(2 * z - 0.5)))).astype(np.float32)
    raw = np.zeros((len(z), 6), np.float32)
    raw[:, 0] = raw[:, 1] = z
    labels = np.zeros((len(z), 5), np.float32)
    labels[:, 0] = y
    labels[:10, 1] = y[:10]  # like: at most 10 positives among the clicked rows
    cal, status = fit_calibrator(raw, labels, [0, 1], segments=2)
    assert cal["slopes"][0].tolist() == pytest.approx([2.0, 2.0], abs=0.1)
    zz = torch.tensor([[-2.0], [0.0], [2.0]]).repeat(1, 5)
    fitted = apply_calibrator(zz, cal["knots"], cal["slopes"], cal["bias"])
    assert fitted[:, 0].tolist() == pytest.approx([-4.5, -0.5, 3.5], abs=0.15)
    # like: too few positives; collect .. comment: not asked for -- identity
    assert status["0"].startswith("fitted on 40000 rows") and status["1"].startswith("identity: ")
    assert torch.equal(fitted[:, 1:], zz[:, 1:])


def test_fusion_is_the_weighted_product_of_the_unconditional_task_scores():
    # raw outputs -> p_click = calibrate(sigmoid(0), .5) = 1/3; p(like | click) = sigmoid(log 3) = .75
    out = torch.tensor([[0.0, math.log(3.0), -100.0, 0.0, -100.0, 0.6]])
    probs = task_probabilities(out, 0.5)
    pc = 1 / 3
    assert probs[0].tolist() == pytest.approx([pc, pc * 0.75, 0.0, pc * 0.5, 0.0, pc * 0.6], abs=1e-6)
    w = fusion_vector({"click": 1.0, "like": 2.0, "share": 1.0, "watch_time": 0.5})  # collect, comment: 0
    assert w.tolist() == [1.0, 2.0, 0.0, 1.0, 0.0, 0.5]
    want = pc * (1 + pc * 0.75) ** 2 * (1 + pc * 0.5) * (1 + pc * 0.6) ** 0.5
    assert fuse(probs, w).item() == pytest.approx(want, rel=1e-6)
    # only click weighted: the fused score is p_click itself
    assert fuse(probs, fusion_vector({"click": 1.0})).item() == pytest.approx(pc, rel=1e-6)


# ---- metrics ---------------------------------------------------------------------------------------------

def test_auc_and_gauc_on_a_hand_computed_case():
    users = np.array(["a", "b", "a", "c", "b", "a", "c"])
    y = np.array([1, 1, 0, 1, 0, 0, 1])
    s = np.array([0.9, 0.2, 0.3, 0.5, 0.1, 0.95, 0.4])
    # a: positive .9 vs negatives .3 (win), .95 (loss) -> .5 over 3 rows; b: .2 vs .1 -> 1 over 2 rows;
    # c: two positives, no negative -> left out. GAUC = (3 x .5 + 2 x 1) / 5 = .7
    g, n = gauc(users, y, s)
    assert (g, n) == (pytest.approx(0.7), 2)
    # pooled AUC: positives .9 .2 .5 .4 vs negatives .3 .1 .95: wins 2 + 1 + 2 + 2 = 7 of 12
    assert auc(y, s) == pytest.approx(7 / 12)
    assert auc([1, 0, 1, 0], [0.5, 0.5, 0.7, 0.1]) == pytest.approx((0.5 + 1 + 1 + 1) / 4)  # a tie counts 1/2
    assert math.isnan(auc([1, 1], [0.1, 0.2]))


def test_logloss_calibration_and_ndcg_on_hand_computed_cases():
    assert logloss([1, 0], [0.8, 0.4], [1.0, 3.0]) == pytest.approx(-(math.log(0.8) + 3 * math.log(0.6)) / 4)
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.3, 0.6, 0.8])
    table, ece = calibration(y, p, bins=2)
    # bins {.1, .3} (pred .2, observed 0) and {.6, .8} (pred .7, observed 1): ECE = .5 x .2 + .5 x .3
    assert [(r["predicted"], r["observed"]) for r in table] == [(pytest.approx(0.2), 0.0), (pytest.approx(0.7), 1.0)]
    assert ece == pytest.approx(0.25)
    # weighted: the first bin's rows weigh 1 and 3: pred (.1 + .9) / 4
    table, _ = calibration(y, p, np.array([1.0, 3.0, 1.0, 1.0]), bins=2)
    assert table[0]["predicted"] == pytest.approx(0.25)
    # ndcg: group u1 gains (1, 0, 2) ranked by score (.2, .9, .5) -> order 0-gain, 2, 1
    g = np.array(["u1", "u1", "u1", "u2", "u2"])
    gain = np.array([1.0, 0.0, 2.0, 0.0, 0.0])
    score = np.array([0.2, 0.9, 0.5, 0.3, 0.1])
    dcg = 0 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert ndcg(g, gain, score) == (pytest.approx(dcg / idcg), 1)  # u2 has no gain: not counted


# ---- warm start, stream, stage, gate, export -------------------------------------------------------------

def _spec_with_items(vocab: list[str]) -> dict:
    from recsys_batch.training.synthetic import World, make_spec

    spec = make_spec(World(10, 10, 2, seed=0))
    for e in spec["features"]:
        if e["name"] == "item_id":
            e["vocab"] = vocab
    return spec


def test_warm_start_keeps_known_rows_and_grows_the_tables():
    from recsys_batch.ranking.checkpoint import warm_start_ranking
    from recsys_batch.ranking.model import shape_for
    from recsys_batch.training.checkpoint import layout_meta
    from recsys_batch.training.features import build_layout

    rc = RankingConfig(id_embedding_dim=4, feature_embedding_dim=2, expert_dims=[8], tower_dims=[4])
    old_spec, new_spec = _spec_with_items(["a", "b", "c"]), _spec_with_items(["c", "a", "d", "e", "f"])
    ou, oi = build_layout(old_spec, "user"), build_layout(old_spec, "item")
    nu, ni = build_layout(new_spec, "user"), build_layout(new_spec, "item")
    torch.manual_seed(0)
    old, new = RankingModel(shape_for(ou, oi, rc)), RankingModel(shape_for(nu, ni, rc))
    fresh = new.inputs.item_id.weight.detach().clone()
    ck = {"state_dict": old.state_dict(), "layouts": {"user": layout_meta(ou), "item": layout_meta(oi)}}
    stats = warm_start_ranking(new, ck, nu, ni)
    ow, nw = old.inputs.item_id.weight, new.inputs.item_id.weight
    assert nw.shape[0] == 1 + 5 + 4 > ow.shape[0] == 1 + 3 + 4  # grown: missing row, vocabulary, 4 OOV rows
    for i_old, i_new in ((1, 2), (3, 1)):  # a, c keep their rows at their new positions
        assert torch.equal(nw[i_new], ow[i_old])
    assert torch.equal(nw[0], ow[0]) and torch.equal(nw[6:10], ow[4:8])  # missing row, hashed OOV rows
    for i_new in (3, 4, 5):  # d, e, f: fresh
        assert torch.equal(nw[i_new], fresh[i_new])
    assert stats["inputs.item_id.weight"] == {"kept": 1 + 2 + 4, "new": 3}
    assert torch.equal(new.cross.layers[0].u.weight, old.cross.layers[0].u.weight)  # dense layers copied
    assert torch.equal(new.towers[3][-1].bias, old.towers[3][-1].bias)
    assert stats["dense"]["new"] == 0


def _cfg(root, *extra):
    from recsys_batch.config import load_config

    return load_config(None, [f"warehouse.root={root}", "ranking.batch_size=256", "ranking.num_workers=0",
                              "ranking.progress=false", "ranking.fresh_min_steps=30", "ranking.learning_rate=0.01",
                              "ranking.gate_min_users=5", "ranking.eval_max_rows=100000", *extra])


@pytest.fixture(scope="module")
def two_days(tmp_path_factory):
    """A JVM-free warehouse with ranking samples of two days; day 2's spec knows 20 more items."""
    from datetime import date

    from recsys_batch.ranking.synthetic import build_ranking_warehouse
    from recsys_batch.ranking.train import run_train_ranking
    from recsys_batch.training.synthetic import World

    root = tmp_path_factory.mktemp("rk") / "wh"
    cfg = _cfg(root, "ranking.prerank.enabled=true")
    w = World(150, 200, 3, seed=4)
    d1, d2 = date(2026, 1, 1), date(2026, 1, 2)
    build_ranking_warehouse(cfg, w, [d1], impressions_per_user=24, known_items=180)
    build_ranking_warehouse(cfg, w, [d2], impressions_per_user=24, known_items=200)
    return cfg, w, d1, d2, run_train_ranking(cfg, d1), run_train_ranking(cfg, d2)


def test_ranking_stream_yields_every_training_row_once_with_its_labels(two_days):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys_batch.features.spec import load_spec
    from recsys_batch.ranking.data import RankingStream
    from recsys_batch.ranking.evaluate import layouts_for_spec
    from recsys_batch.training.data import list_units, sample_files

    cfg, _, d1, _, _, _ = two_days
    files, manifest = sample_files(cfg.warehouse, d1, "ranking")
    t = pa.concat_tables([pq.read_table(f) for f in files])
    ul, il = layouts_for_spec(load_spec(manifest["feature_spec"]), t.column_names, cfg.ranking)
    s = RankingStream(files, ul, il, 100, 3, units=list_units(files))
    rows, clicks = [], 0
    for b in s:
        assert b["labels"].shape == (len(b["row_id"]), 5) and b["user"]["ids"].shape == b["item"]["ids"].shape
        assert b["user"]["seq"].shape[1] == cfg.ranking.max_lastn
        rows += b["row_id"].tolist()
        clicks += int(b["labels"][:, 0].sum())
        # a conditional label only on a clicked row; watch time only when clicked
        assert (b["labels"][:, 1:].amax(1) <= b["labels"][:, 0]).all() and (b["watch"][b["labels"][:, 0] == 0] == 0).all()
    assert sorted(rows) == list(range(t.num_rows)) and clicks == sum(t["click"].to_pylist())
    alpha = np.unique(t["neg_keep_rate"].to_numpy())
    assert alpha.tolist() == [0.5] and set(t["sample_weight"].to_pylist()) == {1.0, 2.0}


def test_run_train_ranking_warm_starts_with_a_grown_vocabulary_and_exports(two_days):
    import json
    from datetime import timedelta

    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys_batch.ranking.checkpoint import load_ranking_checkpoint, ranking_dir
    from recsys_batch.ranking.export import RankingScorer
    from recsys_batch.ranking.evaluate import layouts_for_spec, predict
    from recsys_batch.training.data import holdout_cutoff, sample_files

    cfg, w, d1, d2, r1, r2 = two_days
    assert r1.warm_start_from is None and r1.steps >= 30  # fresh: epochs repeated up to fresh_min_steps
    assert r2.warm_start_from.endswith("dt=2026-01-01/checkpoint.pt")
    # items 180..199 joined the vocabulary: the id table grew by 20 fresh rows, the 1 + 180 + 4 others were kept
    assert r2.warm_start_rows["inputs.item_id.weight"] == {"kept": 1 + 180 + 4, "new": 20}
    files = sample_files(cfg.warehouse, d2, "ranking")[0]
    t = pa.concat_tables([pq.read_table(f) for f in files])
    cut = holdout_cutoff(d2, cfg.ranking.holdout_hours)
    # warm start: one epoch of the rows before the calibration rows (the last calibration_hours before the cut)
    train_rows = int(pa.compute.sum(pa.compute.less(t["ts"], cut - timedelta(hours=2))).as_py())
    assert cfg.ranking.calibration_hours == 2.0 and r2.examples == train_rows
    ev = json.loads(open(f"{ranking_dir(cfg.warehouse, d2)}/evaluation.json").read())
    assert ev["holdout_rows"] == int(pa.compute.sum(pa.compute.greater_equal(t["ts"], cut)).as_py())
    assert set(ev["metrics"]) == {"new", "new_uncalibrated", "lr", "ranking_2026-01-01", "prerank"}
    assert {c["check"] for c in ev["gate"]["checks"]} == {"users", "baseline", "previous"}
    new = ev["metrics"]["new"]
    assert set(new) == {"click", "like", "collect", "share", "comment", "watch_time", "fused"}
    assert 0 <= new["click"]["ece"] <= 1 and len(new["click"]["calibration"]) == 10
    assert new["click"]["auc"] > 0.6  # the planted cluster / gender x category structure is learned
    # the TorchScript module scores raw values like the checkpoint: calibrated p_click, ..., fused score
    meta = json.loads(open(f"{ranking_dir(cfg.warehouse, d2)}/ranking_meta.json").read())
    assert meta["alpha"] == 0.5 and meta["fusion_weights"]["watch_time"] == 0.5
    scorer = RankingScorer(ranking_dir(cfg.warehouse, d2))
    rows = t.slice(0, 5)
    got = scorer.score(rows.to_pylist())
    ck = load_ranking_checkpoint(r2.checkpoint)
    ul, il = layouts_for_spec(ck["spec"], t.column_names, cfg.ranking)
    # the click map fitted on the calibration rows is in the checkpoint and the export; the others are the identity
    c = ck["extra"]["calibration"]
    assert c["status"]["0"].startswith("fitted on ") and set(c["status"]) == {"0"}
    assert meta["post_hoc_calibration"]["slopes"] == c["slopes"] and c["slopes"][0] != [1.0] * 5
    knots, slopes, bias = (torch.tensor(c[k]) for k in ("knots", "slopes", "bias"))
    raw = torch.from_numpy(predict(ck["model"], ul, il, rows))
    raw = torch.cat([apply_calibrator(raw[:, :5], knots, slopes, bias), raw[:, 5:]], 1)
    probs = task_probabilities(raw, 0.5)
    want = torch.cat([probs, fuse(probs, fusion_vector(cfg.ranking.fusion_weights)).unsqueeze(1)], 1)
    assert got.shape == (5, 7) and np.allclose(got, want.numpy(), atol=1e-5)
    # the value match u_top_categories x i_category: the checkpoint carries the lookup of its own layout (a warm
    # start rebuilt it for d2's vocabularies), and x0's last column is 1 exactly when the category is a top one
    from recsys_batch.ranking.inputs import resolve_pairs, value_matches

    m = ck["model"]
    assert m.shape.pairs and ck["shape"].seq_cross
    assert torch.equal(m.inputs.pair_lookup, torch.from_numpy(np.stack(resolve_pairs(ul, il, cfg.ranking.match_pairs)[1])))
    u = {k: torch.from_numpy(v) for k, v in ul.encode(t).items()}
    i = {k: torch.from_numpy(v) for k, v in il.encode(t).items()}
    x = value_matches(m.inputs.pair_lookup, m.inputs.pair_user_list, m.inputs.pair_user_idx, m.inputs.pair_item_list,
                      m.inputs.pair_item_idx, u["cat"], u["lists"], i["cat"], i["lists"])
    want = [float(c in (tc or [])) for c, tc in zip(t["i_category"].to_pylist(), t["u_top_categories"].to_pylist(),
                                                    strict=True)]
    assert x[:, 0].tolist() == want and 0 < sum(want) < len(want)


def test_seq_overlap_and_value_matches_on_hand_computed_cases():
    from recsys_batch.ranking.inputs import seq_overlap, value_matches

    # two rows; ids embedded as e(1) = [1, 0], e(2) = [0, 1], e(3) = [1, 1]; row 1 has no history
    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    seq = torch.tensor([[1, 2, 0], [0, 0, 0]])
    cand = torch.tensor([2, 3])
    x = seq_overlap(emb[cand], emb[seq], seq, cand)
    # row 0: candidate 2 in [1, 2] -> hit 1; dots <e2, e1> = 0, <e2, e2> = 1 -> mean .5, max 1; has history
    assert x.tolist() == [[1.0, 0.5, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
    # one pair: user list slot 0 (fused rows 5, 6 = its values "a", "b"), item categorical slot 1 whose fused
    # rows 10, 11 hold "b", "c": the lookup maps item row 10 -> user row 6 ("b"), row 11 -> 0 ("c" unknown)
    lookup = torch.zeros((1, 12), dtype=torch.long)
    lookup[0, 10] = 6
    u_lists = torch.tensor([[[5, 6]], [[5, 0]], [[0, 0]]])          # [B, 1 list, 2 values]
    i_cat = torch.tensor([[0, 10], [0, 10], [0, 11]])              # slot 1: b, b, c
    got = value_matches(lookup, [True], [0], [False], [1], torch.zeros((3, 0), dtype=torch.long), u_lists, i_cat,
                        torch.zeros((3, 0, 0), dtype=torch.long))
    assert got[:, 0].tolist() == [1.0, 0.0, 0.0]  # {a, b} has b; {a} has not; c has no user row (padding never matches)


def test_prerank_is_trained_warm_started_evaluated_and_exported_by_the_stage(two_days):
    import io
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys_batch.ranking.checkpoint import ranking_dir
    from recsys_batch.ranking.evaluate import layouts_for_spec, predict
    from recsys_batch.ranking.prerank import load_prerank_checkpoint, resolve_pairs
    from recsys_batch.training.data import sample_files

    cfg, _, d1, d2, r1, r2 = two_days
    out = ranking_dir(cfg.warehouse, d2)
    assert r2.exports["prerank_serving"].endswith("dt=2026-01-02/prerank.pt")
    ev = json.loads(open(f"{out}/evaluation.json").read())
    pre = ev["metrics"]["prerank"]
    assert set(pre) == {"click"} and pre["click"]["rows"] == ev["metrics"]["new"]["click"]["rows"]
    assert pre["click"]["auc"] > 0.6  # the cluster match (u_top_categories x i_category) is learned
    assert "prerank" in r2.table
    # day 2 warm-started from day 1's pre-rank checkpoint: same tables, the grown item vocabulary
    ck1, ck2 = load_prerank_checkpoint(f"{ranking_dir(cfg.warehouse, d1)}/prerank_checkpoint.pt"), \
        load_prerank_checkpoint(f"{out}/prerank_checkpoint.pt")
    assert ck1["state_dict"]["item_id.weight"].shape[0] + 20 == ck2["state_dict"]["item_id.weight"].shape[0]
    assert ck2["shape"].pairs == (("list", 0, "cat", 0),)  # u_top_categories (a list) x i_category
    # the value match: 1 exactly when the item's category is one of the user's top categories
    files = sample_files(cfg.warehouse, d2, "ranking")[0]
    t = pa.concat_tables([pq.read_table(f) for f in files]).slice(0, 300)
    ul, il = layouts_for_spec(ck2["spec"], t.column_names, cfg.ranking)
    _, lookups = resolve_pairs(ul, il, cfg.ranking.prerank.cross_pairs)
    model = ck2["model"]
    model.pair_lookup = torch.from_numpy(np.stack(lookups))
    u = {k: torch.from_numpy(v) for k, v in ul.encode(t).items()}
    i = {k: torch.from_numpy(v) for k, v in il.encode(t).items()}
    x = model.cross_features(u["cat"], u["lists"], u["seq"], i["ids"], i["cat"], i["lists"])
    want = [float(c in (tc or [])) for c, tc in zip(t["i_category"].to_pylist(), t["u_top_categories"].to_pylist(),
                                                    strict=True)]
    assert x[:, 4].tolist() == want and 0 < sum(want) < len(want)
    # TorchScript: calibrated p_click of the checkpoint's logit
    scripted = torch.jit.load(io.BytesIO(open(f"{out}/prerank.pt", "rb").read()))
    got = scripted(u["ids"], u["cat"], u["lists"], u["dense"], u["seq"], i["ids"], i["cat"], i["lists"], i["dense"])
    q = torch.sigmoid(torch.from_numpy(predict(model, ul, il, t))[:, 0])
    assert torch.allclose(got, 0.5 * q / (1 - q + 0.5 * q), atol=1e-5)
    assert json.loads(open(f"{out}/prerank_meta.json").read())["alpha"] == 0.5


def test_gate_refuses_below_the_baseline_or_yesterday_and_publish_keeps_the_last_accepted_model(two_days, tmp_path):
    import json
    import shutil

    from recsys_batch.ranking.checkpoint import previous_ranking_checkpoint, ranking_dir
    from recsys_batch.ranking.evaluate import ranking_gate
    from recsys_batch.ranking.release import ranking_for_release

    rc = RankingConfig(gate_tolerance=0.01, gate_min_users=10)
    m = lambda g, n=50: {"click": {"gauc": g, "gauc_users": n}}  # noqa: E731
    assert ranking_gate({"new": m(0.70), "lr": m(0.65), "old": m(0.705)}, rc, previous="old")["decision"] == "passed"
    g = ranking_gate({"new": m(0.64), "lr": m(0.65), "old": m(0.70)}, rc, previous="old")
    assert g["decision"] == "refused" and g["failures"] == ["baseline", "previous"]
    assert ranking_gate({"new": m(0.70, 9), "lr": m(0.6)}, rc)["failures"] == ["users"]
    assert ranking_gate({}, rc)["failures"] == ["users"]  # nothing held out: nothing to accept
    assert ranking_gate({"new": m(0.5), "lr": m(0.6)}, RankingConfig(gate=False))["decision"] == "disabled"

    # the stage with a margin no model can meet: written, refused, skipped by warm start and by publish
    from datetime import date

    from recsys_batch.ranking.train import run_train_ranking

    cfg0, _, d1, d2, _, _ = two_days
    root = tmp_path / "wh"
    shutil.copytree(cfg0.warehouse.root, root, ignore=shutil.ignore_patterns("dt=2026-01-02"))
    cfg = _cfg(root, "ranking.gate_baseline_margin=1.0", "ranking.gate_tolerance=1.0")  # only the baseline check fails
    d3 = date(2026, 1, 3)
    from recsys_batch.ranking.synthetic import build_ranking_warehouse
    from recsys_batch.training.synthetic import World

    build_ranking_warehouse(cfg, World(150, 200, 3, seed=4), [d3], impressions_per_user=16, known_items=200)
    run_train_ranking(cfg, d3)
    ev = json.loads((root / "models/ranking/dt=2026-01-03/evaluation.json").read_text())
    assert ev["gate"]["decision"] == "refused" and ev["gate"]["failures"] == ["baseline"]
    assert previous_ranking_checkpoint(cfg.warehouse, date(2026, 1, 4))[0] == d1  # the refused model is skipped
    # publish: the release carries the newest accepted model instead (or the refused one with publish.force)
    carried = ranking_for_release(cfg, d3, force=False)
    assert carried["dir"] == ranking_dir(cfg.warehouse, d1) and carried["evaluation"]["carried_from"] == "2026-01-01"
    assert carried["evaluation"]["decision"] == "refused" and "ranking.pt" in carried["files"]
    forced = ranking_for_release(cfg, d3, force=True)
    assert forced["evaluation"]["forced"] and forced["dir"] == ranking_dir(cfg.warehouse, d3)
    assert ranking_for_release(cfg, d1, force=False)["evaluation"]["decision"] == "passed"
    shutil.rmtree(root / "models/ranking/dt=2026-01-01")  # nothing accepted before: the release carries none
    assert ranking_for_release(cfg, d3, force=False) is None
    assert ranking_dir(cfg.warehouse, d3).endswith("models/ranking/dt=2026-01-03")


@pytest.mark.slow
def test_torchrun_two_ranks_run_the_train_ranking_job(tmp_path):
    """``torchrun --nproc_per_node 2 jobs/train_ranking.py``: both ranks train their share of the row groups with
    the same output-bias priors, rank 0 alone evaluates and writes the model folder."""
    import os
    import re
    import subprocess
    import sys
    from datetime import date
    from pathlib import Path

    from recsys_batch.ranking.synthetic import build_ranking_warehouse
    from recsys_batch.training.synthetic import World

    sets = [f"warehouse.root={tmp_path / 'wh'}", "ranking.batch_size=256", "ranking.num_workers=0",
            "ranking.progress=false", "ranking.fresh_min_steps=10", "ranking.gate_min_users=5"]
    cfg = _cfg(tmp_path / "wh")
    build_ranking_warehouse(cfg, World(150, 200, 3, seed=4), [date(2026, 1, 1)], impressions_per_user=16,
                            row_group_rows=256)
    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(repo / "jobs" / "train_ranking.py"), "--date", "2026-01-01", "--no-check"]
    for s in sets:
        cmd += ["--set", s]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=repo,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-5000:]
    steps = dict(re.findall(r"\(rank (\d) of 2\): (\d+) steps", run.stderr))
    assert set(steps) == {"0", "1"} and all(int(n) > 0 for n in steps.values()), run.stderr[-3000:]
    priors = re.findall(r"\[rank \d/2\] recsys_batch.ranking.train: fresh model: output biases set to the task "
                        r"priors (\[.*?\])", run.stderr)
    assert len(priors) == 4 and len(set(priors)) == 1  # model and baseline, both ranks: the same first row group
    folder = tmp_path / "wh" / "models" / "ranking" / "dt=2026-01-01"
    assert {p.name for p in folder.iterdir()} >= {"checkpoint.pt", "ranking.pt", "ranking_meta.json", "evaluation.json"}


def test_mmoe_single_matmul_form_equals_one_matmul_per_expert_and_gate():
    for dims in ([8], [8, 4]):
        mm = MMoE(12, n_tasks=3, n_experts=4, expert_dims=dims)
        x = torch.randn(6, 12)
        e = torch.stack([f(x) for f in mm.experts], 1)
        want = torch.stack([(torch.softmax(g(x), -1).unsqueeze(-1) * e).sum(1) for g in mm.gates], 0)
        assert torch.allclose(mm(x), want, atol=1e-6)
        assert torch.allclose(torch.jit.script(mm)(x), want, atol=1e-6)
    assert set(mm.state_dict()) == {f"experts.{k}.{j}.{p}" for k in range(4) for j in (0, 2) for p in ("weight", "bias")} \
        | {f"gates.{t}.{p}" for t in range(3) for p in ("weight", "bias")}


def test_index_add_embedding_gives_nn_embedding_values_and_gradients():
    from recsys_batch.ranking.embedding import Embedding

    fast, ref = Embedding(6, 3), torch.nn.Embedding(6, 3)
    with torch.no_grad():
        ref.weight.copy_(fast.weight)
    idx = torch.tensor([[1, 1, 0], [5, 1, 2]])  # duplicates accumulate
    g = torch.randn(2, 3, 3)
    (fast(idx) * g).sum().backward()
    (ref(idx) * g).sum().backward()
    assert torch.equal(fast(idx), ref(idx)) and torch.allclose(fast.weight.grad, ref.weight.grad, atol=1e-6)
    assert torch.allclose(fast.weight.grad[1], g[0, 0] + g[0, 1] + g[1, 1], atol=1e-6)
    assert fast.weight.grad[3].abs().sum() == 0 and set(fast.state_dict()) == {"weight"}
    fast.eval()
    assert torch.equal(torch.jit.script(fast)(idx), ref(idx))


def test_early_stopping_keeps_the_best_epoch_and_stops_after_the_patience(two_days):
    from datetime import timedelta

    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys_batch.ranking.train import EarlyStopping, validation_rows
    from recsys_batch.training.data import holdout_cutoff, sample_files

    cfg, _, d1, _, _, _ = two_days  # the validation rows: lo <= ts < hi, the gate's held-out rows excluded
    files = sample_files(cfg.warehouse, d1, "ranking")[0]
    hi = holdout_cutoff(d1, cfg.ranking.holdout_hours)
    lo = hi - timedelta(hours=2)
    ts = pa.concat_tables([pq.read_table(f) for f in files])["ts"].to_pylist()
    v = validation_rows(files, lo, hi, 10_000)
    assert v.num_rows == sum(lo <= t < hi for t in ts) > 0 and validation_rows(files, lo, hi, 5).num_rows == 5

    model = torch.nn.Linear(2, 1)
    stop = EarlyStopping.__new__(EarlyStopping)
    stop.model, stop.rc, stop.losses, stop.best = model, RankingConfig(fresh_patience_epochs=1), [], None
    seq = iter([1.0, 0.8, 0.9, 0.7])
    stop.loss = lambda: next(seq)
    assert stop(0) is False
    with torch.no_grad():
        model.weight.fill_(2.0)  # epoch 1's weights: the best
    assert stop(1) is False
    with torch.no_grad():
        model.weight.fill_(3.0)
    assert stop(2) is True  # no improvement for 1 epoch: stop
    stop.restore("test")
    assert model.weight.tolist() == [[2.0, 2.0]] and stop.losses == [1.0, 0.8, 0.9]


def test_batched_towers_equal_one_tower_at_a_time_with_the_same_gradients():
    for dims in ([8], [8, 4]):
        model = RankingModel(dataclasses.replace(_shape("mmoe", True), tower_dims=tuple(dims)))
        h = torch.randn(len(model.towers), 5, model.experts.out_dim, requires_grad=True)
        got = model._towers_batched(h)
        want = torch.stack([tower(h[t]).squeeze(-1) for t, tower in enumerate(model.towers)], 1)
        assert got.shape == (5, len(model.towers)) and torch.allclose(got, want, atol=1e-6)
        g1 = torch.autograd.grad(got.sum(), [h, model.towers[2][0][0].weight])
        g2 = torch.autograd.grad(want.sum(), [h, model.towers[2][0][0].weight])
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g1, g2))


def test_ple_first_level_batched_form_equals_the_per_expert_loop():
    from recsys_batch.ranking.experts import PLE

    for dims, levels in (([8], 1), ([8, 4], 1), ([8], 2)):
        ple = PLE(12, n_tasks=3, n_shared=2, n_task=2, expert_dims=dims, levels=levels)
        x = torch.randn(6, 12, requires_grad=True)
        fast = ple(x)
        for lvl in ple.levels:
            lvl.first = False
        slow = ple(x)
        assert fast.shape == (3, 6, ple.out_dim) and torch.allclose(fast, slow, atol=1e-6)
        g_fast = torch.autograd.grad(fast.sum(), [x, ple.levels[0].gates[1].weight])
        g_slow = torch.autograd.grad(slow.sum(), [x, ple.levels[0].gates[1].weight])
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g_fast, g_slow))
        for lvl in ple.levels:
            lvl.first = lvl is ple.levels[0]
        assert torch.allclose(torch.jit.script(ple)(x), slow, atol=1e-6)


def test_a_checkpoint_of_another_architecture_keeps_the_tables_and_trains_as_a_first_day(tmp_path, caplog):
    """ranking.multitask switched (mmoe -> ple) between two days: the embeddings are warm-started, the new
    experts start fresh, so the day gets a first day's steps (fresh_min_steps) instead of one epoch."""
    import logging
    from datetime import date

    from recsys_batch.ranking.synthetic import build_ranking_warehouse
    from recsys_batch.ranking.train import run_train_ranking
    from recsys_batch.training.synthetic import World

    root = tmp_path / "wh"
    d1, d2 = date(2026, 1, 1), date(2026, 1, 2)
    build_ranking_warehouse(_cfg(root), World(150, 200, 3, seed=4), [d1, d2], impressions_per_user=24)
    r1 = run_train_ranking(_cfg(root, "ranking.multitask=mmoe"), d1)
    with caplog.at_level(logging.WARNING, logger="recsys_batch.ranking.train"):
        r2 = run_train_ranking(_cfg(root, "ranking.multitask=ple"), d2)
    assert r1.steps >= 30 and r2.warm_start_from.endswith("dt=2026-01-01/checkpoint.pt")
    assert r2.warm_start_rows["inputs.item_id.weight"]["kept"] == 1 + 200 + 4
    assert "is a mmoe model and ranking.multitask is ple" in caplog.text
    assert r2.steps >= 30  # fresh_min_steps (a warm-started day is one epoch: ceil(its ~2k training rows / 256))
