"""recsys_batch.io.fs on a local folder and on fsspec's memory:// (the non-local code path), checkpoints
and the exported user tower through it."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from datetime import date

import pyarrow.fs as pafs
import pytest
import torch

from recsys_batch.config import TrainConfig, WarehouseConfig
from recsys_batch.errors import RecsysBatchError
from recsys_batch.io import fs

torch.set_num_threads(1)


@pytest.fixture()
def mem_root():
    root = f"memory://fs-test-{uuid.uuid4().hex[:10]}/area"
    yield root
    fs.rmtree(root)


@pytest.fixture(params=["local", "memory"])
def root(request, tmp_path, mem_root):
    return str(tmp_path / "area") if request.param == "local" else mem_root


def test_resolve_schemes_and_kinds(tmp_path):
    local, p = fs.resolve("rel/dir")
    assert isinstance(local, pafs.LocalFileSystem) and p == os.path.abspath("rel/dir")
    assert fs.resolve(f"file://{tmp_path}/x")[1] == f"{tmp_path}/x"
    mem, p = fs.resolve("memory://bucket/a/b.txt")
    assert p == "/bucket/a/b.txt" and mem.type_name == "py::fsspec+memory"
    assert fs.resolve("memory://bucket/c")[0] is mem  # cached per scheme + authority
    assert [fs.scheme(u) for u in ("s3a://b/k", "S3N://b/k", "file:///x", "x/y", "hdfs:///w")] == ["s3", "s3", "", "", "hdfs"]
    assert [fs.kind(u) for u in ("s3a://b/k", "gs://b", "memory://m", "hdfs:///w", "viewfs://c/w", "x", "sftp://h/x")] == \
        ["object", "object", "object", "hdfs", "hdfs", "local", "other"]
    s3, p = fs.resolve("s3a://bucket/a/b.json?region=us-east-1")  # pyarrow's client, no request made
    assert type(s3).__name__ == "S3FileSystem" and p == "bucket/a/b.json"
    with pytest.raises(RecsysBatchError, match="nosuchfs://bucket/key"):
        fs.resolve("nosuchfs://bucket/key")
    assert fs.join("memory://b/", "/x/", "y.json") == "memory://b/x/y.json"
    assert fs.join("/a/b", "c") == "/a/b/c" and fs.basename("memory://b/x/y/") == "y"


def test_helpers_roundtrip(root):
    f = fs.join(root, "d1", "a.json")
    assert not fs.exists(f) and fs.listdir(root) == []
    fs.write_json(f, {"k": [1, 2]})
    assert fs.read_json(f) == {"k": [1, 2]} and fs.read_text(f) == '{"k": [1, 2]}'
    assert fs.exists(f) and fs.is_file(f) and fs.is_dir(fs.join(root, "d1")) and not fs.is_dir(f)
    fs.write_atomic(f, b"replaced")
    assert fs.read_bytes(f) == b"replaced" and fs.size(f) == 8
    fs.write_text(fs.join(root, "d1", "sub", "b.txt"), "bee")
    fs.write_bytes(fs.join(root, "c.bin"), b"\x00\x01")
    assert fs.listdir(root) == ["c.bin", "d1"]
    assert fs.listdir(root, only="dirs") == ["d1"] and fs.listdir(root, only="files") == ["c.bin"]
    assert fs.walk_files(root) == ["c.bin", "d1/a.json", "d1/sub/b.txt"]  # no temp files left behind
    assert fs.sha256(f) == (hashlib.sha256(b"replaced").hexdigest(), 8)
    with pytest.raises(FileNotFoundError):
        fs.read_bytes(fs.join(root, "missing"))
    with pytest.raises(FileNotFoundError):
        fs.size(fs.join(root, "missing"))

    fs.write_new(fs.join(root, "log", "001.json"), "one")
    with pytest.raises(FileExistsError, match="001.json already exists"):
        fs.write_new(fs.join(root, "log", "001.json"), "two")
    assert fs.read_text(fs.join(root, "log", "001.json")) == "one" and fs.listdir(fs.join(root, "log")) == ["001.json"]

    fs.rename_dir(fs.join(root, "d1"), fs.join(root, "d2"))
    assert not fs.exists(fs.join(root, "d1")) and fs.read_text(fs.join(root, "d2", "sub", "b.txt")) == "bee"
    fs.makedirs(fs.join(root, "d3"))
    fs.write_text(fs.join(root, "d3", "x"), "x")
    with pytest.raises(FileExistsError):
        fs.rename_dir(fs.join(root, "d2"), fs.join(root, "d3"))
    fs.remove(fs.join(root, "c.bin"))
    fs.remove(fs.join(root, "c.bin"))  # missing is fine
    fs.rmtree(fs.join(root, "d2"))
    fs.rmtree(fs.join(root, "nope"))
    assert fs.walk_files(root) == ["d3/x", "log/001.json"]


def test_streamed_copy_across_filesystems(tmp_path, mem_root, monkeypatch):
    monkeypatch.setattr(fs, "CHUNK", 1000)  # many chunks
    data = os.urandom(10_500)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    want = (hashlib.sha256(data).hexdigest(), len(data))
    assert fs.upload_file(src, fs.join(mem_root, "x", "big.bin")) == want
    assert fs.copy_file(fs.join(mem_root, "x", "big.bin"), fs.join(mem_root, "y", "big.bin")) == want
    assert fs.download_file(fs.join(mem_root, "y", "big.bin"), tmp_path / "back" / "big.bin") == want
    assert (tmp_path / "back" / "big.bin").read_bytes() == data
    assert fs.sha256(fs.join(mem_root, "y", "big.bin")) == want
    fs.copy_tree(fs.join(mem_root, "x"), fs.join(mem_root, "z"))
    assert fs.read_bytes(fs.join(mem_root, "z", "big.bin")) == data


def test_failed_copy_leaves_no_partial_file(tmp_path, mem_root):
    with pytest.raises(FileNotFoundError):
        fs.copy_file(tmp_path / "absent.bin", fs.join(mem_root, "dst.bin"))
    assert not fs.exists(fs.join(mem_root, "dst.bin"))


def test_hdfs_code_path_temp_then_move(mem_root, monkeypatch):
    """The HDFS branch (temp file + move, move of a folder) run against memory://, which supports moves."""
    monkeypatch.setattr(fs, "kind", lambda uri: "hdfs" if "://" in os.fspath(uri) else "local")
    f = fs.join(mem_root, "p", "CURRENT")
    fs.write_atomic(f, "a")
    fs.write_atomic(f, "b")
    fs.write_new(fs.join(mem_root, "p", "0001.json"), "{}")
    with pytest.raises(FileExistsError):
        fs.write_new(fs.join(mem_root, "p", "0001.json"), "{}")
    fs.rename_dir(fs.join(mem_root, "p"), fs.join(mem_root, "q"))
    assert fs.read_text(fs.join(mem_root, "q", "CURRENT")) == "b"
    assert fs.walk_files(mem_root) == ["q/0001.json", "q/CURRENT"]  # the temp files were moved, none left


