"""The ``train_ranking`` stage: daily full retrain of the multi-task ranking model on D's ranking samples.

:func:`run_train_ranking` (no Spark, same DDP / torchrun path as the two-tower: ``jobs/train_ranking.py``
under ``torchrun`` runs :func:`recsys_batch.runner.ddp_job_main`):

1. reads ``samples/ranking/dt=D/part-*.parquet`` (+ ``_manifest.json``) and the feature spec named in the
   manifest (features of D - 1), streamed by :class:`~recsys_batch.ranking.data.RankingStream`;
2. builds today's model from today's spec and warm-starts it from the newest accepted checkpoint before D
   (``ranking.warm_start``): id / feature rows copied by value, so tables grow for new ids;
3. trains one shuffled epoch (a fresh model: whole epochs up to ``ranking.fresh_min_steps`` steps) on the rows
   before the holdout cut, and the logistic-regression baseline on the same rows (``ranking.baseline``);
4. rank 0: evaluates today's model, the baseline and yesterday's accepted model on D's held-out rows
   (:mod:`recsys_batch.ranking.evaluate`), applies the gate and writes ``models/ranking/dt=D/{checkpoint.pt,
   ranking.pt, feature_spec.json, ranking_meta.json, evaluation.json}`` -- the gate's decision in
   ``evaluation.json``; a refused model is not warm-started from, and publish ships the last accepted one.

With ``ranking.prerank.enabled`` the pre-rank model (:mod:`recsys_batch.ranking.prerank`) is trained after step 3
on the same rows (distilled from today's model), evaluated beside it in step 4 (click only) and written as
``prerank_checkpoint.pt``, ``prerank.pt``, ``prerank_meta.json`` in the same folder. It does not enter the gate.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import nn

from recsys_batch.config import Config, RankingConfig
from recsys_batch.errors import MissingInput, RecsysBatchError
from recsys_batch.features.spec import load_spec
from recsys_batch.io import fs
from recsys_batch.io.fs import resolve
from recsys_batch.ranking.calibration import CalibratedModel, calibrator_from_meta, calibrator_to_meta, fit_calibrator
from recsys_batch.ranking.checkpoint import (
    CHECKPOINT, load_ranking_checkpoint, previous_ranking_checkpoint, ranking_dir, save_ranking_checkpoint,
    warm_start_ranking,
)
from recsys_batch.ranking.data import RankingStream, encode_targets, require_ranking_columns
from recsys_batch.ranking.evaluate import (
    evaluate_day, format_table, layouts_for_spec, predict, ranking_gate, refusal_message,
)
from recsys_batch.ranking.export import EVALUATION, export_prerank, export_ranking
from recsys_batch.ranking.loss import multitask_loss, task_weight_vector
from recsys_batch.ranking.model import TASKS, build_for, init_output_biases, run
from recsys_batch.ranking.prerank import PRERANK_CHECKPOINT, build_prerank, load_prerank_checkpoint, prerank_loss_fn
from recsys_batch.training.columns import C
from recsys_batch.training.data import count_rows, cut_scalar, holdout_cutoff, list_units, sample_files
from recsys_batch.training.train import (
    TrainResult, _global_sum, _progress, dist_info, fit, fresh_epochs, seed_everything, spec_for_samples,
)

log = logging.getLogger(__name__)


@dataclass
class RankingTrainResult(TrainResult):
    """:class:`TrainResult` plus the gate's decision and the per-task table of the held-out evaluation (the whole
    evaluation is ``evaluation.json`` in the model folder)."""

    gate: str | None = None
    holdout_rows: int = 0
    table: str = ""


def train_ranking(model: nn.Module, stream: RankingStream, rc: RankingConfig,
                  on_step: Callable[[int, int, float, float], None] | None = None, fresh: bool = False,
                  learning_rate: float | None = None,
                  loss_fn: Callable[[nn.Module, dict], torch.Tensor] | None = None,
                  on_epoch: Callable[[int], bool] | None = None) -> RankingTrainResult:
    """``rc.epochs`` passes over ``stream`` (or ``rc.max_steps`` steps) of the masked multi-task loss; works in
    one process and under DDP (process group initialised: gradients averaged, ``join()`` for uneven inputs).
    ``fresh``: set the output biases to the task priors of the stream's first row group
    (:func:`init_output_biases`; the same row group on every rank, before DDP). ``positives`` counts clicked rows.
    ``loss_fn(net, batch)``: the loss (default: the masked multi-task loss; the pre-rank model's is
    :func:`recsys_batch.ranking.prerank.prerank_loss_fn`). ``on_epoch(epoch)`` after each epoch (every rank, the
    model in train mode): True stops (:class:`EarlyStopping`)."""
    ddp = dist_info()[1] > 1
    if fresh and stream.units:  # before DDP: every rank reads the same first row group, so the same priors
        first = stream._read(stream.units[0], {})
        if first.num_rows:
            tg = encode_targets(first)
            log.info("fresh model: output biases set to the task priors %s (first row group, %d rows)",
                     [round(x, 3) for x in init_output_biases(model, tg["labels"], tg["watch"])], first.num_rows)
    net: nn.Module = nn.parallel.DistributedDataParallel(model) if ddp else model
    opt = torch.optim.AdamW(net.parameters(), lr=learning_rate or rc.learning_rate, weight_decay=rc.weight_decay, fused=True)
    if loss_fn is None:
        weights = task_weight_vector(rc.task_weights)
        per_impression = rc.conditional_loss == "impressions"

        def loss_fn(n: nn.Module, batch: dict) -> torch.Tensor:
            return multitask_loss(run(n, batch["user"], batch["item"]), batch["labels"], batch["watch"], weights,
                                  per_impression)[0]
    return fit(model, net, stream, opt, epochs=rc.epochs, max_steps=rc.max_steps, num_workers=rc.num_workers,
               loss_of=loss_fn, positives_of=lambda b: b["labels"][:, 0] > 0.5, res=RankingTrainResult(),
               what="ranking training", hint="lower ranking.learning_rate", on_step=on_step, on_epoch=on_epoch)


def validation_rows(files: list[str], lo: datetime, hi: datetime, max_rows: int) -> pa.Table | None:
    """Rows with lo <= ts < hi (at most ``max_rows``, the first ones by ts), or None without any."""
    f0 = resolve(files[0])
    ds = pads.dataset([resolve(f)[1] for f in files], format="parquet", filesystem=f0[0])
    typ = ds.schema.field(C.TS).type
    t = ds.to_table(filter=(pads.field(C.TS) >= cut_scalar(lo, typ)) & (pads.field(C.TS) < cut_scalar(hi, typ)))
    if t.num_rows == 0:
        return None
    return t.sort_by([(C.TS, "ascending")]).slice(0, max_rows)


class EarlyStopping:
    """Early stopping of a fresh model's repeated epochs (``ranking.fresh_validation_hours``): after each epoch the
    training loss (the same multi-task loss, eval mode) on the validation rows -- the last hours before the
    holdout cut, not trained on; the gate's held-out rows stay untouched -- ; stop after
    ``fresh_patience_epochs`` epochs without improvement and :meth:`restore` the best epoch's weights.

    Why: repeating one day's rows (the first pass's ``fresh_min_steps`` 200 = 12 passes over the synthetic day)
    memorises per-id labels -- held-out log loss of the conditional tasks rose to ~1.0 against 0.55 for the LR
    baseline, and the warm-started next day inherited it. Off by default: on the synthetic generator the total
    loss turns up after ~3 passes while click still improves (docs/ranking.md). Every rank computes the same loss on the same rows, so
    the decision is identical under DDP. Cost: one forward over the validation rows per epoch."""

    def __init__(self, model: nn.Module, rows: pa.Table, ul, il, rc: RankingConfig):  # noqa: ANN001
        self.model, self.rc = model, rc
        self.u = {k: torch.from_numpy(v) for k, v in ul.encode(rows).items()}
        self.i = {k: torch.from_numpy(v) for k, v in il.encode(rows).items()}
        self.tg = encode_targets(rows)
        self.weights = task_weight_vector(rc.task_weights)
        self.losses: list[float] = []
        self.best: tuple[float, int, dict] | None = None

    @torch.no_grad()
    def loss(self) -> float:
        was = self.model.training
        self.model.eval()
        out = torch.cat([run(self.model, {k: v[s:s + 8192] for k, v in self.u.items()},
                             {k: v[s:s + 8192] for k, v in self.i.items()})
                         for s in range(0, len(self.tg["watch"]), 8192)])
        self.model.train(was)
        if out.shape[1] == 1:  # click-only models
            return float(F.binary_cross_entropy_with_logits(out[:, 0], self.tg["labels"][:, 0]))
        return float(multitask_loss(out, self.tg["labels"], self.tg["watch"], self.weights,
                                    self.rc.conditional_loss == "impressions")[0])

    def __call__(self, epoch: int) -> bool:
        v = self.loss()
        self.losses.append(v)
        if self.best is None or v < self.best[0]:
            self.best = (v, epoch, {k: t.detach().clone() for k, t in self.model.state_dict().items()})
        return epoch - self.best[1] >= self.rc.fresh_patience_epochs

    def restore(self, where: str) -> None:
        if self.best is None:
            return
        self.model.load_state_dict(self.best[2])
        log.info("%s: early stopping kept epoch %d of %d (validation loss per epoch %s)", where, self.best[1] + 1,
                 len(self.losses), [round(x, 4) for x in self.losses])


def day_alpha(files: list[str]) -> float:
    """The day's negative keep rate (``neg_keep_rate`` of the first row group; one value per day)."""
    f = resolve(files[0])
    col = pq.ParquetFile(f[1], filesystem=f[0]).read_row_group(0, columns=[C.NEG_KEEP_RATE]).column(0)
    vals = set(np.round(np.asarray(col.to_numpy(zero_copy_only=False), np.float64), 12).tolist())
    if len(vals) > 1:
        log.warning("samples_ranking: several neg_keep_rate values %s; the export uses the first", sorted(vals)[:5])
    return float(next(iter(vals))) if vals else 1.0


