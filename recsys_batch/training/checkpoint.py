"""Checkpoints: state dict + model shape + the vocabularies/blocks each table row means, so the next
day's model can be warm-started row by row by id *value* (a day's vocabularies are re-ranked by
frequency, so row positions move). Saved with ``torch.save`` and loaded with ``weights_only=True``.

Layout: ``<warehouse.root>/models/two_tower/dt=D/checkpoint.pt`` (+ ``user_tower.pt``, ``feature_spec.json``),
on any filesystem :mod:`recsys_batch.io.fs` resolves (local, HDFS, object stores): the checkpoint is
serialised in memory and written with :func:`recsys_batch.io.fs.write_atomic` (readers see the old or
the new file, never a partial one).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from datetime import date
from typing import Any

import torch
from torch import nn

from recsys_batch.config import WarehouseConfig
from recsys_batch.io import fs
from recsys_batch.training.columns import C
from recsys_batch.training.features import TowerLayout
from recsys_batch.training.model import ModelShape, TwoTower

log = logging.getLogger(__name__)
CHECKPOINT, USER_TOWER, SPEC = "checkpoint.pt", "user_tower.pt", "feature_spec.json"


def models_root(wh: WarehouseConfig) -> str:
    return f"{wh.root.rstrip('/')}/models/two_tower"


def model_dir(wh: WarehouseConfig, run_date: date) -> str:
    return f"{models_root(wh)}/{C.DT}={run_date.isoformat()}"


def newest_before(root: str, run_date: date, filename: str = CHECKPOINT,
                  accept: Callable[[str], bool] | None = None) -> tuple[date, str] | None:
    """(date, path) of the newest ``<root>/dt=X/<filename>`` with X < run_date whose folder ``accept`` takes
    (default: any), or None. One list call + one stat per candidate folder, newest first."""
    found = []
    for name in fs.listdir(root, only="dirs"):
        if not name.startswith(f"{C.DT}="):
            continue
        try:
            dd = date.fromisoformat(name.split("=", 1)[1])
        except ValueError:
            continue
        if dd < run_date:
            found.append((dd, fs.join(root, name, filename)))
    for dd, path in sorted(found, reverse=True):
        if fs.is_file(path) and (accept is None or accept(path.rsplit("/", 1)[0])):
            return dd, path
    return None


def previous_checkpoint(wh: WarehouseConfig, run_date: date) -> tuple[date, str] | None:
    """(date, path) of the newest two-tower checkpoint with dt < run_date, or None."""
    return newest_before(models_root(wh), run_date)


def layout_meta(layout: TowerLayout) -> dict[str, Any]:
    return {"id_vocab": layout.id_feature.vocab, "id_oov": layout.id_feature.num_oov,
            "blocks": [list(b) for b in layout.blocks()]}


def save_checkpoint(path: str, model: nn.Module, spec: dict, user_layout: TowerLayout, item_layout: TowerLayout,
                    extra: dict[str, Any]) -> None:
    """``torch.save`` into memory, then one atomic write of ``path`` (local, HDFS or object store). ``model``:
    any of the project's models with a ``shape`` (``to_dict``) -- the two-tower, the ranking and pre-rank models."""
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "shape": json.dumps(model.shape.to_dict()),
        "spec": json.dumps(spec),
        "layouts": json.dumps({"user": layout_meta(user_layout), "item": layout_meta(item_layout)}),
        "extra": json.dumps(extra, default=str),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    fs.write_atomic(path, buf.getbuffer())


def read_raw_checkpoint(path: str) -> dict[str, Any]:
    """The saved payload (``weights_only`` load): a local file is read by torch directly, a remote one
    into memory first (one copy of the file's bytes)."""
    if fs.kind(path) == "local":
        return torch.load(fs.resolve(path)[1], map_location="cpu", weights_only=True)
    return torch.load(io.BytesIO(fs.read_bytes(path)), map_location="cpu", weights_only=True)


def load_model_checkpoint(path: str, shape_type: Any, build: Callable[[Any], nn.Module]) -> dict[str, Any]:
    """{"model", "shape", "spec", "layouts", "extra", "state_dict"} of a checkpoint written by
    :func:`save_checkpoint` (weights_only load): ``shape_type.from_dict`` of the stored shape, ``build(shape)``
    with the stored weights, in eval mode."""
    raw = read_raw_checkpoint(path)
    shape = shape_type.from_dict(json.loads(raw["shape"]))
    model = build(shape)
    model.load_state_dict(raw["state_dict"])
    model.eval()
    return {"model": model, "shape": shape, "spec": json.loads(raw["spec"]), "layouts": json.loads(raw["layouts"]),
            "extra": json.loads(raw["extra"]), "state_dict": raw["state_dict"]}


