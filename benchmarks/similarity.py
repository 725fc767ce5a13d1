"""Benchmark the similarity jobs against a single-process scipy reference on the same synthetic data.

    .venv/bin/python benchmarks/similarity.py --interactions 1000000 [--jobs itemcf,swing,usercf]

Data: ``--interactions`` (user, item) pairs; users = interactions / 20, items = interactions / 50;
user activity ~ lognormal (heavy tail, mean 20 items), item popularity Zipf(``--zipf``) over a random
item order; score ~ Exp(1) + 0.1, last_ts uniform over 30 days. Written once as Parquet.

Per job: wall time of the Spark transform inside a warm session (ids, caps, staging, blocks, top-K,
persist + count), output rows, and peak RSS of the driver (this process, which never holds the data: it
is generated, and the reference run, in child processes), of the Python workers (max over them) and of
the JVM (each reset through /proc/<pid>/clear_refs before the job, read from VmHWM); beside the same
computation done single-process (its own process; "ref MB" is its peak): pandas for ids/caps, then the job's scipy kernel
over all rows in chunks (scipy sparse products + numpy top-K, one core). The reference shares the
kernels with the Spark job, so the ratio is the cost of distribution (Spark jobs, staging, tasks).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

from recsys_batch.config import ItemCFConfig, SwingConfig, UserCFConfig, load_config  # noqa: E402
from recsys_batch.schemas import Col  # noqa: E402
from recsys_batch.similarity.common import (  # noqa: E402
    CHUNK_WORK, DEG_I, DEG_U, NORM_I, NORM_U, STAGED_COLUMNS, split_by_work, stage_matrix,
)


# ---- data ----------------------------------------------------------------------------------------------


def generate(n: int, zipf: float, seed: int, path: Path) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n_users, n_items = max(10, n // 20), max(10, n // 50)
    sigma = 1.0
    act = rng.lognormal(np.log(20.0) - sigma ** 2 / 2, sigma, n_users)
    act = np.clip(np.round(act * n / act.sum() * 1.35), 1, n_items // 2).astype(np.int64)
    pop = (np.arange(n_items) + 1.0) ** -zipf
    pop = pop[rng.permutation(n_items)]
    pop /= pop.sum()
    u = np.repeat(np.arange(n_users), act)
    i = rng.choice(n_items, size=len(u), p=pop)
    pairs = np.unique(u * n_items + i)
    u, i = pairs // n_items, pairs % n_items
    if len(u) > n:
        keep = np.sort(rng.choice(len(u), n, replace=False))
        u, i = u[keep], i[keep]
    t_end = int(datetime(2026, 11, 21, tzinfo=timezone.utc).timestamp() * 1e6)
    ts = t_end - rng.integers(0, 30 * 86_400 * 1_000_000, len(u))
    df = pd.DataFrame({
        Col.USER: np.char.add("u", u.astype(str).astype(object).astype(str)).astype(object),
        Col.ITEM: np.char.add("i", i.astype(str).astype(object).astype(str)).astype(object),
        Col.SCORE: rng.exponential(1.0, len(u)) + 0.1,
        Col.N_EVENTS: np.ones(len(u), np.int64),
        Col.LAST_TS: pd.to_datetime(ts, unit="us", utc=True),
    })
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path / "part-0.parquet", row_group_size=1 << 20,
                   coerce_timestamps="us")
    return df


# ---- memory probes -----------------------------------------------------------------------------------------


def _status(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _descendants(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        kids = _children(todo.pop())
        seen += kids
        todo += kids
    return seen


def reset_peaks(pids: list[int]) -> None:
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass


def peak(pid: int) -> int:
    return _status(pid, "VmHWM")


# ---- single-process reference --------------------------------------------------------------------------------


def reference(df: pd.DataFrame, job: str, cfg) -> tuple[int, float]:  # noqa: ANN001
    """The same job in this process: pandas caps + statistics, then the job's kernel over all rows."""
    from recsys_batch.similarity import itemcf, swing, usercf

    t0 = time.perf_counter()
    f = df[[Col.USER, Col.ITEM, Col.SCORE]].copy()
    f["t"] = -df[Col.LAST_TS].astype("int64").to_numpy()
    f["sq"] = f[Col.SCORE] ** 2
    rn_u = f.sort_values([Col.USER, "t", Col.ITEM]).groupby(Col.USER, sort=False).cumcount()
    rn_i = f.sort_values([Col.ITEM, "t", Col.USER]).groupby(Col.ITEM, sort=False).cumcount()
    gu, gi = f.groupby(Col.USER)["sq"], f.groupby(Col.ITEM)["sq"]
    f[DEG_U], f[NORM_U] = gu.transform("size"), np.sqrt(gu.transform("sum"))
    f[DEG_I], f[NORM_I] = gi.transform("size"), np.sqrt(gi.transform("sum"))
    kept = f[(rn_u.reindex(f.index) < cfg.max_items_per_user) & (rn_i.reindex(f.index) < cfg.max_users_per_item)]
    m = stage_matrix(pa.Table.from_pandas(kept[STAGED_COLUMNS], preserve_index=False))
    mod = {"itemcf": (itemcf, itemcf.itemcf_kernel, CHUNK_WORK),
           "swing": (swing, swing.swing_kernel, swing._SWING_CHUNK_WORK),
           "usercf": (usercf, usercf.usercf_kernel, CHUNK_WORK)}[job]
    kernel, work = mod[1](cfg), mod[0]._work(m)
    bounds = split_by_work(work, max(1, int(np.ceil(work.sum() / mod[2]))))
    rows = 0
    for a, z in zip(bounds[:-1], bounds[1:]):
        if z > a:
            rows += len(kernel(m, int(a), int(z))[0])
    return rows, time.perf_counter() - t0


