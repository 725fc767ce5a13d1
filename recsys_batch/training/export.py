"""Exports of a trained two-tower model (rank 0, after training).

* Delta ``item_embeddings`` (item_id, embedding list<float>, model_version), dt = D: the whole catalog
  of ``item_features`` (newest dt <= D), cold items included -- an item the model never saw gets its
  out-of-vocabulary id row plus its real author / category / tag / numeric features.
* Delta ``user_embeddings``, dt = D: users active within ``train.active_days`` (default
  ``recall.active_days``; both null = every user) per ``user_activity``, from ``user_features`` + their
  last-N items (``user_lastn``).
* ``<root>/models/two_tower/dt=D/user_tower.pt``: the user tower as TorchScript, with
  ``feature_spec.json`` and ``user_layout.json`` beside it. :class:`UserEmbedder` is the example loader:
  it embeds one user from raw feature values (``UserEmbedder(dir).embed({"user_id": "u1", "gender": "f",
  ..., "lastn_items": ["i3", "i9"]})``) with no recsys_batch model code, only the spec's encoders.
  The three files are written with :func:`recsys_batch.io.fs.write_atomic` and read back through
  :mod:`recsys_batch.io.fs`, so the model folder may be local, on HDFS or in an object store.
"""

from __future__ import annotations

import io
import json
import logging
from datetime import date, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from recsys_batch.config import Config
from recsys_batch.io import fs
from recsys_batch.io.delta_read import latest_dt, read_partition, replace_partition_arrow
from recsys_batch.training.checkpoint import SPEC, USER_TOWER, model_dir
from recsys_batch.training.columns import (
    ITEM_EMBEDDINGS, ITEM_FEATURES, USER_EMBEDDINGS, USER_FEATURES, USER_LASTN, C,
)
from recsys_batch.training.features import TowerLayout, build_layout
from recsys_batch.training.model import TwoTower

log = logging.getLogger(__name__)
EMBED_BATCH = 8192


def _tensors(x: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in x.items()}


@torch.no_grad()
def embed_table(model: TwoTower, layout: TowerLayout, table: pa.Table, side: str) -> np.ndarray:
    """[rows, d] float32 embeddings of every row of ``table`` (columns as in ``layout``), in batches."""
    model.eval()
    out = np.zeros((table.num_rows, model.shape.embedding_dim), np.float32)
    fn = model.user if side == "user" else model.item
    for s in range(0, table.num_rows, EMBED_BATCH):
        part = table.slice(s, EMBED_BATCH)
        x = _tensors(layout.encode(part))
        if side == "user" and "seq" not in x:
            x["seq"] = torch.zeros((part.num_rows, 0), dtype=torch.int64)
        out[s:s + part.num_rows] = fn(x).numpy()
    return out


def _missing_columns(table: pa.Table, layout: TowerLayout) -> pa.Table:
    """Add null columns for layout inputs the table lacks (encoded as 'missing')."""
    for c in layout.columns():
        if c not in table.column_names:
            typ = pa.list_(pa.string()) if c == C.LASTN_ITEMS else pa.string()
            table = table.append_column(c, pa.nulls(table.num_rows, typ))
    return table


def catalog_items(cfg: Config, run_date: date) -> pa.Table:
    d = latest_dt(cfg.warehouse, ITEM_FEATURES, run_date)
    if d is None:
        from recsys_batch.errors import MissingInput

        raise MissingInput(f"item_features has no partition dt <= {run_date}: run the features stage first")
    return read_partition(cfg.warehouse, ITEM_FEATURES, d)


def active_user_rows(cfg: Config, run_date: date) -> pa.Table:
    """user_features (newest dt <= D) of users active within the window, with their last-N items."""
    wh = cfg.warehouse
    days = cfg.train.active_days or cfg.recall.active_days
    d = latest_dt(wh, USER_FEATURES, run_date)
    if d is None:
        from recsys_batch.errors import MissingInput

        raise MissingInput(f"user_features has no partition dt <= {run_date}: run the features stage first")
    users = read_partition(wh, USER_FEATURES, d)
    act = read_partition(wh, "user_activity", run_date, [C.USER, C.LAST_TS], required=False)
    if act is not None:
        if days is not None:  # both null: every user of the matrix window
            start = datetime(run_date.year, run_date.month, run_date.day, tzinfo=timezone.utc) + timedelta(1 - days)
            start_ts = pa.scalar(start, act.schema.field(C.LAST_TS).type)
            act = act.filter(pc.greater_equal(act.column(C.LAST_TS), start_ts))
        users = users.filter(pc.is_in(users.column(C.USER), act.column(C.USER).combine_chunks()))
    else:
        log.warning("export %s: no user_activity partition: embedding every user of user_features", run_date)
    lastn = read_partition(wh, USER_LASTN, run_date, [C.USER, C.ITEMS], required=False)
    if lastn is not None:
        # a left lookup by key (Acero joins do not carry list columns)
        idx = pc.index_in(users.column(C.USER), lastn.column(C.USER).combine_chunks())
        users = users.append_column(C.LASTN_ITEMS, lastn.column(C.ITEMS).combine_chunks().take(idx))
    return users.sort_by(C.USER)


