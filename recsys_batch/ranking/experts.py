"""Multi-task expert layers: MMoE (Ma et al. 2018) and PLE (Tang et al. 2020). Both map x [B, d] to one
vector per task, ``[T, B, d_out]``.

* **MMoE**: E shared experts f_e; per task t a softmax gate g_t(x) = softmax(W_t x);
  h_t = sum_e g_t(x)_e f_e(x).
* **PLE** (progressive layered extraction): each level (a CGC block) has task-specific experts per task and
  shared experts; task t's gate mixes its own experts and the shared ones (from its own input), and, below
  the last level, a shared gate mixes every expert into the next level's shared input. One level = CGC. Task
  experts let tasks with conflicting gradients (click vs share) stop fighting over the same experts, the
  "seesaw" PLE was built against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Dropout(nn.Module):
    """Inverted dropout as ``nn.Dropout``: x * m / (1 - p), m ~ Bernoulli(1 - p) per element in training, the
    identity in eval mode; the mask drawn as one vectorised uniform >= p. ``nn.Dropout`` draws its mask with
    ``bernoulli_``, element by element on CPU: at [2,048, 256] forward + backward 4.3 ms against 2.4 ms here,
    and a ranking step makes two such calls. No parameters or buffers, so state dicts are those of
    ``nn.Dropout`` (checkpoints load either way)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return x * torch.rand_like(x).ge_(self.p).mul_(1.0 / (1.0 - self.p))


def mlp(in_dim: int, dims: list[int] | tuple[int, ...], dropout: float = 0.0) -> tuple[nn.Sequential, int]:
    """Linear + ReLU (+ dropout) per hidden width; returns (module, output width)."""
    layers: list[nn.Module] = []
    width = in_dim
    for h in dims:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout > 0:
            layers.append(Dropout(dropout))
        width = h
    return nn.Sequential(*layers), width


