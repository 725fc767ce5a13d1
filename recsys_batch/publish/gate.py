"""The evaluation gate: the new model against yesterday's model and the ItemCF / popular channels on
the held-out part of D (:mod:`recsys_batch.training.evaluate`), in one table.

Refused when ``new[metric] < previous[metric] * (1 - publish.gate_tolerance)`` unless forced; the
:class:`~recsys_batch.errors.GateRefused` message holds the whole table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, timedelta

from recsys_batch.config import Config
from recsys_batch.errors import GateRefused
from recsys_batch.io import fs
from recsys_batch.training.checkpoint import CHECKPOINT, model_dir, previous_checkpoint
from recsys_batch.training.evaluate import channel_lists, holdout_set, model_lists, ranking_metrics

log = logging.getLogger(__name__)

#: channels shown beside the models, from their recall lists of D - 1: D's lists exclude what the user
#: did on D, the held-out hours included, so only yesterday's are a fair (leak-free) baseline
BASELINE_CHANNELS = ("itemcf", "popular")


@dataclass
class GateResult:
    rows: list[dict] = field(default_factory=list)  # one per model / channel: {"name", "users", metric...}
    metric: str = "recall@50"
    new: float | None = None
    previous: float | None = None
    tolerance: float = 0.0
    passed: bool = True
    forced: bool = False
    reason: str = ""

    def table(self) -> str:
        if not self.rows:
            return "(no metrics)"
        cols = [c for c in self.rows[0] if c != "name"]
        lines = ["name".ljust(16) + "".join(c.rjust(11) for c in cols)]
        for r in self.rows:
            lines.append(r["name"].ljust(16) + "".join(
                (f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c])).rjust(11) for c in cols))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"rows": self.rows, "metric": self.metric, "new": self.new, "previous": self.previous,
                "tolerance": self.tolerance, "passed": self.passed, "forced": self.forced, "reason": self.reason}


def gate_metrics(cfg: Config, run_date: date) -> GateResult:
    """The metric table for D (may be empty when D has no holdout); does not decide."""
    pc = cfg.publish
    res = GateResult(metric=pc.gate_metric, tolerance=pc.gate_tolerance)
    hs = holdout_set(cfg, run_date)
    if hs is None:
        res.reason = "no held-out rows (train.holdout_hours = 0 or no samples after the cut)"
        return res
    states, truth = hs
    k = max(pc.gate_ks)
    users = set(truth)
    candidates = [("two_tower_new", f"{model_dir(cfg.warehouse, run_date)}/{CHECKPOINT}")]
    prev = previous_checkpoint(cfg.warehouse, run_date)
    if prev is not None:
        candidates.append((f"two_tower_{prev[0].isoformat()}", prev[1]))
    for name, path in candidates:
        if not fs.is_file(path):  # one stat, local / HDFS / object store
            continue
        m = ranking_metrics(model_lists(path, states, cfg, run_date, k), truth, pc.gate_ks)
        res.rows.append({"name": name, "users": len(users), **m})
    for ch in BASELINE_CHANNELS:
        lists = channel_lists(cfg, ch, run_date, users)
        if lists is None:
            log.warning("gate %s: no recall_%s for %s (yesterday's lists are the leak-free baseline): its row is "
                        "left out; run the recall stage for %s", run_date, ch, run_date - timedelta(days=1),
                        run_date - timedelta(days=1))
            continue
        res.rows.append({"name": ch, "users": len(users), **ranking_metrics(lists, truth, pc.gate_ks)})
    by = {r["name"]: r for r in res.rows}
    res.new = by.get("two_tower_new", {}).get(pc.gate_metric)
    if prev is not None:
        res.previous = by.get(f"two_tower_{prev[0].isoformat()}", {}).get(pc.gate_metric)
    return res


def check_gate(res: GateResult, force: bool) -> GateResult:
    """Decide; raises GateRefused (with the table) when the new model is worse beyond the tolerance."""
    if res.new is None or res.previous is None:
        res.reason = res.reason or "no previous model to compare with"
        return res
    floor = res.previous * (1.0 - res.tolerance)
    if res.new >= floor:
        res.reason = f"{res.metric} {res.new:.4f} >= {floor:.4f} (previous {res.previous:.4f} - {res.tolerance:.0%})"
        return res
    res.passed = False
    res.reason = (f"new model {res.metric} {res.new:.4f} < {floor:.4f} = previous {res.previous:.4f} x "
                  f"(1 - gate_tolerance {res.tolerance})")
    if force:
        res.forced = True
        log.warning("gate refused but forced: %s\n%s", res.reason, res.table())
        return res
    err = GateRefused(f"publish refused: {res.reason}; pass --force (publish.force=true) to publish anyway\n"
                      f"{res.table()}")
    err.table = res.rows
    err.result = res
    raise err
