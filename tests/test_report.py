"""The HTML evaluation report: built from a small metrics dict (no Spark), every plot embedded, nothing
external; ``recsys-batch report`` writes it beside the metrics JSON and fails with one line without it."""

from __future__ import annotations

import base64
import json
import re
from datetime import date
from html.parser import HTMLParser
from pathlib import Path

from typer.testing import CliRunner

from recsys_batch.cli import app
from recsys_batch.evaluation.html import render_report, write_report
from recsys_batch.evaluation.metrics import METRIC_DEFINITIONS

D = date(2026, 11, 20)
KS = [50, 100, 200, 500]
CHANNELS = ["itemcf", "popular", "hot_<b>", "merged"]   # a name with markup: it must come out escaped


def row(channel: str, i: int) -> dict:
    r = {"channel": channel, "users": 100, "users_with_list": 100 - 10 * i, "user_coverage": 1 - 0.1 * i, "mrr": 0.1}
    for j, k in enumerate(KS):
        r |= {f"recall@{k}": 0.1 * (j + 1) / (i + 1), f"ndcg@{k}": 0.05 * (j + 1), f"hit_rate@{k}": 0.5,
              f"coverage@{k}": 0.01 * (j + 1), f"novelty@{k}": 8.0 + i, f"pop_percentile@{k}": 0.9 - 0.2 * i,
              f"hits@{k}": 10 * (j + 1), f"unique_hits@{k}": None if channel == "merged" else 2 * (j + i)}
    return r


def metrics() -> dict:
    published = {
        "run_date": D.isoformat(), "split": "published", "train_date": D.isoformat(), "ks": KS, "mode": "published",
        "rows": [row(c, i) for i, c in enumerate(CHANNELS)], "test_users": 100, "train_users": 500,
        "catalog_items": 300, "source": "truth table /x/holdout", "skipped": None,
        "extra": {"truth_pop_percentile": 0.42, "union_hits@500": 77, "overlap_exclude": ["merged"],
                  "channels_without_lists": ["recall_two_tower (no table)"]},
    }
    rebuild = {"run_date": D.isoformat(), "split": "user_chrono", "train_date": D.isoformat(), "ks": KS,
               "mode": "rebuild", "rows": [], "extra": {}, "skipped": "no events in the window"}
    return {"run_date": D.isoformat(), "mode": "both", "config_hash": "abc123", "results": [published, rebuild],
            "definitions": METRIC_DEFINITIONS}


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.urls: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href"):
                (self.imgs if tag == "img" else self.urls).append(value)


def test_report_embeds_every_plot_and_needs_nothing_external():
    page = render_report(metrics())
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # one section with rows: recall curves, hit contribution, popularity bias, coverage
    assert page.count('src="data:image/png;base64,') == 4
    parser = _Tags()
    parser.feed(page)
    assert len(parser.imgs) == 4 and parser.urls == []
    for src in parser.imgs:
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    assert "script" not in parser.tags and "link" not in parser.tags
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"https?:|//[a-z]|url\(|@import", text)  # no external reference, in HTML or CSS
    for c in ("itemcf", "popular", "merged", "hot_&lt;b&gt;"):
        assert f"<td>{c}</td>" in page
    assert "hot_<b>" not in page
    # the facts, the skipped mode with its reason, the missing channel, the definitions
    assert "truth mean popularity percentile: <b>0.4200</b>" in page
    assert "distinct pairs hit at K=500 by any channel: <b>77</b>" in page
    assert "skipped: no events in the window" in page
    assert "recall_two_tower (no table)" in page
    assert "<dt>unique_hits@K</dt>" in page
    # the table: every metric at every K, merged's unique hits shown as "-"
    for k in KS:
        for m in ("recall", "ndcg", "coverage", "novelty", "pop_percentile", "hits", "unique_hits"):
            assert f"<th>{m}@{k}</th>" in page


def test_report_of_only_skipped_modes_has_no_plot():
    m = metrics()
    m["results"] = m["results"][1:]
    page = render_report(m)
    assert "data:image" not in page and "skipped: no events in the window" in page


def write_metrics(root: Path) -> Path:
    path = root / "reports" / "evaluate" / f"dt={D.isoformat()}" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(metrics()))
    return path


def test_write_report_beside_the_metrics(tmp_path):
    src = write_metrics(tmp_path / "wh")
    out = write_report(str(tmp_path / "wh"), D)
    assert out == str(src.parent / "report.html")
    assert Path(out).read_text().count("data:image/png;base64,") == 4


def test_cli_report_prints_the_path(tmp_path):
    src = write_metrics(tmp_path / "wh")
    res = CliRunner().invoke(app, ["report", "--date", D.isoformat(), "--set", f"warehouse.root={tmp_path / 'wh'}"])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == str(src.parent / "report.html")
    assert "itemcf" in (src.parent / "report.html").read_text()


def test_cli_report_without_metrics_is_one_error_line(tmp_path):
    wh = tmp_path / "wh"
    wh.mkdir()
    res = CliRunner().invoke(app, ["report", "--date", D.isoformat(), "--conf", "local",
                                   "--set", f"warehouse.root={wh}"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    expected = (f"error: no evaluation metrics for 2026-11-20: {wh}/reports/evaluate/dt=2026-11-20/metrics.json "
                f"does not exist; `recsys-batch evaluate --date 2026-11-20 --conf local --set warehouse.root={wh}` "
                f"writes it, then run the report again")
    assert lines == [expected]
    assert list(wh.iterdir()) == []   # nothing written


def test_report_stage_writes_the_page_and_records_its_run(tmp_path):
    from recsys_batch.config import load_config
    from recsys_batch.runner import run_stage
    from recsys_batch.runs import latest_status

    src = write_metrics(tmp_path / "wh")
    cfg = load_config("local", [f"warehouse.root={tmp_path / 'wh'}"])
    res = run_stage("report", cfg, D, check_upstream=False)
    assert res.result.path == str(src.parent / "report.html")
    assert Path(res.result.path).read_text().count("data:image/png;base64,") == 4
    assert latest_status(cfg.warehouse)[("report", D.isoformat())]["status"] == "success"