class MMoE(nn.Module):
    """Computed as one matmul: the first layer of every expert and every gate read x together,
    ``h = x [W_e1; ..; W_eE; W_g1; ..; W_gT]^T`` (the weights concatenated at each call, so the parameters and
    the state dict stay one module per expert / gate), and the gate mixing as E broadcast multiply-adds. The
    same values as one matmul per expert and per gate, ~40% less CPU for the layer at batch 2,048 (x, 479 wide,
    is read once and its gradient accumulated once instead of E + T times)."""

    def __init__(self, in_dim: int, n_tasks: int, n_experts: int, expert_dims: list[int], dropout: float = 0.0):
        super().__init__()
        built = [mlp(in_dim, expert_dims, dropout) for _ in range(n_experts)]
        self.experts = nn.ModuleList([m for m, _ in built])
        self.out_dim = built[0][1]
        self.first_dim = int(expert_dims[0])
        self.single_layer = len(expert_dims) == 1  # the rest of every expert is ReLU (+ dropout): elementwise
        self.n_experts, self.n_tasks = n_experts, n_tasks
        self.gates = nn.ModuleList([nn.Linear(in_dim, n_experts) for _ in range(n_tasks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ws: list[torch.Tensor] = []
        bs: list[torch.Tensor] = []
        for f in self.experts:
            ws.append(f[0].weight)
            bs.append(f[0].bias)
        for g in self.gates:
            ws.append(g.weight)
            bs.append(g.bias)
        h = F.linear(x, torch.cat(ws), torch.cat(bs))
        b, d1, ne = x.shape[0], self.first_dim, self.n_experts
        first = h[:, :ne * d1]
        if self.single_layer:  # ReLU / dropout on all experts at once (the same elementwise ops)
            e = first
            for k, layer in enumerate(self.experts[0]):
                if k > 0:
                    e = layer(e)
            e = e.reshape(b, ne, d1)
        else:
            outs: list[torch.Tensor] = []
            j = 0
            for ex in self.experts:
                y = first[:, j * d1:(j + 1) * d1]
                for k, layer in enumerate(ex):
                    if k > 0:
                        y = layer(y)
                outs.append(y)
                j += 1
            e = torch.stack(outs, 1)  # [B, E, d]
        gates = F.softmax(h[:, ne * d1:].reshape(b, self.n_tasks, ne), -1)  # [B, T, E]
        # sum_e g[:, :, e] f_e: E broadcast multiply-adds, 1.6x less CPU (forward + backward) than the batched
        # matmul [B, T, E] x [B, E, d] of 2,048 tiny products at E = 4, d = 32
        mix = gates[:, :, 0:1] * e[:, 0:1, :]
        for k in range(1, ne):
            mix = mix + gates[:, :, k:k + 1] * e[:, k:k + 1, :]
        return mix.transpose(0, 1)  # [T, B, d]


class _CGC(nn.Module):
    """One PLE level. ``forward(task_in [T, B, d], shared_in [B, d]) -> (task_out [T, B, d'], shared_out [B, d'])``;
    on the last level (no shared gate) shared_out is ``shared_in`` unchanged."""

    def __init__(self, in_dim: int, n_tasks: int, n_shared: int, n_task: int, dims: list[int], dropout: float,
                 last: bool, first: bool = False):
        super().__init__()
        self.n_tasks, self.n_task, self.n_shared = n_tasks, n_task, n_shared
        self.first, self.first_dim, self.single_layer = first, int(dims[0]), len(dims) == 1
        built = [mlp(in_dim, dims, dropout) for _ in range(n_shared + n_tasks * n_task)]
        self.out_dim = built[0][1]
        self.shared = nn.ModuleList([m for m, _ in built[:n_shared]])
        self.task_experts = nn.ModuleList([m for m, _ in built[n_shared:]])  # expert k belongs to task k // n_task
        self.gates = nn.ModuleList([nn.Linear(in_dim, n_task + n_shared) for _ in range(n_tasks)])
        self.shared_gate = nn.ModuleList([] if last else [nn.Linear(in_dim, n_tasks * n_task + n_shared)])

    def forward(self, task_in: torch.Tensor, shared_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.first and not torch.jit.is_scripting():
            return self._first_level(shared_in)
        s = torch.stack([f(shared_in) for f in self.shared], 1)  # [B, S, d]
        own: list[torch.Tensor] = []
        for k, f in enumerate(self.task_experts):
            own.append(f(task_in[k // self.n_task]))
        outs: list[torch.Tensor] = []
        for t, g in enumerate(self.gates):
            e = torch.cat([torch.stack(own[t * self.n_task:(t + 1) * self.n_task], 1), s], 1)
            outs.append((F.softmax(g(task_in[t]), -1).unsqueeze(-1) * e).sum(1))
        shared_out = shared_in
        for g in self.shared_gate:
            e = torch.cat([torch.stack(own, 1), s], 1)
            shared_out = (F.softmax(g(shared_in), -1).unsqueeze(-1) * e).sum(1)
        return torch.stack(outs, 0), shared_out

    @torch.jit.unused
    def _first_level(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The first level, where every expert and gate reads the same x [B, d]: as in :class:`MMoE`, the first
        layer of every expert and every gate as one matmul, ReLU / dropout once, the gate mixing as a broadcast
        multiply-add. The values of :meth:`forward`'s per-expert loop (which TorchScript serving runs); a
        training step at batch 2,048 (6 tasks, 2 shared + 1 task expert each) takes 2.2 -- 2.6x less CPU than
        with the loop (benchmarks/ranking_step.py)."""
        ws: list[torch.Tensor] = []
        bs: list[torch.Tensor] = []
        experts = list(self.shared) + list(self.task_experts)
        for m in [f[0] for f in experts] + list(self.gates) + list(self.shared_gate):
            ws.append(m.weight)
            bs.append(m.bias)
        h = F.linear(x, torch.cat(ws), torch.cat(bs))
        b, d1, n_exp = x.shape[0], self.first_dim, len(experts)
        first = h[:, :n_exp * d1]
        if self.single_layer:
            e = first
            for k, layer in enumerate(experts[0]):
                if k > 0:
                    e = layer(e)
            e = e.reshape(b, n_exp, d1)
        else:
            outs = []
            for j, ex in enumerate(experts):
                y = first[:, j * d1:(j + 1) * d1]
                for k, layer in enumerate(ex):
                    if k > 0:
                        y = layer(y)
                outs.append(y)
            e = torch.stack(outs, 1)
        n_s, n_t, t = self.n_shared, self.n_task, self.n_tasks
        s, own = e[:, :n_s], e[:, n_s:]  # [B, S, d], [B, T * n_task, d]
        d = e.shape[-1]
        mine = torch.cat([own.reshape(b, t, n_t, d), s.unsqueeze(1).expand(b, t, n_s, d)], 2)  # [B, T, n_t + S, d]
        lo = n_exp * d1
        g = F.softmax(h[:, lo:lo + t * (n_t + n_s)].reshape(b, t, n_t + n_s, 1), 2)
        task_out = (g * mine).sum(2).transpose(0, 1)  # 2.4x less CPU than B T tiny matmuls
        shared_out = x
        if len(self.shared_gate) > 0:
            gs = F.softmax(h[:, lo + t * (n_t + n_s):], -1).unsqueeze(1)  # [B, 1, T * n_task + S]
            shared_out = torch.bmm(gs, torch.cat([own, s], 1)).squeeze(1)
        return task_out, shared_out


class PLE(nn.Module):
    def __init__(self, in_dim: int, n_tasks: int, n_shared: int, n_task: int, expert_dims: list[int], levels: int = 1,
                 dropout: float = 0.0):
        super().__init__()
        self.n_tasks = n_tasks
        blocks = []
        width = in_dim
        for lvl in range(levels):
            b = _CGC(width, n_tasks, n_shared, n_task, expert_dims, dropout, last=lvl == levels - 1, first=lvl == 0)
            blocks.append(b)
            width = b.out_dim
        self.levels = nn.ModuleList(blocks)
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.unsqueeze(0).expand(self.n_tasks, -1, -1)
        s = x
        for lvl in self.levels:
            t, s = lvl(t, s)
        return t