def embedding_table(ids: pa.Array, vectors: np.ndarray, key: str, version: str) -> pa.Table:
    flat = pa.array(vectors.reshape(-1), pa.float32())
    emb = pa.ListArray.from_arrays(pa.array(np.arange(0, vectors.size + 1, vectors.shape[1], dtype=np.int32)), flat)
    return pa.table({key: ids, C.EMBEDDING: emb, C.MODEL_VERSION: pa.array([version] * len(ids), pa.string())})


def export_user_tower(model: TwoTower, layout: TowerLayout, spec: dict, out_dir: str) -> str:
    """TorchScript of the user tower + the spec and layout it needs, in ``out_dir`` (any filesystem).

    Each file is serialised in memory and written atomically (:func:`recsys_batch.io.fs.write_atomic`).
    """
    fs.makedirs(out_dir)
    scripted = torch.jit.script(model.user_tower)
    path = f"{out_dir}/{USER_TOWER}"
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    fs.write_atomic(path, buf.getbuffer())
    fs.write_atomic(f"{out_dir}/{SPEC}", json.dumps(spec))
    fs.write_atomic(f"{out_dir}/user_layout.json", json.dumps({"seq_len": layout.seq_len, "source": "table",
                                                                "columns": layout.columns()}))
    return path


class UserEmbedder:
    """Example serving-side loader: TorchScript user tower + feature spec -> embedding of raw values.

    ``directory`` is a local path or any URI :func:`recsys_batch.io.fs.resolve` understands (e.g. a
    published release's ``model/`` folder); the tower is read into memory and loaded from bytes.
    """

    def __init__(self, directory: str):
        self.tower = torch.jit.load(io.BytesIO(fs.read_bytes(f"{directory}/{USER_TOWER}")))
        self.spec = fs.read_json(f"{directory}/{SPEC}")
        meta = fs.read_json(f"{directory}/user_layout.json")
        self.layout = build_layout(self.spec, "user", meta["columns"], source="table", seq_len=meta["seq_len"])

    @torch.no_grad()
    def embed(self, raw: dict[str, Any]) -> np.ndarray:
        """One user's unit-length embedding from raw values (missing keys count as missing features)."""
        cols = {}
        for c in self.layout.columns():
            v = raw.get(c)
            cols[c] = pa.array([v], pa.list_(pa.string())) if c == C.LASTN_ITEMS else pa.array([v])
        x = _tensors(self.layout.encode(pa.table(cols)))
        seq = x.get("seq", torch.zeros((1, 0), dtype=torch.int64))
        return self.tower(x["ids"], x["cat"], x["lists"], x["dense"], seq)[0].numpy()


def export_all(cfg: Config, run_date: date, model: TwoTower, spec: dict, version: str) -> dict[str, Any]:
    """Item + user embeddings (Delta, dt = D) and the TorchScript user tower; returns paths and row counts."""
    wh = cfg.warehouse
    items = catalog_items(cfg, run_date)
    ilay = build_layout(spec, "item", items.column_names, cfg.train.exclude_features, "table", cfg.train.max_lastn)
    ivec = embed_table(model, ilay, _missing_columns(items, ilay), "item")
    iv = replace_partition_arrow(embedding_table(items.column(C.ITEM), ivec, C.ITEM, version),
                                 wh, ITEM_EMBEDDINGS, run_date)
    users = active_user_rows(cfg, run_date)
    ulay = build_layout(spec, "user", users.column_names + [C.LASTN_ITEMS], cfg.train.exclude_features, "table",
                        cfg.train.max_lastn)
    uvec = embed_table(model, ulay, _missing_columns(users, ulay), "user")
    uv = replace_partition_arrow(embedding_table(users.column(C.USER), uvec, C.USER, version), wh, USER_EMBEDDINGS,
                                 run_date)
    tower = export_user_tower(model, ulay, spec, model_dir(wh, run_date))
    log.info("export %s: %d item and %d user embeddings, user tower %s", run_date, items.num_rows, users.num_rows, tower)
    return {"rows": {ITEM_EMBEDDINGS: items.num_rows, USER_EMBEDDINGS: users.num_rows},
            "versions": {ITEM_EMBEDDINGS: iv, USER_EMBEDDINGS: uv}, "user_tower": tower}
