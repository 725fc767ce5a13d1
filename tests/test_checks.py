"""check-input (JVM-free): footers opened, bad files named, globs, text formats, the CLI and its run record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from recsys_batch.checks import InputCheck, check_input
from recsys_batch.cli import app
from recsys_batch.errors import EmptySource, MissingInput, RecsysBatchError, SourceUnreadable
from recsys_batch.runs import FAILED, SUCCESS, read_runs

D = date(2026, 11, 20)
ONLY_EVENTS = ("sources.users=null", "sources.items=null", "sources.follows=null", "sources.rank_logs=null")


def _parquet(path: Path, n: int = 2, unit: str = "us") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ts = pa.array([datetime(2026, 11, 20, 8, tzinfo=timezone.utc)] * n, pa.timestamp(unit, tz="UTC"))
    pq.write_table(pa.table({"user_id": [f"u{i}" for i in range(n)], "item_id": ["i1"] * n,
                             "event_type": ["click"] * n, "ts": ts}), path)


@pytest.fixture()
def batch(tmp_path: Path) -> Path:
    """The events folder of D with one good file (3 rows) and a _SUCCESS marker."""
    folder = tmp_path / "raw" / "events" / f"dt={D}"
    _parquet(folder / "a.parquet", 3)
    (folder / "_SUCCESS").write_text("")
    return folder


def test_footers_give_the_rows_and_ns_timestamps_pass(make_cfg, batch):
    _parquet(batch / "sub" / "b.parquet", 2, unit="ns")  # pandas' default unit; folders are read recursively
    (batch / ".a.parquet.crc").write_bytes(b"crc")        # hidden, as for Spark
    cfg = make_cfg(*ONLY_EVENTS)
    assert check_input(cfg, D) == [InputCheck("events", D, 5, str(batch), files=2)]


@pytest.mark.parametrize("spoil, error, names, says", [
    (lambda f: f.write_bytes(b""), SourceUnreadable, "b.parquet", "the file is empty (0 bytes"),
    (lambda f: f.write_bytes(f.read_bytes()[:700]), SourceUnreadable, "b.parquet", "magic bytes not found"),
    (lambda f: f.write_bytes(bytes(range(256)) * 4), SourceUnreadable, "b.parquet", "not a readable Parquet file"),
    (lambda f: [p.unlink() for p in f.parent.iterdir() if p.name != "_SUCCESS"], EmptySource, "dt=2026-11-20",
     "holds no data files"),
], ids=["0-byte", "truncated", "garbage", "empty folder"])
def test_a_bad_file_is_named(make_cfg, batch, spoil, error, names, says):
    _parquet(batch / "b.parquet", 2)
    spoil(batch / "b.parquet")
    with pytest.raises(error) as ei:
        check_input(make_cfg(*ONLY_EVENTS), D)
    msg = str(ei.value)
    assert isinstance(ei.value, RecsysBatchError) and names in msg and says in msg and "\n" not in msg, msg
    assert msg.startswith("source events:")


def test_missing_and_truncated_deliveries(make_cfg, batch):
    with pytest.raises(MissingInput, match=r"events for 2026-11-21 have not arrived: .*dt=2026-11-21 does not exist"):
        check_input(make_cfg(*ONLY_EVENTS), date(2026, 11, 21))
    with pytest.raises(MissingInput, match=r"hold 3 rows in 1 file\(s\), fewer than ingest.min_event_rows=4"):
        check_input(make_cfg(*ONLY_EVENTS, "ingest.min_event_rows=4"), D)


def test_glob_paths(make_cfg, tmp_path):
    raw = tmp_path / "raw" / "events"
    _parquet(raw / "web" / f"dt={D}" / "a.parquet", 3)
    _parquet(raw / "app" / f"dt={D}" / "a.parquet", 2)
    _parquet(raw / "tv" / f"dt={D}" / "a.parquet", 7)
    got = check_input(make_cfg('sources.events.path="{raw_root}/events/{web,app}/dt={date}"', *ONLY_EVENTS), D)
    assert (got[0].rows, got[0].files) == (5, 2)
    got = check_input(make_cfg('sources.events.path="{raw_root}/events/[^w]*/dt={date}"', *ONLY_EVENTS), D)
    assert (got[0].rows, got[0].files) == (9, 2)  # app and tv
    with pytest.raises(MissingInput, match=r"events/\{radio,print\}/dt=2026-11-20 does not exist"):
        check_input(make_cfg('sources.events.path="{raw_root}/events/{radio,print}/dt={date}"', *ONLY_EVENTS), D)


def test_text_formats_count_lines_without_parsing(make_cfg, tmp_path):
    folder = tmp_path / "raw" / "events" / f"dt={D}"
    folder.mkdir(parents=True)
    # types that change from row to row are ingest's business (quarantine), not a reason to fail the check
    (folder / "a.json").write_text('{"user_id": "u1", "position": 1}\n\n{"user_id": "u2", "position": "2.7"}')
    assert check_input(make_cfg("sources.events.format=json", *ONLY_EVENTS), D)[0].rows == 2
    (folder / "a.json").unlink()
    (folder / "a.csv").write_text("user_id,item_id,event_type,ts,position\nu1,i1,click,x,1.0\nu2,i2,click,y,2,3\n")
    (folder / "b.csv").write_text("")  # an empty CSV is an empty part, as for Spark
    assert check_input(make_cfg("sources.events.format=csv", *ONLY_EVENTS), D)[0].rows == 2


def _sets(tmp_path: Path) -> list[str]:
    sets = [f"warehouse.root={tmp_path / 'wh'}", f"warehouse.raw_root={tmp_path / 'raw'}", *ONLY_EVENTS]
    return sum((["--set", s] for s in sets), [])


def _runs(tmp_path: Path) -> list[tuple[str, str]]:
    from recsys_batch.config import WarehouseConfig

    rows = sorted(read_runs(WarehouseConfig(root=str(tmp_path / "wh"))).to_pylist(), key=lambda r: r["end_ts"])
    return [(r["stage"], r["status"]) for r in rows]


def test_cli_check_input_records_success_only_when_it_passed(tmp_path, batch):
    res = CliRunner().invoke(app, ["check-input", "--date", D.isoformat(), *_sets(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "events" in res.output and str(batch) in res.output.replace("\n", "")
    assert _runs(tmp_path) == [("check_input", SUCCESS)]
    rec = read_runs_rows(tmp_path)[0]
    assert json.loads(rec["output_rows"]) == {"events": 3}

    (batch / "b.parquet").write_bytes(b"not parquet at all")
    res = CliRunner().invoke(app, ["check-input", "--date", D.isoformat(), *_sets(tmp_path)])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    errors = [i for i, ln in enumerate(lines) if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    assert f"cannot read {batch}/b.parquet" in " ".join(ln.strip() for ln in lines[errors[0]:])
    assert _runs(tmp_path) == [("check_input", SUCCESS), ("check_input", FAILED)]


def read_runs_rows(tmp_path: Path) -> list[dict]:
    from recsys_batch.config import WarehouseConfig

    return read_runs(WarehouseConfig(root=str(tmp_path / "wh"))).to_pylist()


def test_cli_subprocess_bad_file_exit_2_one_line(tmp_path, batch):
    (batch / "b.parquet").write_bytes(b"")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "recsys_batch.cli", "check-input", "--date", D.isoformat(),
                           *_sets(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    both = proc.stdout + proc.stderr
    assert "Traceback" not in both and sum(ln.startswith("error:") for ln in both.splitlines()) == 1, both
    assert f"{batch}/b.parquet" in both.replace("\n", "") and "0 bytes" in both
