"""What the publish stage takes from the ranking models (:mod:`recsys_batch.publish.release`).

A release carries one ranking model folder (the TorchScript serving module, its feature spec,
``ranking_meta.json`` with the fusion weights and calibration alpha, ``evaluation.json``, the checkpoint) under
``ranking/``, in the same atomic release as the recall indexes:

* D's model (``models/ranking/dt=D``) when its gate passed (or was disabled), or with ``publish.force``;
* when D's model was **refused** by its gate: the newest earlier *accepted* model instead -- the refusal keeps
  the new ranking model out of serving without holding back the day's recall lists (serving keeps ranking with
  yesterday's model, as a two-tower refusal would keep yesterday's release). The manifest records both;
* no model at all (train_ranking not run, or nothing accepted yet): the release has no ``ranking/`` (a warning).
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

from recsys_batch.config import Config
from recsys_batch.io import fs
from recsys_batch.ranking.checkpoint import previous_ranking_checkpoint, ranking_dir
from recsys_batch.ranking.evaluate import refusal_message
from recsys_batch.ranking.export import EVALUATION, RANKING_FILES, SERVING

log = logging.getLogger(__name__)


def _decision(folder: str) -> tuple[dict[str, Any], str | None]:
    ev = fs.read_json(fs.join(folder, EVALUATION)) if fs.is_file(fs.join(folder, EVALUATION)) else {}
    return ev, ev.get("gate", {}).get("decision")


def ranking_for_release(cfg: Config, run_date: date, force: bool) -> dict[str, Any] | None:
    """{"dir", "files", "evaluation"} of the ranking model the release of D carries (see the module docstring),
    or None."""
    folder = ranking_dir(cfg.warehouse, run_date)
    if not fs.is_file(fs.join(folder, SERVING)):
        log.warning("publish %s: no ranking model at %s (run train_ranking): the release carries none", run_date,
                    folder)
        return None
    ev, decision = _decision(folder)
    info: dict[str, Any] = {"run_date": run_date.isoformat(), "decision": decision, "forced": False,
                            "gate": ev.get("gate"), "holdout_rows": ev.get("holdout_rows"),
                            "model_version": ev.get("model_version")}
    if decision == "refused":
        msg = refusal_message(ev, f"publish {run_date}")
        if force:
            log.warning("%s\npublished anyway (publish.force)", msg)
            info["forced"] = True
        else:
            prev = previous_ranking_checkpoint(cfg.warehouse, run_date)  # the newest accepted model before D
            if prev is None:
                log.warning("%s\nno earlier accepted ranking model: the release carries none", msg)
                return None
            folder = prev[1].rsplit("/", 1)[0]
            log.warning("%s\nthe release carries the accepted model of %s instead", msg, prev[0])
            info = {**info, "refused_model_version": info["model_version"], "carried_from": prev[0].isoformat(),
                    "model_version": _decision(folder)[0].get("model_version")}
    return {"dir": folder, "files": [n for n in RANKING_FILES if fs.is_file(fs.join(folder, n))], "evaluation": info}