# ---- checkpoints and the TorchScript user tower through the filesystem -------------------------------------

def _model(source: str = "samples"):
    from recsys_batch.training.features import build_layout
    from recsys_batch.training.model import TwoTower, shape_from_layouts
    from recsys_batch.training.synthetic import World, make_spec

    spec = make_spec(World(20, 30, 2, seed=0))
    ul, il = build_layout(spec, "user", source=source), build_layout(spec, "item", source=source)
    tc = TrainConfig(hidden_dims=[8], embedding_dim=4, id_embedding_dim=4, feature_embedding_dim=2)
    return TwoTower(shape_from_layouts(ul, il, tc)), spec, ul, il


def test_checkpoint_roundtrip_and_previous_checkpoint_on_memory(mem_root):
    from recsys_batch.training.checkpoint import (
        CHECKPOINT, load_checkpoint, model_dir, previous_checkpoint, save_checkpoint,
    )

    wh = WarehouseConfig(root=mem_root)
    d1, d2, d3 = date(2026, 1, 1), date(2026, 1, 2), date(2026, 1, 3)
    assert previous_checkpoint(wh, d3) is None
    torch.manual_seed(0)
    m1, spec, ul, il = _model()
    torch.manual_seed(1)
    m2, _, _, _ = _model()
    for d, m in ((d1, m1), (d2, m2)):
        save_checkpoint(f"{model_dir(wh, d)}/{CHECKPOINT}", m, spec, ul, il, {"run_date": d.isoformat()})
    fs.makedirs(fs.join(model_dir(wh, date(2026, 1, 4))))  # a later folder is never "previous" of d3
    fs.write_text(fs.join(fs.join(wh.root, "models", "two_tower", "dt=garbage"), "x"), "x")
    assert fs.listdir(fs.join(wh.root, "models", "two_tower")) == ["dt=2026-01-01", "dt=2026-01-02", "dt=garbage"]
    assert previous_checkpoint(wh, d3) == (d2, f"{mem_root}/models/two_tower/dt=2026-01-02/{CHECKPOINT}")
    assert previous_checkpoint(wh, d2) == (d1, f"{mem_root}/models/two_tower/dt=2026-01-01/{CHECKPOINT}")
    assert previous_checkpoint(wh, d1) is None
    ck = load_checkpoint(previous_checkpoint(wh, d3)[1])
    assert ck["extra"] == {"run_date": "2026-01-02"} and ck["spec"] == spec
    for k, v in m2.state_dict().items():
        assert torch.equal(ck["model"].state_dict()[k], v), k
    assert not torch.equal(ck["state_dict"]["user_tower.id_table.weight"], m1.state_dict()["user_tower.id_table.weight"])


def test_user_tower_export_loads_from_memory_like_from_disk(tmp_path, mem_root):
    from recsys_batch.training.export import UserEmbedder, export_user_tower

    torch.manual_seed(2)
    model, spec, ul, _ = _model("table")
    export_user_tower(model, ul, spec, str(tmp_path / "m"))
    path = export_user_tower(model, ul, spec, fs.join(mem_root, "m"))
    assert path == f"{mem_root}/m/user_tower.pt"
    assert fs.listdir(fs.join(mem_root, "m")) == ["feature_spec.json", "user_layout.json", "user_tower.pt"]
    assert fs.read_json(fs.join(mem_root, "m", "feature_spec.json")) == spec
    assert json.loads((tmp_path / "m" / "user_layout.json").read_text()) == fs.read_json(fs.join(mem_root, "m", "user_layout.json"))
    raw = {"user_id": "u3", "gender": "f", "age": 31, "is_new": False, "top_categories": ["c1"],
           "lastn_items": ["i1", "i2"]}
    local, remote = UserEmbedder(str(tmp_path / "m")).embed(raw), UserEmbedder(fs.join(mem_root, "m")).embed(raw)
    assert local.shape == (4,) and abs(float((local ** 2).sum()) - 1.0) < 1e-5
    assert (local == remote).all()