def load_checkpoint(path: str) -> dict[str, Any]:
    """{"model": TwoTower, "shape", "spec", "layouts", "extra", "state_dict"} (weights_only load)."""
    return load_model_checkpoint(path, ModelShape, TwoTower)


def _remap(old: torch.Tensor, new: torch.Tensor, old_vocab: list[str] | None, new_vocab: list[str] | None,
           old_oov: int, new_oov: int) -> tuple[int, int]:
    """Copy rows of ``old`` into ``new`` in place: row 0 (missing), vocabulary rows by value, OOV rows by
    position when the bucket count is unchanged (hash % H is stable). Without vocabularies (numeric
    buckets) rows are copied by position. Returns (rows kept, rows new)."""
    if old.shape[1] != new.shape[1]:
        return 0, new.shape[0]
    if old_vocab is None or new_vocab is None:
        n = min(old.shape[0], new.shape[0])
        new[:n] = old[:n]
        return n, new.shape[0] - n
    new[0] = old[0]
    pos = {v: i + 1 for i, v in enumerate(old_vocab)}
    src, dst = [], []
    for j, v in enumerate(new_vocab):
        i = pos.get(v)
        if i is not None:
            src.append(i)
            dst.append(j + 1)
    if src:
        new[torch.tensor(dst)] = old[torch.tensor(src)]
    kept = 1 + len(src)
    if old_oov == new_oov:
        a, b = len(old_vocab) + 1, len(new_vocab) + 1
        new[b:b + new_oov] = old[a:a + old_oov]
        kept += new_oov
    return kept, new.shape[0] - kept


def warm_start(model: TwoTower, old: dict[str, Any], user_layout: TowerLayout, item_layout: TowerLayout
               ) -> dict[str, dict[str, int]]:
    """Initialise ``model`` from yesterday's checkpoint ``old`` (see :func:`load_checkpoint`).

    Embedding tables grow for new ids (fresh rows) and keep the learned row of every id value known
    yesterday; other parameters are copied when their shape is unchanged. Returns {table: {kept, new}}.
    """
    sd_old = old["state_dict"]
    layouts_old = old["layouts"]
    stats: dict[str, dict[str, int]] = {}
    with torch.no_grad():
        for side, tower, lay in (("user", model.user_tower, user_layout), ("item", model.item_tower, item_layout)):
            lo = layouts_old[side]
            w_old = sd_old[f"{side}_tower.id_table.weight"]
            k, n = _remap(w_old, tower.id_table.weight, lo["id_vocab"], lay.id_feature.vocab, lo["id_oov"],
                          lay.id_feature.num_oov)
            stats[f"{side}.id"] = {"kept": k, "new": n}
            kept = remap_blocks(sd_old[f"{side}_tower.fused.weight"], tower.fused.weight, lo["blocks"], lay)
            stats[f"{side}.features"] = {"kept": kept, "new": tower.fused.weight.shape[0] - kept}
        own = model.state_dict()
        tables = {n for n in sd_old if ".id_table." in n or ".fused." in n or ".seq_table." in n}
        stats["dense"] = copy_dense(own, sd_old, tables, "warm start")
    return stats


def remap_blocks(old_w: torch.Tensor, new_w: torch.Tensor, old_blocks: list, layout: TowerLayout) -> int:
    """Copy the rows of a fused feature table block by block (feature name and kind unchanged), each block's
    rows by value (:func:`_remap`); returns the rows kept. ``old_blocks``: :func:`layout_meta`'s "blocks"."""
    by_name = {b[0]: b for b in old_blocks}
    kept = 0
    for name, off, size, kind, vocab in layout.blocks():
        b = by_name.get(name)
        if b is None or b[3] != kind:
            continue
        _, o_off, o_size, _, o_vocab = b
        o_oov = o_size - 1 - len(o_vocab) if o_vocab is not None else 0
        n_oov = size - 1 - len(vocab) if vocab is not None else 0
        kk, _ = _remap(old_w[o_off:o_off + o_size], new_w[off:off + size], o_vocab, vocab, o_oov, n_oov)
        kept += kk
    return kept


def copy_dense(own: dict[str, torch.Tensor], sd_old: dict[str, torch.Tensor], skip: set[str], what: str
               ) -> dict[str, int]:
    """Copy every old parameter not in ``skip`` whose shape is unchanged into ``own`` (a state dict, in place);
    the others keep their fresh values and are logged. Returns {kept, new}."""
    copied, changed = 0, []
    for name, t in sd_old.items():
        if name in skip or name not in own:
            continue
        if own[name].shape == t.shape:
            own[name].copy_(t)
            copied += 1
        else:
            changed.append(name)
    if changed:
        log.info("%s: %d dense parameters changed shape, initialised fresh: %s", what, len(changed), changed[:10])
    return {"kept": copied, "new": len(changed)}
