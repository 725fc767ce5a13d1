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


def test_publish_is_atomic_under_an_injected_failure(wh, monkeypatch):
    cfg = _cfg(wh)
    r1 = rel.run_publish(cfg, D1)
    before = (wh / "published" / "CURRENT").read_text()
    calls = {"n": 0}
    real = rel._copy_file

    def failing_copy(src, dst):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full (injected)")
        return real(src, dst)

    monkeypatch.setattr(rel, "_copy_file", failing_copy)
    with pytest.raises(OSError, match="injected"):
        rel.run_publish(cfg, D2)
    assert (wh / "published" / "CURRENT").read_text() == before
    assert rel.read_pointer(cfg.warehouse)["release"] == r1.release
    assert rel.list_releases(cfg.warehouse) == [r1.release]
    assert not [p for p in (wh / "published" / "releases").iterdir() if p.name.startswith(".staging")]

    # a release that fails verification after the rename is removed too; the pointer never moves
    monkeypatch.setattr(rel, "_copy_file", real)

    def corrupt(path):  # noqa: ANN001, ANN202
        raise rel.ReleaseCorrupt(f"release {path.name}: injected checksum mismatch")

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