def run_train_ranking(cfg: Config, run_date: date) -> RankingTrainResult:
    """The train_ranking stage for D (see the module docstring)."""
    rc = cfg.ranking
    if rc.torch_threads:
        torch.set_num_threads(rc.torch_threads)
    rank, world = dist_info()
    files, manifest = sample_files(cfg.warehouse, run_date, "ranking")
    spec_path = spec_for_samples(cfg, run_date, manifest)
    try:
        spec = load_spec(spec_path)
    except FileNotFoundError:
        raise MissingInput(f"feature spec {spec_path} for the ranking samples of {run_date} not found: "
                           f"run features first") from None
    f0 = resolve(files[0])
    columns = pq.read_schema(f0[1], filesystem=f0[0]).names
    require_ranking_columns(columns, files[0])
    seed_everything(rc.seed)
    ul, il = layouts_for_spec(spec, columns, rc)
    model = build_for(ul, il, rc, dropout=rc.dropout)
    prev = previous_ranking_checkpoint(cfg.warehouse, run_date) if rc.warm_start else None
    old = None
    ws: dict = {}
    first_day = prev is None  # trained as a first day: fresh_min_steps, the fresh schedule
    if prev is not None:
        old = load_ranking_checkpoint(prev[1])
        ws = warm_start_ranking(model, old, ul, il)
        log.info("train_ranking %s: warm start from %s (%s)", run_date, prev[1], ws)
        if old["shape"].kind != model.shape.kind:  # e.g. ranking.multitask switched from mmoe to ple
            first_day = True
            log.warning("train_ranking %s: the checkpoint of %s is a %s model and ranking.multitask is %s: its "
                        "embeddings and cross layers are kept, the experts start fresh, and the day trains as a "
                        "first day (ranking.fresh_min_steps)", run_date, prev[0], old["shape"].kind,
                        model.shape.kind)
    else:
        log.warning("train_ranking %s: no earlier ranking checkpoint%s: starting fresh", run_date,
                    "" if rc.warm_start else " (ranking.warm_start is false)")
    cutoff = holdout_cutoff(run_date, rc.holdout_hours)
    end = cutoff or holdout_cutoff(run_date + timedelta(days=1), 24.0)
    n = rc.epochs
    if first_day and rc.fresh_min_steps:
        n = fresh_epochs(count_rows(files, cutoff, "train" if cutoff else "all"), rc, world)
    # the last hours before the cut, not trained on: the calibration rows and (repeated fresh epochs) early stopping
    early = n > 1 and rc.fresh_validation_hours > 0
    val_hours = max(rc.calibration_hours, rc.fresh_validation_hours if early else 0.0)
    train_cut, val = cutoff, None
    if val_hours > 0:
        train_cut = end - timedelta(hours=val_hours)
        val = validation_rows(files, train_cut, end, rc.eval_max_rows)
        if val is None:
            train_cut = cutoff
        elif first_day and rc.fresh_min_steps:
            n = fresh_epochs(count_rows(files, train_cut, "train"), rc, world)
    stop_rows = val if early else None  # early stopping's rows (val may be the calibration rows alone)
    if n != rc.epochs:
        log.info("train_ranking %s: %s: up to %d epochs (ranking.fresh_min_steps %d)%s", run_date,
                 "no checkpoint" if prev is None else "another architecture", n, rc.fresh_min_steps,
                 f", early stopping on {stop_rows.num_rows:,} rows after {train_cut}" if stop_rows is not None else "")
        rc = rc.model_copy(update={"epochs": n})
    units = list_units(files)

    def stream() -> RankingStream:
        return RankingStream(files, ul, il, rc.batch_size, rc.seed, rank, world, rc.shuffle_row_groups,
                             cutoff=train_cut, part="train" if train_cut else "all", units=units)

    on_step, bar = _progress(rc, sum(u.rows for u in units), rank)
    try:
        stopper = EarlyStopping(model, stop_rows, ul, il, rc) if stop_rows is not None else None
        res = train_ranking(model, stream(), rc, on_step, fresh=first_day, on_epoch=stopper)
        if stopper is not None:
            stopper.restore(f"train_ranking {run_date}")
    finally:
        if bar is not None:
            bar.close()
    if _global_sum(res.steps) == 0:
        raise RecsysBatchError(f"train_ranking {run_date}: no training rows in {len(files)} shard files "
                               f"(holdout cut {cutoff}); check the samples stage output")
    models: dict[str, Any] = {"new": (model, ul, il)}
    if rc.baseline:
        seed_everything(rc.seed + 1)
        lr = build_for(ul, il, rc, kind="lr")
        stop_lr = EarlyStopping(lr, stop_rows, ul, il, rc) if stop_rows is not None else None
        base = train_ranking(lr, stream(), rc, fresh=True, learning_rate=rc.baseline_learning_rate, on_epoch=stop_lr)
        if stop_lr is not None:
            stop_lr.restore(f"train_ranking {run_date} (baseline)")
        log.info("train_ranking %s: logistic-regression baseline, %d steps, final loss %.4f", run_date, base.steps,
                 base.final_loss or float("nan"))
        models["lr"] = (lr, ul, il)
    if rc.prerank.enabled:
        models["prerank"] = (_train_prerank(rc, run_date, stream, ul, il, model, prev, files, cutoff, world), ul, il)
    res.warm_start_from = prev[1] if prev else None
    res.warm_start_rows = ws
    version = f"ranking-{run_date.isoformat()}-{cfg.config_hash()}"
    res.model_version = version
    log.info("train_ranking %s (rank %d of %d): %d steps, %s examples (%s clicks) in %.1fs (%.0f examples/s), "
             "final loss %.4f", run_date, rank, world, res.steps, f"{res.examples:,}", f"{res.positives:,}",
             res.seconds, res.examples_per_s, res.final_loss or float("nan"))
    if rank != 0:
        return res
    cal, cal_status = None, None
    if val is not None and rc.calibration_hours > 0:
        cal, cal_status = fit_calibrator(predict(model, ul, il, val), encode_targets(val)["labels"].numpy(),
                                         [TASKS.index(t) for t in rc.calibration_tasks], rc.calibration_segments)
        log.info("train_ranking %s: post-hoc calibration on %d rows before %s: %s", run_date, val.num_rows, end,
                 {TASKS[int(k)]: v for k, v in cal_status.items()})
        models = {"new": (CalibratedModel(model, cal), ul, il), "new_uncalibrated": (model, ul, il),
                  **{k: v for k, v in models.items() if k != "new"}}
    prev_name = None
    if old is not None:
        prev_name = f"ranking_{prev[0].isoformat()}"
        pul, pil = layouts_for_spec(old["spec"], columns, rc)
        old_cal = calibrator_from_meta(old["extra"].get("calibration"))
        models[prev_name] = (CalibratedModel(old["model"], old_cal) if old_cal else old["model"], pul, pil)
    metrics, n_eval = evaluate_day(cfg, run_date, files, models)
    gate = ranking_gate(metrics, rc, "new", "lr" if rc.baseline else None, prev_name)
    if metrics:
        log.info("train_ranking %s on %d held-out rows, gate %s:\n%s", run_date, n_eval, gate["decision"],
                 format_table(metrics))
    evaluation = {"run_date": run_date.isoformat(), "model_version": version, "holdout_rows": n_eval,
                  "holdout_cutoff": cutoff, "gate": gate, "metrics": metrics}
    if gate["decision"] == "refused":
        log.warning("%s\n(written, but never warm-started from; publish ships the last accepted model instead unless publish.force)",
                    refusal_message(evaluation, f"train_ranking {run_date}"))
    out = ranking_dir(cfg.warehouse, run_date)
    fs.makedirs(out)
    res.checkpoint = f"{out}/{CHECKPOINT}"
    alpha = day_alpha(files)
    save_ranking_checkpoint(res.checkpoint, model, spec, ul, il,
                            {"run_date": run_date.isoformat(), "model_version": version, "spec_path": spec_path,
                             "train": res.summary(), "config_hash": cfg.config_hash(), "alpha": alpha,
                             "gate": gate["decision"],
                             "calibration": calibrator_to_meta(cal, cal_status) if cal is not None else None})
    res.exports = export_ranking(model, ul, il, spec, alpha, rc.fusion_weights, out,
                                 {"model_version": version, "run_date": run_date.isoformat()}, cal)
    if "prerank" in models:
        pre = models["prerank"][0]
        save_ranking_checkpoint(f"{out}/{PRERANK_CHECKPOINT}", pre, spec, ul, il,
                                {"run_date": run_date.isoformat(), "model_version": version, "alpha": alpha})
        res.exports.update(export_prerank(pre, alpha, out, {"model_version": version,
                                                            "run_date": run_date.isoformat()}))
    fs.write_atomic(f"{out}/{EVALUATION}", json.dumps(finite(evaluation), indent=1, default=str))
    res.exports["evaluation"] = f"{out}/{EVALUATION}"
    res.gate, res.holdout_rows = gate["decision"], n_eval
    res.table = format_table(metrics) if metrics else "(no held-out rows)"
    res.output_rows = {"ranking_holdout_rows": n_eval}
    return res


