"""Ranking checkpoints: ``<warehouse.root>/models/ranking/dt=D/checkpoint.pt`` -- state dict, model shape, the
spec and the vocabularies/blocks of every embedding table (the two-tower's layout metadata,
:func:`recsys_batch.training.checkpoint.layout_meta`), so tomorrow's model warm-starts row by row by id
*value*. Written with one atomic write, loaded with ``weights_only=True``. A model the gate refused (its
``evaluation.json``) is skipped: the model warm-started from is the newest accepted one.
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

import torch
from torch import nn

from recsys_batch.config import WarehouseConfig
from recsys_batch.io import fs
from recsys_batch.ranking.model import RankingShape, build
from recsys_batch.training.checkpoint import (
    _remap, copy_dense, load_model_checkpoint, newest_before, remap_blocks, save_checkpoint,
)
from recsys_batch.training.columns import C
from recsys_batch.training.features import TowerLayout

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"


def ranking_root(wh: WarehouseConfig) -> str:
    return f"{wh.root.rstrip('/')}/models/ranking"


def ranking_dir(wh: WarehouseConfig, run_date: date) -> str:
    return f"{ranking_root(wh)}/{C.DT}={run_date.isoformat()}"


def previous_ranking_checkpoint(wh: WarehouseConfig, run_date: date) -> tuple[date, str] | None:
    """(date, path) of the newest ranking checkpoint with dt < run_date not refused by the gate, or None."""
    return newest_before(ranking_root(wh), run_date, CHECKPOINT, accept=lambda folder: not refused(folder))


def refused(folder: str) -> bool:
    """True when the model folder's ``evaluation.json`` records a refusal by the gate."""
    ev = fs.join(folder, "evaluation.json")
    return fs.is_file(ev) and fs.read_json(ev).get("gate", {}).get("decision") == "refused"


#: the two-tower's writer: one payload layout (state dict, shape, spec, layouts, extra) for every model
save_ranking_checkpoint = save_checkpoint


def load_ranking_checkpoint(path: str) -> dict[str, Any]:
    """{"model", "shape", "spec", "layouts", "extra", "state_dict"} (weights_only load)."""
    return load_model_checkpoint(path, RankingShape, build)


#: (state-dict table, layout side, what its rows mean): "id" rows by the side's id vocabulary, "blocks" by
#: the side's fused feature blocks, "seq" (the baseline's last-N weights) by the item-id vocabulary
_TABLES = (("inputs.user_id.weight", "user", "id"), ("inputs.item_id.weight", "item", "id"),
           ("inputs.user_fused.weight", "user", "blocks"), ("inputs.item_fused.weight", "item", "blocks"),
           ("user_id.weight", "user", "id"), ("item_id.weight", "item", "id"), ("seq_item.weight", "item", "id"),
           ("user_fused.weight", "user", "blocks"), ("item_fused.weight", "item", "blocks"))


def warm_start_ranking(model: nn.Module, old: dict[str, Any], user_layout: TowerLayout, item_layout: TowerLayout
                       ) -> dict[str, dict[str, int]]:
    """Initialise ``model`` from a checkpoint (:func:`load_ranking_checkpoint`): id and feature rows copied by
    value (tables grow for new ids, which keep their fresh rows), dense parameters when their shape is
    unchanged. Returns {table: {kept, new}}."""
    sd_old, lo = old["state_dict"], old["layouts"]
    own = model.state_dict()
    lays = {"user": user_layout, "item": item_layout}
    stats: dict[str, dict[str, int]] = {}
    done = set()
    with torch.no_grad():
        for name, side, kind in _TABLES:
            if name not in own or name not in sd_old:
                continue
            done.add(name)
            new_w, old_w, lay, meta = own[name], sd_old[name], lays[side], lo[side]
            if kind == "id":
                k, n = _remap(old_w, new_w, meta["id_vocab"], lay.id_feature.vocab, meta["id_oov"],
                              lay.id_feature.num_oov)
                stats[name] = {"kept": k, "new": n}
                continue
            kept = remap_blocks(old_w, new_w, meta["blocks"], lay)
            stats[name] = {"kept": kept, "new": new_w.shape[0] - kept}
        done.add("inputs.pair_lookup")  # value-match lookup: built for today's layout (build_for), never copied
        stats["dense"] = copy_dense(own, sd_old, done, "ranking warm start")
    return stats
