"""The evaluation report: ``metrics.json`` of a run date -> one self-contained HTML page beside it.

:func:`render_report` is pure (the metrics dict written by :func:`recsys_batch.evaluation.evaluate.run_evaluate`
in, an HTML string out); :func:`write_report` is the I/O edge (read the JSON, write ``report.html`` in the same
folder, on any filesystem :mod:`recsys_batch.io.fs` knows). The page needs no network and no other file: the
plots are matplotlib PNGs (Agg canvas, no pyplot state) embedded as ``data:image/png;base64`` URIs, the style
is inline.

Per evaluation mode in the file (``published``, ``rebuild``), the page holds: Recall@K curves per channel,
the hit contribution of each channel at the largest K (all its hits, and the ones no other channel finds),
the popularity bias of each list (mean popularity percentile of the recommended items against the truth's),
test-user and catalog coverage, then the metrics table; at the end the metric definitions. A skipped mode
shows its reason. Cost: a few KB of JSON, four small figures per mode (~1 s).
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from dataclasses import dataclass
from datetime import date
from typing import Any

from recsys_batch.errors import MissingInput
from recsys_batch.io import fs

REPORT_FILE = "report.html"
_NO_VALUE = "-"


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return _NO_VALUE
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else math.nan


def _png(fig: Any) -> str:
    """The figure as an <img> with a base64 PNG data URI (rendered by the Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="" src="data:image/png;base64,{data}">'


def _figure(width: float = 6.4, height: float = 3.6) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _colors(channels: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab20"] if len(channels) > 10 else colormaps["tab10"]
    return {c: cmap(i % cmap.N) for i, c in enumerate(channels)}


def plot_recall_curves(rows: list[dict], ks: list[int], colors: dict[str, Any]) -> str:
    """Recall@K against K (log axis), one line per channel."""
    fig = _figure()
    ax = fig.add_subplot()
    for r in rows:
        ax.plot(ks, [_num(r.get(f"recall@{k}")) for k in ks], marker="o", label=r["channel"],
                color=colors[r["channel"]], linestyle="--" if r["channel"] == "merged" else "-")
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", ncol=2 if len(rows) > 6 else 1, loc="upper left")
    ax.set_title("Recall@K per channel")
    return _png(fig)


def _barh(rows: list[dict], title: str, xlabel: str) -> tuple[Any, Any, list[float]]:
    fig = _figure(6.4, max(2.0, 0.45 * len(rows) + 1.2))
    ax = fig.add_subplot()
    ys = list(range(len(rows)))
    ax.set_yticks(ys, [r["channel"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    return fig, ax, ys


def _legend_below(ax: Any) -> None:
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)


def plot_hit_contribution(rows: list[dict], k: int, colors: dict[str, Any]) -> str:
    """Per channel at K: all its hits (light) and its unique hits (dark), horizontal bars."""
    fig, ax, ys = _barh(rows, f"hit contribution at K={k}: hits, and hits no other channel finds",
                        "test pairs (user, item) hit")
    hits = [_num(r.get(f"hits@{k}")) for r in rows]
    uniq = [_num(r.get(f"unique_hits@{k}")) for r in rows]
    col = [colors[r["channel"]] for r in rows]
    ax.barh(ys, [0 if math.isnan(h) else h for h in hits], color=col, alpha=0.3, label="hits")
    ax.barh(ys, [0 if math.isnan(u) else u for u in uniq], color=col, label="unique hits")
    hits = [0.0 if math.isnan(h) else h for h in hits]
    for y, h, u in zip(ys, hits, uniq):
        text = f"{int(u):,} of {int(h):,}" if not math.isnan(u) else f"{int(h):,} (not in the overlap)"
        ax.annotate(text, (h, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize="small")
    ax.set_xlim(0, max(max(hits, default=0.0), 1.0) * 1.35)
    _legend_below(ax)
    return _png(fig)


def plot_popularity_bias(rows: list[dict], k: int, truth: float | None, colors: dict[str, Any]) -> str:
    """Per channel: mean popularity percentile of its top-K items; the truth's as a dashed line."""
    fig, ax, ys = _barh(rows, f"popularity bias at K={k}: mean popularity percentile of the recommended items",
                        "mean popularity percentile (0 = least popular, 1 = most)")
    vals = [_num(r.get(f"pop_percentile@{k}")) for r in rows]
    ax.barh(ys, [0 if math.isnan(v) else v for v in vals], color=[colors[r["channel"]] for r in rows])
    if truth is not None and math.isfinite(truth):
        ax.axvline(truth, color="black", linestyle="--", label=f"held-out truth {truth:.3f}")
        _legend_below(ax)
    ax.set_xlim(0, 1)
    return _png(fig)


def plot_coverage(rows: list[dict], k: int) -> str:
    """Per channel: test-user coverage (users_with_list / test users) and catalog coverage at K."""
    fig, ax, ys = _barh(rows, f"coverage: test users with a list, catalog at K={k}", "share")
    h = 0.38
    users = [_num(r.get("user_coverage")) for r in rows]
    cat = [_num(r.get(f"coverage@{k}")) for r in rows]
    ax.barh([y - h / 2 for y in ys], [0 if math.isnan(v) else v for v in users], height=h, color="#4c72b0",
            label="test users with a list")
    ax.barh([y + h / 2 for y in ys], [0 if math.isnan(v) else v for v in cat], height=h, color="#dd8452",
            label=f"catalog coverage@{k}")
    ax.set_xlim(0, 1.05)
    _legend_below(ax)
    return _png(fig)


def _columns(rows: list[dict], ks: list[int]) -> list[str]:
    order = (["channel", "users", "users_with_list", "user_coverage"]
             + [f"{m}@{k}" for m in ("recall", "ndcg", "hit_rate") for k in ks] + ["mrr"]
             + [f"{m}@{k}" for m in ("hits", "unique_hits", "merged_sole_hits", "coverage", "novelty", "pop_percentile")
                for k in ks])
    seen = {key for r in rows for key in r}
    return [c for c in order if c in seen] + sorted(seen - set(order))


def _table(rows: list[dict], ks: list[int]) -> str:
    cols = _columns(rows, ks)
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_e(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _section(res: dict[str, Any]) -> str:
    mode = res.get("mode", "rebuild")
    ks = sorted(int(k) for k in res.get("ks") or [])
    extra = res.get("extra") or {}
    if mode == "published":
        title = f"published lists of {res.get('train_date')}"
    else:
        title = f"rebuilt on the {res.get('split')} split (train up to {res.get('train_date')})"
    out = [f"<h2>{_e(mode)}: {_e(title)}</h2>"]
    if res.get("source"):
        out.append(f"<p>{_e(res['source'])}</p>")
    if res.get("skipped"):
        out.append(f'<p class="skipped">skipped: {_e(res["skipped"])}</p>')
        return "\n".join(out)
    rows = res.get("rows") or []
    if not rows or not ks:
        out.append('<p class="skipped">no channel was scored</p>')
        return "\n".join(out)
    k = ks[-1]
    facts = [("test users", res.get("test_users")), ("catalog items", res.get("catalog_items")),
             ("train users", res.get("train_users")), ("truth mean popularity percentile",
                                                       extra.get("truth_pop_percentile")),
             (f"distinct pairs hit at K={k} by any channel", extra.get(f"union_hits@{k}")),
             ("left out of the overlap", ", ".join(extra.get("overlap_exclude") or []) or None)]
    out.append("<ul>" + "".join(f"<li>{_e(n)}: <b>{_e(_fmt(v))}</b></li>" for n, v in facts if v is not None)
               + "</ul>")
    missing = extra.get("channels_without_lists")
    if missing:
        out.append(f"<p>not evaluated: {_e(', '.join(missing))}</p>")
    colors = _colors([r["channel"] for r in rows])
    truth = extra.get("truth_pop_percentile")
    plots = [("Recall@K curves", plot_recall_curves(rows, ks, colors)),
             ("Hit contribution", plot_hit_contribution(rows, k, colors)),
             ("Popularity bias", plot_popularity_bias(rows, k, truth, colors)),
             ("Coverage", plot_coverage(rows, k))]
    out.append('<div class="plots">' + "".join(f'<figure>{img}<figcaption>{_e(cap)}</figcaption></figure>'
                                               for cap, img in plots) + "</div>")
    out.append("<h3>metrics</h3>")
    out.append(_table(rows, ks))
    return "\n".join(out)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ccc; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; } figure { margin: 0; }
figcaption { font-size: 0.85em; color: #555; text-align: center; }
.scroll { overflow-x: auto; } table { border-collapse: collapse; font-size: 0.8em; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; } .skipped { color: #a60; }
dt { font-family: monospace; margin-top: 0.4em; } dd { margin-left: 1.5em; }
"""


def render_report(metrics: dict[str, Any]) -> str:
    """The self-contained HTML page of one ``metrics.json`` payload (``run_date``, ``mode``, ``config_hash``,
    ``results`` [one dict per mode: :meth:`EvaluateResult.to_dict`], ``definitions``). Pure: no I/O."""
    run_date = metrics.get("run_date", "")
    results = metrics.get("results") or []
    parts = [f"<h1>recsys-batch evaluation of {_e(run_date)}</h1>",
             f"<p>evaluate.mode = {_e(metrics.get('mode', ''))}, config hash {_e(metrics.get('config_hash', ''))}"
             "</p>"]
    parts += [_section(r) for r in results] or ['<p class="skipped">the file holds no evaluation result</p>']
    defs = metrics.get("definitions") or {}
    if defs:
        parts.append("<h2>definitions</h2><dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in defs.items())
                     + "</dl>")
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>recsys-batch evaluation {_e(run_date)}</title><style>{_STYLE}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")


def metrics_path(root: str, run_date: date) -> str:
    from recsys_batch.evaluation.report import report_path

    return report_path(root, run_date)


def write_report(root: str, run_date: date, evaluate_command: str | None = None) -> str:
    """Read ``<root>/reports/evaluate/dt=D/metrics.json``, write :func:`render_report` of it to ``report.html``
    in the same folder (atomically: a reader sees the old page or the new one) and return its path (absolute
    for a local root). Without the metrics file: :class:`MissingInput` naming the file and
    ``evaluate_command`` (default ``recsys-batch evaluate --date D``), the command that writes it."""
    src = metrics_path(root, run_date)
    if fs.kind(src) == "local" or src.startswith("file:"):
        src = _local_path(src)
    if not fs.is_file(src):
        cmd = evaluate_command or f"recsys-batch evaluate --date {run_date.isoformat()}"
        raise MissingInput(f"no evaluation metrics for {run_date}: {src} does not exist; `{cmd}` writes it, "
                           f"then run the report again")
    page = render_report(fs.read_json(src))
    dest = f"{src.rsplit('/', 1)[0]}/{REPORT_FILE}"
    fs.write_atomic(dest, page)
    return dest


def _local_path(path: str) -> str:
    """``file:///x``, ``file:/x`` or a relative / absolute path -> an absolute local path (as write_json)."""
    p = path[len("file:"):] if path.startswith("file:") else path
    return os.path.abspath(p[2:] if p.startswith("///") else p)


@dataclass(frozen=True)
class ReportResult:
    """What the ``report`` stage returns: the page it wrote."""

    path: str

    @property
    def output_rows(self) -> dict[str, int]:
        return {"report_html": 1}


def run_report(cfg: Any, run_date: date) -> ReportResult:
    """Stage ``report`` (no JVM): :func:`write_report` for D under ``cfg.warehouse.root``, so the scheduled
    pipeline leaves the page beside each day's metrics (``recsys-batch report`` writes the same file)."""
    return ReportResult(write_report(cfg.warehouse.root, run_date))
