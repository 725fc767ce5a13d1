"""Daily full retrain of the two-tower model: warm start, one shuffled epoch, checkpoint, export.

:func:`train` is the loop: typed arguments in, :class:`TrainResult` out; it works unchanged in one
process and under torch DDP (``torchrun`` or Spark's ``TorchDistributor``: it reads rank / world size
from ``torch.distributed`` when a process group is initialised, shards the stream by rank, wraps the
model in ``DistributedDataParallel`` and uses ``join()`` for uneven numbers of batches per rank).
:func:`run_train` is the stage: feature spec + sample shards of D -> checkpoint + exports.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from recsys_batch.config import Config, TrainConfig
from recsys_batch.errors import MissingInput, RecsysBatchError
from recsys_batch.features.spec import load_spec
from recsys_batch.training.checkpoint import (
    CHECKPOINT, load_checkpoint, model_dir, previous_checkpoint, save_checkpoint, warm_start,
)
from recsys_batch.training.data import (
    SampleStream, count_rows, holdout_cutoff, list_units, make_loader, require_loss_columns, sample_files,
)
from recsys_batch.training.features import TowerLayout, build_layout
from recsys_batch.training.loss import batch_loss
from recsys_batch.training.model import TwoTower, shape_from_layouts

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    steps: int = 0
    examples: int = 0
    positives: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    warm_start_from: str | None = None
    warm_start_rows: dict[str, dict[str, int]] = field(default_factory=dict)
    model_version: str | None = None
    checkpoint: str | None = None
    output_rows: dict[str, int] = field(default_factory=dict)
    exports: dict[str, Any] = field(default_factory=dict)

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else 0.0

    @property
    def final_loss(self) -> float | None:
        tail = self.losses[-20:]
        return float(np.mean(tail)) if tail else None

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("losses")
        d.update(examples_per_s=round(self.examples_per_s, 1), final_loss=self.final_loss)
        return d


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def build_optimizer(model: torch.nn.Module, tc: TrainConfig) -> torch.optim.Optimizer:
    # AdamW: decoupled weight decay (Loshchilov & Hutter 2019), which also shrinks rarely-updated id rows --
    # Adam's L2 term is rescaled away by the per-parameter step size; weight_decay 0 = plain Adam.
    # fused: one kernel for all parameters (the per-tensor loop dominated small CPU steps)
    return torch.optim.AdamW(model.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay, fused=True)


def fit(model: torch.nn.Module, net: torch.nn.Module, stream: SampleStream, opt: torch.optim.Optimizer, *,
        epochs: int, max_steps: int | None, num_workers: int,
        loss_of: Callable[[torch.nn.Module, dict], torch.Tensor], positives_of: Callable[[dict], torch.Tensor],
        res: TrainResult, what: str, hint: str, on_step: Callable[[int, int, float, float], None] | None = None,
        on_epoch: Callable[[int], bool] | None = None) -> TrainResult:
    """The loop every model trains with: ``epochs`` shuffled passes over ``stream`` (or ``max_steps`` steps) of
    ``loss_of(net, batch)``, one optimizer step per batch. ``net`` is ``model`` or its DDP wrapper (then
    ``join()`` covers uneven numbers of batches per rank). Fills ``res``: steps, examples (rows of the batches),
    positives (rows where ``positives_of(batch)`` holds), the loss of every step, seconds; a non-finite loss
    raises ``{what} diverged at step N: loss x ({hint})``. ``on_step(step, examples, loss, examples_per_s)`` after every step;
    ``on_epoch(epoch)`` after each complete epoch (model in train mode): True stops. Leaves the model in eval
    mode."""
    ddp = net is not model
    model.train()
    t0 = time.perf_counter()
    done = False
    for epoch in range(epochs):
        stream.set_epoch(epoch)
        with net.join() if ddp else _NullCtx():
            for batch in make_loader(stream, num_workers):
                loss = loss_of(net, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                lv = float(loss.detach())
                if not np.isfinite(lv):
                    raise RecsysBatchError(f"{what} diverged at step {res.steps}: loss {lv} ({hint})")
                pos = positives_of(batch)
                res.steps += 1
                res.examples += int(pos.shape[0])
                res.positives += int(pos.sum())
                res.losses.append(lv)
                if on_step is not None:
                    on_step(res.steps, res.examples, lv, res.examples / max(time.perf_counter() - t0, 1e-9))
                if max_steps is not None and res.steps >= max_steps:
                    done = True
                    break
        if done or (on_epoch is not None and on_epoch(epoch)):
            break
    res.seconds = time.perf_counter() - t0
    model.eval()
    return res


def train(model: TwoTower, stream: SampleStream, tc: TrainConfig,
          on_step: Callable[[int, int, float, float], None] | None = None) -> TrainResult:
    """Train ``model`` for ``tc.epochs`` passes over ``stream`` (or ``tc.max_steps`` steps) with :func:`fit`.

    Under DDP (process group initialised) the stream must be built with this rank / world size; the
    gradients are averaged across ranks, so each step equals one step on the union of the ranks'
    batches with the mean of their losses. ``on_step(step, examples, loss, examples_per_s)`` is
    called after every step (progress bars, logging). Returns the local loss of every step.
    """
    net: torch.nn.Module = model
    if dist_info()[1] > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)
    return fit(model, net, stream, build_optimizer(net, tc), epochs=tc.epochs, max_steps=tc.max_steps,
               num_workers=tc.num_workers, loss_of=lambda n, b: batch_loss(n, b, tc),
               positives_of=lambda b: b["label"] > 0.5, res=TrainResult(),
               what="training", hint="lower train.learning_rate or raise train.temperature", on_step=on_step)


def _global_sum(x: int) -> int:
    """``x`` summed over the DDP ranks (``x`` itself in one process)."""
    if dist_info()[1] == 1:
        return x
    t = torch.tensor([x], dtype=torch.int64)
    dist.all_reduce(t)
    return int(t.item())


class _NullCtx:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


def fresh_epochs(train_rows: int, tc: TrainConfig, world: int = 1) -> int:
    """Epochs of a run without a checkpoint: max(epochs, ceil(fresh_min_steps / steps per epoch)), steps per
    epoch ~ ceil(train_rows / (batch_size x ranks)) (readers' remainders make it a little more)."""
    per_epoch = max(math.ceil(train_rows / (tc.batch_size * world)), 1)
    return max(tc.epochs, math.ceil((tc.fresh_min_steps or 0) / per_epoch))


def layouts_for(spec: dict, columns: list[str], tc: TrainConfig) -> tuple[TowerLayout, TowerLayout]:
    user = build_layout(spec, "user", columns, tc.exclude_features, "samples", tc.max_lastn)
    item = build_layout(spec, "item", columns, tc.exclude_features, "samples", tc.max_lastn)
    return user, item


def build_model(spec: dict, columns: list[str], tc: TrainConfig) -> tuple[TwoTower, TowerLayout, TowerLayout]:
    user, item = layouts_for(spec, columns, tc)
    return TwoTower(shape_from_layouts(user, item, tc), tc.id_dropout, tc.dropout), user, item


def spec_for_samples(cfg: Config, run_date: date, manifest: dict) -> str:
    """The spec that decodes D's samples: named in the shard manifest, else features of D - 1."""
    from datetime import timedelta

    if manifest.get("feature_spec"):
        return manifest["feature_spec"]
    return f"{cfg.warehouse.root.rstrip('/')}/features/dt={(run_date - timedelta(days=1)).isoformat()}/feature_spec.json"


def _progress(tc: TrainConfig, total_rows: int, rank: int) -> tuple[Callable | None, Any]:
    """A tqdm bar (rank 0, ``train.progress``) showing examples/s and loss, plus periodic log lines."""
    bar = None
    if tc.progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_rows * tc.epochs, unit="ex", unit_scale=True, desc="train", leave=False)
    state = {"seen": 0}

    def on_step(step: int, examples: int, loss: float, eps: float) -> None:
        if bar is not None:
            bar.update(examples - state["seen"])
            bar.set_postfix(loss=f"{loss:.4f}", ex_s=f"{eps:,.0f}")
        state["seen"] = examples
        if step % tc.log_every_steps == 0:
            log.info("train step %d: %s examples, loss %.4f, %.0f examples/s", step, f"{examples:,}", loss, eps)

    return on_step, bar


