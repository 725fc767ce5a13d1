"""The multi-task ranking model and its logistic-regression baseline.

    x0 = RankingInputs(...)                  (ids, spec features, DIN over the last-N: ``inputs``)
    x  = CrossNetV2(x0)                      (DCN-v2, ``cross``)
    h  = MMoE(x) or PLE(x)                   ([T, B, d]: one vector per task, ``experts``)
    out[:, t] = tower_t(h[t])                (MLP -> 1)

Outputs (``TASKS`` order) are raw: logits of click (on the down-sampled impressions: calibrate with
:func:`recsys_batch.ranking.calibration.calibrate`), of p(like | click), p(collect | click), p(share | click),
p(comment | click), and the predicted log1p(watch seconds) of a clicked impression. Both models take the same
nine tensors (the encoded user and item sides, see :mod:`recsys_batch.training.features`), so training,
evaluation and export treat them alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from recsys_batch.config import RANKING_TASKS
from recsys_batch.ranking.cross import CrossNetV2
from recsys_batch.ranking.embedding import Embedding
from recsys_batch.ranking.experts import MMoE, PLE, mlp
from recsys_batch.ranking.inputs import RankingInputs, resolve_pairs
from recsys_batch.training.model import TowerShape, _masked_mean

TASKS = RANKING_TASKS
BINARY_TASKS = TASKS[:5]
#: tasks trained on clicked rows only (conditional on a click)
CONDITIONAL_TASKS = TASKS[1:]
WATCH = TASKS.index("watch_time")


@dataclass(frozen=True)
class RankingShape:
    user: TowerShape
    item: TowerShape
    kind: str = "mmoe"  # mmoe | ple | lr (the baseline)
    id_embedding_dim: int = 16
    feature_embedding_dim: int = 8
    cross_layers: int = 2
    cross_rank: int | None = 32
    din_hidden_dims: tuple[int, ...] = (32,)
    num_experts: int = 4
    expert_dims: tuple[int, ...] = (64,)
    ple_shared_experts: int = 2
    ple_task_experts: int = 1
    ple_levels: int = 1
    tower_dims: tuple[int, ...] = (32,)
    tasks: tuple[str, ...] = field(default_factory=lambda: TASKS)
    seq_cross: bool = False  # candidate x last-N overlap columns in x0 (checkpoints before it: False)
    #: value-match slots (user kind, index, item kind, index) of inputs.resolve_pairs (checkpoints before: none)
    pairs: tuple[tuple[str, int, str, int], ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> RankingShape:
        d = dict(d)
        d["user"], d["item"] = TowerShape(**d["user"]), TowerShape(**d["item"])
        for k in ("din_hidden_dims", "expert_dims", "tower_dims", "tasks"):
            d[k] = tuple(d[k])
        d["pairs"] = tuple(tuple(p) for p in d.get("pairs", ()))
        return RankingShape(**d)


def shape_for(user_layout, item_layout, rc, kind: str | None = None,  # noqa: ANN001
              pairs: tuple[tuple[str, int, str, int], ...] | None = None) -> RankingShape:
    """The shape of a model on these layouts (``TowerLayout``) with ``rc`` (``RankingConfig``); ``pairs``: the
    value-match slots when the caller has resolved them (:func:`resolve_pairs`; resolved here otherwise)."""
    if kind == "lr":
        pairs = ()
    elif pairs is None:
        pairs = resolve_pairs(user_layout, item_layout, rc.match_pairs)[0]
    def ts(lay, has_seq: bool) -> TowerShape:  # noqa: ANN001
        return TowerShape(lay.id_feature.size, lay.fused_size, lay.n_cat, len(lay.lists), lay.n_dense, has_seq)

    return RankingShape(ts(user_layout, user_layout.seq is not None), ts(item_layout, False), kind or rc.multitask,
                        rc.id_embedding_dim, rc.feature_embedding_dim, rc.cross_layers, rc.cross_rank,
                        tuple(rc.din_hidden_dims), rc.num_experts, tuple(rc.expert_dims), rc.ple_shared_experts,
                        rc.ple_task_experts, rc.ple_levels, tuple(rc.tower_dims), seq_cross=rc.seq_cross, pairs=pairs)


class RankingModel(nn.Module):
    def __init__(self, shape: RankingShape, dropout: float = 0.0):
        super().__init__()
        self.shape = shape
        n = len(shape.tasks)
        self.inputs = RankingInputs(shape.user, shape.item, shape.id_embedding_dim, shape.feature_embedding_dim,
                                    shape.din_hidden_dims, shape.seq_cross, shape.pairs)
        d = self.inputs.out_dim
        self.cross = CrossNetV2(d, shape.cross_layers, shape.cross_rank)
        if shape.kind == "ple":
            self.experts: nn.Module = PLE(d, n, shape.ple_shared_experts, shape.ple_task_experts,
                                          list(shape.expert_dims), shape.ple_levels, dropout)
        else:
            self.experts = MMoE(d, n, shape.num_experts, list(shape.expert_dims), dropout)
        towers = []
        for _ in range(n):
            body, w = mlp(self.experts.out_dim, shape.tower_dims, dropout)
            towers.append(nn.Sequential(body, nn.Linear(w, 1)))
        self.towers = nn.ModuleList(towers)

    def forward(self, u_ids: torch.Tensor, u_cat: torch.Tensor, u_lists: torch.Tensor, u_dense: torch.Tensor,
                seq: torch.Tensor, i_ids: torch.Tensor, i_cat: torch.Tensor, i_lists: torch.Tensor,
                i_dense: torch.Tensor) -> torch.Tensor:
        x = self.cross(self.inputs(u_ids, u_cat, u_lists, u_dense, seq, i_ids, i_cat, i_lists, i_dense))
        h = self.experts(x)
        if not torch.jit.is_scripting():
            return self._towers_batched(h)
        outs: list[torch.Tensor] = []  # TorchScript (serving): one tower at a time, the same values
        for t, tower in enumerate(self.towers):
            outs.append(tower(h[t]).squeeze(-1))
        return torch.stack(outs, 1)

    @torch.jit.unused
    def _towers_batched(self, h: torch.Tensor) -> torch.Tensor:
        """Every task tower at once: per layer the towers' weights stacked, ``[T, B, d] x [T, d, h]`` as one
        baddbmm, ReLU and dropout once on ``[T, B, h]`` (independent masks, as per tower). The values of one
        tower at a time; the parameters and the state dict stay one module per tower (warm starts and
        checkpoints unchanged). Training at batch 2,048 with 6 tasks: 7 dropout calls and 12 matmuls per
        step become 2 and 2 (each dropout call draws its mask element by element)."""
        y = h
        for layers in zip(*[tower[0] for tower in self.towers]):
            if isinstance(layers[0], nn.Linear):
                w = torch.stack([m.weight for m in layers])  # [T, out, in]
                b = torch.stack([m.bias for m in layers])  # [T, out]
                y = torch.baddbmm(b.unsqueeze(1), y, w.transpose(1, 2))
            else:  # ReLU / Dropout: elementwise
                y = layers[0](y)
        w = torch.stack([tower[1].weight for tower in self.towers])  # [T, 1, w]
        b = torch.stack([tower[1].bias for tower in self.towers])  # [T, 1]
        return torch.baddbmm(b.unsqueeze(1), y, w.transpose(1, 2)).squeeze(-1).transpose(0, 1)  # [B, T]


class LogisticBaseline(nn.Module):
    """Logistic regression on the same features, one per task (linear regression for watch time): every
    categorical value / numeric bucket / id / last-N item has a weight per task (lists and the last-N
    averaged), dense values a linear term, plus a bias. ``out = sum of the active weights`` -- the one-hot
    LR of a CTR baseline, no crossing."""

    def __init__(self, shape: RankingShape):
        super().__init__()
        self.shape = shape
        n = len(shape.tasks)
        u, i = shape.user, shape.item
        self.user_id, self.item_id = Embedding(u.id_size, n), Embedding(i.id_size, n)
        self.seq_item = Embedding(i.id_size, n)
        self.user_fused, self.item_fused = Embedding(max(u.fused_size, 1), n), Embedding(max(i.fused_size, 1), n)
        for t in (self.user_id, self.item_id, self.seq_item, self.user_fused, self.item_fused):
            nn.init.zeros_(t.weight)
        self.u_dense, self.i_dense = nn.Linear(u.n_dense, n, bias=False), nn.Linear(i.n_dense, n)

    def forward(self, u_ids: torch.Tensor, u_cat: torch.Tensor, u_lists: torch.Tensor, u_dense: torch.Tensor,
                seq: torch.Tensor, i_ids: torch.Tensor, i_cat: torch.Tensor, i_lists: torch.Tensor,
                i_dense: torch.Tensor) -> torch.Tensor:
        out = self.user_id(u_ids) + self.item_id(i_ids) + self.user_fused(u_cat).sum(1) + self.item_fused(i_cat).sum(1)
        if u_lists.shape[1] > 0:
            out = out + _masked_mean(self.user_fused(u_lists), u_lists).sum(1)
        if i_lists.shape[1] > 0:
            out = out + _masked_mean(self.item_fused(i_lists), i_lists).sum(1)
        if seq.shape[1] > 0:
            out = out + _masked_mean(self.seq_item(seq), seq)
        return out + self.u_dense(u_dense) + self.i_dense(i_dense)


def build(shape: RankingShape, dropout: float = 0.0) -> nn.Module:
    return LogisticBaseline(shape) if shape.kind == "lr" else RankingModel(shape, dropout)


def build_for(user_layout, item_layout, rc, kind: str | None = None, dropout: float = 0.0) -> nn.Module:  # noqa: ANN001
    """A fresh model of :func:`shape_for` with its value-match lookups set for these layouts (resolved once)."""
    slots, lookups = resolve_pairs(user_layout, item_layout, rc.match_pairs) if kind != "lr" else ((), [])
    model = build(shape_for(user_layout, item_layout, rc, kind, pairs=slots), dropout)
    if isinstance(model, RankingModel):
        model.inputs.set_lookups(lookups)
    return model


def run(model: nn.Module, user: dict[str, torch.Tensor], item: dict[str, torch.Tensor]) -> torch.Tensor:
    """``model`` on an encoded batch's user / item dicts (``TowerLayout.encode`` tensors) -> [B, T]."""
    seq = user["seq"] if "seq" in user else user["ids"].new_zeros((user["ids"].shape[0], 0))
    return model(user["ids"], user["cat"], user["lists"], user["dense"], seq, item["ids"], item["cat"], item["lists"],
                 item["dense"])


