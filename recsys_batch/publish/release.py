"""Releases in the published area and the pointer serving reads.

The published area is ``publish.root``, by default ``<warehouse.root>/published``: a local folder or any
URI :func:`recsys_batch.io.fs.resolve` understands (``hdfs://``, ``viewfs://``, ``s3a://`` / ``s3://``,
``gs://``, ``abfs://``, other fsspec schemes such as ``memory://``). Every file operation here goes through
:mod:`recsys_batch.io.fs`, so the same protocol runs on each. Layout::

    published/_pointer/<20-digit seq>.json    the pointer log: one NEW file per switch, the highest is current
    published/CURRENT                         a mirror of the newest log entry (humans, older readers)
    published/releases/<D>_<UTC stamp>/       one release (immutable once written)
        manifest.json                         written last: date, input table versions, row counts, model
                                              version, metrics (gate table, index report, train summary),
                                              sha256 + bytes of every other file
        tables/<table>/part-00000.parquet     partition dt = D of each published Delta table
        index/items.faiss, index/items.parquet, index/index_report.json
        model/checkpoint.pt, model/user_tower.pt, model/feature_spec.json, model/user_layout.json
        ranking/ranking.pt, ranking/ranking_meta.json, ...   the ranking model: D's, or the last accepted one
                                              when D's was refused by its gate (recsys_batch.ranking.release)
        feature_spec.json                     the spec of D's features (what serving encodes with)
        exposure_bloom.json                   the exposure filters' format name and measured FPR (merge stage;
                                              the filters themselves are tables/exposure_bloom)
    published/releases/.staging-<id>/         local / HDFS only: being written; never pointed at

A pointer (log entry and mirror alike) is ``{"release", "run_date", "path", "switched_at", "seq"}``.

**Protocol.** gate (:mod:`recsys_batch.publish.gate`: a refusal stops here; its decision, reasons and
table go to the manifest) -> write every file of the release -> ``manifest.json`` last -> (local / HDFS:
rename ``.staging-<id>`` to ``releases/<id>``, one atomic rename) -> verify: every checksum, size and row
count re-read from the published filesystem -> switch the pointer -> prune. A date older than the live
release's is refused before the gate and again before the switch (:func:`check_order`) unless
``publish.allow_older``: serving goes back only by :func:`rollback` (to any kept release, by id or date). A crash or error at any step before
the pointer's log entry exists leaves the previous release current; a failed run removes what it wrote.

**Why a pointer log.** Replacing one existing file atomically is not available everywhere: POSIX
``rename(2)`` does it and an object-store PUT does it, but pyarrow's ``HadoopFileSystem.move`` over an
existing file is delete + rename, so an HDFS reader could find no pointer at all. Creating a file under a
*fresh* name is atomic on all of them (temp file + rename to the new name on POSIX and HDFS, one PUT on
object stores). So each switch writes ``_pointer/<seq + 1>.json`` (:func:`recsys_batch.io.fs.write_new`)
and readers (:func:`read_pointer`) list ``_pointer/`` and read the highest number: one list + one read, and
a reader sees the old or the new pointer, never none and never a torn file. The log entry is the commit
point. ``CURRENT`` is rewritten right after it (temp + fsync + ``os.replace`` locally, one PUT on object
stores, temp + move on HDFS) as a convenience mirror with the same content; after a crash between the two
it lags one switch behind until the next switch, so programs should use :func:`read_pointer` (which falls
back to ``CURRENT`` only for an area published before the log existed). :func:`prune` keeps the newest
``KEEP_POINTER_ENTRIES`` log entries. :func:`rollback` is a switch like any other (a new, higher entry).

**Object stores** have no atomic folder rename, so there (and on other fsspec filesystems) a release is
written in place at ``releases/<id>/`` with no staging folder: it stays invisible to readers until the
pointer names it, :func:`list_releases` only lists folders whose ``manifest.json`` (written last) exists,
and :func:`prune` removes leftovers of crashed runs (``.staging-*`` and folders without a manifest).

**One publisher at a time** is assumed (the scheduler runs one publish). Locally two racing switches
cannot take the same number (``os.link`` refuses an existing name; the loser takes the next); on HDFS and
object stores the fresh-name check is not atomic with the write.

Tested locally and on the fsspec ``memory://`` filesystem, which exercises the non-local (object-store)
code path; not tested against a real HDFS or S3 here.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

import pyarrow.parquet as pq

from recsys_batch.config import Config, WarehouseConfig
from recsys_batch.errors import MissingInput, OlderThanLive, RecsysBatchError
from recsys_batch.io import fs
from recsys_batch.io.delta_read import read_partition, table_version
from recsys_batch.publish.gate import DISABLED, GateResult, check_gate, gate_metrics
from recsys_batch.ranking.release import ranking_for_release
from recsys_batch.training.checkpoint import model_dir, read_raw_checkpoint

log = logging.getLogger(__name__)
POINTER, MANIFEST, POINTER_LOG = "CURRENT", "manifest.json", "_pointer"
MODEL_FILES = ("checkpoint.pt", "user_tower.pt", "feature_spec.json", "user_layout.json")
KEEP_POINTER_ENTRIES = 100
_ENTRY = re.compile(r"^\d{20}\.json$")

#: where the published area is: a Config (``publish.root`` or its warehouse's), a WarehouseConfig
#: (``<root>/published``) or the area's own path / URI
Where = Config | WarehouseConfig | str | os.PathLike


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


def published_root(where: Where) -> str:
    """The published area: ``publish.root`` if set, else ``<warehouse.root>/published`` (path or URI)."""
    if isinstance(where, Config):
        if where.publish.root:
            return where.publish.root.rstrip("/") or "/"
        where = where.warehouse
    if isinstance(where, WarehouseConfig):
        return f"{where.root.rstrip('/')}/published"
    return os.fspath(where).rstrip("/") or "/"


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 hex of a file on any filesystem (streamed)."""
    return fs.sha256(path).sha256


