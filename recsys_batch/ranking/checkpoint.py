"""Ranking checkpoints: ``<warehouse.root>/models/ranking/dt=D/checkpoint.pt`` -- state dict, model shape, the
spec and the vocabularies/blocks of every embedding table (the two-tower's layout metadata,
:func:`recsys_batch.training.checkpoint.layout_meta`), so tomorrow's model warm-starts row by row by id
*value*. Written with one atomic write, loaded with ``weights_only=True``. A model the gate refused (its
``evaluation.json``) is skipped: the model warm-started from is the newest accepted one.
"""

from __future__ import annotations

import io
import json
import logging
from datetime import date
from typing import Any

import torch
from torch import nn

from recsys_batch.config import WarehouseConfig
from recsys_batch.io import fs
from recsys_batch.ranking.model import RankingShape, build
from recsys_batch.training.checkpoint import _remap, layout_meta, read_raw_checkpoint
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
    root = ranking_root(wh)
    found = []
    for name in fs.listdir(root, only="dirs"):
        if not name.startswith(f"{C.DT}="):
            continue
        try:
            d = date.fromisoformat(name.split("=", 1)[1])
        except ValueError:
            continue
        if d < run_date:
            found.append((d, fs.join(root, name, CHECKPOINT)))
    for d, path in sorted(found, reverse=True):
        if fs.is_file(path) and not refused(path.rsplit("/", 1)[0]):
            return d, path
    return None


def refused(folder: str) -> bool:
    """True when the model folder's ``evaluation.json`` records a refusal by the gate."""
    ev = fs.join(folder, "evaluation.json")
    return fs.is_file(ev) and fs.read_json(ev).get("gate", {}).get("decision") == "refused"


def save_ranking_checkpoint(path: str, model: nn.Module, spec: dict, user_layout: TowerLayout,
                            item_layout: TowerLayout, extra: dict[str, Any]) -> None:
    payload = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "shape": json.dumps(model.shape.to_dict()), "spec": json.dumps(spec),
               "layouts": json.dumps({"user": layout_meta(user_layout), "item": layout_meta(item_layout)}),
               "extra": json.dumps(extra, default=str)}
    buf = io.BytesIO()
    torch.save(payload, buf)
    fs.write_atomic(path, buf.getbuffer())


def load_ranking_checkpoint(path: str) -> dict[str, Any]:
    """{"model", "shape", "spec", "layouts", "extra", "state_dict"} (weights_only load)."""
    raw = read_raw_checkpoint(path)
    shape = RankingShape.from_dict(json.loads(raw["shape"]))
    model = build(shape)
    model.load_state_dict(raw["state_dict"])
    model.eval()
    return {"model": model, "shape": shape, "spec": json.loads(raw["spec"]), "layouts": json.loads(raw["layouts"]),
            "extra": json.loads(raw["extra"]), "state_dict": raw["state_dict"]}


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
            blocks_old = {b[0]: b for b in meta["blocks"]}
            kept = 0
            for fname, off, size, bkind, vocab in lay.blocks():
                b = blocks_old.get(fname)
                if b is None or b[3] != bkind:
                    continue
                _, o_off, o_size, _, o_vocab = b
                o_oov = o_size - 1 - len(o_vocab) if o_vocab is not None else 0
                n_oov = size - 1 - len(vocab) if vocab is not None else 0
                kk, _ = _remap(old_w[o_off:o_off + o_size], new_w[off:off + size], o_vocab, vocab, o_oov, n_oov)
                kept += kk
            stats[name] = {"kept": kept, "new": new_w.shape[0] - kept}
        copied, skipped = 0, []
        for name, t in sd_old.items():
            if name in done or name not in own:
                continue
            if own[name].shape == t.shape:
                own[name].copy_(t)
                copied += 1
            else:
                skipped.append(name)
        if skipped:
            log.info("ranking warm start: %d dense parameters changed shape, initialised fresh: %s", len(skipped),
                     skipped[:10])
        stats["dense"] = {"kept": copied, "new": len(skipped)}
    return stats
