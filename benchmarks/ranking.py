"""Training throughput of the ranking model (examples/s) and memory, default config, synthetic ranking samples.

    .venv/bin/python benchmarks/ranking.py [--rows 300000] [--threads 1] [--workers 1] [--extra-numeric 40]
                                           [--multitask mmoe|ple] [--batch-size 2048]

Default model: DCN-v2 (2 low-rank cross layers) + DIN over the last-N + MMoE (``RankingConfig()``), batch 2,048
impressions. The samples (:mod:`recsys_batch.ranking.synthetic`, ``--extra-numeric`` noise numerics per side: the
real spec has ~40 per side) are generated in a child process and written once to a temp folder; the time counts
reading, encoding (in DataLoader workers), forward, backward and AdamW steps. Target: >= 20,000 examples/s on 2
CPU cores. CPU seconds are printed as well: on a shared machine wall-clock examples/s understates two idle
cores, and ``examples per CPU-s x 2`` is the ceiling with loader and trainer fully overlapped. Memory: the
trainer's RSS before / after the epoch and its peak (VmHWM), and the loader worker's RSS at start / peak.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from _measure import MeasuredStreamMixin, cpu_seconds, self_cpu_seconds, status_mb

from recsys_batch.config import RankingConfig
from recsys_batch.ranking.data import RankingStream
from recsys_batch.ranking.evaluate import layouts_for_spec
from recsys_batch.ranking.model import build_for
from recsys_batch.ranking.synthetic import make_ranking_samples
from recsys_batch.ranking.train import train_ranking
from recsys_batch.training.data import list_units
from recsys_batch.training.synthetic import World, make_spec, write_shards
from recsys_batch.training.train import seed_everything


class _MeasuredStream(MeasuredStreamMixin, RankingStream):
    pass


def _write_samples(a: argparse.Namespace, tmp: str) -> tuple[list[str], int, list[str]]:
    w = World(a.users, a.items, 16, seed=1)
    table = make_ranking_samples(w, date(2026, 1, 1), a.rows / 0.75 / a.users, extra_numeric=a.extra_numeric)
    files = write_shards(table, Path(tmp) / "ranking", 200_000, 32_768)
    return [str(f) for f in files], table.num_rows, table.column_names


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=300_000)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--threads", type=int, default=RankingConfig().torch_threads or 1)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=RankingConfig().batch_size)
    p.add_argument("--extra-numeric", type=int, default=40)
    p.add_argument("--multitask", default=RankingConfig().multitask)
    p.add_argument("--max-steps", type=int, default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(1) as pool:
            files, n_rows, columns = pool.apply(_write_samples, (a, tmp))
        spec = make_spec(World(a.users, a.items, 16, seed=1), extra_numeric=a.extra_numeric)
        gc.collect()
        print(f"synthetic ranking samples: {n_rows:,} rows, {len(columns)} columns "
              f"({time.perf_counter() - t0:.1f}s to generate)")
        rc = RankingConfig(batch_size=a.batch_size, num_workers=a.workers, progress=False, multitask=a.multitask,
                           max_steps=a.max_steps)
        seed_everything(rc.seed)
        ul, il = layouts_for_spec(spec, columns, rc)
        model = build_for(ul, il, rc, dropout=rc.dropout)
        n_params = sum(p.numel() for p in model.parameters())
        stream = _MeasuredStream(files, ul, il, rc.batch_size, rc.seed, units=list_units(files))
        stream.report = f"{tmp}/loader_rss"
        # the first optimizer of a process imports torch._dynamo (~2 s CPU idle, ~4 s under load): a one-time
        # cost per process, not per step -- paid here, outside the measured window
        torch.optim.AdamW(torch.nn.Linear(1, 1).parameters(), fused=True)
        r0, m0, s0 = cpu_seconds(), status_mb("VmRSS"), self_cpu_seconds()
        res = train_ranking(model, stream, rc, fresh=True)
        cpu, m1, peak = cpu_seconds() - r0, status_mb("VmRSS"), status_mb("VmHWM")
        trainer_cpu = self_cpu_seconds() - s0
        rep = Path(stream.report)
        w0, w1 = (float(x) for x in rep.read_text().split()) if rep.exists() else (float("nan"),) * 2
    print(f"{'setting':<36}{'value':>16}")
    for k, v in [("model", f"{a.multitask} + DCN-v2 + DIN"), ("threads / loader workers", f"{a.threads} / {a.workers}"),
                 ("batch size (impressions)", f"{rc.batch_size:,}"),
                 ("input width x0", f"{model.inputs.out_dim if hasattr(model, 'inputs') else '-'}"),
                 ("features user / item (cat+num)", f"{ul.n_cat + len(ul.lists)} / {il.n_cat + len(il.lists)}"),
                 ("parameters", f"{n_params:,}"), ("steps", f"{res.steps:,}"), ("seconds", f"{res.seconds:.1f}"),
                 ("examples/s", f"{res.examples_per_s:,.0f}"),
                 ("CPU s (trainer + loader workers)", f"{cpu:.1f}"),
                 ("CPU s trainer / loader workers", f"{trainer_cpu:.1f} / {cpu - trainer_cpu:.1f}"),
                 ("examples per trainer CPU-s", f"{res.examples / trainer_cpu:,.0f}"),
                 ("examples per CPU-s", f"{res.examples / cpu:,.0f}"),
                 ("target examples/s", "20,000"),
                 ("trainer RSS before / after MiB", f"{m0:,.0f} / {m1:,.0f}"),
                 ("trainer peak RSS (VmHWM) MiB", f"{peak:,.0f}"),
                 ("loader RSS at start / peak MiB", f"{w0:,.0f} / {w1:,.0f}"),
                 ("first / last loss", f"{res.losses[0]:.3f} / {res.final_loss:.3f}")]:
        print(f"{k:<36}{v:>16}")


if __name__ == "__main__":
    main()
