"""CPU time of one training step of ranking-model variants, **paired**: every variant built in one process and
timed alternately (6 rounds x 3 steps on one encoded batch of 2,048, median), because CPU time on a shared
machine drifts by 10-20 % between processes. Synthetic spec with 40 noise numerics per side (benchmarks/ranking.py).

    .venv/bin/python benchmarks/ranking_step.py '{"_old": true}' '{}' '{"cross_layers": 1}'

Each argument is a JSON dict of ``RankingConfig`` fields; ``"_old": true`` puts back the first pass's
per-expert MMoE forward and ``nn.Embedding`` (to measure what the one-matmul MMoE and the index_add embedding
backward save); ``"_old_din": true`` the DIN first layer as three matmuls and two [B, L, h] adds (before the
per-row baddbmm); ``"_old_towers": true`` the task towers one at a time (before the batched towers);
``"_old_dropout": true`` ``nn.Dropout`` (bernoulli_ masks) instead of ``experts.Dropout``.
"""
import json
import resource
import statistics
import sys
from datetime import date
import torch
from recsys_batch.config import RankingConfig
from recsys_batch.ranking.data import encode_targets
from recsys_batch.ranking.evaluate import layouts_for_spec
from recsys_batch.ranking.loss import multitask_loss
from recsys_batch.ranking.model import build_for, run
from recsys_batch.ranking.synthetic import make_ranking_samples
from recsys_batch.training.synthetic import World, make_spec

torch.set_num_threads(1)
variants = [json.loads(a) for a in sys.argv[1:]] or [{}]
w = World(20000, 20000, 16, seed=1)
t = make_ranking_samples(w, date(2026, 1, 1), 0.15, extra_numeric=40)
spec = make_spec(World(20000, 20000, 16, seed=1), extra_numeric=40)
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime
setups = []
import recsys_batch.ranking.inputs as _inp
import recsys_batch.ranking.experts as _ex
_FastDropout = _ex.Dropout
import torch.nn.functional as F
from recsys_batch.ranking.embedding import Embedding as _Fast
_fused_forward = _ex.MMoE.forward
def _old_forward(self, x):
    e = torch.stack([f(x) for f in self.experts], 1)
    outs = [(F.softmax(g(x), -1).unsqueeze(-1) * e).sum(1) for g in self.gates]
    return torch.stack(outs, 0)
class _OldMMoE(_ex.MMoE):
    forward = _old_forward
import recsys_batch.ranking.model as _model
from recsys_batch.ranking.din import DINAttention as _DIN
_din_forward = _DIN.forward
def _old_din_forward(self, q, keys, mask):
    w, d = self.first.weight, q.shape[1]
    pre = (q @ (w[:, :d] + w[:, 2 * d:3 * d]).t() + self.first.bias).unsqueeze(1) \
        + keys @ (w[:, d:2 * d] - w[:, 2 * d:3 * d]).t() + (q.unsqueeze(1) * keys) @ w[:, 3 * d:].t()
    a = self.rest(pre).squeeze(-1) * mask.to(pre.dtype)
    return (a.unsqueeze(-1) * keys).sum(1)
class _OldDIN(_DIN):
    forward = _old_din_forward
import recsys_batch.ranking.inputs as _inputs_mod
for v in variants:
    v = dict(v)
    old = v.pop("_old", False)
    old_towers = v.pop("_old_towers", False)
    _ex.Dropout = torch.nn.Dropout if v.pop("_old_dropout", False) else _FastDropout
    _inputs_mod.DINAttention = _OldDIN if v.pop("_old_din", False) else _DIN
    _inp.Embedding = torch.nn.Embedding if old else _Fast
    _model.MMoE = _OldMMoE if old else _ex.MMoE
    rc = RankingConfig(**v)
    ul, il = layouts_for_spec(spec, t.column_names, rc)
    torch.manual_seed(0)
    model = build_for(ul, il, rc, dropout=rc.dropout)
    if old_towers:  # one tower at a time (before the batched towers)
        model._towers_batched = lambda h, m=model: torch.stack(
            [tower(h[t]).squeeze(-1) for t, tower in enumerate(m.towers)], 1)
    part = t.slice(0, 2048)
    u = {k: torch.from_numpy(x) for k, x in ul.encode(part).items()}
    i = {k: torch.from_numpy(x) for k, x in il.encode(part).items()}
    tg = encode_targets(part)
    opt = torch.optim.AdamW(model.parameters(), lr=rc.learning_rate, fused=True)
    def step(model=model, u=u, i=i, tg=tg, opt=opt):
        loss, _ = multitask_loss(run(model, u, i), tg["labels"], tg["watch"])
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    for _ in range(2): step()
    setups.append((v, step, model))
times = {k: [] for k in range(len(setups))}
for r in range(6):
    for k, (v, step, _) in enumerate(setups):
        c = cpu()
        for _ in range(3): step()
        times[k].append((cpu() - c) / 3)
for k, (v, _, m) in enumerate(setups):
    med = statistics.median(times[k])
    print(f"{json.dumps(variants[k]):<60} x0 {m.inputs.out_dim}: median {med:.4f} CPU-s/step = {2048 / med:,.0f} examples per CPU-s "
          f"(min {min(times[k]):.4f})", flush=True)