@torch.no_grad()
def init_output_biases(model: nn.Module, labels: torch.Tensor, watch_s: torch.Tensor) -> list[float]:
    """Set each task's output bias to its prior on a batch (fresh models only): logit of the click rate, of each
    conditional rate among the clicked rows, and the mean log1p watch seconds of the clicked rows. Adam moves a
    parameter by about the learning rate per step, so a watch bias starting at 0 would need ~log1p(T) / lr steps
    to reach the mean (1,500 at lr 0.002) while its squared error swamped the other tasks."""
    clicked = labels[:, 0] > 0.5
    eps = 1e-3
    rates = [labels[:, 0].mean().clamp(eps, 1 - eps)]
    for t in range(1, labels.shape[1]):
        rates.append((labels[clicked, t].mean() if clicked.any() else torch.tensor(0.5)).clamp(eps, 1 - eps))
    prior = [float(torch.log(r / (1 - r))) for r in rates]
    prior.append(float(torch.log1p(watch_s[clicked].clamp_min(0)).mean()) if clicked.any() else 0.0)
    if isinstance(model, LogisticBaseline):
        model.i_dense.bias.copy_(torch.tensor(prior))
    elif hasattr(model, "set_prior"):  # the pre-rank model (click only)
        model.set_prior(prior)
    else:
        for t, tower in enumerate(model.towers):
            tower[-1].bias.fill_(prior[t])
    return prior
