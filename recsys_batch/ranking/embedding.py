"""An ``nn.Embedding`` whose training backward is one ``index_add_`` (same values, state dict and TorchScript).

PyTorch's CPU ``embedding_dense_backward`` sorts the indices to group duplicates before accumulating; a ranking
batch looks up ~90 fields x 2,048 rows into small tables (heavy duplication), where that costs ~5 ms per table
and step against ~0.8 ms for ``zeros(V, d).index_add_(0, idx, grad)`` (measured single-threaded; the default
model does 7 lookups a step: ~12% of its step). The gradient is the same dense [V, d] tensor (sums in another
order: equal up to float rounding). Eval mode and TorchScript use ``F.embedding`` unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _IndexAddLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(idx)
        ctx.shape = weight.shape
        return F.embedding(idx, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:  # noqa: ANN001
        (idx,) = ctx.saved_tensors
        g = grad.new_zeros(ctx.shape)
        g.index_add_(0, idx.reshape(-1), grad.reshape(-1, ctx.shape[1]))
        return None, g


class Embedding(nn.Embedding):
    """``nn.Embedding`` (no padding_idx / max_norm / sparse) with the index_add backward in training."""

    @torch.jit.unused
    def _train_lookup(self, idx: torch.Tensor) -> torch.Tensor:
        return _IndexAddLookup.apply(idx, self.weight)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if self.training and self.weight.requires_grad and not torch.jit.is_scripting():
            return self._train_lookup(idx)
        return F.embedding(idx, self.weight)