def _generate_child(n: int, zipf: float, seed: int, path: str) -> tuple[int, int, int, int, int]:
    df = generate(n, zipf, seed, Path(path))
    deg_u, deg_i = df.groupby(Col.USER).size(), df.groupby(Col.ITEM).size()
    return len(df), len(deg_u), int(deg_u.max()), len(deg_i), int(deg_i.max())


def _reference_child(path: str, job: str, cfg) -> tuple[int, float, int]:  # noqa: ANN001
    """The reference in a fresh process: (rows, seconds without the Parquet read, peak RSS bytes)."""
    df = pd.read_parquet(path)
    rows, secs = reference(df, job, cfg)
    return rows, secs, peak(os.getpid())


# ---- main ---------------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interactions", type=int, default=1_000_000)
    ap.add_argument("--jobs", default="itemcf,swing,usercf")
    ap.add_argument("--zipf", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--driver-memory", default="6g")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-sim-"))
    t0 = time.perf_counter()
    # data and the scipy reference live in child processes: this process is only the Spark driver, so its
    # peak memory is the driver's own (the point of "driver memory flat as the data grows")
    spawn = multiprocessing.get_context("spawn")
    with spawn.Pool(1) as pool:
        n_rows, n_users, max_u, n_items, max_i = pool.apply(
            _generate_child, (args.interactions, args.zipf, args.seed, str(work / "matrix")))
    print(f"data: {n_rows:,} interactions, {n_users:,} users (max {max_u:,} items), "
          f"{n_items:,} items (max {max_i:,} users); generated in {time.perf_counter() - t0:.1f}s",
          flush=True)

    from pyspark.sql import functions as F

    from recsys_batch.spark import get_spark
    from recsys_batch.similarity import itemcf_similarity, swing_similarity, usercf_similarity

    cfg = load_config("local", [f"spark.master={args.master}", f"spark.driver_memory={args.driver_memory}",
                                "spark.shuffle_partitions=8"])
    t0 = time.perf_counter()
    spark = get_spark(cfg.spark)
    spark.range(1).count()
    start_s = time.perf_counter() - t0
    jvm_pid = spark.sparkContext._gateway.proc.pid
    print(f"spark start: {start_s:.1f}s ({args.master})", flush=True)
    matrix = spark.read.parquet(str(work / "matrix"))
    # warm the session: JIT, Python workers and their scipy/pyarrow imports (a tiny run of every job)
    t0 = time.perf_counter()
    tiny = matrix.where(F.xxhash64(Col.USER) % 200 == 0)
    for fn, jcfg in (jobs := {"itemcf": (itemcf_similarity, ItemCFConfig()), "swing": (swing_similarity, SwingConfig()),
                              "usercf": (usercf_similarity, UserCFConfig())}).values():
        fn(tiny, jcfg, str(work / "stage-warmup")).unpersist()
    print(f"warm-up: {time.perf_counter() - t0:.1f}s", flush=True)

    results = []
    for name in args.jobs.split(","):
        fn, jcfg = jobs[name]
        me = os.getpid()
        reset_peaks([me, jvm_pid] + _descendants(jvm_pid))
        t0 = time.perf_counter()
        out = fn(matrix, jcfg, str(work / f"stage-{name}"))
        rows = out.count()
        secs = time.perf_counter() - t0
        workers = _descendants(jvm_pid)
        row = {"job": name, "spark_s": secs, "rows": rows, "driver_mb": peak(me) / 2**20,
               "workers_mb": max([peak(p) for p in workers] or [0]) / 2**20, "jvm_mb": peak(jvm_pid) / 2**20}
        out.unpersist()
        print(f"  spark {name}: {secs:.1f}s, {rows:,} rows", flush=True)
        if not args.no_reference:
            with spawn.Pool(1) as pool:
                ref_rows, ref_s, ref_peak = pool.apply(_reference_child, (str(work / "matrix"), name, jcfg))
            row.update(ref_s=ref_s, ref_rows=ref_rows, ref_mb=ref_peak / 2**20)
            print(f"  scipy {name}: {ref_s:.1f}s, {ref_rows:,} rows", flush=True)
        results.append(row)

    print(f"\n{n_rows:,} interactions, {args.master}, spark start {start_s:.1f}s (not in spark s)")
    hdr = (f"{'job':<7} {'spark s':>8} {'scipy s':>8} {'ratio':>6} {'ratio+start':>11} {'rows':>11} "
           f"{'ref rows':>11} {'driver MB':>9} {'worker MB':>9} {'JVM MB':>7} {'ref MB':>7}")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        ref_s = r.get("ref_s", float("nan"))
        print(f"{r['job']:<7} {r['spark_s']:8.1f} {ref_s:8.1f} {r['spark_s'] / ref_s:6.2f} "
              f"{(r['spark_s'] + start_s) / ref_s:11.2f} {r['rows']:11,} {r.get('ref_rows', 0):11,} "
              f"{r['driver_mb']:9.0f} {r['workers_mb']:9.0f} {r['jvm_mb']:7.0f} {r.get('ref_mb', 0):7.0f}")
    spark.stop()


if __name__ == "__main__":
    main()
