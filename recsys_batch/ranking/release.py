"""What the publish stage needs from the ranking model of D (:mod:`recsys_batch.publish.release`).

A release carries D's ranking model folder (``models/ranking/dt=D``: the TorchScript serving module, its
feature spec, ``ranking_meta.json`` with the fusion weights and calibration alpha, ``evaluation.json``, the
checkpoint) under ``ranking/``, in the same atomic release as the recall indexes. A model its gate refused
makes the whole publish refuse (``GateRefused``, nothing written) unless ``publish.force``; no ranking model
for D is not an error (the release then has none, and says so in the log).
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

from recsys_batch.config import Config
from recsys_batch.errors import GateRefused
from recsys_batch.io import fs
from recsys_batch.ranking.checkpoint import ranking_dir
from recsys_batch.ranking.evaluate import refusal_message
from recsys_batch.ranking.export import EVALUATION, RANKING_FILES, SERVING

log = logging.getLogger(__name__)


def ranking_for_release(cfg: Config, run_date: date, force: bool) -> dict[str, Any] | None:
    """{"dir", "files", "evaluation"} of D's ranking model, None without one; raises :class:`GateRefused` when its
    gate refused it and not ``force``."""
    folder = ranking_dir(cfg.warehouse, run_date)
    if not fs.is_file(fs.join(folder, SERVING)):
        log.warning("publish %s: no ranking model at %s (run train_ranking): the release carries none", run_date,
                    folder)
        return None
    ev = fs.read_json(fs.join(folder, EVALUATION)) if fs.is_file(fs.join(folder, EVALUATION)) else {}
    decision = ev.get("gate", {}).get("decision")
    if decision == "refused":
        msg = refusal_message(ev, f"publish {run_date} refused")
        if not force:
            raise GateRefused(msg + "\n(publish.force=true publishes it anyway)")
        log.warning("%s\npublished anyway (publish.force)", msg)
    return {"dir": folder, "files": [n for n in RANKING_FILES if fs.is_file(fs.join(folder, n))],
            "evaluation": {"decision": decision, "forced": decision == "refused",
                           "gate": ev.get("gate"), "holdout_rows": ev.get("holdout_rows"),
                           "model_version": ev.get("model_version")}}
