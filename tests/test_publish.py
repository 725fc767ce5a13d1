"""Publishing: atomic pointer switch under an injected failure, rollback, retention, the evaluation gate."""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path

import pytest
import torch

from recsys_batch.config import load_config
from recsys_batch.errors import GateRefused, MissingInput
from recsys_batch.publish import release as rel
from recsys_batch.publish.gate import GateResult, check_gate

torch.set_num_threads(1)
D1, D2 = date(2026, 1, 1), date(2026, 1, 2)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Two days trained and indexed (no release yet); each test copies it."""
    from recsys_batch.index.build import run_index
    from recsys_batch.training.synthetic import World, build_warehouse
    from recsys_batch.training.train import run_train

    root = tmp_path_factory.mktemp("built") / "wh"
    cfg = load_config(None, [f"warehouse.root={root}", "train.batch_size=256", "train.num_workers=0",
                             "train.progress=false", "train.hidden_dims=[16]", "train.embedding_dim=16",
                             "train.learning_rate=0.01"])
    build_warehouse(cfg, World(300, 300, 4, seed=4), [D1, D2])
    for d in (D1, D2):
        run_train(cfg, d)
        run_index(cfg, d)
    return root


@pytest.fixture()
def wh(built, tmp_path):
    root = tmp_path / "wh"
    shutil.copytree(built, root)
    return root


def _cfg(root: Path, *extra: str):
    return load_config(None, [f"warehouse.root={root}", "publish.gate_tolerance=0.5", *extra])


def test_publish_writes_a_verified_release_and_switches_the_pointer(wh):
    cfg = _cfg(wh)
    r1 = rel.run_publish(cfg, D1)
    assert rel.read_pointer(cfg.warehouse)["release"] == r1.release
    man = rel.verify_release(Path(r1.path))
    assert man["run_date"] == "2026-01-01" and man["model_version"].startswith("two_tower-2026-01-01")
    assert man["row_counts"]["item_embeddings"] == 300 and man["row_counts"]["recall_two_tower"] > 0
    assert {"index/items.faiss", "model/user_tower.pt", "model/checkpoint.pt", "feature_spec.json"} <= set(man["files"])
    assert man["input_table_versions"]["recall_two_tower"] == 1  # the table version read (D1 and D2 written)
    assert man["metrics"]["index"]["recall"] == 1.0
    r2 = rel.run_publish(cfg, D2)
    gate = r2.gate
    assert [r["name"] for r in gate["rows"]][:2] == ["two_tower_new", "two_tower_2026-01-01"]
    assert rel.current_release(cfg)["manifest"]["release"] == r2.release


def _fail_third_copy(monkeypatch, message: str) -> dict:  # noqa: ANN001
    """Make the third file copy of a publish raise ``OSError(message)``; returns the call counter."""
    calls = {"n": 0}
    real = rel._copy_file

    def failing_copy(src, dst):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(message)
        return real(src, dst)

    monkeypatch.setattr(rel, "_copy_file", failing_copy)
    return calls


def test_publish_is_atomic_under_an_injected_failure(wh, monkeypatch):
    cfg = _cfg(wh)
    r1 = rel.run_publish(cfg, D1)
    before = (wh / "published" / "CURRENT").read_text()
    real = rel._copy_file
    _fail_third_copy(monkeypatch, "disk full (injected)")
    with pytest.raises(OSError, match="injected"):
        rel.run_publish(cfg, D2)
    assert (wh / "published" / "CURRENT").read_text() == before
    assert rel.read_pointer(cfg.warehouse)["release"] == r1.release
    assert rel.list_releases(cfg.warehouse) == [r1.release]
    assert not [p for p in (wh / "published" / "releases").iterdir() if p.name.startswith(".staging")]

    # a release that fails verification after the rename is removed too; the pointer never moves
    monkeypatch.setattr(rel, "_copy_file", real)

    def corrupt(path):  # noqa: ANN001, ANN202
        raise rel.ReleaseCorrupt(f"release {path}: injected checksum mismatch")

    monkeypatch.setattr(rel, "verify_release", corrupt)
    with pytest.raises(rel.ReleaseCorrupt):
        rel.run_publish(cfg, D2)
    assert rel.read_pointer(cfg.warehouse)["release"] == r1.release
    assert rel.list_releases(cfg.warehouse) == [r1.release]


def test_rollback_and_retention(wh):
    cfg = _cfg(wh, "publish.keep_releases=2")
    r1 = rel.run_publish(cfg, D1)
    r2 = rel.run_publish(cfg, D2)
    p = rel.rollback(cfg, D1)
    assert p["release"] == r1.release == rel.read_pointer(cfg.warehouse)["release"]
    with pytest.raises(MissingInput, match="no release of 2025-12-31"):
        rel.rollback(cfg, date(2025, 12, 31))
    rel.rollback(cfg, D2)
    r3 = rel.run_publish(cfg, D2)  # a re-run of D2 is a new release; only 2 are kept
    assert rel.list_releases(cfg.warehouse) == [r2.release, r3.release]
    assert json.loads((wh / "published" / "CURRENT").read_text())["release"] == r3.release


def test_gate_refuses_a_worse_model_unless_forced(wh):
    res = GateResult(rows=[{"name": "two_tower_new", "users": 10, "recall@50": 0.30},
                           {"name": "two_tower_2026-01-01", "users": 10, "recall@50": 0.40}],
                     metric="recall@50", new=0.30, previous=0.40, tolerance=0.05)
    with pytest.raises(GateRefused, match=r"recall@50 0\.3000 < 0\.3800 = previous 0\.4000") as e:
        check_gate(res, force=False)
    assert "two_tower_2026-01-01" in str(e.value) and e.value.table[0]["recall@50"] == 0.30
    assert check_gate(res, force=True).forced

    # end to end: D2's model replaced by an untrained one is refused, and nothing is published
    from recsys_batch.training.checkpoint import load_checkpoint, save_checkpoint
    from recsys_batch.training.features import build_layout
    from recsys_batch.training.model import TwoTower

    cfg = _cfg(wh, "publish.gate_tolerance=0.05")
    r1 = rel.run_publish(cfg, D1)
    path = wh / "models" / "two_tower" / "dt=2026-01-02" / "checkpoint.pt"
    ck = load_checkpoint(str(path))
    torch.manual_seed(123)
    bad = TwoTower(ck["model"].shape)
    spec = ck["spec"]
    save_checkpoint(str(path), bad, spec, build_layout(spec, "user"), build_layout(spec, "item"), ck["extra"])
    with pytest.raises(GateRefused, match="publish refused"):
        rel.run_publish(cfg, D2)
    assert rel.read_pointer(cfg.warehouse)["release"] == r1.release
    forced = rel.run_publish(cfg, D2, force=True)
    assert forced.gate["forced"] and not forced.gate["passed"]
    assert rel.read_pointer(cfg.warehouse)["release"] == forced.release


# ---- a non-local published area: fsspec's memory:// stands in for an object store (publish.root) -------------

@pytest.fixture()
def mem_area():
    import uuid

    from recsys_batch.io import fs

    root = f"memory://pub-{uuid.uuid4().hex[:10]}/published"
    yield root
    fs.rmtree(root)


def _entries(root: str) -> list[str]:
    from recsys_batch.io import fs

    return fs.listdir(f"{root}/_pointer")


def test_publish_rollback_and_prune_into_memory(wh, mem_area):
    from recsys_batch.io import fs

    cfg = _cfg(wh, f"publish.root={mem_area}", "publish.keep_releases=2")
    assert rel.published_root(cfg) == mem_area and rel.read_pointer(cfg) is None and rel.current_release(cfg) is None
    r1 = rel.run_publish(cfg, D1)
    assert r1.path == f"{mem_area}/releases/{r1.release}"
    assert not (wh / "published").exists()  # nothing published next to the warehouse
    assert fs.listdir(f"{mem_area}/releases") == [r1.release]  # written in place: no staging folder
    p1 = rel.read_pointer(cfg)
    assert p1["release"] == r1.release and p1["seq"] == 1 and _entries(mem_area) == [f"{1:020d}.json"]
    assert fs.read_json(f"{mem_area}/CURRENT") == p1  # the mirror has the same content
    man = rel.verify_release(r1.path)
    assert man["row_counts"]["item_embeddings"] == 300 and man["model_version"].startswith("two_tower-2026-01-01")
    local_faiss = (wh / "index" / "two_tower" / "dt=2026-01-01" / "items.faiss").read_bytes()
    assert fs.read_bytes(f"{r1.path}/index/items.faiss") == local_faiss
    assert man["files"]["index/items.faiss"]["bytes"] == len(local_faiss)

    # verify re-reads the memory copy: a changed byte there is caught
    ej = f"{r1.path}/model/user_layout.json"
    good = fs.read_bytes(ej)
    fs.write_bytes(ej, good[:-1] + b" ")
    with pytest.raises(rel.ReleaseCorrupt, match="model/user_layout.json checksum"):
        rel.verify_release(r1.path)
    fs.write_bytes(ej, good)

    r2 = rel.run_publish(cfg, D2)
    assert rel.read_pointer(cfg)["release"] == r2.release and rel.current_release(cfg)["manifest"]["release"] == r2.release
    back = rel.rollback(cfg, D1)
    assert back["release"] == r1.release and back["seq"] == 3 == rel.read_pointer(cfg)["seq"]
    assert fs.read_json(f"{mem_area}/CURRENT")["release"] == r1.release
    with pytest.raises(MissingInput, match="no release of 2025-12-31"):
        rel.rollback(cfg, date(2025, 12, 31))
    rel.rollback(cfg, D2)
    r3 = rel.run_publish(cfg, D2)
    assert rel.list_releases(cfg) == [r2.release, r3.release]  # keep 2; r1 pruned
    assert fs.listdir(f"{mem_area}/releases") == [r2.release, r3.release]
    assert _entries(mem_area) == [f"{i:020d}.json" for i in range(1, 6)]
    assert rel.prune(cfg, 2, keep_pointer_entries=2) == []
    assert _entries(mem_area) == [f"{4:020d}.json", f"{5:020d}.json"]
    assert rel.read_pointer(cfg)["release"] == r3.release
    older = _cfg(wh, f"publish.root={mem_area}", "publish.keep_releases=2", "publish.allow_older=true")
    assert rel.run_publish(older, D1).release in rel.list_releases(cfg)  # numbering goes on after the trim
    assert rel.read_pointer(cfg)["seq"] == 6


def test_memory_publish_keeps_the_pointer_on_a_failure_midway(wh, mem_area, monkeypatch):
    from recsys_batch.io import fs

    cfg = _cfg(wh, f"publish.root={mem_area}")
    r1 = rel.run_publish(cfg, D1)
    before = fs.read_bytes(f"{mem_area}/CURRENT")
    calls = _fail_third_copy(monkeypatch, "connection reset (injected)")
    with pytest.raises(OSError, match="injected"):
        rel.run_publish(cfg, D2)
    assert rel.read_pointer(cfg)["release"] == r1.release and fs.read_bytes(f"{mem_area}/CURRENT") == before
    assert rel.list_releases(cfg) == [r1.release] and fs.listdir(f"{mem_area}/releases") == [r1.release]
    assert _entries(mem_area) == [f"{1:020d}.json"]

    # a hard crash midway (no cleanup runs): the half-written release is never listed nor pointed at,
    # and the next successful publish removes it
    calls["n"] = 0
    monkeypatch.setattr(rel.fs, "rmtree", lambda uri: None)
    with pytest.raises(OSError, match="injected"):
        rel.run_publish(cfg, D2)
    monkeypatch.undo()
    left = [n for n in fs.listdir(f"{mem_area}/releases") if n != r1.release]
    assert len(left) == 1 and left[0].startswith("2026-01-02_") and not fs.exists(f"{mem_area}/releases/{left[0]}/manifest.json")
    assert rel.read_pointer(cfg)["release"] == r1.release and rel.list_releases(cfg) == [r1.release]

    # verification fails after everything is written: removed, pointer unchanged
    def corrupt(path):  # noqa: ANN001, ANN202
        raise rel.ReleaseCorrupt(f"release {path}: injected checksum mismatch")

    monkeypatch.setattr(rel, "verify_release", corrupt)
    with pytest.raises(rel.ReleaseCorrupt):
        rel.run_publish(cfg, D2)
    monkeypatch.undo()
    assert rel.read_pointer(cfg)["release"] == r1.release and len(fs.listdir(f"{mem_area}/releases")) == 2

    r2 = rel.run_publish(cfg, D2)
    assert rel.read_pointer(cfg)["release"] == r2.release
    assert fs.listdir(f"{mem_area}/releases") == [r1.release, r2.release]  # the crash leftover is gone


def test_pointer_log_wins_over_a_stale_mirror_and_old_areas_still_read(wh, tmp_path):
    from recsys_batch.io import fs

    cfg = _cfg(wh)
    r1 = rel.run_publish(cfg, D1)
    r2 = rel.run_publish(cfg, D2)
    area = wh / "published"
    assert sorted(p.name for p in (area / "_pointer").iterdir()) == [f"{1:020d}.json", f"{2:020d}.json"]
    # a crash between the log entry and the mirror leaves CURRENT one switch behind: readers use the log
    (area / "CURRENT").write_text(json.dumps({"release": r1.release, "run_date": "2026-01-01",
                                              "path": f"releases/{r1.release}"}))
    assert rel.read_pointer(cfg)["release"] == r2.release
    # an area published before the pointer log existed is read through CURRENT; the next switch starts the log
    fs.rmtree(area / "_pointer")
    assert rel.read_pointer(cfg)["release"] == r1.release
    assert rel.rollback(cfg, D2)["seq"] == 1 and rel.read_pointer(cfg)["release"] == r2.release
