"""The two-tower retrieval model (TorchRec's two-tower retrieval example, CPU-friendly layout).

User tower: user-id embedding ++ fused categorical/bucket embeddings ++ mean-pooled multi-valued
categoricals ++ mean-pooled last-N items (the ITEM tower's id table, shared) ++ dense numerics ->
MLP -> d, L2-normalised. Item tower: the same without the sequence. score(u, i) = <u, i> / temperature
(cosine, both sides unit length). Input layout: :mod:`recsys_batch.training.features`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TowerShape:
    id_size: int
    fused_size: int
    n_cat: int
    n_lists: int
    n_dense: int
    has_seq: bool = False


@dataclass(frozen=True)
class ModelShape:
    user: TowerShape
    item: TowerShape
    embedding_dim: int = 64
    id_embedding_dim: int = 32
    feature_embedding_dim: int = 8
    hidden_dims: tuple[int, ...] = field(default_factory=lambda: (128,))

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> ModelShape:
        return ModelShape(TowerShape(**d["user"]), TowerShape(**d["item"]), d["embedding_dim"], d["id_embedding_dim"],
                          d["feature_embedding_dim"], tuple(d["hidden_dims"]))


def _masked_mean(emb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Mean over the last index axis of ``emb`` [..., L, d], ignoring padding (index 0)."""
    m = (idx > 0).to(emb.dtype).unsqueeze(-1)
    return (emb * m).sum(-2) / m.sum(-2).clamp_min(1.0)


class _ReLUDropout(nn.Module):
    """ReLU, then dropout with probability ``p`` in training (no parameters)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(F.relu(x), self.p, self.training)


class Tower(nn.Module):
    def __init__(self, shape: TowerShape, id_dim: int, feat_dim: int, hidden: tuple[int, ...], out_dim: int,
                 seq_table: nn.Embedding | None = None, id_dropout: float = 0.0, dropout: float = 0.0):
        super().__init__()
        self.id_dropout = id_dropout
        self.id_table = nn.Embedding(shape.id_size, id_dim)
        self.fused = nn.Embedding(max(shape.fused_size, 1), feat_dim)
        self.has_seq = shape.has_seq
        # the user tower pools last-N items with the item tower's id table (shared Parameter)
        self.seq_table = seq_table if shape.has_seq else None
        width = id_dim + (shape.n_cat + shape.n_lists) * feat_dim + shape.n_dense
        if shape.has_seq and seq_table is not None:
            width += seq_table.embedding_dim
        # dropout sits inside the activation slot, so the layer indices (state-dict keys, checkpoints) are the
        # same with and without it
        self.dropout = dropout
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(width, h), _ReLUDropout(dropout)]
            width = h
        layers.append(nn.Linear(width, out_dim))
        self.mlp = nn.Sequential(*layers)
        nn.init.normal_(self.id_table.weight, std=0.05)
        nn.init.normal_(self.fused.weight, std=0.05)

    def forward(self, ids: torch.Tensor, cat: torch.Tensor, lists: torch.Tensor, dense: torch.Tensor,
                seq: torch.Tensor) -> torch.Tensor:
        b = ids.shape[0]
        id_vec = self.id_table(ids)
        if self.training and self.id_dropout > 0:  # feature-level: the whole id vector, no rescaling
            id_vec = id_vec * (torch.rand(b, 1, device=ids.device) >= self.id_dropout).to(id_vec.dtype)
        parts = [id_vec, self.fused(cat).reshape(b, -1)]
        if lists.shape[1] > 0:
            parts.append(_masked_mean(self.fused(lists), lists).reshape(b, -1))
        if self.seq_table is not None:
            parts.append(_masked_mean(self.seq_table(seq), seq))
        parts.append(dense)
        x = F.dropout(torch.cat(parts, dim=1), self.dropout, self.training)
        return F.normalize(self.mlp(x), dim=1)


class TwoTower(nn.Module):
    """``id_dropout``: in training, each row's user-id / item-id embedding is zeroed with this probability
    (DropoutNet, Volkovs et al. 2017), so the towers also learn to score from features and the last-N --
    what a cold user or item has; a training-time setting, not part of the shape or the checkpoint."""

    def __init__(self, shape: ModelShape, id_dropout: float = 0.0, dropout: float = 0.0):
        super().__init__()
        self.shape = shape
        h = tuple(shape.hidden_dims)
        self.item_tower = Tower(shape.item, shape.id_embedding_dim, shape.feature_embedding_dim, h, shape.embedding_dim,
                                id_dropout=id_dropout, dropout=dropout)
        self.user_tower = Tower(shape.user, shape.id_embedding_dim, shape.feature_embedding_dim, h, shape.embedding_dim,
                                seq_table=self.item_tower.id_table, id_dropout=id_dropout, dropout=dropout)

    def user(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        seq = x["seq"] if "seq" in x else x["ids"].new_zeros((x["ids"].shape[0], 0))  # lastn_items excluded
        return self.user_tower(x["ids"], x["cat"], x["lists"], x["dense"], seq)

    def item(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        empty = x["ids"].new_zeros((x["ids"].shape[0], 0))
        return self.item_tower(x["ids"], x["cat"], x["lists"], x["dense"], empty)

    def forward(self, user: dict[str, torch.Tensor], item: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user(user), self.item(item)


def shape_from_layouts(user_layout, item_layout, tc) -> ModelShape:  # noqa: ANN001 - TowerLayout, TrainConfig
    def ts(lay, has_seq: bool) -> TowerShape:  # noqa: ANN001
        return TowerShape(lay.id_feature.size, lay.fused_size, lay.n_cat, len(lay.lists), lay.n_dense, has_seq)

    return ModelShape(ts(user_layout, user_layout.seq is not None), ts(item_layout, False), tc.embedding_dim,
                      tc.id_embedding_dim, tc.feature_embedding_dim, tuple(tc.hidden_dims))
