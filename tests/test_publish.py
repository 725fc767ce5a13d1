"""Publishing: atomic pointer switch under an injected failure, rollback, retention, the evaluation gate."""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path

import pytest
import torch

from recsys_batch.config import PublishConfig, load_config
from recsys_batch.errors import GateRefused, MissingInput
from recsys_batch.publish import release as rel
from recsys_batch.publish.gate import GateResult, check_gate, gate_metrics

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
                             "train.learning_rate=0.01", "train.epochs=3"])
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


#: the gate settings of these tests: this world holds out ~100 users a day (4 hours of 300 users), so the
#: minimum is lowered; D1's model is a first model, published on a floor (trained: recall@50 ~0.75 against
#: popular ~0.57 on D1's held-out hours; an untrained one ~0.17)
GATE = ["publish.gate_tolerance=0.5", "publish.gate_min_users=50", "publish.gate_min_metric=0.3"]


def _cfg(root: Path, *extra: str):
    return load_config(None, [f"warehouse.root={root}", *GATE, *extra])


def _untrained(wh: Path, day: date) -> None:
    """Replace the checkpoint of ``day`` by an untrained model of the same shape (a useless model)."""
    from recsys_batch.training.checkpoint import load_checkpoint, save_checkpoint
    from recsys_batch.training.features import build_layout
    from recsys_batch.training.model import TwoTower

    path = wh / "models" / "two_tower" / f"dt={day.isoformat()}" / "checkpoint.pt"
    ck = load_checkpoint(str(path))
    torch.manual_seed(123)
    bad = TwoTower(ck["model"].shape)
    spec = ck["spec"]
    save_checkpoint(str(path), bad, spec, build_layout(spec, "user"), build_layout(spec, "item"), ck["extra"])


def _failed(res: GateResult) -> list[str]:
    return [c["check"] for c in res.checks if not c["ok"]]


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
    g1 = man["metrics"]["gate"]
    assert (g1["decision"], g1["passed"], g1["forced"], g1["failures"]) == ("passed", True, False, [])
    assert [c["check"] for c in g1["checks"]] == ["users", "popular", "floor"]
    r2 = rel.run_publish(cfg, D2)
    gate = r2.gate
    assert [r["name"] for r in gate["rows"]] == ["two_tower_new", "two_tower_2026-01-01", "popular"]
    assert gate["decision"] == "passed" and [c["check"] for c in gate["checks"]] == ["users", "popular", "previous",
                                                                                   "floor"]
    assert gate["popular_source"] == "samples dt=2026-01-02 ts < 20:00 UTC (computed: no recall_popular dt=2026-01-01)"
    assert rel.current_release(cfg)["manifest"]["release"] == r2.release
    assert rel.current_release(cfg)["manifest"]["metrics"]["gate"] == json.loads(json.dumps(gate))


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


def _result(**kw) -> GateResult:  # noqa: ANN003
    """A hand-made gate table on recall@50 (defaults: the PublishConfig defaults)."""
    pc = PublishConfig()
    rows = [{"name": "two_tower_new", "users": kw.get("users", 200), "recall@50": kw["new"], "source": "checkpoint"}]
    if kw.get("previous") is not None:
        rows.append({"name": "two_tower_2026-01-01", "users": kw.get("users", 200), "recall@50": kw["previous"],
                     "source": "checkpoint"})
    rows += [{"name": "itemcf", "users": kw.get("users", 200), "recall@50": 0.449, "source": "recall_itemcf"},
             {"name": "popular", "users": kw.get("users", 200), "recall@50": kw.get("popular", 0.149),
              "source": "recall_popular dt=2026-01-01"}]
    return GateResult(rows=rows, metric="recall@50", run_date="2026-01-02", new=kw["new"],
                      previous=kw.get("previous"),
                      previous_model="two_tower_2026-01-01" if kw.get("previous") is not None else None,
                      popular=kw.get("popular", 0.149), popular_source="recall_popular dt=2026-01-01",
                      users=kw.get("users", 200), tolerance=kw.get("tolerance", pc.gate_tolerance),
                      popular_margin=kw.get("margin", pc.gate_popular_margin), min_users=pc.gate_min_users,
                      min_metric=kw.get("floor", pc.gate_min_metric), holdout_hours=4.0,
                      max_users=pc.gate_max_users)


