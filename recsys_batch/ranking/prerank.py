"""The pre-rank (coarse ranking) model: a three-tower click model, user / item / cross, on the ranking samples.

    u     = UserTower(user id, u_* features, mean of the last-N item embeddings)      [B, d]   cacheable per user
    v     = ItemTower(item id, i_* features)                                           [B, d]   cacheable per item
    c     = CrossTower(x_cross)                                                        [B]      per (user, item)
    logit = <u, v> + c + b

Pre-ranking scores thousands of recalled candidates per request, so the bulk of the model must be computable
once per user and once per item (the two-tower's trick, COLD / Kuaishou-style pre-rankers keep that part and add
a small cross part): the dot product of cached vectors plus a cross tower that only sees a handful of cheap
user x item features, computed from the same nine encoded tensors as the ranking model (no new columns):

* ``seq_hit``: the candidate is one of the user's last-N items;
* ``seq_mean``, ``seq_max``: mean and max of <e(candidate), e(h_j)> over the last-N items h_j (item-id table of
  the item tower) -- the "DIN-free" overlap of the candidate with the history;
* ``seq_any``: the user has a last-N at all;
* one **value match** per configured pair (``ranking.prerank.cross_pairs``, e.g. ``u_top_categories`` x
  ``i_category``): 1 when a value of the item feature is among the user feature's values (compared by
  vocabulary value: a lookup from the item block's rows to the user block's rows of the same string).

    x_cross = [seq_hit, seq_mean, seq_max, seq_any, match_1 .. match_P]     CrossTower = MLP(x_cross) -> 1

Trained on the same rows as the ranking model: BCE on the click label of the down-sampled impressions (so the
click calibration p = a q / (1 - q + a q) applies unchanged), optionally **distilled** from the ranking model's
click logit z_t (``ranking.prerank.distill_weight`` lambda; both logits are on the down-sampled distribution):

    L = (1 - lambda) BCE(z, click) + lambda BCE(z, sigmoid(z_t))

Cost per row O(d (F k + L)) for the towers (once per user / item in serving), O(L d + P S + h) for the cross part.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recsys_batch.ranking.embedding import Embedding
from recsys_batch.ranking.experts import mlp
from recsys_batch.ranking.inputs import SEQ_CROSS, resolve_pairs, seq_overlap, value_matches
from recsys_batch.ranking.model import run
from recsys_batch.training.features import TowerLayout
from recsys_batch.training.model import TowerShape, _masked_mean

log = logging.getLogger(__name__)
#: beside the ranking model's checkpoint.pt in models/ranking/dt=D/
PRERANK_CHECKPOINT = "prerank_checkpoint.pt"


@dataclass(frozen=True)
class PrerankShape:
    user: TowerShape
    item: TowerShape
    id_embedding_dim: int = 16
    feature_embedding_dim: int = 4
    tower_dims: tuple[int, ...] = (64,)
    vector_dim: int = 16
    cross_dims: tuple[int, ...] = (16,)
    #: (user slot kind, user slot index, item slot kind, item slot index) per value-match pair; kind "cat" | "list"
    pairs: tuple[tuple[str, int, str, int], ...] = ()
    kind: str = "prerank"

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> PrerankShape:
        d = dict(d)
        d["user"], d["item"] = TowerShape(**d["user"]), TowerShape(**d["item"])
        for k in ("tower_dims", "cross_dims"):
            d[k] = tuple(d[k])
        d["pairs"] = tuple(tuple(p) for p in d["pairs"])
        return PrerankShape(**d)


class PrerankModel(nn.Module):
    """``forward(nine encoded tensors) -> [B, 1]`` raw click logit (on the down-sampled rows); ``user_vector`` /
    ``item_vector`` / ``cross_logit`` / ``score_cached`` for serving with cached tower outputs."""

    def __init__(self, shape: PrerankShape, lookups: list[np.ndarray] | None = None, dropout: float = 0.0):
        super().__init__()
        self.shape = shape
        u, i, di, dk = shape.user, shape.item, shape.id_embedding_dim, shape.feature_embedding_dim
        self.user_id, self.item_id = Embedding(u.id_size, di), Embedding(i.id_size, di)
        self.user_fused, self.item_fused = Embedding(max(u.fused_size, 1), dk), Embedding(max(i.fused_size, 1), dk)
        for t in (self.user_id, self.item_id, self.user_fused, self.item_fused):
            nn.init.normal_(t.weight, std=0.05)
        u_in = di * (1 + int(u.has_seq)) + dk * (u.n_cat + u.n_lists) + u.n_dense
        i_in = di + dk * (i.n_cat + i.n_lists) + i.n_dense
        ub, uw = mlp(u_in, shape.tower_dims, dropout)
        ib, iw = mlp(i_in, shape.tower_dims, dropout)
        self.user_tower = nn.Sequential(ub, nn.Linear(uw, shape.vector_dim))
        self.item_tower = nn.Sequential(ib, nn.Linear(iw, shape.vector_dim))
        self.n_cross = len(SEQ_CROSS) + len(shape.pairs)
        cb, cw = mlp(self.n_cross, shape.cross_dims, dropout)
        self.cross_tower = nn.Sequential(cb, nn.Linear(cw, 1))
        self.bias = nn.Parameter(torch.zeros(1))
        self.has_seq = bool(u.has_seq)
        # the lookups follow today's layout (rebuilt, never warm-started): not in the state dict
        lk = lookups if lookups is not None else [np.zeros(max(i.fused_size, 1), np.int64) for _ in shape.pairs]
        self.register_buffer("pair_lookup", torch.from_numpy(np.stack(lk)) if lk else torch.zeros(0, 1, dtype=torch.long),
                             persistent=False)
        self.pair_user_list = [p[0] == "list" for p in shape.pairs]
        self.pair_user_idx = [p[1] for p in shape.pairs]
        self.pair_item_list = [p[2] == "list" for p in shape.pairs]
        self.pair_item_idx = [p[3] for p in shape.pairs]

    @torch.jit.export
    def user_vector(self, u_ids: torch.Tensor, u_cat: torch.Tensor, u_lists: torch.Tensor, u_dense: torch.Tensor,
                    seq: torch.Tensor) -> torch.Tensor:
        b = u_ids.shape[0]
        parts = [self.user_id(u_ids), self.user_fused(u_cat).reshape(b, -1)]
        if u_lists.shape[1] > 0:
            parts.append(_masked_mean(self.user_fused(u_lists), u_lists).reshape(b, -1))
        parts.append(u_dense)
        if self.has_seq:
            parts.append(_masked_mean(self.item_id(seq), seq))
        return self.user_tower(torch.cat(parts, 1))

    @torch.jit.export
    def item_vector(self, i_ids: torch.Tensor, i_cat: torch.Tensor, i_lists: torch.Tensor, i_dense: torch.Tensor
                    ) -> torch.Tensor:
        b = i_ids.shape[0]
        parts = [self.item_id(i_ids), self.item_fused(i_cat).reshape(b, -1)]
        if i_lists.shape[1] > 0:
            parts.append(_masked_mean(self.item_fused(i_lists), i_lists).reshape(b, -1))
        parts.append(i_dense)
        return self.item_tower(torch.cat(parts, 1))

    @torch.jit.export
    def cross_features(self, u_cat: torch.Tensor, u_lists: torch.Tensor, seq: torch.Tensor, i_ids: torch.Tensor,
                       i_cat: torch.Tensor, i_lists: torch.Tensor) -> torch.Tensor:
        """[B, n_cross] (see the module docstring)."""
        b = i_ids.shape[0]
        if seq.shape[1] > 0:
            feats = list(seq_overlap(self.item_id(i_ids), self.item_id(seq), seq, i_ids).unbind(1))
        else:
            z = u_cat.new_zeros((b,), dtype=torch.float32)
            feats = [z, z, z, z]
        if len(self.pair_user_idx) > 0:
            feats += list(value_matches(self.pair_lookup, self.pair_user_list, self.pair_user_idx, self.pair_item_list,
                                        self.pair_item_idx, u_cat, u_lists, i_cat, i_lists).unbind(1))
        return torch.stack(feats, 1)

    @torch.jit.export
    def cross_logit(self, u_cat: torch.Tensor, u_lists: torch.Tensor, seq: torch.Tensor, i_ids: torch.Tensor,
                    i_cat: torch.Tensor, i_lists: torch.Tensor) -> torch.Tensor:
        return self.cross_tower(self.cross_features(u_cat, u_lists, seq, i_ids, i_cat, i_lists)).squeeze(-1)

    @torch.jit.export
    def score_cached(self, user_vec: torch.Tensor, item_vec: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
        """The logit from cached tower outputs: <u, v> + c + b, [B]."""
        return (user_vec * item_vec).sum(-1) + cross + self.bias

    def forward(self, u_ids: torch.Tensor, u_cat: torch.Tensor, u_lists: torch.Tensor, u_dense: torch.Tensor,
                seq: torch.Tensor, i_ids: torch.Tensor, i_cat: torch.Tensor, i_lists: torch.Tensor,
                i_dense: torch.Tensor) -> torch.Tensor:
        u = self.user_vector(u_ids, u_cat, u_lists, u_dense, seq)
        v = self.item_vector(i_ids, i_cat, i_lists, i_dense)
        c = self.cross_logit(u_cat, u_lists, seq, i_ids, i_cat, i_lists)
        return self.score_cached(u, v, c).unsqueeze(1)

    @torch.no_grad()
    def set_prior(self, prior: list[float]) -> None:
        """Fresh model: the bias at the click prior logit (the first of the ranking tasks' priors)."""
        self.bias.fill_(prior[0])


def prerank_shape_for(user_layout: TowerLayout, item_layout: TowerLayout, pc, pairs) -> PrerankShape:  # noqa: ANN001
    """The shape on these layouts with ``pc`` (``PrerankConfig``) and resolved ``pairs`` (:func:`resolve_pairs`)."""
    def ts(lay: TowerLayout, has_seq: bool) -> TowerShape:
        return TowerShape(lay.id_feature.size, lay.fused_size, lay.n_cat, len(lay.lists), lay.n_dense, has_seq)

    return PrerankShape(ts(user_layout, user_layout.seq is not None), ts(item_layout, False), pc.id_embedding_dim,
                        pc.feature_embedding_dim, tuple(pc.tower_dims), pc.vector_dim, tuple(pc.cross_dims),
                        tuple(pairs))


def build_prerank(user_layout: TowerLayout, item_layout: TowerLayout, pc, dropout: float = 0.0  # noqa: ANN001
                  ) -> PrerankModel:
    slots, lookups = resolve_pairs(user_layout, item_layout, pc.cross_pairs)
    return PrerankModel(prerank_shape_for(user_layout, item_layout, pc, slots), lookups, dropout)


def distill_loss(student: torch.Tensor, click: torch.Tensor, teacher: torch.Tensor | None, weight: float
                 ) -> torch.Tensor:
    """(1 - lambda) BCE(z, click) + lambda BCE(z, sigmoid(z_t)) over the batch (means); lambda = ``weight``,
    the hard loss alone without a teacher."""
    hard = F.binary_cross_entropy_with_logits(student, click)
    if teacher is None or weight <= 0:
        return hard
    soft = F.binary_cross_entropy_with_logits(student, torch.sigmoid(teacher))
    return (1.0 - weight) * hard + weight * soft


def prerank_loss_fn(teacher: nn.Module | None, weight: float):  # noqa: ANN201
    """``loss(net, batch)`` for :func:`recsys_batch.ranking.train.train_ranking`: :func:`distill_loss` with the
    teacher's click logit (eval mode, no gradient) on the same batch."""
    use_teacher = teacher is not None and weight > 0

    def loss(net: nn.Module, batch: dict) -> torch.Tensor:
        z = run(net, batch["user"], batch["item"])[:, 0]
        zt = None
        if use_teacher:
            with torch.no_grad():
                zt = run(teacher, batch["user"], batch["item"])[:, 0]
        return distill_loss(z, batch["labels"][:, 0], zt, weight)

    return loss


def load_prerank_checkpoint(path: str) -> dict[str, Any]:
    """{"model", "shape", "spec", "layouts", "extra", "state_dict"} of a pre-rank checkpoint (weights_only load;
    the value-match lookups are rebuilt from today's layouts, not stored)."""
    from recsys_batch.training.checkpoint import load_model_checkpoint

    return load_model_checkpoint(path, PrerankShape, PrerankModel)
