"""Release order: publishing a date older than the live release is refused unless allowed; rollback by id."""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from recsys_batch.cli import app
from recsys_batch.config import load_config
from recsys_batch.errors import MissingInput, OlderThanLive, RecsysBatchError
from recsys_batch.publish import release as rel

torch.set_num_threads(1)
MAY9, MAY10 = date(2026, 5, 9), date(2026, 5, 10)
A, B, C = "2026-05-09_20260510T030000000000Z", "2026-05-09_20260510T090000000000Z", "2026-05-10_20260511T030000000000Z"


def _flat(text: str) -> str:
    return " ".join(text.split())


def _fake_release(root: Path, rid: str) -> None:
    """A release folder with only its manifest (no files to verify): enough for the pointer and rollback."""
    d = root / "published" / "releases" / rid
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"release": rid, "run_date": rid.split("_")[0], "files": {},
                                                 "row_counts": {}}))


@pytest.fixture()
def area(tmp_path):
    """Two releases of 05-09 and one of 05-10, the 05-10 one live."""
    root = tmp_path / "wh"
    for rid in (A, B, C):
        _fake_release(root, rid)
    cfg = load_config(None, [f"warehouse.root={root}"])
    rel.switch_pointer(cfg, C, "2026-05-10")
    return cfg


def test_an_older_date_is_refused_before_anything_runs(area):
    with pytest.raises(OlderThanLive) as e:
        rel.run_publish(area, MAY9)  # refused before the gate: nothing of 05-09 is built here
    assert str(e.value) == (
        f"publish 2026-05-09: the live release {C} is of 2026-05-10, newer than 2026-05-09; publishing would "
        "move serving back to older data. To serve an older release use `recsys-batch rollback --release ID` "
        "(or --to DATE); to publish 2026-05-09 anyway pass --allow-older (publish.allow_older=true)")
    assert rel.read_pointer(area)["release"] == C and rel.list_releases(area) == [A, B, C]
    rel.check_order(area, MAY10)  # the live date again (a re-run) and a newer date are fine
    rel.check_order(area, date(2026, 5, 11))
    allowed = load_config(None, [f"warehouse.root={area.warehouse.root}", "publish.allow_older=true"])
    rel.check_order(allowed, MAY9)


def test_rollback_reaches_any_kept_release_by_id(area):
    assert rel.rollback(area, release=A)["release"] == A  # not the newest of its date: --to cannot reach it
    assert rel.read_pointer(area)["run_date"] == "2026-05-09"
    assert rel.rollback(area, MAY9)["release"] == B  # --to D: the newest of that date
    with pytest.raises(MissingInput, match=rf"no kept release 2026-05-08_x under .*; kept releases: {A}, {B}, {C}"):
        rel.rollback(area, release="2026-05-08_x")
    with pytest.raises(RecsysBatchError, match="either a date"):
        rel.rollback(area)
    out = CliRunner().invoke(app, ["rollback", "--release", C, "--set", f"warehouse.root={area.warehouse.root}"])
    assert out.exit_code == 0, out.output
    assert rel.read_pointer(area)["release"] == C


def test_backfill_reports_a_refused_publish_and_goes_on(area):
    """A backfill over past dates does not move serving back: publish of the older date is `refused`
    (recorded as a failed run with the reason), and the next date still runs."""
    from recsys_batch.runner import backfill
    from recsys_batch.runs import RunLog, RunRecorder

    for d in (MAY9, MAY10):  # publish's upstream marked done
        for stage in ("evaluate", "train_ranking"):
            with RunRecorder(area.warehouse, stage, d, area.config_hash(), {}, 1) as r:
                r.start()
            r.end("success", {})
    steps = backfill(area, MAY9, MAY10, ["publish"])
    assert [(s.run_date, s.action) for s in steps] == [(MAY9, "refused"), (MAY10, "failed")]
    assert steps[0].error.startswith("publish 2026-05-09: the live release")
    assert steps[1].reason == "never ran" and "not found" in steps[1].error  # 05-10 really tried; no data here
    st = RunLog.read(area.warehouse).state("publish", MAY9)
    assert st.state == "failed" and st.reasons[0].startswith("OlderThanLive: publish 2026-05-09")


# ---- end to end on a trained warehouse -------------------------------------------------------------------

D1, D2 = date(2026, 1, 1), date(2026, 1, 2)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Two days trained and indexed (no release yet)."""
    from recsys_batch.index.build import run_index
    from recsys_batch.training.synthetic import World, build_warehouse
    from recsys_batch.training.train import run_train

    root = tmp_path_factory.mktemp("built") / "wh"
    cfg = load_config(None, [f"warehouse.root={root}", "train.batch_size=256", "train.num_workers=0",
                             "train.progress=false", "train.hidden_dims=[16]", "train.embedding_dim=16"])
    build_warehouse(cfg, World(200, 200, 4, seed=4), [D1, D2])
    for d in (D1, D2):
        run_train(cfg, d)
        run_index(cfg, d)
    return root


def test_publish_older_date_refused_then_accepted_with_allow_older_then_rolled_back(built, tmp_path):
    root = tmp_path / "wh"
    shutil.copytree(built, root)
    # the gate is not under test here (its own tests are in test_publish.py): forced, still recorded
    sets = ["--set", f"warehouse.root={root}", "--set", "publish.gate_tolerance=1.0", "--set", "publish.force=true"]
    cfg = load_config(None, sets[1::2])
    r2 = rel.run_publish(cfg, D2)

    refused = CliRunner().invoke(app, ["publish", "--date", "2026-01-01", "--no-check", *sets])
    assert refused.exit_code == 2
    assert (f"error: publish 2026-01-01: the live release {r2.release} is of 2026-01-02, newer than 2026-01-01"
            in _flat(refused.output))
    assert rel.read_pointer(cfg)["release"] == r2.release and rel.list_releases(cfg) == [r2.release]

    ok = CliRunner().invoke(app, ["publish", "--date", "2026-01-01", "--no-check", "--allow-older", *sets])
    assert ok.exit_code == 0, ok.output
    live = rel.read_pointer(cfg)
    assert live["run_date"] == "2026-01-01" and live["release"].startswith("2026-01-01_")
    assert rel.list_releases(cfg) == [live["release"], r2.release]

    out = CliRunner().invoke(app, ["rollback", "--release", r2.release, *sets])
    assert out.exit_code == 0, out.output
    assert rel.current_release(cfg)["manifest"]["release"] == r2.release
