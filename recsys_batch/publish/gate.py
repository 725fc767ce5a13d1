"""The evaluation gate: the new model against the popular baseline, yesterday's model and an optional
absolute floor on the held-out part of D (:mod:`recsys_batch.training.evaluate`), in one table.

Checks on ``m = publish.gate_metric`` (all are evaluated; every failed one is reported):

* **users** -- the held-out set has at least ``publish.gate_min_users`` users (else the means are noise:
  the standard error of a mean recall over n users is up to 0.5 / sqrt(n));
* **popular** -- ``new[m] >= popular[m] * (1 + publish.gate_popular_margin)``. The popular baseline is
  always there: ``recall_popular`` of D - 1 when that partition exists, else computed here without Spark
  from D's rows before the holdout cut (:func:`~recsys_batch.training.evaluate.popular_lists`); the
  table's ``source`` column says which;
* **previous** -- when an earlier checkpoint exists: ``new[m] >= previous[m] * (1 - publish.gate_tolerance)``;
* **floor** -- when ``publish.gate_min_metric`` is set: ``new[m] >= gate_min_metric``;
* **first model** -- with no earlier checkpoint, a floor must be configured (or the publish forced).

ItemCF (``recall_itemcf`` of D - 1) is an informative row. A failed check raises
:class:`~recsys_batch.errors.GateRefused` whose message holds every failed reason and the whole table,
unless forced (``publish.force`` / ``--force``): then the release is published and the manifest records
``decision = forced`` with the reasons.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import date, timedelta

from recsys_batch.config import Config
from recsys_batch.errors import GateRefused
from recsys_batch.io import fs
from recsys_batch.training.checkpoint import CHECKPOINT, model_dir, previous_checkpoint
from recsys_batch.training.evaluate import channel_lists, holdout_set, model_lists, popular_lists, ranking_metrics

log = logging.getLogger(__name__)

#: channels shown beside the models, from their recall lists of D - 1: D's lists exclude what the user
#: did on D, the held-out hours included, so only yesterday's are a fair (leak-free) baseline.
#: ``popular`` is the baseline the new model must beat; ``itemcf`` is informative.
BASELINE_CHANNELS = ("itemcf", "popular")
NEW = "two_tower_new"
PASSED, FORCED, REFUSED, DISABLED = "passed", "forced", "refused", "disabled"


@dataclass
class GateResult:
    #: one per model / channel: {"name", "users", <metric>..., "source"}
    rows: list[dict] = field(default_factory=list)
    metric: str = "recall@50"
    run_date: str = ""
    new: float | None = None
    previous: float | None = None
    #: name of yesterday's model row (``two_tower_<date>``), None when there is no earlier checkpoint
    previous_model: str | None = None
    popular: float | None = None
    popular_source: str | None = None
    users: int = 0
    tolerance: float = 0.0
    popular_margin: float = 0.0
    min_users: int = 1
    min_metric: float | None = None
    holdout_hours: float = 0.0
    max_users: int = 0
    #: why the held-out set is empty (no cut / no positives after it), "" otherwise
    holdout_note: str = ""
    #: every check run: {"check", "ok", "detail"}
    checks: list[dict] = field(default_factory=list)
    decision: str = PASSED
    passed: bool = True
    forced: bool = False
    reason: str = ""

    @property
    def failures(self) -> list[str]:
        return [c["detail"] for c in self.checks if not c["ok"]]

    def table(self) -> str:
        """The rows as fixed-width text (the GateRefused message and the log)."""
        if not self.rows:
            return f"(no metrics: {self.holdout_note or 'nothing evaluated'})"
        cols = [c for c in self.rows[0] if c != "name"]
        cells = [[r["name"], *[(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c])) for c in cols]]
                 for r in self.rows]
        head = ["name", *cols]
        width = [max(len(x) for x in col) for col in zip(head, *cells, strict=True)]
        left = {0, len(head) - 1} if head[-1] == "source" else {0}

        def line(vals: list[str]) -> str:
            return "  ".join(v.ljust(w) if i in left else v.rjust(w)
                             for i, (v, w) in enumerate(zip(vals, width, strict=True))).rstrip()

        return "\n".join([line(head)] + [line(c) for c in cells])

    def to_dict(self) -> dict:
        return {"rows": self.rows, "metric": self.metric, "new": self.new, "previous": self.previous,
                "previous_model": self.previous_model, "popular": self.popular,
                "popular_source": self.popular_source, "users": self.users, "tolerance": self.tolerance,
                "popular_margin": self.popular_margin, "min_users": self.min_users, "min_metric": self.min_metric,
                "checks": self.checks, "failures": self.failures, "decision": self.decision,
                "passed": self.passed, "forced": self.forced, "reason": self.reason}


def _coverage(lists: dict[str, list[str]], users: set[str]) -> str:
    n = sum(1 for u in users if lists.get(u))
    return "" if n == len(users) else f", lists for {n}/{len(users)} users"


def gate_metrics(cfg: Config, run_date: date) -> GateResult:
    """The metric table for D (no rows when D has no holdout); does not decide (see :func:`check_gate`).

    Cost: the held-out evaluation of up to two checkpoints plus one pass over D's samples for the popular
    baseline when ``recall_popular`` of D - 1 is missing."""
    pc = cfg.publish
    prev_day = run_date - timedelta(days=1)
    res = GateResult(metric=pc.gate_metric, run_date=run_date.isoformat(), tolerance=pc.gate_tolerance,
                     popular_margin=pc.gate_popular_margin, min_users=pc.gate_min_users,
                     min_metric=pc.gate_min_metric, holdout_hours=cfg.train.holdout_hours,
                     max_users=pc.gate_max_users)
    prev = previous_checkpoint(cfg.warehouse, run_date)
    if prev is not None:
        res.previous_model = f"two_tower_{prev[0].isoformat()}"
    hs = holdout_set(cfg, run_date)
    if hs is None:
        res.holdout_note = ("no held-out rows: train.holdout_hours = 0 holds nothing out" if cfg.train.holdout_hours <= 0
                            else f"no positive sample rows of {run_date} in the last train.holdout_hours = "
                                 f"{cfg.train.holdout_hours:g} hours")
        return res
    states, truth = hs
    k = max(pc.gate_ks)
    users = set(truth)
    res.users = len(users)
    candidates = [(NEW, run_date, f"{model_dir(cfg.warehouse, run_date)}/{CHECKPOINT}")]
    if prev is not None:
        candidates.append((res.previous_model, prev[0], prev[1]))
    for name, d, path in candidates:
        if not fs.is_file(path):  # one stat, local / HDFS / object store
            log.warning("gate %s: no checkpoint %s: the %s row is left out", run_date, path, name)
            continue
        m = ranking_metrics(model_lists(path, states, cfg, run_date, k), truth, pc.gate_ks)
        res.rows.append({"name": name, "users": len(users), **m, "source": f"checkpoint dt={d.isoformat()}"})
    for ch in BASELINE_CHANNELS:
        lists = channel_lists(cfg, ch, run_date, users)
        source = f"recall_{ch} dt={prev_day.isoformat()}"
        if lists is None and ch == "popular":
            lists = popular_lists(cfg, run_date, states, k)
            cut = 24 - cfg.train.holdout_hours
            source = (f"samples dt={run_date.isoformat()} ts < {int(cut):02d}:{round(cut % 1 * 60):02d} UTC "
                      f"(computed: no recall_popular dt={prev_day.isoformat()})")
        if lists is None:
            log.warning("gate %s: no recall_%s for %s (yesterday's lists are the leak-free baseline): its row is "
                        "left out; run the recall stage for %s", run_date, ch, prev_day, prev_day)
            continue
        source += _coverage(lists, users)
        if ch == "itemcf":
            source += " (informative)"
        res.rows.append({"name": ch, "users": len(users), **ranking_metrics(lists, truth, pc.gate_ks),
                         "source": source})
    by = {r["name"]: r for r in res.rows}
    res.new = by.get(NEW, {}).get(pc.gate_metric)
    if res.previous_model is not None:
        res.previous = by.get(res.previous_model, {}).get(pc.gate_metric)
    if "popular" in by:
        res.popular, res.popular_source = by["popular"][pc.gate_metric], by["popular"]["source"]
    return res


def _too_few_users(res: GateResult) -> str:
    if res.users == 0 and res.holdout_note:
        why = res.holdout_note
    else:
        se = 0.5 / math.sqrt(max(res.users, 1))
        why = (f"the held-out set has {res.users} users (with a held-out positive not in their last-N): a mean "
               f"{res.metric} over so few users is noise (standard error up to 0.5/sqrt(n) = {se:.2f})")
    more = (f"hold out more of the day with train.holdout_hours (now {res.holdout_hours:g}; retrain D with it, "
            f"training skips the held-out hours)")
    if res.max_users and res.users >= res.max_users:
        more += f" or sample more users with publish.gate_max_users (now {res.max_users})"
    return (f"too few held-out users: {why}; publish.gate_min_users = {res.min_users}. To get more, {more}; "
            f"or lower publish.gate_min_users")


def check_gate(res: GateResult, force: bool) -> GateResult:
    """Decide: run every check of the module docstring on ``res``; fills ``checks``, ``decision``,
    ``passed``, ``forced``, ``reason``. Raises GateRefused (all failed reasons + the table) when a check
    fails, unless ``force``."""
    m = res.metric
    checks: list[dict] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"check": name, "ok": bool(ok), "detail": detail})

    if res.users < res.min_users:
        check("users", False, _too_few_users(res))
    else:
        check("users", True, f"{res.users} held-out users >= publish.gate_min_users = {res.min_users}")
    new = res.new
    if new is None:
        if res.users > 0:
            check("new", False, f"the new model was not evaluated: no checkpoint of {res.run_date} (run train)")
    else:
        if res.popular is None:
            check("popular", False, f"no popular baseline to compare with (no recall_popular of the day before "
                                    f"and no positive sample rows of {res.run_date} before the holdout cut)")
        else:
            bar = res.popular * (1.0 + res.popular_margin)
            margin = f" x (1 + publish.gate_popular_margin {res.popular_margin:g})" if res.popular_margin else ""
            rel = ">=" if new >= bar else "<"
            check("popular", new >= bar, f"new model {m} {new:.4f} {rel} popular {res.popular:.4f}{margin}"
                                         + (f" = {bar:.4f}" if margin else "") + f" (popular from {res.popular_source})")
        if res.previous_model is not None:
            if res.previous is None:
                check("previous", False, f"yesterday's model {res.previous_model} could not be evaluated")
            else:
                floor = res.previous * (1.0 - res.tolerance)
                ok = new >= floor
                check("previous", ok, f"new model {m} {new:.4f} {'>=' if ok else '<'} {floor:.4f} = previous "
                                      f"{res.previous_model} {res.previous:.4f} x (1 - publish.gate_tolerance "
                                      f"{res.tolerance:g})")
        if res.min_metric is not None:
            ok = new >= res.min_metric
            check("floor", ok, f"new model {m} {new:.4f} {'>=' if ok else '<'} publish.gate_min_metric "
                               f"{res.min_metric:g}" + (" (first model: no earlier checkpoint)"
                                                         if res.previous_model is None else ""))
    if res.previous_model is None and res.min_metric is None:
        check("first_model", False,
              f"first model: no earlier checkpoint to compare with and no publish.gate_min_metric configured; "
              f"set publish.gate_min_metric (an absolute floor on {m}) or pass --force (publish.force=true)")
    res.checks = checks
    failed = res.failures
    if not failed:
        res.decision, res.passed, res.forced = PASSED, True, False
        res.reason = "passed: " + "; ".join(c["detail"] for c in checks)
        return res
    res.passed = False
    if force:
        res.decision, res.forced = FORCED, True
        res.reason = f"forced despite {len(failed)} failed check(s): " + "; ".join(failed)
        log.warning("gate %s refused but forced (publish.force / --force):\n  - %s", res.run_date, "\n  - ".join(failed))
        return res
    res.decision, res.forced = REFUSED, False
    res.reason = "refused: " + "; ".join(failed)
    err = GateRefused(f"publish {res.run_date} refused by the gate: {len(failed)} of {len(checks)} checks failed "
                      f"(pass --force / publish.force=true to publish anyway)\n"
                      + "".join(f"  - {f}\n" for f in failed) + res.table())
    err.table = res.rows
    err.result = res
    raise err