def test_gate_decisions_on_hand_made_tables():
    # the reported case: a useless first model on 9 users -- refused for every reason at once, table included
    pc = PublishConfig()
    assert (pc.gate_min_users, pc.gate_min_metric, pc.gate_popular_margin) == (100, None, 0.0)
    with pytest.raises(GateRefused) as e:
        check_gate(_result(new=0.041, users=9), force=False)
    res, msg = e.value.result, str(e.value)
    assert _failed(res) == ["users", "popular", "first_model"] and res.decision == "refused" and not res.passed
    assert msg.startswith("publish 2026-01-02 refused by the gate: 3 of 3 checks failed (pass --force")
    assert "the held-out set has 9 users" in msg and "publish.gate_min_users = 100" in msg
    assert "train.holdout_hours (now 4;" in msg
    assert "new model recall@50 0.0410 < popular 0.1490 (popular from recall_popular dt=2026-01-01)" in msg
    assert ("first model: no earlier checkpoint to compare with and no publish.gate_min_metric configured; set "
            "publish.gate_min_metric (an absolute floor on recall@50) or pass --force (publish.force=true)") in msg
    assert res.table() in msg and "itemcf" in msg and msg.count("\n") == 1 + 3 + len(res.rows)
    assert e.value.table[0] == {"name": "two_tower_new", "users": 9, "recall@50": 0.041, "source": "checkpoint"}
    forced = check_gate(_result(new=0.041, users=9), force=True)
    assert (forced.decision, forced.passed, forced.forced) == ("forced", False, True)
    assert forced.to_dict()["failures"] == forced.failures and len(forced.failures) == 3

    # below yesterday beyond the tolerance only: 0.30 < 0.40 x (1 - 0.05) = 0.38
    with pytest.raises(GateRefused) as e:
        check_gate(_result(new=0.30, previous=0.40), force=False)
    assert _failed(e.value.result) == ["previous"]
    assert ("new model recall@50 0.3000 < 0.3800 = previous two_tower_2026-01-01 0.4000 x (1 - "
            "publish.gate_tolerance 0.05)") in str(e.value)
    assert check_gate(_result(new=0.381, previous=0.40), force=False).decision == "passed"  # within the tolerance

    # popular margin: 0.16 passes popular 0.149 as is, not with a 10 % margin (0.149 x 1.1 = 0.1639)
    assert check_gate(_result(new=0.16, previous=0.16), force=False).decision == "passed"
    with pytest.raises(GateRefused, match=r"0\.1600 < popular 0\.1490 x \(1 \+ publish.gate_popular_margin 0\.1\) "
                                          r"= 0\.1639"):
        check_gate(_result(new=0.16, previous=0.16, margin=0.1), force=False)

    # a first model on a floor: met -> passed (no first_model failure), missed -> refused by the floor
    ok = check_gate(_result(new=0.20, floor=0.15), force=False)
    assert ok.decision == "passed" and [c["check"] for c in ok.checks] == ["users", "popular", "floor"]
    with pytest.raises(GateRefused, match=r"new model recall@50 0\.1200 < publish.gate_min_metric 0\.15 \(first model"):
        check_gate(_result(new=0.12, floor=0.15, popular=0.10), force=False)


def test_gate_config_is_checked():
    from recsys_batch.errors import ConfigError

    with pytest.raises(ConfigError, match=r"publish.gate_max_users \(50\) < publish.gate_min_users \(100\)"):
        load_config(None, ["publish.gate_max_users=50"])
    with pytest.raises(ConfigError, match=r"publish.gate_metric 'recall@30' must be recall@K or ndcg@K with K in"):
        load_config(None, ["publish.gate_metric=recall@30"])
    assert load_config(None, ["publish.gate_metric=ndcg@20"]).publish.gate_min_metric is None