def _copy_file(src: str, dst: str) -> fs.Digest:
    """Stream one file into the release (possibly across filesystems); (sha256, bytes) of what was copied."""
    return fs.copy_file(src, dst)


# ---- the pointer --------------------------------------------------------------------------------------

def _log_entries(root: str) -> list[str]:
    """Sorted names of the pointer log entries (one list call)."""
    return [n for n in fs.listdir(fs.join(root, POINTER_LOG), only="files") if _ENTRY.match(n)]


def read_pointer(where: Where) -> dict[str, Any] | None:
    """The current pointer: the highest-numbered ``_pointer/`` entry (``CURRENT`` for an area without a
    log), or None if nothing is published. One list + one read."""
    root = published_root(where)
    for _ in range(3):  # the newest entry is never pruned; re-list if a switch + prune raced the read
        entries = _log_entries(root)
        if not entries:
            break
        try:
            return fs.read_json(fs.join(root, POINTER_LOG, entries[-1]))
        except FileNotFoundError:
            continue
    try:
        return fs.read_json(fs.join(root, POINTER))
    except FileNotFoundError:
        return None


def switch_pointer(where: Where, release: str, run_date: str) -> dict[str, Any]:
    """Make ``release`` current: a new log entry ``_pointer/<seq + 1>.json`` (atomic create on every
    filesystem: the commit point), then the ``CURRENT`` mirror. Returns the pointer."""
    root = published_root(where)
    for _ in range(5):
        entries = _log_entries(root)
        seq = int(entries[-1].removesuffix(".json")) + 1 if entries else 1
        payload = {"release": release, "run_date": run_date, "path": f"releases/{release}",
                   "switched_at": datetime.now(timezone.utc).isoformat(), "seq": seq}
        text = json.dumps(payload)
        try:
            fs.write_new(fs.join(root, POINTER_LOG, f"{seq:020d}.json"), text)
            break
        except FileExistsError:  # another switch took this number: take the next one
            continue
    else:
        raise RecsysBatchError(f"publish: could not add an entry to {fs.join(root, POINTER_LOG)} "
                               f"(another publisher keeps switching the pointer?)")
    try:
        fs.write_atomic(fs.join(root, POINTER), text)
    except Exception as e:  # noqa: BLE001 - the switch is committed; only the mirror is stale
        log.warning("published: %s now points at %s but the %s mirror could not be written: %s",
                    fs.join(root, POINTER_LOG), release, POINTER, e)
    log.info("published: pointer #%d -> %s", seq, release)
    return payload


