"""The ranking model's serving artefacts, in ``<warehouse.root>/models/ranking/dt=D/`` (each file one atomic write):

* ``ranking.pt`` -- TorchScript of :class:`RankingServing`: the nine encoded input tensors (the two-tower's
  ``TowerLayout.encode`` of the user and item side) -> ``[B, 7]``: calibrated p_click, the unconditional
  p_like, p_collect, p_share, p_comment (p_click x p(t | click)), p_watch (p_click x predicted log1p watch
  seconds), and the fused score. The post-hoc calibration maps of the task logits (``ranking.calibration_hours``;
  identity without), the alpha and the fusion weights are buffers of the module;
* ``feature_spec.json`` -- the spec the inputs are encoded with;
* ``ranking_meta.json`` -- tasks, output columns, alpha, fusion weights and formula, the input columns of
  both sides, the last-N length, the model version.

:class:`RankingScorer` is the example loader: raw feature values (sample column names: ``user_id``,
``u_gender``, ``i_category``, ``lastn_items``, ...) -> the seven outputs, with no model code.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from recsys_batch.io import fs
from recsys_batch.ranking.calibration import (
    CalibratedModel, calibrate, calibrator_to_meta, fuse, fusion_vector, identity_calibrator, task_probabilities,
)
from recsys_batch.ranking.model import TASKS
from recsys_batch.training.columns import C
from recsys_batch.training.features import TowerLayout, build_layout

SERVING, META, SPEC, EVALUATION = "ranking.pt", "ranking_meta.json", "feature_spec.json", "evaluation.json"
PRERANK_SERVING, PRERANK_META = "prerank.pt", "prerank_meta.json"
#: files of a ranking model folder that a release carries (the pre-rank ones when ranking.prerank.enabled)
RANKING_FILES = (SERVING, META, SPEC, EVALUATION, "checkpoint.pt", PRERANK_SERVING, PRERANK_META,
                 "prerank_checkpoint.pt")
OUTPUTS = ("p_click", "p_like", "p_collect", "p_share", "p_comment", "p_watch", "score")


class RankingServing(nn.Module):
    """The model plus its post-hoc calibration maps (``cal``: :func:`recsys_batch.ranking.calibration.fit_calibrator`;
    None = identity), the alpha correction and the fusion: one number to rank by (see the module docstring)."""

    def __init__(self, model: nn.Module, alpha: float, fusion_weights: dict[str, float],
                 cal: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.model = CalibratedModel(model, cal if cal is not None else identity_calibrator(5, 2))
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.register_buffer("fusion", fusion_vector(fusion_weights))

    def forward(self, u_ids: torch.Tensor, u_cat: torch.Tensor, u_lists: torch.Tensor, u_dense: torch.Tensor,
                seq: torch.Tensor, i_ids: torch.Tensor, i_cat: torch.Tensor, i_lists: torch.Tensor,
                i_dense: torch.Tensor) -> torch.Tensor:
        out = self.model(u_ids, u_cat, u_lists, u_dense, seq, i_ids, i_cat, i_lists, i_dense)
        probs = task_probabilities(out, self.alpha)
        return torch.cat([probs, fuse(probs, self.fusion).unsqueeze(1)], 1)


def export_ranking(model: nn.Module, user_layout: TowerLayout, item_layout: TowerLayout, spec: dict, alpha: float,
                   fusion_weights: dict[str, float], out_dir: str, extra: dict[str, Any],
                   cal: dict[str, torch.Tensor] | None = None) -> dict[str, str]:
    """Write ``ranking.pt``, ``feature_spec.json`` and ``ranking_meta.json`` into ``out_dir`` (any filesystem)."""
    fs.makedirs(out_dir)
    model.eval()
    scripted = torch.jit.script(RankingServing(model, alpha, fusion_weights, cal))
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    fs.write_atomic(f"{out_dir}/{SERVING}", buf.getbuffer())
    fs.write_atomic(f"{out_dir}/{SPEC}", json.dumps(spec))
    meta = {"tasks": list(TASKS), "outputs": list(OUTPUTS), "alpha": float(alpha),
            "fusion_weights": {t: float(fusion_weights.get(t, 0.0)) for t in TASKS},
            "fusion": "score = p_click^w_click * prod_t (1 + p_t)^w_t, p_t = p_click * p(t | click), "
                      "p_watch = p_click * max(0, log1p watch seconds)",
            "calibration": "z_t' = g_t(z_t) per binary task t (monotone piecewise-linear, post_hoc_calibration; "
                           "identity when null); p_click = alpha q / (1 - q + alpha q), q = sigmoid(z_click'); "
                           "p(t | click) = sigmoid(z_t')",
            "post_hoc_calibration": calibrator_to_meta(cal) if cal is not None else None,
            "user_columns": user_layout.columns(), "item_columns": item_layout.columns(),
            "seq_len": user_layout.seq_len, "source": "samples", **extra}
    fs.write_atomic(f"{out_dir}/{META}", json.dumps(meta, indent=1, default=str))
    return {"serving": f"{out_dir}/{SERVING}", "meta": f"{out_dir}/{META}"}


class PrerankServing(nn.Module):
    """The pre-rank model plus the alpha calibration. ``forward(nine tensors) -> [B]`` calibrated p_click; for
    cached serving ``user_vector(u_ids, u_cat, u_lists, u_dense, seq)`` once per user, ``item_vector(i_ids,
    i_cat, i_lists, i_dense)`` once per item, ``cross_logit(u_cat, u_lists, seq, i_ids, i_cat, i_lists)`` per
    pair, then ``score_cached(user_vec, item_vec, cross)`` -> calibrated p_click (the same value)."""

    def __init__(self, model: nn.Module, alpha: float):
        super().__init__()
        self.model = model
        self.register_buffer("alpha", torch.tensor(float(alpha)))

    @torch.jit.export
    def user_vector(self, u_ids: torch.Tensor, u_cat: torch.Tensor, u_lists: torch.Tensor, u_dense: torch.Tensor,
                    seq: torch.Tensor) -> torch.Tensor:
        return self.model.user_vector(u_ids, u_cat, u_lists, u_dense, seq)

    @torch.jit.export
    def item_vector(self, i_ids: torch.Tensor, i_cat: torch.Tensor, i_lists: torch.Tensor, i_dense: torch.Tensor
                    ) -> torch.Tensor:
        return self.model.item_vector(i_ids, i_cat, i_lists, i_dense)

    @torch.jit.export
    def cross_logit(self, u_cat: torch.Tensor, u_lists: torch.Tensor, seq: torch.Tensor, i_ids: torch.Tensor,
                    i_cat: torch.Tensor, i_lists: torch.Tensor) -> torch.Tensor:
        return self.model.cross_logit(u_cat, u_lists, seq, i_ids, i_cat, i_lists)

    @torch.jit.export
    def score_cached(self, user_vec: torch.Tensor, item_vec: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
        return calibrate(torch.sigmoid(self.model.score_cached(user_vec, item_vec, cross)), self.alpha)

    def forward(self, u_ids: torch.Tensor, u_cat: torch.Tensor, u_lists: torch.Tensor, u_dense: torch.Tensor,
                seq: torch.Tensor, i_ids: torch.Tensor, i_cat: torch.Tensor, i_lists: torch.Tensor,
                i_dense: torch.Tensor) -> torch.Tensor:
        z = self.model(u_ids, u_cat, u_lists, u_dense, seq, i_ids, i_cat, i_lists, i_dense)[:, 0]
        return calibrate(torch.sigmoid(z), self.alpha)


def export_prerank(model: nn.Module, alpha: float, out_dir: str, extra: dict[str, Any]) -> dict[str, str]:
    """Write ``prerank.pt`` (TorchScript of :class:`PrerankServing`) and ``prerank_meta.json`` into ``out_dir``
    (the inputs are encoded as the ranking model's: same ``feature_spec.json`` and input columns)."""
    model.eval()
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(PrerankServing(model, alpha)), buf)
    fs.write_atomic(f"{out_dir}/{PRERANK_SERVING}", buf.getbuffer())
    meta = {"output": "p_click", "alpha": float(alpha),
            "score": "p_click = calibrate(sigmoid(<user_vector, item_vector> + cross_logit + b), alpha)",
            "cached": {"user_vector": ["u_ids", "u_cat", "u_lists", "u_dense", "seq"],
                       "item_vector": ["i_ids", "i_cat", "i_lists", "i_dense"],
                       "cross_logit": ["u_cat", "u_lists", "seq", "i_ids", "i_cat", "i_lists"],
                       "score_cached": ["user_vector", "item_vector", "cross_logit"]},
            "vector_dim": model.shape.vector_dim, "cross_pairs": [list(p) for p in model.shape.pairs],
            "inputs": "as ranking_meta.json (user_columns, item_columns, seq_len; feature_spec.json)", **extra}
    fs.write_atomic(f"{out_dir}/{PRERANK_META}", json.dumps(meta, indent=1, default=str))
    return {"prerank_serving": f"{out_dir}/{PRERANK_SERVING}", "prerank_meta": f"{out_dir}/{PRERANK_META}"}


