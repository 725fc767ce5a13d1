"""The ranking model's input layer: the two-tower's feature encoding (``recsys_batch.training.features``) for
both sides of a ranking sample, embedded into one vector x0 per impression.

The encoding is the two-tower's :class:`~recsys_batch.training.features.TowerLayout`, built from the day's
``feature_spec.json`` for the ``user`` side (``user_id``, ``u_*`` categoricals / buckets / lists / dense, the
``lastn_items`` sequence) and the ``item`` side (``item_id``, ``i_*``), read from the ranking sample columns of
the same names. Embedded here (per row)::

    x0 = [ e_user(user_id) , e_item(item_id) = q ,
           user fused cats (F_u x k) , mean-pooled user lists (M_u x k) ,
           item fused cats (F_i x k) , mean-pooled item lists (M_i x k) ,
           user dense , item dense ,
           DIN(q, e_item(last-N)) ]                 # the last-N through the ITEM id table

width = 3 d_id + (F_u + M_u + F_i + M_i) k + D_u + D_i (2 d_id without a last-N column). One fused table
per side (one lookup per batch, as in the two-tower); the item-id table is shared by the candidate and the
history so DIN compares like with like. Cost O(B (F k + L d_id)).
"""

from __future__ import annotations

import torch
from torch import nn

from recsys_batch.ranking.din import DINAttention
from recsys_batch.ranking.embedding import Embedding
from recsys_batch.training.model import TowerShape, _masked_mean


class RankingInputs(nn.Module):
    def __init__(self, user: TowerShape, item: TowerShape, id_dim: int, feat_dim: int,
                 din_hidden: list[int] | tuple[int, ...] = (32,)):
        super().__init__()
        self.user_id = Embedding(user.id_size, id_dim)
        self.item_id = Embedding(item.id_size, id_dim)
        self.user_fused = Embedding(max(user.fused_size, 1), feat_dim)
        self.item_fused = Embedding(max(item.fused_size, 1), feat_dim)
        self.has_seq = user.has_seq
        self.din = DINAttention(id_dim, list(din_hidden)) if user.has_seq else None
        for t in (self.user_id, self.item_id, self.user_fused, self.item_fused):
            nn.init.normal_(t.weight, std=0.05)
        self.out_dim = (2 + int(user.has_seq)) * id_dim + feat_dim * (
            user.n_cat + user.n_lists + item.n_cat + item.n_lists) + user.n_dense + item.n_dense

    def forward(self, u_ids: torch.Tensor, u_cat: torch.Tensor, u_lists: torch.Tensor, u_dense: torch.Tensor,
                seq: torch.Tensor, i_ids: torch.Tensor, i_cat: torch.Tensor, i_lists: torch.Tensor,
                i_dense: torch.Tensor) -> torch.Tensor:
        b = u_ids.shape[0]
        q = self.item_id(i_ids)
        parts = [self.user_id(u_ids), q, self.user_fused(u_cat).reshape(b, -1)]
        if u_lists.shape[1] > 0:
            parts.append(_masked_mean(self.user_fused(u_lists), u_lists).reshape(b, -1))
        parts.append(self.item_fused(i_cat).reshape(b, -1))
        if i_lists.shape[1] > 0:
            parts.append(_masked_mean(self.item_fused(i_lists), i_lists).reshape(b, -1))
        parts += [u_dense, i_dense]
        if self.din is not None:
            parts.append(self.din(q, self.item_id(seq), seq > 0))
        return torch.cat(parts, dim=1)