def run_train(cfg: Config, run_date: date) -> TrainResult:
    """The train stage for run date D (non-Spark).

    Reads the recall sample shards of D (``<root>/samples/recall/dt=D``) and the feature spec that
    decodes them; warm-starts from the newest checkpoint before D (``train.warm_start``; without one it
    starts fresh and says so); trains one shuffled epoch on the rows before the gate's holdout cut
    (``train.holdout_hours``); writes ``<root>/models/two_tower/dt=D/{checkpoint.pt, user_tower.pt,
    feature_spec.json}`` and the Delta tables ``item_embeddings`` / ``user_embeddings`` (dt = D).
    """
    from recsys_batch.training.export import export_all

    tc = cfg.train
    if tc.torch_threads:
        torch.set_num_threads(tc.torch_threads)
    rank, world = dist_info()
    files, manifest = sample_files(cfg.warehouse, run_date)
    spec_path = spec_for_samples(cfg, run_date, manifest)
    try:
        spec = load_spec(spec_path)
    except FileNotFoundError:
        raise MissingInput(f"feature spec {spec_path} for the samples of {run_date} not found: run features first") from None
    import pyarrow.parquet as pq

    from recsys_batch.io.fs import resolve

    fs, inner = resolve(files[0])
    columns = pq.read_schema(inner, filesystem=fs).names
    require_loss_columns(columns, tc.loss, tc.logq_correction, files[0])
    seed_everything(tc.seed)
    model, user_layout, item_layout = build_model(spec, columns, tc)
    res_ws: dict = {}
    prev = previous_checkpoint(cfg.warehouse, run_date) if tc.warm_start else None
    if prev is not None:
        old = load_checkpoint(prev[1])
        res_ws = warm_start(model, old, user_layout, item_layout)
        log.info("train %s: warm start from %s (%s)", run_date, prev[1], res_ws)
    else:
        log.warning("train %s: no earlier checkpoint under %s%s: starting fresh", run_date,
                    cfg.warehouse.root, "" if tc.warm_start else " (train.warm_start is false)")
    cutoff = holdout_cutoff(run_date, tc.holdout_hours)
    if prev is None and tc.fresh_min_steps:
        n = fresh_epochs(count_rows(files, cutoff, "train" if cutoff else "all"), tc, world)
        if n != tc.epochs:
            log.info("train %s: no checkpoint to start from: %d epochs (train.fresh_min_steps %d) instead of %d",
                     run_date, n, tc.fresh_min_steps, tc.epochs)
            tc = tc.model_copy(update={"epochs": n})
    stream = SampleStream(files, user_layout, item_layout, tc.batch_size, tc.seed, rank, world, tc.shuffle_row_groups,
                          cutoff=cutoff, part="train" if cutoff else "all",
                          user_rows="all" if tc.loss == "bce" else "positives", units=list_units(files))
    readers = world * max(tc.num_workers, 1)
    if len(stream.units) < readers:
        log.warning("train %s: %d Parquet row groups for %d readers (ranks x train.num_workers): %d readers get no "
                    "rows; write more, smaller shards (samples.rows_per_file, samples.row_group_bytes) to use them", run_date,
                    len(stream.units), readers, readers - len(stream.units))
    on_step, bar = _progress(tc, stream.total_rows, rank)
    try:
        res = train(model, stream, tc, on_step)
    finally:
        if bar is not None:
            bar.close()
    if _global_sum(res.steps) == 0:  # under DDP a rank may get no row groups; only none at all is an error
        raise RecsysBatchError(f"train {run_date}: no training rows in {len(files)} shard files "
                               f"(holdout cut {cutoff}); check the samples stage output")
    res.warm_start_from = prev[1] if prev else None
    res.warm_start_rows = res_ws
    version = f"two_tower-{run_date.isoformat()}-{cfg.config_hash()}"
    res.model_version = version
    log.info("train %s (rank %d of %d): %d steps, %s examples in %.1fs (%.0f examples/s), final loss %.4f",
             run_date, rank, world, res.steps, f"{res.examples:,}", res.seconds, res.examples_per_s,
             res.final_loss or float("nan"))
    if rank != 0:
        return res
    out = model_dir(cfg.warehouse, run_date)
    res.checkpoint = f"{out}/{CHECKPOINT}"
    save_checkpoint(res.checkpoint, model, spec, user_layout, item_layout,
                    {"run_date": run_date.isoformat(), "model_version": version, "spec_path": spec_path,
                     "train": res.summary(), "config_hash": cfg.config_hash(), "holdout_cutoff": cutoff})
    res.exports = export_all(cfg, run_date, model, spec, version)
    res.output_rows = {k: v for k, v in res.exports.get("rows", {}).items()}
    return res