class RankingScorer:
    """Example serving-side loader: ``RankingScorer(dir).score(rows)`` -> [n, 7] (``OUTPUTS`` order)."""

    def __init__(self, directory: str):
        self.module = torch.jit.load(io.BytesIO(fs.read_bytes(f"{directory}/{SERVING}")))
        self.spec = fs.read_json(f"{directory}/{SPEC}")
        self.meta = fs.read_json(f"{directory}/{META}")
        self.user = build_layout(self.spec, "user", self.meta["user_columns"], seq_len=self.meta["seq_len"])
        self.item = build_layout(self.spec, "item", self.meta["item_columns"], seq_len=self.meta["seq_len"])

    @torch.no_grad()
    def score(self, rows: list[dict[str, Any]]) -> np.ndarray:
        cols = {}
        for c in dict.fromkeys(self.user.columns() + self.item.columns()):
            vals = [r.get(c) for r in rows]
            cols[c] = pa.array(vals, pa.list_(pa.string())) if c == C.LASTN_ITEMS else pa.array(vals)
        t = pa.table(cols)
        u = {k: torch.from_numpy(v) for k, v in self.user.encode(t).items()}
        i = {k: torch.from_numpy(v) for k, v in self.item.encode(t).items()}
        seq = u.get("seq", torch.zeros((len(rows), 0), dtype=torch.int64))
        return self.module(u["ids"], u["cat"], u["lists"], u["dense"], seq, i["ids"], i["cat"], i["lists"],
                           i["dense"]).numpy()