def _train_prerank(rc: RankingConfig, run_date: date, stream: Callable[[], RankingStream], ul, il,  # noqa: ANN001
                   teacher: nn.Module, prev: tuple[date, str] | None, files: list[str], cutoff: Any, world: int
                   ) -> nn.Module:
    """The pre-rank model of D (:mod:`recsys_batch.ranking.prerank`): warm-started from the pre-rank checkpoint
    beside the ranking checkpoint warm-started from (when there is one), else fresh with whole epochs up to
    ``fresh_min_steps``; one pass of (distilled) click BCE over the same rows, the trained ranking model as
    teacher."""
    pc = rc.prerank
    seed_everything(rc.seed + 2)
    pre = build_prerank(ul, il, pc, rc.dropout)
    old_path = f"{prev[1].rsplit('/', 1)[0]}/{PRERANK_CHECKPOINT}" if prev is not None else None
    prc = rc
    if old_path is not None and fs.is_file(old_path):
        ws = warm_start_ranking(pre, load_prerank_checkpoint(old_path), ul, il)
        log.info("train_ranking %s: pre-rank warm start from %s (%s)", run_date, old_path, ws)
        fresh = False
    else:
        fresh = True
        if rc.fresh_min_steps:
            prc = rc.model_copy(update={"epochs": fresh_epochs(count_rows(files, cutoff, "train" if cutoff else "all"),
                                                               rc, world)})
    teacher.eval()
    r = train_ranking(pre, stream(), prc, fresh=fresh, learning_rate=pc.learning_rate,
                      loss_fn=prerank_loss_fn(teacher if pc.distill_weight > 0 else None, pc.distill_weight))
    log.info("train_ranking %s: pre-rank model, %d steps (%.1fs, distill weight %g), final loss %.4f", run_date,
             r.steps, r.seconds, pc.distill_weight, r.final_loss or float("nan"))
    return pre


def finite(o: Any) -> Any:
    """``o`` with NaN / inf floats replaced by None (strict JSON), recursively."""
    if isinstance(o, dict):
        return {k: finite(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [finite(v) for v in o]
    if isinstance(o, float | np.floating):
        return float(o) if np.isfinite(o) else None
    return o
