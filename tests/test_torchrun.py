"""The train job under ``torchrun`` (DDP, gloo, two CPU processes), end to end through ``jobs/``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from recsys_batch.config import load_config
from recsys_batch.training.synthetic import World

D1 = date(2026, 1, 1)


@pytest.mark.slow
def test_torchrun_two_ranks_run_the_train_job(tmp_path):
    """``torchrun --nproc_per_node 2 jobs/train_two_tower.py``: both ranks train their share, rank 0 alone
    writes the checkpoint, exports and run record; a refused upstream check ends both ranks."""
    from recsys_batch.io.delta_read import read_partition
    from recsys_batch.runs import latest_status
    from recsys_batch.training.synthetic import build_warehouse

    sets = [f"warehouse.root={tmp_path / 'wh'}", "train.batch_size=256", "train.num_workers=0",
            "train.progress=false", "train.hidden_dims=[16]", "train.embedding_dim=16"]
    cfg = load_config(None, sets)
    w = World(150, 200, 4, seed=2)
    build_warehouse(cfg, w, [D1], row_group_rows=256)
    repo = Path(__file__).resolve().parents[1]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                str(repo / "jobs" / "train_two_tower.py"), "--date", D1.isoformat()]
    for s in sets:
        torchrun += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    refused = subprocess.run(torchrun, capture_output=True, text=True, timeout=300, env=env, cwd=repo)
    assert refused.returncode != 0
    assert refused.stderr.count("needs samples to have succeeded first") == 2, refused.stderr[-3000:]

    run = subprocess.run(torchrun + ["--no-check"], capture_output=True, text=True, timeout=300, env=env, cwd=repo)
    assert run.returncode == 0, run.stderr[-5000:]
    steps = {r: int(m) for r, m in
             re.findall(r"\(rank (\d) of 2\): (\d+) steps", run.stderr)}
    assert set(steps) == {"0", "1"} and all(n > 0 for n in steps.values()), run.stderr[-3000:]
    assert read_partition(cfg.warehouse, "item_embeddings", D1).num_rows == 200
    assert (tmp_path / "wh" / "models" / "two_tower" / "dt=2026-01-01" / "checkpoint.pt").exists()
    status = latest_status(cfg.warehouse)
    assert status[("train", "2026-01-01")]["status"] == "success"
