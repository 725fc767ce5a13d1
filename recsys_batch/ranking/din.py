"""DIN: attention of the candidate item over the user's last-N items (Zhou et al. 2018, "Deep Interest Network").

    a_j = MLP([q, k_j, q - k_j, q * k_j])        (one scalar per history item j; padding j: a_j = 0)
    v   = sum_j a_j k_j

As in the paper the weights are **not** softmax-normalised: sum_j a_j is free, so the pooled vector keeps how
strongly the history as a whole relates to the candidate (a user with many related items gets a larger
vector), which a softmax would normalise away. The paper's activation unit feeds [k, q - k (its "out
product"), q] to a PReLU/Dice MLP; here ReLU hidden layers and the elementwise product q * k, the common
implementation. Cost O(B L (4d h + h)).
"""

from __future__ import annotations

import torch
from torch import nn


class DINAttention(nn.Module):
    """``forward(q [B, d], keys [B, L, d], mask [B, L] bool) -> [B, d]``; ``hidden`` may be empty (a linear unit)."""

    def __init__(self, dim: int, hidden: list[int] | tuple[int, ...] = (32,)):
        super().__init__()
        layers: list[nn.Module] = []
        width = 4 * dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, q: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        qe = q.unsqueeze(1).expand_as(keys)
        a = self.mlp(torch.cat([qe, keys, qe - keys, qe * keys], dim=-1)).squeeze(-1)  # [B, L]
        a = a * mask.to(a.dtype)
        return (a.unsqueeze(-1) * keys).sum(1)
