"""DCN-v2 cross layers (Wang et al. 2021, "DCN V2: Improved Deep & Cross Network").

    x_{l+1} = x0 * (W_l x_l + b_l) + x_l          (* elementwise; x0 = the input vector)

``rank=None``: W_l full d x d (the paper's eq. 1). ``rank=r``: W_l = U_l V_l^T with U, V in R^{d x r}, the
paper's low-rank form (sec. 5), O(d r) per row instead of O(d^2): with d ~ 600 input features a full matrix
would dominate a CPU step. Each layer adds one more degree of explicit feature crossing.
"""

from __future__ import annotations

import torch
from torch import nn


class _CrossLayer(nn.Module):
    def __init__(self, dim: int, rank: int | None):
        super().__init__()
        if rank is None or rank >= dim:
            self.v = nn.Identity()
            self.u = nn.Linear(dim, dim)
        else:
            self.v = nn.Linear(dim, rank, bias=False)
            self.u = nn.Linear(rank, dim)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.u(self.v(x)) + x


class CrossNetV2(nn.Module):
    """``forward(x0 [B, d]) -> [B, d]`` after ``layers`` cross layers (identity with 0 layers)."""

    def __init__(self, dim: int, layers: int = 2, rank: int | None = None):
        super().__init__()
        self.layers = nn.ModuleList([_CrossLayer(dim, rank) for _ in range(layers)])

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = layer(x0, x)
        return x