def _write_samples(root: Path, day: date, rows: list[tuple]) -> None:
    """Recall sample rows (user, item, label, hh:mm of ``day`` UTC, last-N) as one part file."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datetime import datetime, timezone

    from recsys_batch.training.columns import C

    d = root / "samples" / "recall" / f"dt={day.isoformat()}"
    d.mkdir(parents=True)
    ts = [datetime(day.year, day.month, day.day, int(t[:2]), int(t[3:]), tzinfo=timezone.utc) for _, _, _, t, _ in rows]
    pq.write_table(pa.table({C.USER: [r[0] for r in rows], C.ITEM: [r[1] for r in rows],
                             C.LABEL: pa.array([r[2] for r in rows], pa.int32()),
                             C.TS: pa.array(ts, pa.timestamp("us", tz="UTC")),
                             C.LASTN_ITEMS: pa.array([r[4] for r in rows], pa.list_(pa.string()))}),
                   d / "part-00000.parquet")


def test_popular_baseline_is_computed_from_the_rows_before_the_cut_when_recall_popular_is_missing(tmp_path):
    import pyarrow as pa

    from recsys_batch.io.delta_read import replace_partition_arrow
    from recsys_batch.training.evaluate import holdout_set, popular_lists

    # cut = 20:00 (4 held-out hours). Before it: positives a x3, b x2, c x2, d x1 and negatives e x5 (ignored);
    # after it: z x3 (held out: never counted) and the held-out positives of u1 (c) and u2 (d)
    before = ([("u1", "a", 1, "01:00", []), ("u2", "a", 1, "02:00", []), ("u3", "a", 1, "03:00", []),
               ("u3", "b", 1, "04:00", []), ("u4", "b", 1, "05:00", []), ("u4", "c", 1, "06:00", []),
               ("u3", "c", 1, "07:00", []), ("u4", "d", 1, "08:00", [])]
              + [("u4", "e", 0, f"1{k}:00", []) for k in range(5)])
    after = [("u1", "c", 1, "21:00", ["a"]), ("u2", "d", 1, "21:30", []), ("u5", "z", 1, "22:00", ["z"]),
             ("u5", "z", 1, "22:10", ["z"]), ("u5", "z", 1, "22:20", ["z"])]
    _write_samples(tmp_path / "wh", D1, before + after)
    cfg = load_config(None, [f"warehouse.root={tmp_path / 'wh'}", "publish.gate_min_users=1"])
    states, truth = holdout_set(cfg, D1)
    assert truth == {"u1": {"c"}, "u2": {"d"}}  # u5's z is in its last-N: no truth
    # count desc, id asc (b before c), the user's last-N excluded like the model's lists
    assert popular_lists(cfg, D1, states, 3) == {"u1": ["b", "c", "d"], "u2": ["a", "b", "c"], "u5": ["a", "b", "c"]}
    res = gate_metrics(cfg, D1)  # no checkpoint, no recall tables: the popular row only, computed in the gate
    assert [(r["name"], r["users"], r["recall@20"], r["recall@50"], r["source"]) for r in res.rows] == [
        ("popular", 2, 1.0, 1.0, "samples dt=2026-01-01 ts < 20:00 UTC (computed: no recall_popular dt=2025-12-31)")]
    assert res.popular == 1.0 and res.new is None and res.previous_model is None

    # with recall_popular of D - 1 the gate reads it (here with a list for u1 only: u2 scores 0) and says so
    replace_partition_arrow(pa.table({"user_id": ["u1", "u1"], "item_id": ["d", "c"], "score": [2.0, 1.0],
                                      "rank": pa.array([1, 2], pa.int32())}),
                            cfg.warehouse, "recall_popular", date(2025, 12, 31))
    res = gate_metrics(cfg, D1)
    assert [(r["name"], r["recall@50"], r["source"]) for r in res.rows] == [
        ("popular", 0.5, "recall_popular dt=2025-12-31, lists for 1/2 users")]


def test_gate_refuses_a_model_below_popular(wh):
    cfg = _cfg(wh, "publish.gate_min_metric=0.01")
    _untrained(wh, D1)
    with pytest.raises(GateRefused) as e:
        rel.run_publish(cfg, D1)
    res = e.value.result
    assert _failed(res) == ["popular"] and res.new < res.popular
    assert f"new model recall@50 {res.new:.4f} < popular {res.popular:.4f} (popular from samples dt=2026-01-01 ts " \
           f"< 20:00 UTC (computed: no recall_popular dt=2025-12-31))" in str(e.value)
    assert res.table() in str(e.value) and [r["name"] for r in res.rows] == ["two_tower_new", "popular"]
    assert rel.read_pointer(cfg) is None and rel.list_releases(cfg) == []


def test_gate_refuses_too_few_held_out_users(wh):
    cfg = _cfg(wh, "publish.gate_min_users=1000")
    with pytest.raises(GateRefused) as e:
        rel.run_publish(cfg, D2)
    res = e.value.result
    assert _failed(res) == ["users"] and 0 < res.users < 1000
    assert (f"too few held-out users: the held-out set has {res.users} users (with a held-out positive not in "
            f"their last-N)") in str(e.value)
    assert "publish.gate_min_users = 1000. To get more, hold out more of the day with train.holdout_hours (now 4;" \
        in str(e.value)
    assert rel.read_pointer(cfg) is None


def test_a_first_model_needs_force_or_a_floor(wh):
    no_floor = _cfg(wh, "publish.gate_min_metric=null")
    with pytest.raises(GateRefused) as e:
        rel.run_publish(no_floor, D1)
    assert _failed(e.value.result) == ["first_model"]
    assert ("first model: no earlier checkpoint to compare with and no publish.gate_min_metric configured; set "
            "publish.gate_min_metric (an absolute floor on recall@50) or pass --force (publish.force=true)") \
        in str(e.value)
    assert rel.read_pointer(no_floor) is None

    forced = rel.run_publish(no_floor, D1, force=True)
    g = rel.verify_release(forced.path)["metrics"]["gate"]
    assert (g["decision"], g["passed"], g["forced"]) == ("forced", False, True)
    assert [c["check"] for c in g["checks"] if not c["ok"]] == ["first_model"] and g["reason"].startswith("forced")

    floored = rel.run_publish(_cfg(wh), D1)  # the floor 0.3 is met
    g = rel.verify_release(floored.path)["metrics"]["gate"]
    assert (g["decision"], g["forced"], g["min_metric"]) == ("passed", False, 0.3) and g["new"] >= 0.3
    with pytest.raises(GateRefused, match=r"< publish.gate_min_metric 0.99 \(first model: no earlier checkpoint\)"):
        rel.run_publish(_cfg(wh, "publish.gate_min_metric=0.99"), D1)
    assert rel.read_pointer(no_floor)["release"] == floored.release


def test_gate_refuses_a_model_below_yesterday_unless_forced(wh):
    # D2's model replaced by an untrained one: below yesterday beyond the tolerance and below popular,
    # both reasons in the message; nothing is published until forced
    cfg = _cfg(wh, "publish.gate_tolerance=0.05", "publish.gate_min_metric=0.01")
    r1 = rel.run_publish(cfg, D1)
    _untrained(wh, D2)
    with pytest.raises(GateRefused, match="publish 2026-01-02 refused by the gate: 2 of 4 checks failed") as e:
        rel.run_publish(cfg, D2)
    res = e.value.result
    assert _failed(res) == ["popular", "previous"] and res.new < res.previous * 0.95
    prev = f"{res.previous * 0.95:.4f} = previous two_tower_2026-01-01 {res.previous:.4f} x (1 - publish.gate_tolerance 0.05)"
    assert f"new model recall@50 {res.new:.4f} < {prev}" in str(e.value)
    assert [r["name"] for r in e.value.table] == ["two_tower_new", "two_tower_2026-01-01", "popular"]
    assert rel.read_pointer(cfg.warehouse)["release"] == r1.release
    forced = rel.run_publish(cfg, D2, force=True)
    assert forced.gate["forced"] and not forced.gate["passed"] and forced.gate["decision"] == "forced"
    assert [c["check"] for c in forced.gate["checks"] if not c["ok"]] == ["popular", "previous"]
    assert rel.read_pointer(cfg.warehouse)["release"] == forced.release
    assert rel.current_release(cfg)["manifest"]["metrics"]["gate"]["decision"] == "forced"


def test_cli_publish_prints_the_gate_table_and_refuses_with_exit_2(wh):
    from typer.testing import CliRunner

    from recsys_batch.cli import app

    sets = sum((["--set", s] for s in [f"warehouse.root={wh}", *GATE]), [])
    res = CliRunner().invoke(app, ["publish", "--date", "2026-01-01", "--no-check", *sets,
                                   "--set", "publish.gate_min_metric=0.99"])
    assert res.exit_code == 2, res.output
    lines = res.output.splitlines()
    err = [ln for ln in lines if "error:" in ln]  # one error line (warnings may precede it), then reasons + table
    assert len(err) == 1 and err[0].startswith("error: publish 2026-01-01 refused by the gate: 1 of 3 checks failed")
    assert lines[lines.index(err[0]) + 1].startswith("  - new model recall@50 ")
    assert any(ln.startswith("name ") and "source" in ln for ln in lines)
    assert any(ln.startswith("two_tower_new ") for ln in lines) and any(ln.startswith("popular ") for ln in lines)
    assert "Traceback" not in res.output

    res = CliRunner().invoke(app, ["publish", "--date", "2026-01-01", "--no-check", *sets])
    assert res.exit_code == 0, res.output
    assert "evaluation gate 2026-01-01: passed on recall@50" in res.output
    assert "two_tower_new" in res.output and "popular" in res.output and "published 2026-01-01_" in res.output
    res = CliRunner().invoke(app, ["publish", "--date", "2026-01-01", "--no-check", "--force", *sets,
                                   "--set", "publish.gate_min_metric=0.99"])
    assert res.exit_code == 0 and "evaluation gate 2026-01-01: forced on recall@50" in res.output, res.output


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


def test_release_carries_the_exposure_filters_and_their_report(wh):
    """exposure_bloom / recall_merged (the merge stage) go into the same atomic release, and the filters load
    from the published Parquet in this process as they would in serving."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys_batch.io.delta_read import replace_partition_arrow
    from recsys_batch.recall.exposure import build_bloom, load_bloom

    cfg = _cfg(wh)
    bloom, m_bits, k = build_bloom(["i1", "i2"], 0.01)
    filters = pa.table({"user_id": ["u1"], "bloom": [bloom.save_bytes()], "n_items": [2], "m_bits": [m_bits],
                        "k_hashes": pa.array([k], pa.int32()), "fp_rate": [0.01], "probes": [20],
                        "probe_false_positives": [0]})
    replace_partition_arrow(filters, cfg.warehouse, "exposure_bloom", D1)
    report = wh / "reports" / "merge" / f"dt={D1.isoformat()}" / "exposure_bloom.json"
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps({"format": "rbloom-le64k-sha256-lcg128-v1", "measured_fp_rate": 0.0}))
    r = rel.run_publish(cfg, D1)
    man = rel.verify_release(Path(r.path))
    assert man["row_counts"]["exposure_bloom"] == 1 and "exposure_bloom.json" in man["files"]
    row = pq.read_table(Path(r.path) / "tables" / "exposure_bloom" / "part-00000.parquet").to_pylist()[0]
    assert "i1" in load_bloom(row["bloom"]) and "i2" in load_bloom(row["bloom"])