# ---- releases -----------------------------------------------------------------------------------------

def list_releases(where: Where) -> list[str]:
    """Sorted ids of complete releases (folders with a manifest). One list + one stat per release."""
    d = fs.join(published_root(where), "releases")
    return [n for n in fs.listdir(d, only="dirs")
            if not n.startswith(".") and fs.is_file(fs.join(d, n, MANIFEST))]


def verify_release(path: str | os.PathLike) -> dict[str, Any]:
    """Re-read every file of a release (any filesystem) against its manifest: sha256 and bytes of each
    file, row count of each table. Reads the whole release once; raises :class:`ReleaseCorrupt`."""
    path = os.fspath(path)
    name = fs.basename(path)
    try:
        man = fs.read_json(fs.join(path, MANIFEST))
    except FileNotFoundError:
        raise ReleaseCorrupt(f"release {name}: no {MANIFEST} at {path}") from None
    for rel, meta in man["files"].items():
        f = fs.join(path, rel)
        if not fs.is_file(f):
            raise ReleaseCorrupt(f"release {name}: {rel} listed in the manifest is missing ({f})")
        got = fs.sha256(f)
        if got.sha256 != meta["sha256"] or got.size != meta["bytes"]:
            raise ReleaseCorrupt(f"release {name}: {rel} checksum {got.sha256[:12]} ({got.size} bytes) != "
                                 f"manifest {meta['sha256'][:12]} ({meta['bytes']} bytes)")
    for table, rows in man["row_counts"].items():
        tfs, tpath = fs.resolve(fs.join(path, "tables", table, "part-00000.parquet"))
        got_rows = pq.ParquetFile(tpath, filesystem=tfs).metadata.num_rows
        if got_rows != rows:
            raise ReleaseCorrupt(f"release {name}: table {table} has {got_rows} rows, manifest says {rows}")
    return man


