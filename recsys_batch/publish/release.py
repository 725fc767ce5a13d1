"""Releases under ``<warehouse.root>/published/`` and the pointer serving reads.

Layout::

    published/CURRENT                         {"release": "<id>", "run_date", "path", "switched_at"}
    published/releases/<D>_<UTC stamp>/       one release (immutable once written)
        manifest.json                         date, input table versions, row counts, model version,
                                              metrics (gate table, index report, train summary),
                                              sha256 + bytes of every other file
        tables/<table>/part-00000.parquet     partition dt = D of each published Delta table
        index/items.faiss, index/items.parquet, index/index_report.json
        model/checkpoint.pt, model/user_tower.pt, model/feature_spec.json, model/user_layout.json
        feature_spec.json                     the spec of D's features (what serving encodes with)
    published/releases/.staging-<id>/         being written; never pointed at

Protocol: gate -> write everything into the staging folder -> manifest last -> rename staging to the
release folder -> verify (every checksum and row count re-read from disk) -> switch ``CURRENT`` (write a
temp file, fsync, ``os.replace``: atomic on POSIX) -> prune old releases. A crash at any step before
the switch leaves ``CURRENT`` naming the previous release; a failed run removes its staging folder.

Hadoop / object-store roots (not implemented here, local paths only): on HDFS write the pointer to a
temp path and ``FileContext.rename(tmp, CURRENT, Options.Rename.OVERWRITE)`` (atomic in the NameNode); on
S3 a single PUT of the small pointer object is atomic (readers see the old or the new object, never a
mix), so write the release first and PUT ``CURRENT`` last -- never rely on a directory rename there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from recsys_batch.config import Config, WarehouseConfig
from recsys_batch.errors import MissingInput, RecsysBatchError
from recsys_batch.io.delta_read import read_partition, table_version
from recsys_batch.publish.gate import GateResult, check_gate, gate_metrics
from recsys_batch.training.checkpoint import model_dir

log = logging.getLogger(__name__)
POINTER, MANIFEST = "CURRENT", "manifest.json"
MODEL_FILES = ("checkpoint.pt", "user_tower.pt", "feature_spec.json", "user_layout.json")


class ReleaseCorrupt(RecsysBatchError):
    """A written release does not match its manifest (checksum / row count)."""


@dataclass
class PublishResult:
    release: str
    run_date: date
    path: str
    gate: dict[str, Any] = field(default_factory=dict)
    output_rows: dict[str, int] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)


def published_root(wh: WarehouseConfig) -> Path:
    root = wh.root
    if "://" in root and not root.startswith("file://"):
        raise RecsysBatchError(f"publish: warehouse.root {root} is not a local path; releases are written "
                               f"with local file operations only (see recsys_batch/publish/release.py)")
    return Path(root.removeprefix("file://")) / "published"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _fsync_write(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def read_pointer(wh: WarehouseConfig) -> dict[str, Any] | None:
    p = published_root(wh) / POINTER
    return json.loads(p.read_text()) if p.exists() else None


def switch_pointer(wh: WarehouseConfig, release: str, run_date: str) -> dict[str, Any]:
    """Atomically make ``release`` current: temp file + fsync + os.replace (rename(2) over the old)."""
    root = published_root(wh)
    payload = {"release": release, "run_date": run_date, "path": f"releases/{release}",
               "switched_at": datetime.now(timezone.utc).isoformat()}
    tmp = root / f".{POINTER}.{os.getpid()}.tmp"
    _fsync_write(tmp, json.dumps(payload))
    os.replace(tmp, root / POINTER)
    log.info("published: CURRENT -> %s", release)
    return payload


def list_releases(wh: WarehouseConfig) -> list[str]:
    d = published_root(wh) / "releases"
    if not d.exists():
        return []
    return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).exists())


def verify_release(path: Path) -> dict[str, Any]:
    """Re-read every file of a release against its manifest; raises :class:`ReleaseCorrupt`."""
    man = json.loads((path / MANIFEST).read_text())
    for rel, meta in man["files"].items():
        f = path / rel
        if not f.exists():
            raise ReleaseCorrupt(f"release {path.name}: {rel} listed in the manifest is missing")
        got = sha256_file(f)
        if got != meta["sha256"] or f.stat().st_size != meta["bytes"]:
            raise ReleaseCorrupt(f"release {path.name}: {rel} checksum {got[:12]} != manifest {meta['sha256'][:12]}")
    for table, rows in man["row_counts"].items():
        got = pq.ParquetFile(path / "tables" / table / "part-00000.parquet").metadata.num_rows
        if got != rows:
            raise ReleaseCorrupt(f"release {path.name}: table {table} has {got} rows, manifest says {rows}")
    return man


def _write_release(cfg: Config, run_date: date, staging: Path, gate: GateResult) -> dict[str, Any]:
    wh, pc = cfg.warehouse, cfg.publish
    root = Path(wh.root)
    rows: dict[str, int] = {}
    versions: dict[str, int | None] = {}
    for name in list(pc.tables) + list(pc.optional_tables):
        t = read_partition(wh, name, run_date, required=name in pc.tables)
        if t is None:
            log.warning("publish %s: optional table %s has no partition dt=%s; not in the release", run_date, name, run_date)
            continue
        out = staging / "tables" / name / "part-00000.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(t, out)
        rows[name], versions[name] = t.num_rows, table_version(wh, name)
    idx = root / "index" / "two_tower" / f"dt={run_date.isoformat()}"
    mdl = Path(model_dir(wh, run_date))
    for src_dir, names, sub in ((idx, ("items.faiss", "items.parquet", "index_report.json"), "index"),
                                (mdl, MODEL_FILES, "model")):
        for n in names:
            src = src_dir / n
            if not src.exists():
                raise MissingInput(f"publish {run_date}: {src} not found: run the train and index stages for {run_date}")
            _copy_file(src, staging / sub / n)
    spec = root / "features" / f"dt={run_date.isoformat()}" / "feature_spec.json"
    if spec.exists():
        _copy_file(spec, staging / "feature_spec.json")
    else:
        log.warning("publish %s: no %s; the release carries only the model's own spec (model/feature_spec.json)",
                    run_date, spec)
    ckpt_extra = {}
    try:
        import torch

        ckpt_extra = json.loads(torch.load(mdl / "checkpoint.pt", map_location="cpu", weights_only=True)["extra"])
    except Exception as e:  # noqa: BLE001 - the manifest only loses the train summary
        log.warning("publish %s: cannot read the checkpoint summary: %s", run_date, e)
    files = {}
    for f in sorted(p for p in staging.rglob("*") if p.is_file()):
        rel = f.relative_to(staging).as_posix()
        files[rel] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
    index_report = json.loads((staging / "index" / "index_report.json").read_text())
    manifest = {
        "release": staging.name.removeprefix(".staging-"), "run_date": run_date.isoformat(),
        "created_at": datetime.now(timezone.utc).isoformat(), "config_hash": cfg.config_hash(),
        "model_version": ckpt_extra.get("model_version"),
        "input_table_versions": versions | index_report.get("input_versions", {}),
        "row_counts": rows,
        "metrics": {"gate": gate.to_dict(), "index": {k: index_report.get(k) for k in
                                                       ("kind", "n_items", "params", "recall_k", "recall",
                                                        "build_seconds")},
                    "train": ckpt_extra.get("train")},
        "files": files,
    }
    _fsync_write(staging / MANIFEST, json.dumps(manifest, indent=1, default=str))
    return manifest


def prune(wh: WarehouseConfig, keep: int) -> list[str]:
    """Remove all but the newest ``keep`` releases; the current one is always kept."""
    cur = (read_pointer(wh) or {}).get("release")
    rel = list_releases(wh)
    old = [r for r in rel[:-keep] if r != cur] if len(rel) > keep else []
    for r in old:
        shutil.rmtree(published_root(wh) / "releases" / r, ignore_errors=True)
    return old


def run_publish(cfg: Config, run_date: date, force: bool | None = None) -> PublishResult:
    """The publish stage for D (non-Spark); see the module docstring for the protocol."""
    wh, pc = cfg.warehouse, cfg.publish
    force = pc.force if force is None else force
    gate = GateResult(metric=pc.gate_metric, tolerance=pc.gate_tolerance)
    if pc.gate:
        gate = check_gate(gate_metrics(cfg, run_date), force)  # raises GateRefused before anything is written
        log.info("publish %s gate: %s\n%s", run_date, gate.reason, gate.table())
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    release = f"{run_date.isoformat()}_{stamp}"
    releases = published_root(wh) / "releases"
    staging = releases / f".staging-{release}"
    staging.mkdir(parents=True, exist_ok=True)
    final = releases / release
    try:
        manifest = _write_release(cfg, run_date, staging, gate)
        os.replace(staging, final)
        verify_release(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
        raise
    switch_pointer(wh, release, run_date.isoformat())
    removed = prune(wh, pc.keep_releases)
    return PublishResult(release, run_date, str(final), gate.to_dict(),
                         {f"published.{k}": v for k, v in manifest["row_counts"].items()}, removed)


def rollback(cfg: Config, to: date) -> dict[str, Any]:
    """Point ``CURRENT`` at the newest kept release of date ``to`` (verified first)."""
    wh = cfg.warehouse
    cands = [r for r in list_releases(wh) if r.startswith(to.isoformat() + "_")]
    if not cands:
        have = sorted({r.split("_", 1)[0] for r in list_releases(wh)})
        raise MissingInput(f"rollback: no release of {to} under {published_root(wh) / 'releases'}; "
                           f"kept releases: {', '.join(have) or '(none)'}")
    verify_release(published_root(wh) / "releases" / cands[-1])
    return switch_pointer(wh, cands[-1], to.isoformat())


def current_release(cfg: Config) -> dict[str, Any] | None:
    """The pointer plus the current release's manifest (None if nothing is published)."""
    p = read_pointer(cfg.warehouse)
    if p is None:
        return None
    man = json.loads((published_root(cfg.warehouse) / p["path"] / MANIFEST).read_text())
    return {"pointer": p, "manifest": man}


