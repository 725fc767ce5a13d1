"""Training throughput of the two-tower model (examples/s), default config, synthetic samples.

    .venv/bin/python benchmarks/train.py [--rows 300000] [--threads 1] [--workers 1] [--extra-numeric 40]

Examples = sample rows (positives + stored negatives) consumed by the optimiser; positives/s is printed
too. The synthetic samples have the default spec's shape (ids, a few categoricals and lists, last-N
of 20, and ``--extra-numeric`` numeric features per side: the real spec has ~40 per side). The shards
are written once to a temp folder; the time counts reading, encoding (in DataLoader workers), forward,
backward and Adam steps. Reference: >= 30,000 examples/s on 2 CPU cores. CPU seconds are printed too:
on a shared (loaded) machine wall-clock examples/s understates what two idle cores do, and
``examples per CPU-s x 2`` is the upper bound with the loader and the trainer fully overlapped.
Memory: the samples are generated in a child process; the trainer's RSS before / after the epoch and the
loader's RSS when it starts reading and at its peak are printed; run with ``--rows 300000`` and
``--rows 1000000`` to see they do not grow with the number of samples (streaming).
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
from _measure import MeasuredStreamMixin, cpu_seconds, status_mb

from recsys_batch.config import TrainConfig
from recsys_batch.training.data import SampleStream, list_units
from recsys_batch.training.synthetic import World, make_samples, make_spec, write_shards
from recsys_batch.training.train import build_model, seed_everything, train


class _MeasuredStream(MeasuredStreamMixin, SampleStream):
    pass


def _write_samples(a: argparse.Namespace, tmp: str) -> tuple[list[str], int, list[str]]:
    w = World(a.users, a.items, 16, seed=1)
    table = make_samples(w, date(2026, 1, 1), a.rows / 5 / a.users, extra_numeric=a.extra_numeric)
    files = write_shards(table, Path(tmp) / "recall", 200_000, 32_768)
    return [str(f) for f in files], table.num_rows, table.column_names


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=300_000)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--threads", type=int, default=TrainConfig().torch_threads or 1)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=TrainConfig().batch_size)
    p.add_argument("--extra-numeric", type=int, default=40)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        # the samples are generated in a child process, so the trainer's memory holds only what training needs
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(1) as pool:
            files, n_rows, columns = pool.apply(_write_samples, (a, tmp))
        w = World(a.users, a.items, 16, seed=1)
        spec = make_spec(w, extra_numeric=a.extra_numeric)
        del w
        gc.collect()
        print(f"synthetic samples: {n_rows:,} rows, {len(columns)} columns "
              f"({time.perf_counter() - t0:.1f}s to generate)")
        tc = TrainConfig(batch_size=a.batch_size, num_workers=a.workers, progress=False)
        seed_everything(tc.seed)
        model, ul, il = build_model(spec, columns, tc)
        n_params = sum(p.numel() for p in model.parameters())
        stream = _MeasuredStream(files, ul, il, tc.batch_size, tc.seed, units=list_units(files))
        stream.report = f"{tmp}/loader_rss"
        r0, m0 = cpu_seconds(), status_mb("VmRSS")
        res = train(model, stream, tc)
        cpu, m1 = cpu_seconds() - r0, status_mb("VmRSS")
        w0, w1 = (float(x) for x in Path(stream.report).read_text().split())
    print(f"{'setting':<34}{'value':>14}")
    for k, v in [("threads / loader workers", f"{a.threads} / {a.workers}"), ("batch size (rows)", f"{tc.batch_size:,}"),
                 ("features user / item (cat+num)", f"{ul.n_cat + len(ul.lists)} / {il.n_cat + len(il.lists)}"),
                 ("parameters", f"{n_params:,}"), ("steps", f"{res.steps:,}"), ("seconds", f"{res.seconds:.1f}"),
                 ("examples/s", f"{res.examples_per_s:,.0f}"), ("positives/s", f"{res.positives / res.seconds:,.0f}"),
                 ("CPU s (trainer + loader workers)", f"{cpu:.1f}"),
                 ("examples per CPU-s", f"{res.examples / cpu:,.0f}"),
                 ("reference examples/s", "30,000"),
                 ("trainer RSS before / after MiB", f"{m0:,.0f} / {m1:,.0f}"),
                 ("loader RSS at start / peak MiB", f"{w0:,.0f} / {w1:,.0f}"),
                 ("first / last loss", f"{res.losses[0]:.3f} / {res.final_loss:.3f}")]:
        print(f"{k:<34}{v:>14}")


if __name__ == "__main__":
    main()