def _write_release(cfg: Config, run_date: date, target: str, release: str, gate: GateResult,
                   ranking: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every file of the release into ``target`` (the staging folder, or the release folder itself on an
    object store), manifest last. Inputs are read from the warehouse, which may be another filesystem."""
    wh, pc = cfg.warehouse, cfg.publish
    root = wh.root.rstrip("/")
    rows: dict[str, int] = {}
    versions: dict[str, int | None] = {}
    digests: dict[str, dict[str, Any]] = {}
    for name in list(pc.tables) + list(pc.optional_tables):
        t = read_partition(wh, name, run_date, required=name in pc.tables)
        if t is None:
            log.warning("publish %s: optional table %s has no partition dt=%s; not in the release", run_date, name, run_date)
            continue
        out = fs.join(target, "tables", name, "part-00000.parquet")
        fs.makedirs(fs.join(target, "tables", name))
        ofs, opath = fs.resolve(out)
        pq.write_table(t, opath, filesystem=ofs)
        rows[name], versions[name] = t.num_rows, table_version(wh, name)
    idx = f"{root}/index/two_tower/dt={run_date.isoformat()}"
    mdl = model_dir(wh, run_date)
    for src_dir, names, sub in ((idx, ("items.faiss", "items.parquet", "index_report.json"), "index"),
                                (mdl, MODEL_FILES, "model")):
        for n in names:
            src = fs.join(src_dir, n)
            if not fs.is_file(src):
                raise MissingInput(f"publish {run_date}: {src} not found: run the train and index stages for {run_date}")
            d = _copy_file(src, fs.join(target, sub, n))
            if d is not None:
                digests[f"{sub}/{n}"] = {"sha256": d.sha256, "bytes": d.size}
    for n in (ranking or {}).get("files", []):  # the ranking model of D (recsys_batch.ranking.release)
        d = _copy_file(fs.join(ranking["dir"], n), fs.join(target, "ranking", n))
        if d is not None:
            digests[f"ranking/{n}"] = {"sha256": d.sha256, "bytes": d.size}
    spec = f"{root}/features/dt={run_date.isoformat()}/feature_spec.json"
    if fs.is_file(spec):
        d = _copy_file(spec, fs.join(target, "feature_spec.json"))
        if d is not None:
            digests["feature_spec.json"] = {"sha256": d.sha256, "bytes": d.size}
    else:
        log.warning("publish %s: no %s; the release carries only the model's own spec (model/feature_spec.json)",
                    run_date, spec)
    exposure = f"{root}/reports/merge/dt={run_date.isoformat()}/exposure_bloom.json"
    if fs.is_file(exposure):  # format + measured FPR of tables/exposure_bloom (recsys_batch.recall.exposure)
        d = _copy_file(exposure, fs.join(target, "exposure_bloom.json"))
        if d is not None:
            digests["exposure_bloom.json"] = {"sha256": d.sha256, "bytes": d.size}
    ckpt_extra = {}
    try:
        ckpt_extra = json.loads(read_raw_checkpoint(fs.join(mdl, "checkpoint.pt"))["extra"])
    except Exception as e:  # noqa: BLE001 - the manifest only loses the train summary
        log.warning("publish %s: cannot read the checkpoint summary: %s", run_date, e)
    files = {}
    for rel in fs.walk_files(target):  # copied files: digest of the bytes read from the source
        if rel == MANIFEST:
            continue
        if rel not in digests:
            d = fs.sha256(fs.join(target, rel))
            digests[rel] = {"sha256": d.sha256, "bytes": d.size}
        files[rel] = digests[rel]
    index_report = fs.read_json(fs.join(target, "index", "index_report.json"))
    manifest = {
        "release": release, "run_date": run_date.isoformat(),
        "created_at": datetime.now(timezone.utc).isoformat(), "config_hash": cfg.config_hash(),
        "model_version": ckpt_extra.get("model_version"),
        "input_table_versions": versions | index_report.get("input_versions", {}),
        "row_counts": rows,
        "metrics": {"gate": gate.to_dict(), "index": {k: index_report.get(k) for k in
                                                       ("kind", "n_items", "params", "recall_k", "recall",
                                                        "build_seconds")},
                    "train": ckpt_extra.get("train"), "ranking": (ranking or {}).get("evaluation")},
        "files": files,
    }
    fs.write_atomic(fs.join(target, MANIFEST), json.dumps(manifest, indent=1, default=str))
    return manifest


def prune(where: Where, keep: int, keep_pointer_entries: int = KEEP_POINTER_ENTRIES) -> list[str]:
    """Remove all but the newest ``keep`` releases (the current one is always kept), leftovers of failed
    or crashed runs (``.staging-*``, release folders without a manifest) and all but the newest
    ``keep_pointer_entries`` pointer log entries. Returns the releases removed. Assumes no publish is
    running concurrently (it is called at the end of one)."""
    root = published_root(where)
    releases = fs.join(root, "releases")
    cur = (read_pointer(where) or {}).get("release")
    rel = list_releases(where)
    old = [r for r in rel[:-keep] if r != cur] if len(rel) > keep else []
    for r in old:
        fs.rmtree(fs.join(releases, r))
    complete = set(rel)
    for n in fs.listdir(releases, only="dirs"):
        if n != cur and (n.startswith(".staging-") or (not n.startswith(".") and n not in complete)):
            log.info("published: removing the leftover %s of a failed run", fs.join(releases, n))
            fs.rmtree(fs.join(releases, n))
    log_dir = fs.join(root, POINTER_LOG)
    entries = _log_entries(root)
    for n in entries[:-max(1, keep_pointer_entries)]:
        fs.remove(fs.join(log_dir, n))
    for n in fs.listdir(log_dir, only="files"):
        if n.startswith(".") and n.endswith(".tmp"):
            fs.remove(fs.join(log_dir, n))
    return old


def check_order(cfg: Config, run_date: date) -> None:
    """Refuse to publish ``run_date`` when the live release is of a later date, unless
    ``publish.allow_older``: publishing an old date (a backfill, a late re-run) would silently move serving
    back. Going back on purpose is :func:`rollback`. Re-publishing the live date is allowed."""
    if cfg.publish.allow_older:
        return
    live = read_pointer(cfg)
    if live and live.get("run_date") and live["run_date"] > run_date.isoformat():
        raise OlderThanLive(
            f"publish {run_date}: the live release {live['release']} is of {live['run_date']}, newer than "
            f"{run_date}; publishing would move serving back to older data. To serve an older release use "
            f"`recsys-batch rollback --release ID` (or --to DATE); to publish {run_date} anyway pass "
            f"--allow-older (publish.allow_older=true)")


def run_publish(cfg: Config, run_date: date, force: bool | None = None) -> PublishResult:
    """The publish stage for D (non-Spark); see the module docstring for the protocol. Refused before
    the gate when the live release is of a later date (:func:`check_order`), and checked again just
    before the switch."""
    pc = cfg.publish
    force = pc.force if force is None else force
    check_order(cfg, run_date)
    gate = GateResult(metric=pc.gate_metric, run_date=run_date.isoformat(), decision=DISABLED,
                      reason="publish.gate = false: not evaluated")
    if pc.gate:
        gate = check_gate(gate_metrics(cfg, run_date), force)  # raises GateRefused before anything is written
        log.info("publish %s gate %s:\n%s", run_date, gate.decision, gate.table())
    ranking = ranking_for_release(cfg, run_date, force or not pc.gate)  # D's, or the last accepted one
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    release = f"{run_date.isoformat()}_{stamp}"
    root = published_root(cfg)
    releases = fs.join(root, "releases")
    final = fs.join(releases, release)
    # object stores (and other fsspec filesystems) have no atomic folder rename: write in place there
    in_place = fs.kind(root) not in ("local", "hdfs")
    staging = final if in_place else fs.join(releases, f".staging-{release}")
    fs.makedirs(staging)
    try:
        manifest = _write_release(cfg, run_date, staging, release, gate, ranking)
        if not in_place:
            fs.rename_dir(staging, final)
        verify_release(final)
        check_order(cfg, run_date)  # a newer date may have been published meanwhile
    except BaseException:
        fs.rmtree(staging)
        fs.rmtree(final)
        raise
    switch_pointer(cfg, release, run_date.isoformat())
    removed = prune(cfg, pc.keep_releases)
    return PublishResult(release, run_date, final, gate.to_dict(),
                         {f"published.{k}": v for k, v in manifest["row_counts"].items()}, removed)


def rollback(cfg: Config, to: date | None = None, release: str | None = None) -> dict[str, Any]:
    """Point the pointer at a kept release (verified first); a new log entry. ``release``: that release
    id (any kept one); ``to``: the newest kept release of that date. Exactly one of the two."""
    if (to is None) == (release is None):
        raise RecsysBatchError("rollback: give either a date (--to D) or a release id (--release ID)")
    rels = list_releases(cfg)
    where = fs.join(published_root(cfg), "releases")
    if release is not None:
        if release not in rels:
            raise MissingInput(f"rollback: no kept release {release} under {where}; kept releases: "
                               f"{', '.join(rels) or '(none)'}")
        target = release
    else:
        cands = [r for r in rels if r.startswith(to.isoformat() + "_")]
        if not cands:
            have = sorted({r.split("_", 1)[0] for r in rels})
            raise MissingInput(f"rollback: no release of {to} under {where}; "
                               f"kept releases: {', '.join(have) or '(none)'}")
        target = cands[-1]
    man = verify_release(fs.join(published_root(cfg), "releases", target))
    return switch_pointer(cfg, target, man.get("run_date") or target.split("_", 1)[0])


def current_release(cfg: Config) -> dict[str, Any] | None:
    """The pointer plus the current release's manifest (None if nothing is published)."""
    p = read_pointer(cfg)
    if p is None:
        return None
    man = fs.read_json(fs.join(published_root(cfg), p["path"], MANIFEST))
    return {"pointer": p, "manifest": man}
